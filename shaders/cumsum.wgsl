// CumSum along one axis, one invocation per line (fixed outer and inner coordinates), in f32 or
// i32, optionally exclusive and/or reversed.
//
// info words: 0 lines  1 axis length  2 inner  3 exclusive  4 reverse  5 integer elements

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<u32>;

override WG: u32 = 64u;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let line = gid.x + gid.y * nwg.x * WG;
    if (line >= word(0u)) {
        return;
    }
    let len = word(1u);
    let inner = word(2u);
    let exclusive = word(3u) != 0u;
    let reverse = word(4u) != 0u;
    let integer = word(5u) != 0u;
    let base = (line / inner) * len * inner + line % inner;
    var fsum = 0.0;
    var isum = 0;
    for (var t = 0u; t < len; t = t + 1u) {
        var i = t;
        if (reverse) {
            i = len - 1u - t;
        }
        let at = base + i * inner;
        let v = x[at];
        if (exclusive) {
            dst[at] = select(bitcast<u32>(fsum), bitcast<u32>(isum), integer);
        }
        fsum = fsum + bitcast<f32>(v);
        isum = isum + bitcast<i32>(v);
        if (!exclusive) {
            dst[at] = select(bitcast<u32>(fsum), bitcast<u32>(isum), integer);
        }
    }
}
