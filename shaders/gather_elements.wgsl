// GatherElements: out[c] = data[c with c[axis] replaced by indices[c]], on 32-bit words of any
// type. Indices share the output's shape and are contiguous.
//
// info words: 0 n (outputs)  1 rank  2 axis  3 axis extent in data
//   8 ..: output extents[rank], data strides[rank]

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
    let rank = word(1u);
    let axis = word(2u);
    let extent = i32(word(3u));
    var i = indices[idx];
    if (i < 0) {
        i = i + extent;
    }
    i = clamp(i, 0, extent - 1);
    var rest = idx;
    var off = 0u;
    for (var t = 0u; t < rank; t = t + 1u) {
        let d = rank - 1u - t;
        let e = word(8u + d);
        var c = rest % e;
        rest = rest / e;
        if (d == axis) {
            c = u32(i);
        }
        off = off + c * word(8u + rank + d);
    }
    dst[idx] = data[off];
}
