// 2-D max and average pooling (1-D runs with H = 1; global pooling is a window over the whole
// plane), NCHW, with pads, strides and dilations; one output element per invocation.
//
// info words:
//   0 n (outputs)  1 H  2 W  3 OH  4 OW  5 KH  6 KW  7 stride h  8 stride w  9 dilation h
//   10 dilation w  11 pad top  12 pad left  13 pad bottom  14 pad right
//   15 mode (0 max, 1 average counting pads, 2 average over valid elements)

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

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
    let h = i32(word(1u));
    let w = i32(word(2u));
    let oh_count = word(3u);
    let ow_count = word(4u);
    let kh = word(5u);
    let kw = word(6u);
    let dh = i32(word(9u));
    let dw = i32(word(10u));
    let mode = word(15u);
    let ow = idx % ow_count;
    let oh = (idx / ow_count) % oh_count;
    let plane = idx / (ow_count * oh_count);
    let base = plane * u32(h * w);
    let ih0 = i32(oh * word(7u)) - i32(word(11u));
    let iw0 = i32(ow * word(8u)) - i32(word(12u));
    let h_end = h + i32(word(13u));
    let w_end = w + i32(word(14u));
    var best = bitcast<f32>(0xff800000u);
    var sum = 0.0;
    var valid = 0u;
    var padded = 0u;
    for (var i = 0u; i < kh; i = i + 1u) {
        let ih = ih0 + i32(i) * dh;
        for (var j = 0u; j < kw; j = j + 1u) {
            let iw = iw0 + i32(j) * dw;
            if (ih < h_end && iw < w_end) {
                padded = padded + 1u;
            }
            if (ih < 0 || ih >= h || iw < 0 || iw >= w) {
                continue;
            }
            let v = x[base + u32(ih * w + iw)];
            best = max(best, v);
            sum = sum + v;
            valid = valid + 1u;
        }
    }
    if (mode == 0u) {
        dst[idx] = best;
    } else if (mode == 1u) {
        dst[idx] = sum / f32(max(padded, 1u));
    } else {
        dst[idx] = sum / f32(max(valid, 1u));
    }
}
