// 2-D convolution (1-D runs with H = 1), NCHW, with groups, pads, strides and dilations and a
// fused epilogue (per-channel bias, then an activation), one output element per invocation.
//
// info words:
//   0 n (outputs)  1 N  2 C  3 H  4 W  5 M (output channels)  6 OH  7 OW  8 KH  9 KW
//   10 stride h  11 stride w  12 dilation h  13 dilation w  14 pad top  15 pad left  16 groups
//   17 has bias  18 activation  19 p0 (f32 bits)  20 p1 (f32 bits)
// activations as in matmul.wgsl.

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

override WG: u32 = 64u;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-z * z);
    return s * y;
}

fn activate(v: f32) -> f32 {
    switch word(18u) {
        case 1u: { return max(v, 0.0); }
        case 2u: { return tanh(clamp(v, -15.0, 15.0)); }
        case 3u: { return 1.0 / (1.0 + exp(-v)); }
        case 4u: { return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
        case 5u: { return 0.5 * v * (1.0 + tanh(clamp(0.79788456080286536 * (v + 0.044715 * v * v * v), -15.0, 15.0))); }
        case 6u: { return clamp(v, bitcast<f32>(word(19u)), bitcast<f32>(word(20u))); }
        case 7u: { return select(v, v * bitcast<f32>(word(19u)), v < 0.0); }
        default: { return v; }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    if (idx >= word(0u)) {
        return;
    }
    let c_count = word(2u);
    let h = i32(word(3u));
    let wd = i32(word(4u));
    let m_count = word(5u);
    let oh_count = word(6u);
    let ow_count = word(7u);
    let kh = word(8u);
    let kw = word(9u);
    let groups = word(16u);
    let ow = idx % ow_count;
    let oh = (idx / ow_count) % oh_count;
    let m = (idx / (ow_count * oh_count)) % m_count;
    let n = idx / (ow_count * oh_count * m_count);
    let cg = c_count / groups;
    let g = m / (m_count / groups);
    let ih0 = i32(oh * word(10u)) - i32(word(14u));
    let iw0 = i32(ow * word(11u)) - i32(word(15u));
    let dh = i32(word(12u));
    let dw = i32(word(13u));
    var acc = 0.0;
    for (var c = 0u; c < cg; c = c + 1u) {
        let channel = g * cg + c;
        let x_base = (n * c_count + channel) * u32(h * wd);
        let w_base = (m * cg + c) * kh * kw;
        for (var i = 0u; i < kh; i = i + 1u) {
            let ih = ih0 + i32(i) * dh;
            if (ih < 0 || ih >= h) {
                continue;
            }
            for (var j = 0u; j < kw; j = j + 1u) {
                let iw = iw0 + i32(j) * dw;
                if (iw < 0 || iw >= wd) {
                    continue;
                }
                acc = acc + x[x_base + u32(ih * wd + iw)] * w[w_base + i * kw + j];
            }
        }
    }
    if (word(17u) != 0u) {
        acc = acc + bias[m];
    }
    dst[idx] = activate(acc);
}
