// 2-D transposed convolution (1-D runs with H = 1), NCHW, weights [C, M/groups, KH, KW], with
// groups, pads, strides and dilations; one output element per invocation gathers the inputs
// that scatter into it. Output padding only changes the output shape, decided at compile time.
//
// info words:
//   0 n (outputs)  1 N  2 C  3 H  4 W  5 M (output channels)  6 OH  7 OW  8 KH  9 KW
//   10 stride h  11 stride w  12 dilation h  13 dilation w  14 pad top  15 pad left  16 groups
//   17 has bias

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

override WG: u32 = 64u;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
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
    let sh = i32(word(10u));
    let sw = i32(word(11u));
    let groups = word(16u);
    let ow = idx % ow_count;
    let oh = (idx / ow_count) % oh_count;
    let m = (idx / (ow_count * oh_count)) % m_count;
    let n = idx / (ow_count * oh_count * m_count);
    let cg = c_count / groups;
    let mg = m_count / groups;
    let g = m / mg;
    let mm = m % mg;
    let dh = i32(word(12u));
    let dw = i32(word(13u));
    var acc = 0.0;
    for (var c = 0u; c < cg; c = c + 1u) {
        let channel = g * cg + c;
        let x_base = (n * c_count + channel) * u32(h * wd);
        let w_base = (channel * mg + mm) * kh * kw;
        for (var i = 0u; i < kh; i = i + 1u) {
            let th = i32(oh) + i32(word(14u)) - i32(i) * dh;
            if (th < 0 || th % sh != 0) {
                continue;
            }
            let ih = th / sh;
            if (ih >= h) {
                continue;
            }
            for (var j = 0u; j < kw; j = j + 1u) {
                let tw = i32(ow) + i32(word(15u)) - i32(j) * dw;
                if (tw < 0 || tw % sw != 0) {
                    continue;
                }
                let iw = tw / sw;
                if (iw >= wd) {
                    continue;
                }
                acc = acc + x[x_base + u32(ih * wd + iw)] * w[w_base + i * kw + j];
            }
        }
    }
    if (word(17u) != 0u) {
        acc = acc + bias[m];
    }
    dst[idx] = acc;
}
