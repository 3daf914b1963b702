// Resize with nearest or (multi-)linear interpolation over any dimensions, one output element
// per invocation. Each output coordinate is mapped back to the input by the coordinate
// transformation mode; linear mode blends the 2^rank surrounding elements (dimensions that keep
// their size land exactly on one of them).
//
// info words:
//   0 n (outputs)  1 rank  2 mode (0 nearest, 1 linear)  3 coordinate mode  4 nearest mode
//   8 + 4*d ..: per dimension d: input extent, output extent, scale (f32 bits), input stride
// coordinate modes: 0 half_pixel, 1 asymmetric, 2 align_corners, 3 pytorch_half_pixel,
//                   4 tf_half_pixel_for_nn, 5 half_pixel_symmetric
// nearest modes: 0 round_prefer_floor, 1 round_prefer_ceil, 2 floor, 3 ceil

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

override WG: u32 = 64u;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

fn source_coordinate(o: f32, in_len: f32, out_len: f32, scale: f32) -> f32 {
    switch word(3u) {
        case 1u: { return o / scale; }
        case 2u: {
            // the resized length before rounding, as ONNX uses it
            let resized = in_len * scale;
            if (resized <= 1.0) { return 0.0; }
            return o * (in_len - 1.0) / (resized - 1.0);
        }
        case 3u: {
            if (out_len <= 1.0) { return 0.0; }
            return (o + 0.5) / scale - 0.5;
        }
        case 4u: { return (o + 0.5) / scale; }
        case 5u: {
            let adj = out_len / scale;
            let center = in_len / 2.0;
            let offset = center * (1.0 - adj / in_len);
            return offset + (o + 0.5) / scale - 0.5;
        }
        default: { return (o + 0.5) / scale - 0.5; }
    }
}

fn nearest(v: f32) -> f32 {
    switch word(4u) {
        case 1u: { return select(round(v), ceil(v), fract(v) == 0.5); }
        case 2u: { return floor(v); }
        case 3u: { return ceil(v); }
        default: { return select(round(v), floor(v), fract(v) == 0.5); }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    if (idx >= word(0u)) {
        return;
    }
    let rank = word(1u);
    let linear = word(2u) == 1u;
    var lo: array<u32, 8>;
    var hi: array<u32, 8>;
    var frac: array<f32, 8>;
    var rest = idx;
    var off = 0u;
    for (var t = 0u; t < rank; t = t + 1u) {
        let d = rank - 1u - t;
        let at = 8u + 4u * d;
        let in_len = word(at);
        let out_len = word(at + 1u);
        let o = rest % out_len;
        rest = rest / out_len;
        let src = source_coordinate(f32(o), f32(in_len), f32(out_len), bitcast<f32>(word(at + 2u)));
        let top = i32(in_len) - 1;
        if (linear) {
            let c = clamp(src, 0.0, f32(top));
            let f = floor(c);
            lo[d] = u32(f);
            hi[d] = u32(min(i32(f) + 1, top));
            frac[d] = c - f;
        } else {
            let i = clamp(i32(nearest(src)), 0, top);
            off = off + u32(i) * word(at + 3u);
        }
    }
    if (!linear) {
        dst[idx] = x[off];
        return;
    }
    var acc = 0.0;
    let corners = 1u << rank;
    for (var k = 0u; k < corners; k = k + 1u) {
        var weight = 1.0;
        var at_off = 0u;
        for (var d = 0u; d < rank; d = d + 1u) {
            let stride = word(8u + 4u * d + 3u);
            if (((k >> d) & 1u) == 1u) {
                weight = weight * frac[d];
                at_off = at_off + hi[d] * stride;
            } else {
                weight = weight * (1.0 - frac[d]);
                at_off = at_off + lo[d] * stride;
            }
        }
        if (weight != 0.0) {
            acc = acc + weight * x[at_off];
        }
    }
    dst[idx] = acc;
}
