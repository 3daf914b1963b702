// the `tiled` kernel of matmul.wgsl with B (constant weights) stored as f16, for adapters with shader-f16:
// half the weight memory and bandwidth; products and sums stay in f32.
// Same info layout and epilogue as matmul.wgsl. Dispatch: (ceil(N/64), ceil(M/64), batch).

enable f16;

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f16>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const TILE: u32 = 64u;
const KT: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>;
var<workgroup> b_tile: array<f32, 1024>;

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
    let a_ks = word(10u);
    let b_ks = word(12u);
    let b_ns = word(13u);
    let flat = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < k_count; k0 = k0 + KT) {
        for (var i = 0u; i < 4u; i = i + 1u) {
            let e = flat + i * 256u;
            // A tile: 64 rows x 16 k, stored row-major
            let am = e / KT;
            let ak = e % KT;
            let gm = m0 + am;
            let gk = k0 + ak;
            var av = 0.0;
            if (gm < m_count && gk < k_count) {
                av = a[a_off + gm * a_ms + gk * a_ks];
            }
            a_tile[e] = av;
            // B tile: 16 k x 64 columns, stored row-major
            let bk = e / TILE;
            let bn = e % TILE;
            let hk = k0 + bk;
            let hn = n0 + bn;
            var bv = 0.0;
            if (hk < k_count && hn < n_count) {
                bv = f32(b[b_off + hk * b_ks + hn * b_ns]);
            }
            b_tile[e] = bv;
        }
        workgroupBarrier();
        for (var k = 0u; k < KT; k = k + 1u) {
            var bv: array<f32, 4>;
            for (var j = 0u; j < 4u; j = j + 1u) {
                bv[j] = b_tile[k * TILE + lid.x + j * 16u];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                let av = a_tile[(lid.y + i * 16u) * KT + k];
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = acc[i * 4u + j] + av * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    let alpha = bitcast<f32>(word(7u));
    let has_bias = word(14u) != 0u;
    let out_base = word(18u) + wid.z * m_count * n_count;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let m = m0 + lid.y + i * 16u;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let n = n0 + lid.x + j * 16u;
            if (m < m_count && n < n_count) {
                var v = acc[i * 4u + j] * alpha;
                if (has_bias) {
                    v = v + bias[c_off + m * word(16u) + n * word(17u)];
                }
                dst[out_base + m * n_count + n] = activate(v);
            }
        }
    }
}
