// Batched matrix product with a fused epilogue, tiled for GPUs with vectorised loads: a 16x16
// workgroup computes a 64x64 output tile, each invocation a block of 4 rows by 4 adjacent
// columns held as vec4 accumulators. A (64x16) and B (16x64) tiles are loaded one vec4 per
// invocation and staged through workgroup memory; results are stored as vec4.
// Requires (checked by the compiler): A contiguous along K, B and the output contiguous along N,
// K and N multiples of 4, every base and stride a multiple of 4.
// Same info layout and epilogue as matmul.wgsl. Dispatch: (ceil(N/64), ceil(M/64), batch).

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const TILE: u32 = 64u;
const KT: u32 = 16u;

// a_tile[row * 4 + k / 4][k % 4]: 64 rows of 16 k; b_tile[k * 16 + column / 4]: 16 k of 64 columns
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

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

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_count = word(0u);
    let n_count = word(1u);
    let k_count = word(2u);
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    var batch = wid.z;
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
    let a_ms = word(9u);
    let b_ks = word(12u);
    let flat = lid.y * 16u + lid.x;
    // this invocation's share of the tile loads
    let a_row = flat / 4u;
    let a_kv = flat % 4u;
    let b_k = flat / 16u;
    let b_nv = flat % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < k_count; k0 = k0 + KT) {
        let gm = m0 + a_row;
        let gk = k0 + a_kv * 4u;
        var av = vec4<f32>(0.0);
        if (gm < m_count && gk < k_count) {
            av = a[(a_off + gm * a_ms + gk) / 4u];
        }
        a_tile[flat] = av;
        let hk = k0 + b_k;
        let hn = n0 + b_nv * 4u;
        var bv = vec4<f32>(0.0);
        if (hk < k_count && hn < n_count) {
            bv = b[(b_off + hk * b_ks + hn) / 4u];
        }
        b_tile[flat] = bv;
        workgroupBarrier();
        for (var kv = 0u; kv < 4u; kv = kv + 1u) {
            var rows: array<vec4<f32>, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                rows[i] = a_tile[(lid.y + i * 16u) * 4u + kv];
            }
            for (var c = 0u; c < 4u; c = c + 1u) {
                let bk = b_tile[(kv * 4u + c) * 16u + lid.x];
                for (var i = 0u; i < 4u; i = i + 1u) {
                    acc[i] = acc[i] + rows[i][c] * bk;
                }
            }
        }
        workgroupBarrier();
    }
    let alpha = bitcast<f32>(word(7u));
    let has_bias = word(14u) != 0u;
    let out_base = word(18u) + wid.z * m_count * n_count;
    let n = n0 + lid.x * 4u;
    if (n >= n_count) {
        return;
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let m = m0 + lid.y + i * 16u;
        if (m < m_count) {
            var v = acc[i] * alpha;
            for (var j = 0u; j < 4u; j = j + 1u) {
                var x = v[j];
                if (has_bias) {
                    x = x + bias[c_off + m * word(16u) + (n + j) * word(17u)];
                }
                v[j] = activate(x);
            }
            dst[(out_base + m * n_count + n) / 4u] = v;
        }
    }
}
