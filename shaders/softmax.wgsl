// Softmax and LogSoftmax along one axis: one workgroup per row (a row is the axis at fixed outer
// and inner coordinates, stepping by `inner`), with workgroup reductions for the maximum and
// the sum of exponentials.
//
// info words: 0 rows  1 axis length  2 inner  3 mode (0 softmax, 1 log-softmax)
// Dispatch: one workgroup per row, rows split over x and y.

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

fn reduce(lane: u32, v: f32, take_max: bool) -> f32 {
    partial[lane] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            if (take_max) {
                partial[lane] = max(partial[lane], partial[lane + s]);
            } else {
                partial[lane] = partial[lane] + partial[lane + s];
            }
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= word(0u)) {
        return;
    }
    let len = word(1u);
    let inner = word(2u);
    let base = (row / inner) * len * inner + row % inner;
    var m = bitcast<f32>(0xff800000u);
    for (var i = lane; i < len; i = i + WG) {
        m = max(m, x[base + i * inner]);
    }
    let peak = reduce(lane, m, true);
    var s = 0.0;
    for (var i = lane; i < len; i = i + WG) {
        s = s + exp(x[base + i * inner] - peak);
    }
    let total = reduce(lane, s, false);
    let log_mode = word(3u) == 1u;
    for (var i = lane; i < len; i = i + WG) {
        let v = x[base + i * inner] - peak;
        if (log_mode) {
            dst[base + i * inner] = v - log(total);
        } else {
            dst[base + i * inner] = exp(v) / total;
        }
    }
}
