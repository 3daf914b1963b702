// Elementwise programs: one kernel for every elementwise op and every fused chain of them, with
// two entry points.
//
// A chain of fused elementwise ONNX nodes is a small register program. `main` interprets it from
// the info buffer: one pipeline serves every program, and every invocation runs the same program
// (uniform control flow). `specialised` takes the program from pipeline-overridable constants
// (COUNT, RESULT and OPi, Di, Ai, Bi, Ci for instruction slot i < 24), so each program compiles
// into its own pipeline with every opcode and register index known: the switches fold away and
// the registers stay in registers (`--specialise`; only the ops of `execute4_fast`). Either way
// the kernel is specialised by data, not by text. All tensors are 32-bit words: f32, or i32 for
// integer and bool tensors (int64 is narrowed to i32 at the plan's edges). Each invocation
// computes four consecutive output elements.
//
// info words:
//   0 n (output elements)  1 rank  2 inputs  3 instructions  4 result register  5 output base
//   6 bit k set: input k is read in output order (no coordinates needed)
//   8..8+rank                      output dims (after merging dimensions all inputs walk alike)
//   then per input k: base, strides[rank] (element strides in the output's coordinates)
//   then instructions, 5 words each: op, dst, a, b, c (for LOAD a is the input index, for
//   CONST the value's bits; `specialised` reads these five from OPi, Di, Ai, Bi, Ci instead)

@group(0) @binding(0) var<uniform> info: array<vec4<u32>, 64>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> src0: array<u32>;
@group(0) @binding(3) var<storage, read> src1: array<u32>;
@group(0) @binding(4) var<storage, read> src2: array<u32>;
@group(0) @binding(5) var<storage, read> src3: array<u32>;

override WG: u32 = 64u;
override COUNT: u32 = 0u;
override RESULT: u32 = 0u;
override OP0: u32 = 0u;
override D0: u32 = 0u;
override A0: u32 = 0u;
override B0: u32 = 0u;
override C0: u32 = 0u;
override OP1: u32 = 0u;
override D1: u32 = 0u;
override A1: u32 = 0u;
override B1: u32 = 0u;
override C1: u32 = 0u;
override OP2: u32 = 0u;
override D2: u32 = 0u;
override A2: u32 = 0u;
override B2: u32 = 0u;
override C2: u32 = 0u;
override OP3: u32 = 0u;
override D3: u32 = 0u;
override A3: u32 = 0u;
override B3: u32 = 0u;
override C3: u32 = 0u;
override OP4: u32 = 0u;
override D4: u32 = 0u;
override A4: u32 = 0u;
override B4: u32 = 0u;
override C4: u32 = 0u;
override OP5: u32 = 0u;
override D5: u32 = 0u;
override A5: u32 = 0u;
override B5: u32 = 0u;
override C5: u32 = 0u;
override OP6: u32 = 0u;
override D6: u32 = 0u;
override A6: u32 = 0u;
override B6: u32 = 0u;
override C6: u32 = 0u;
override OP7: u32 = 0u;
override D7: u32 = 0u;
override A7: u32 = 0u;
override B7: u32 = 0u;
override C7: u32 = 0u;
override OP8: u32 = 0u;
override D8: u32 = 0u;
override A8: u32 = 0u;
override B8: u32 = 0u;
override C8: u32 = 0u;
override OP9: u32 = 0u;
override D9: u32 = 0u;
override A9: u32 = 0u;
override B9: u32 = 0u;
override C9: u32 = 0u;
override OP10: u32 = 0u;
override D10: u32 = 0u;
override A10: u32 = 0u;
override B10: u32 = 0u;
override C10: u32 = 0u;
override OP11: u32 = 0u;
override D11: u32 = 0u;
override A11: u32 = 0u;
override B11: u32 = 0u;
override C11: u32 = 0u;
override OP12: u32 = 0u;
override D12: u32 = 0u;
override A12: u32 = 0u;
override B12: u32 = 0u;
override C12: u32 = 0u;
override OP13: u32 = 0u;
override D13: u32 = 0u;
override A13: u32 = 0u;
override B13: u32 = 0u;
override C13: u32 = 0u;
override OP14: u32 = 0u;
override D14: u32 = 0u;
override A14: u32 = 0u;
override B14: u32 = 0u;
override C14: u32 = 0u;
override OP15: u32 = 0u;
override D15: u32 = 0u;
override A15: u32 = 0u;
override B15: u32 = 0u;
override C15: u32 = 0u;
override OP16: u32 = 0u;
override D16: u32 = 0u;
override A16: u32 = 0u;
override B16: u32 = 0u;
override C16: u32 = 0u;
override OP17: u32 = 0u;
override D17: u32 = 0u;
override A17: u32 = 0u;
override B17: u32 = 0u;
override C17: u32 = 0u;
override OP18: u32 = 0u;
override D18: u32 = 0u;
override A18: u32 = 0u;
override B18: u32 = 0u;
override C18: u32 = 0u;
override OP19: u32 = 0u;
override D19: u32 = 0u;
override A19: u32 = 0u;
override B19: u32 = 0u;
override C19: u32 = 0u;
override OP20: u32 = 0u;
override D20: u32 = 0u;
override A20: u32 = 0u;
override B20: u32 = 0u;
override C20: u32 = 0u;
override OP21: u32 = 0u;
override D21: u32 = 0u;
override A21: u32 = 0u;
override B21: u32 = 0u;
override C21: u32 = 0u;
override OP22: u32 = 0u;
override D22: u32 = 0u;
override A22: u32 = 0u;
override B22: u32 = 0u;
override C22: u32 = 0u;
override OP23: u32 = 0u;
override D23: u32 = 0u;
override A23: u32 = 0u;
override B23: u32 = 0u;
override C23: u32 = 0u;

fn word(i: u32) -> u32 {
    return info[i >> 2u][i & 3u];
}

fn load_input(k: u32, idx: u32) -> u32 {
    switch k {
        case 0u: { return src0[idx]; }
        case 1u: { return src1[idx]; }
        case 2u: { return src2[idx]; }
        default: { return src3[idx]; }
    }
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn inf() -> f32 {
    return bitcast<f32>(0x7f800000u);
}

// erf by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7)
fn erf_approx(x: f32) -> f32 {
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}

fn tanh_safe(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// x^y with ONNX/numpy semantics for negative bases and integral exponents
fn fpow(x: f32, y: f32) -> f32 {
    if (y == 0.0) { return 1.0; }
    if (y == 1.0) { return x; }
    if (y == 2.0) { return x * x; }
    if (y == 0.5) { return sqrt(x); }
    if (x == 0.0) {
        if (y > 0.0) { return 0.0; }
        return inf();
    }
    if (x > 0.0) { return exp2(y * log2(x)); }
    if (floor(y) == y) {
        let r = exp2(y * log2(-x));
        if (abs(y % 2.0) == 1.0) { return -r; }
        return r;
    }
    return nan();
}

fn ipow(x: i32, y: i32) -> i32 {
    if (y < 0) {
        if (x == 1) { return 1; }
        if (x == -1) { if ((y & 1) == 0) { return 1; } return -1; }
        return 0;
    }
    var r = 1;
    var b = x;
    var e = y;
    for (var i = 0u; i < 32u && e > 0; i = i + 1u) {
        if ((e & 1) == 1) { r = r * b; }
        b = b * b;
        e = e >> 1u;
    }
    return r;
}

fn pymod_i(a: i32, b: i32) -> i32 {
    if (b == 0) { return 0; }
    var r = a % b;
    if (r != 0 && ((r < 0) != (b < 0))) { r = r + b; }
    return r;
}

// NaN and infinity tests on the bits, which fast-math compilers cannot fold away
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_inf(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u;
}

// C fmod: the sign of the dividend; x mod ±inf is x for finite x
fn fmod_f(a: f32, b: f32) -> f32 {
    if (is_inf(b) && !is_inf(a) && !is_nan(a)) {
        return a;
    }
    return a - trunc(a / b) * b;
}

fn pymod_f(a: f32, b: f32) -> f32 {
    var r = fmod_f(a, b);
    if (r != 0.0 && ((r < 0.0) != (b < 0.0))) { r = r + b; }
    return r;
}

fn b2u(b: bool) -> u32 {
    return select(0u, 1u, b);
}

fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

fn gelu_tanh(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh_safe(0.79788456080286536 * (x + 0.044715 * x * x * x)));
}

fn unary_f(op: u32, x: f32) -> f32 {
    switch op {
        case 10u: { return -x; }
        case 11u: { return abs(x); }
        case 12u: { return exp(x); }
        case 13u: { return log(x); }
        case 14u: { return sqrt(x); }
        case 15u: { return 1.0 / x; }
        case 16u: { return tanh_safe(x); }
        case 17u: { return sigmoid(x); }
        case 18u: { return erf_approx(x); }
        case 19u: { return max(x, 0.0); }
        case 20u: { return floor(x); }
        case 21u: { return ceil(x); }
        case 22u: { return round(x); }
        case 23u: { return sin(x); }
        case 24u: { return cos(x); }
        case 25u: { return tan(x); }
        case 26u: { return asin(x); }
        case 27u: { return acos(x); }
        case 28u: { return atan(x); }
        case 29u: { return sinh(x); }
        case 30u: { return cosh(x); }
        case 31u: { return asinh(x); }
        case 32u: { return acosh(x); }
        case 33u: { return atanh(x); }
        case 34u: { if (is_nan(x)) { return x; } return sign(x); }
        case 35u: { return gelu_erf(x); }
        case 36u: { return gelu_tanh(x); }
        case 37u: { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }
        default: { return nan(); }
    }
}

fn binary_f(op: u32, x: f32, y: f32) -> f32 {
    switch op {
        case 50u: { return x + y; }
        case 51u: { return x - y; }
        case 52u: { return x * y; }
        case 53u: { return x / y; }
        case 54u: { return fpow(x, y); }
        case 55u: { if (is_nan(x) || is_nan(y)) { return nan(); } return min(x, y); }
        case 56u: { if (is_nan(x) || is_nan(y)) { return nan(); } return max(x, y); }
        case 57u: { return fmod_f(x, y); }
        case 58u: { return pymod_f(x, y); }
        default: { return nan(); }
    }
}

fn binary_i(op: u32, x: i32, y: i32) -> i32 {
    switch op {
        case 70u: { return x + y; }
        case 71u: { return x - y; }
        case 72u: { return x * y; }
        case 73u: { if (y == 0) { return 0; } return x / y; }
        case 74u: { return pymod_i(x, y); }
        case 75u: { if (y == 0) { return 0; } return x % y; }
        case 76u: { return min(x, y); }
        case 77u: { return max(x, y); }
        case 81u: { return ipow(x, y); }
        default: { return 0; }
    }
}

fn compare(op: u32, a: u32, b: u32) -> bool {
    let x = bitcast<f32>(a);
    let y = bitcast<f32>(b);
    let i = bitcast<i32>(a);
    let j = bitcast<i32>(b);
    switch op {
        case 60u: { return x == y; }
        case 61u: { return x < y; }
        case 62u: { return x <= y; }
        case 63u: { return x > y; }
        case 64u: { return x >= y; }
        case 85u: { return i == j; }
        case 86u: { return i < j; }
        case 87u: { return i <= j; }
        case 88u: { return i > j; }
        case 89u: { return i >= j; }
        default: { return false; }
    }
}

fn execute(op: u32, a: u32, b: u32, c: u32) -> u32 {
    if (op >= 10u && op < 50u) {
        let x = bitcast<f32>(a);
        switch op {
            case 38u: { return b2u(is_nan(x)); }
            case 39u: { return b2u(a == 0x7f800000u); }
            case 40u: { return b2u(a == 0xff800000u); }
            default: { return bitcast<u32>(unary_f(op, x)); }
        }
    }
    if (op >= 50u && op < 60u) {
        return bitcast<u32>(binary_f(op, bitcast<f32>(a), bitcast<f32>(b)));
    }
    if ((op >= 60u && op < 70u) || (op >= 85u && op < 90u)) {
        return b2u(compare(op, a, b));
    }
    let i = bitcast<i32>(a);
    let j = bitcast<i32>(b);
    switch op {
        case 78u: { return bitcast<u32>(-i); }
        case 79u: { return bitcast<u32>(abs(i)); }
        case 80u: { return bitcast<u32>(sign(i)); }
        case 90u: { return b2u(a != 0u && b != 0u); }
        case 91u: { return b2u(a != 0u || b != 0u); }
        case 92u: { return b2u((a != 0u) != (b != 0u)); }
        case 93u: { return b2u(a == 0u); }
        case 94u: { return a & b; }
        case 95u: { return a | b; }
        case 96u: { return a ^ b; }
        case 97u: { return ~a; }
        case 98u: {
            if (j < 0 || j >= 32) { return 0u; }
            return a << u32(j);
        }
        case 99u: {
            // arithmetic: narrow signed types are held sign-extended, unsigned ones as
            // non-negative i32, so one rule serves both; shifting by the width or more fills
            if (j < 0 || j >= 32) { return select(0u, 0xffffffffu, i < 0); }
            return bitcast<u32>(i >> u32(j));
        }
        case 100u: { return bitcast<u32>(i32(bitcast<f32>(a))); }
        case 101u: { return bitcast<u32>(f32(i)); }
        case 102u: { return b2u(!(bitcast<f32>(a) == 0.0)); }
        case 103u: { return b2u(a != 0u); }
        case 104u: { return bitcast<u32>(unpack2x16float(pack2x16float(vec2<f32>(bitcast<f32>(a), 0.0))).x); }
        case 105u: {
            // round to nearest even at bfloat16 precision (NaN kept)
            if (is_nan(bitcast<f32>(a))) { return a; }
            return (a + 0x7fffu + ((a >> 16u) & 1u)) & 0xffff0000u;
        }
        case 106u: { return a & 0xffu; }
        case 107u: { return bitcast<u32>((bitcast<i32>(a) << 24u) >> 24u); }
        case 108u: { return a & 0xffffu; }
        case 109u: { return bitcast<u32>((bitcast<i32>(a) << 16u) >> 16u); }
        case 110u: { return select(c, b, a != 0u); }
        default: { return bitcast<u32>(binary_i(op, i, j)); }
    }
}

fn is_nan4(x: vec4<f32>) -> vec4<bool> {
    return (bitcast<vec4<u32>>(x) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
}

fn b2u4(b: vec4<bool>) -> vec4<u32> {
    return select(vec4<u32>(0u), vec4<u32>(1u), b);
}

fn erf4(x: vec4<f32>) -> vec4<f32> {
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}

fn scalar4(op: u32, a: vec4<u32>, b: vec4<u32>, c: vec4<u32>) -> vec4<u32> {
    return vec4<u32>(execute(op, a.x, b.x, c.x), execute(op, a.y, b.y, c.y), execute(op, a.z, b.z, c.z), execute(op, a.w, b.w, c.w));
}

// The common ops on four elements at once (the ones `specialised` accepts).
fn execute4_fast(op: u32, a: vec4<u32>, b: vec4<u32>, c: vec4<u32>) -> vec4<u32> {
    let x = bitcast<vec4<f32>>(a);
    let y = bitcast<vec4<f32>>(b);
    let i = bitcast<vec4<i32>>(a);
    let j = bitcast<vec4<i32>>(b);
    switch op {
        case 10u: { return bitcast<vec4<u32>>(-x); }
        case 11u: { return bitcast<vec4<u32>>(abs(x)); }
        case 12u: { return bitcast<vec4<u32>>(exp(x)); }
        case 13u: { return bitcast<vec4<u32>>(log(x)); }
        case 14u: { return bitcast<vec4<u32>>(sqrt(x)); }
        case 15u: { return bitcast<vec4<u32>>(1.0 / x); }
        case 16u: { return bitcast<vec4<u32>>(tanh(clamp(x, vec4<f32>(-15.0), vec4<f32>(15.0)))); }
        case 17u: {
            let e = exp(-abs(x));
            return bitcast<vec4<u32>>(select(e / (1.0 + e), 1.0 / (1.0 + e), x >= vec4<f32>(0.0)));
        }
        case 18u: { return bitcast<vec4<u32>>(erf4(x)); }
        case 19u: { return bitcast<vec4<u32>>(max(x, vec4<f32>(0.0))); }
        case 35u: { return bitcast<vec4<u32>>(0.5 * x * (1.0 + erf4(x * 0.70710678118654752))); }
        case 36u: {
            let u = clamp(0.79788456080286536 * (x + 0.044715 * x * x * x), vec4<f32>(-15.0), vec4<f32>(15.0));
            return bitcast<vec4<u32>>(0.5 * x * (1.0 + tanh(u)));
        }
        case 50u: { return bitcast<vec4<u32>>(x + y); }
        case 51u: { return bitcast<vec4<u32>>(x - y); }
        case 52u: { return bitcast<vec4<u32>>(x * y); }
        case 53u: { return bitcast<vec4<u32>>(x / y); }
        case 55u: { return bitcast<vec4<u32>>(select(min(x, y), vec4<f32>(nan()), is_nan4(x) | is_nan4(y))); }
        case 56u: { return bitcast<vec4<u32>>(select(max(x, y), vec4<f32>(nan()), is_nan4(x) | is_nan4(y))); }
        case 60u: { return b2u4(x == y); }
        case 61u: { return b2u4(x < y); }
        case 62u: { return b2u4(x <= y); }
        case 63u: { return b2u4(x > y); }
        case 64u: { return b2u4(x >= y); }
        case 70u: { return bitcast<vec4<u32>>(i + j); }
        case 71u: { return bitcast<vec4<u32>>(i - j); }
        case 72u: { return bitcast<vec4<u32>>(i * j); }
        case 76u: { return bitcast<vec4<u32>>(min(i, j)); }
        case 77u: { return bitcast<vec4<u32>>(max(i, j)); }
        case 85u: { return b2u4(i == j); }
        case 86u: { return b2u4(i < j); }
        case 87u: { return b2u4(i <= j); }
        case 88u: { return b2u4(i > j); }
        case 89u: { return b2u4(i >= j); }
        case 90u: { return b2u4((a != vec4<u32>(0u)) & (b != vec4<u32>(0u))); }
        case 91u: { return b2u4((a != vec4<u32>(0u)) | (b != vec4<u32>(0u))); }
        case 93u: { return b2u4(a == vec4<u32>(0u)); }
        case 101u: { return bitcast<vec4<u32>>(vec4<f32>(i)); }
        case 103u: { return b2u4(a != vec4<u32>(0u)); }
        case 110u: { return select(c, b, a != vec4<u32>(0u)); }
        default: { return vec4<u32>(0u); }
    }
}

// Every op on four elements: the common ones at once, x*x for Pow by 2, the rest one lane at a
// time through `execute`.
fn execute4(op: u32, a: vec4<u32>, b: vec4<u32>, c: vec4<u32>) -> vec4<u32> {
    switch op {
        case 10u, 11u, 12u, 13u, 14u, 15u, 16u, 17u, 18u, 19u, 35u, 36u, 50u, 51u, 52u, 53u, 55u, 56u, 60u, 61u, 62u, 63u, 64u, 70u, 71u, 72u, 76u, 77u, 85u, 86u, 87u, 88u, 89u, 90u, 91u, 93u, 101u, 103u, 110u: { return execute4_fast(op, a, b, c); }
        case 54u: {
            let x = bitcast<vec4<f32>>(a);
            if (all(bitcast<vec4<f32>>(b) == vec4<f32>(2.0))) { return bitcast<vec4<u32>>(x * x); }
            return scalar4(op, a, b, c);
        }
        default: { return scalar4(op, a, b, c); }
    }
}

// Offset of element `e` (output order) in input `k`, or the element itself for inputs read in
// output order (flag bit k of word 6).
fn input_offset(k: u32, e: u32, rank: u32, inputs: u32) -> u32 {
    let at_in = 8u + rank + k * (rank + 1u);
    if (((word(6u) >> k) & 1u) == 1u) {
        return word(at_in) + e;
    }
    var off = word(at_in);
    var rest = e;
    for (var t = 0u; t < rank; t = t + 1u) {
        let d = rank - 1u - t;
        let extent = word(8u + d);
        off = off + (rest % extent) * word(at_in + 1u + d);
        rest = rest / extent;
    }
    return off;
}

// Four consecutive output elements per invocation: every instruction works on vec4 registers,
// so interpreting it is paid once per four elements.
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let first = (gid.x + gid.y * nwg.x * WG) * 4u;
    let n = word(0u);
    if (first >= n) {
        return;
    }
    let lanes = min(n - first, 4u);
    let rank = word(1u);
    let inputs = word(2u);
    let count = word(3u);
    let prog = 8u + rank + inputs * (rank + 1u);
    var r: array<vec4<u32>, 16>;
    for (var p = 0u; p < count; p = p + 1u) {
        let at = prog + p * 5u;
        let op = word(at);
        let d = word(at + 1u);
        let a = word(at + 2u);
        if (op == 0u) {
            var v = vec4<u32>(0u);
            for (var l = 0u; l < lanes; l = l + 1u) {
                v[l] = load_input(a, input_offset(a, first + l, rank, inputs));
            }
            r[d] = v;
        } else if (op == 1u) {
            r[d] = vec4<u32>(a);
        } else if (op == 2u) {
            r[d] = r[a];
        } else {
            r[d] = execute4(op, r[a], r[word(at + 3u)], r[word(at + 4u)]);
        }
    }
    let result = r[word(4u)];
    let base = word(5u) + first;
    for (var l = 0u; l < lanes; l = l + 1u) {
        dst[base + l] = result[l];
    }
}

// One instruction on the register file.
fn slot(r: ptr<function, array<vec4<u32>, 16>>, op: u32, d: u32, a: u32, b: u32, c: u32, first: u32, lanes: u32, rank: u32, inputs: u32) {
    if (op == 0u) {
        var v = vec4<u32>(0u);
        for (var l = 0u; l < lanes; l = l + 1u) {
            v[l] = load_input(a, input_offset(a, first + l, rank, inputs));
        }
        (*r)[d] = v;
    } else if (op == 1u) {
        (*r)[d] = vec4<u32>(a);
    } else if (op == 2u) {
        (*r)[d] = (*r)[a];
    } else {
        (*r)[d] = execute4_fast(op, (*r)[a], (*r)[b], (*r)[c]);
    }
}

// The program from override constants, compiled into the pipeline.
@compute @workgroup_size(WG)
fn specialised(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let first = (gid.x + gid.y * nwg.x * WG) * 4u;
    let n = word(0u);
    if (first >= n) {
        return;
    }
    let l = min(n - first, 4u);
    let k = word(1u);
    let m = word(2u);
    var r: array<vec4<u32>, 16>;
    if (COUNT > 0u) { slot(&r, OP0, D0, A0, B0, C0, first, l, k, m); }
    if (COUNT > 1u) { slot(&r, OP1, D1, A1, B1, C1, first, l, k, m); }
    if (COUNT > 2u) { slot(&r, OP2, D2, A2, B2, C2, first, l, k, m); }
    if (COUNT > 3u) { slot(&r, OP3, D3, A3, B3, C3, first, l, k, m); }
    if (COUNT > 4u) { slot(&r, OP4, D4, A4, B4, C4, first, l, k, m); }
    if (COUNT > 5u) { slot(&r, OP5, D5, A5, B5, C5, first, l, k, m); }
    if (COUNT > 6u) { slot(&r, OP6, D6, A6, B6, C6, first, l, k, m); }
    if (COUNT > 7u) { slot(&r, OP7, D7, A7, B7, C7, first, l, k, m); }
    if (COUNT > 8u) { slot(&r, OP8, D8, A8, B8, C8, first, l, k, m); }
    if (COUNT > 9u) { slot(&r, OP9, D9, A9, B9, C9, first, l, k, m); }
    if (COUNT > 10u) { slot(&r, OP10, D10, A10, B10, C10, first, l, k, m); }
    if (COUNT > 11u) { slot(&r, OP11, D11, A11, B11, C11, first, l, k, m); }
    if (COUNT > 12u) { slot(&r, OP12, D12, A12, B12, C12, first, l, k, m); }
    if (COUNT > 13u) { slot(&r, OP13, D13, A13, B13, C13, first, l, k, m); }
    if (COUNT > 14u) { slot(&r, OP14, D14, A14, B14, C14, first, l, k, m); }
    if (COUNT > 15u) { slot(&r, OP15, D15, A15, B15, C15, first, l, k, m); }
    if (COUNT > 16u) { slot(&r, OP16, D16, A16, B16, C16, first, l, k, m); }
    if (COUNT > 17u) { slot(&r, OP17, D17, A17, B17, C17, first, l, k, m); }
    if (COUNT > 18u) { slot(&r, OP18, D18, A18, B18, C18, first, l, k, m); }
    if (COUNT > 19u) { slot(&r, OP19, D19, A19, B19, C19, first, l, k, m); }
    if (COUNT > 20u) { slot(&r, OP20, D20, A20, B20, C20, first, l, k, m); }
    if (COUNT > 21u) { slot(&r, OP21, D21, A21, B21, C21, first, l, k, m); }
    if (COUNT > 22u) { slot(&r, OP22, D22, A22, B22, C22, first, l, k, m); }
    if (COUNT > 23u) { slot(&r, OP23, D23, A23, B23, C23, first, l, k, m); }
    let result = r[RESULT];
    let base = word(5u) + first;
    for (var e = 0u; e < l; e = e + 1u) {
        dst[base + e] = result[e];
    }
}
