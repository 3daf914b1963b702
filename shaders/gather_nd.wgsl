// GatherND: each index tuple of length k selects a slice of `slice` contiguous words from data,
// within its batch; on 32-bit words of any type.
//
// info words: 0 n (outputs)  1 slice  2 k  3 tuples per batch  4 data words per batch
//   8 + 2*j ..: per tuple position j: data extent, data stride

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
    let slice = word(1u);
    let k = word(2u);
    let s = idx % slice;
    let g = idx / slice;
    let batch = g / word(3u);
    var off = batch * word(4u) + s;
    for (var j = 0u; j < k; j = j + 1u) {
        let extent = i32(word(8u + 2u * j));
        var i = indices[g * k + j];
        if (i < 0) {
            i = i + extent;
        }
        off = off + u32(clamp(i, 0, extent - 1)) * word(9u + 2u * j);
    }
    dst[idx] = data[off];
}
