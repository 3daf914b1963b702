// Reductions over any set of axes (ReduceSum/Mean/Max/Min/Prod/SumSquare/L1/L2/LogSum/
// LogSumExp, ArgMax/ArgMin): one invocation per output element walks the reduced elements
// through their strides, so no transposes are needed.
//
// info words:
//   0 n (outputs)  1 op  2 kept rank  3 reduced rank  4 reduced count  5 input base
//   6 select last index (arg ops)  7 integer elements (i32; ops 0-6, 10, 11 only)
//   8 ..: kept extents, kept strides, reduced extents, reduced strides
// ops: 0 sum 1 mean 2 max 3 min 4 prod 5 sum of squares 6 L1 7 L2 8 log-sum 9 log-sum-exp
//      10 argmax 11 argmin (result is an i32 index along the single reduced axis)

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<u32>;

override WG: u32 = 64u;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

fn element(base: u32, r: u32, kept: u32, red: u32) -> f32 {
    return bitcast<f32>(x[offset(base, r, kept, red)]);
}

fn ielement(base: u32, r: u32, kept: u32, red: u32) -> i32 {
    return bitcast<i32>(x[offset(base, r, kept, red)]);
}

fn offset(base: u32, r: u32, kept: u32, red: u32) -> u32 {
    var rest = r;
    var off = base;
    for (var t = 0u; t < red; t = t + 1u) {
        let d = red - 1u - t;
        let e = word(8u + 2u * kept + d);
        off = off + (rest % e) * word(8u + 2u * kept + red + d);
        rest = rest / e;
    }
    return off;
}

// The integer reductions, in i32 (wrapping as int32 arithmetic does).
fn reduce_int(base: u32, op: u32, kept: u32, red: u32, count: u32) -> u32 {
    if (op == 10u || op == 11u) {
        var best = ielement(base, 0u, kept, red);
        var at = 0u;
        let last = word(6u) != 0u;
        for (var r = 1u; r < count; r = r + 1u) {
            let v = ielement(base, r, kept, red);
            var better = false;
            if (op == 10u) {
                better = v > best || (last && v == best);
            } else {
                better = v < best || (last && v == best);
            }
            if (better) {
                best = v;
                at = r;
            }
        }
        return at;
    }
    var acc = 0;
    if (op == 2u) {
        acc = -2147483647 - 1;
    } else if (op == 3u) {
        acc = 2147483647;
    } else if (op == 4u) {
        acc = 1;
    }
    for (var r = 0u; r < count; r = r + 1u) {
        let v = ielement(base, r, kept, red);
        switch op {
            case 2u: { acc = max(acc, v); }
            case 3u: { acc = min(acc, v); }
            case 4u: { acc = acc * v; }
            case 5u: { acc = acc + v * v; }
            case 6u: { acc = acc + abs(v); }
            default: { acc = acc + v; }
        }
    }
    if (op == 1u) {
        acc = acc / i32(count);
    }
    return bitcast<u32>(acc);
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * WG;
    if (idx >= word(0u)) {
        return;
    }
    let op = word(1u);
    let kept = word(2u);
    let red = word(3u);
    let count = word(4u);
    var rest = idx;
    var base = word(5u);
    for (var t = 0u; t < kept; t = t + 1u) {
        let d = kept - 1u - t;
        let e = word(8u + d);
        base = base + (rest % e) * word(8u + kept + d);
        rest = rest / e;
    }
    if (word(7u) != 0u) {
        dst[idx] = reduce_int(base, op, kept, red, count);
        return;
    }
    if (op == 10u || op == 11u) {
        var best = element(base, 0u, kept, red);
        var at = 0u;
        let last = word(6u) != 0u;
        for (var r = 1u; r < count; r = r + 1u) {
            let v = element(base, r, kept, red);
            var better = false;
            if (op == 10u) {
                better = v > best || (last && v == best);
            } else {
                better = v < best || (last && v == best);
            }
            if (better) {
                best = v;
                at = r;
            }
        }
        dst[idx] = at;
        return;
    }
    var acc = 0.0;
    if (op == 2u) {
        acc = bitcast<f32>(0xff800000u);
    } else if (op == 3u) {
        acc = bitcast<f32>(0x7f800000u);
    } else if (op == 4u) {
        acc = 1.0;
    }
    var peak = bitcast<f32>(0xff800000u);
    if (op == 9u) {
        for (var r = 0u; r < count; r = r + 1u) {
            peak = max(peak, element(base, r, kept, red));
        }
    }
    for (var r = 0u; r < count; r = r + 1u) {
        let v = element(base, r, kept, red);
        switch op {
            case 2u: { acc = max(acc, v); }
            case 3u: { acc = min(acc, v); }
            case 4u: { acc = acc * v; }
            case 5u, 7u: { acc = acc + v * v; }
            case 6u: { acc = acc + abs(v); }
            case 9u: { acc = acc + exp(v - peak); }
            default: { acc = acc + v; }
        }
    }
    switch op {
        case 1u: { acc = acc / f32(count); }
        case 7u: { acc = sqrt(acc); }
        case 8u: { acc = log(acc); }
        case 9u: { acc = peak + log(acc); }
        default: {}
    }
    dst[idx] = bitcast<u32>(acc);
}
