// LayerNormalization over the trailing L elements of each row: one workgroup per row, with
// workgroup reductions for the mean and then the variance of the centred values.
// Y = (X - mean) / sqrt(var + eps) * scale + bias; scale and bias have L elements.
//
// info words: 0 rows  1 L  2 epsilon (f32 bits)  3 has bias
// Dispatch: one workgroup per row, rows split over x and y.

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> scale: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

fn reduce_sum(lane: u32, v: f32) -> f32 {
    partial[lane] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lane < s) {
            partial[lane] = partial[lane] + partial[lane + s];
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
    let base = row * len;
    var s = 0.0;
    for (var i = lane; i < len; i = i + WG) {
        s = s + x[base + i];
    }
    let mean = reduce_sum(lane, s) / f32(len);
    var q = 0.0;
    for (var i = lane; i < len; i = i + WG) {
        let d = x[base + i] - mean;
        q = q + d * d;
    }
    let variance = reduce_sum(lane, q) / f32(len);
    let inv = 1.0 / sqrt(variance + bitcast<f32>(word(2u)));
    let has_bias = word(3u) != 0u;
    for (var i = lane; i < len; i = i + WG) {
        var y = (x[base + i] - mean) * inv * scale[i];
        if (has_bias) {
            y = y + bias[i];
        }
        dst[base + i] = y;
    }
}
