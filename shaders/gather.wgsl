// Gather along one axis with run-time indices (negative indices count from the end), on 32-bit
// words of any type. out[outer, i, inner] = data[outer, indices[i], inner].
//
// info words: 0 n (outputs)  1 inner  2 axis extent  3 index count

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> data: array<u32>;
@group(0) @binding(3) var<storage, read> indices: array<i32>;

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
    let inner = word(1u);
    let extent = word(2u);
    let count = word(3u);
    let s = idx % inner;
    let p = (idx / inner) % count;
    let outer = idx / (inner * count);
    var i = indices[p];
    if (i < 0) {
        i = i + i32(extent);
    }
    let k = u32(clamp(i, 0, i32(extent) - 1));
    dst[idx] = data[(outer * extent + k) * inner + s];
}
