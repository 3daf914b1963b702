// ScatterND (reduction none): writes each update slice to the place its index tuple names in
// the output, which already holds a copy of data. On 32-bit words of any type; when two tuples
// name the same place the result is one of the updates, as ONNX leaves it undefined.
//
// info words: 0 n (update words)  1 slice  2 k
//   8 + 2*j ..: per tuple position j: data extent, data stride

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> updates: array<u32>;
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
    let slice = word(1u);
    let k = word(2u);
    let s = idx % slice;
    let g = idx / slice;
    var off = s;
    for (var j = 0u; j < k; j = j + 1u) {
        let extent = i32(word(8u + 2u * j));
        var i = indices[g * k + j];
        if (i < 0) {
            i = i + extent;
        }
        off = off + u32(clamp(i, 0, extent - 1)) * word(9u + 2u * j);
    }
    dst[off] = updates[idx];
}
