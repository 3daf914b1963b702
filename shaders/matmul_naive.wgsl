// Batched matrix product with a fused epilogue, one output element per invocation.
// The simple reference kernel: used for small products and as the benchmark baseline.
//
// out[b, m, n] = act(alpha * sum_k A[b, m, k] * B[b, k, n] + bias[b, m, n])
// A, B and bias are addressed through strides, so transposed operands (Gemm transA/transB) and
// broadcast batch dimensions need no copies.
//
// info words (shared with matmul_tiled.wgsl):
//   0 M  1 N  2 K  3 batch count  4 activation  5 activation p0 (f32 bits)  6 p1  7 alpha (f32 bits)
//   8 A base  9 A m-stride  10 A k-stride  11 B base  12 B k-stride  13 B n-stride
//   14 has bias  15 bias base  16 bias m-stride  17 bias n-stride  18 output base  19 batch rank
//   20 + 4*d ..: per batch dimension d: extent, A stride, B stride, bias stride
// activations: 0 none, 1 relu, 2 tanh, 3 sigmoid, 4 gelu (erf), 5 gelu (tanh), 6 clip(p0, p1),
//              7 leaky relu(p0)

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

override WG: u32 = 64u;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let v = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * v);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-v * v);
    return s * y;
}

fn activate(x: f32) -> f32 {
    switch word(4u) {
        case 1u: { return max(x, 0.0); }
        case 2u: { return tanh(clamp(x, -15.0, 15.0)); }
        case 3u: { return 1.0 / (1.0 + exp(-x)); }
        case 4u: { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)); }
        case 5u: { return 0.5 * x * (1.0 + tanh(clamp(0.79788456080286536 * (x + 0.044715 * x * x * x), -15.0, 15.0))); }
        case 6u: { return clamp(x, bitcast<f32>(word(5u)), bitcast<f32>(word(6u))); }
        case 7u: { return select(x, x * bitcast<f32>(word(5u)), x < 0.0); }
        default: { return x; }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    let m_count = word(0u);
    let n_count = word(1u);
    let k_count = word(2u);
    if (idx >= m_count * n_count * word(3u)) {
        return;
    }
    let n = idx % n_count;
    let m = (idx / n_count) % m_count;
    var batch = idx / (n_count * m_count);
    var a_off = word(8u);
    var b_off = word(11u);
    var c_off = word(15u);
    let rank = word(19u);
    for (var t = 0u; t < rank; t = t + 1u) {
        let at = 20u + 4u * (rank - 1u - t);
        let e = word(at);
        let c = batch % e;
        batch = batch / e;
        a_off = a_off + c * word(at + 1u);
        b_off = b_off + c * word(at + 2u);
        c_off = c_off + c * word(at + 3u);
    }
    let a_ks = word(10u);
    let b_ks = word(12u);
    var ai = a_off + m * word(9u);
    var bi = b_off + n * word(13u);
    var acc = 0.0;
    for (var k = 0u; k < k_count; k = k + 1u) {
        acc = acc + a[ai] * b[bi];
        ai = ai + a_ks;
        bi = bi + b_ks;
    }
    var v = acc * bitcast<f32>(word(7u));
    if (word(14u) != 0u) {
        v = v + bias[c_off + m * word(16u) + n * word(17u)];
    }
    dst[word(18u) + idx] = activate(v);
}
