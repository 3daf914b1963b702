// Strided remap: copies 32-bit words from one buffer region to another, one invocation per
// element of an iteration shape. Serves Transpose, Slice, Expand, Tile, Pad, Concat and Split:
// each dimension maps its iteration coordinate c to an input coordinate start + c * step, and
// handles coordinates outside the input by its mode.
//
// info words:
//   0 n (iteration elements)  1 rank  2 fill value (bits, for mode 1)  3 input base  4 output base
//   8 + 7*d ..: per dimension d: extent, output stride, input stride, input extent, start (i32),
//               step (i32), mode (0 in range, 1 constant fill, 2 edge, 3 reflect, 4 wrap)

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;

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
    let rank = word(1u);
    var rest = idx;
    var out_off = word(4u);
    var in_off = word(3u);
    var inside = true;
    for (var t = 0u; t < rank; t = t + 1u) {
        let d = rank - 1u - t;
        let at = 8u + 7u * d;
        let extent = word(at);
        let c = rest % extent;
        rest = rest / extent;
        out_off = out_off + c * word(at + 1u);
        let in_extent = i32(word(at + 3u));
        var ic = bitcast<i32>(word(at + 4u)) + i32(c) * bitcast<i32>(word(at + 5u));
        let mode = word(at + 6u);
        if (mode == 1u) {
            if (ic < 0 || ic >= in_extent) {
                inside = false;
            }
        } else if (mode == 2u) {
            ic = clamp(ic, 0, in_extent - 1);
        } else if (mode == 3u) {
            if (in_extent == 1) {
                ic = 0;
            } else {
                let period = 2 * (in_extent - 1);
                var m = ic % period;
                if (m < 0) { m = m + period; }
                if (m >= in_extent) { m = period - m; }
                ic = m;
            }
        } else if (mode == 4u) {
            var m = ic % in_extent;
            if (m < 0) { m = m + in_extent; }
            ic = m;
        }
        in_off = in_off + u32(max(ic, 0)) * word(at + 2u);
    }
    if (inside) {
        dst[out_off] = src[in_off];
    } else {
        dst[out_off] = word(2u);
    }
}
