//! Elementwise ops: arithmetic with broadcasting, comparisons, logic, unary math, Clip, Cast.

use ndarray::{ArrayD, IxDyn, Zip};

use super::tensor::{Castable, Elem, Num, broadcast_shapes, dtype};
use super::{Ctx, EvalError, Result, TensorValue, dtype_name};

pub(crate) fn dtype_err(cx: &Ctx, t: &TensorValue, what: &str) -> EvalError {
    cx.err(format!("{what}, got {}", dtype_name(t.data_type())))
}

pub(crate) fn same_dtype(cx: &Ctx, a: &TensorValue, b: &TensorValue) -> Result<()> {
    if a.data_type() != b.data_type() {
        return Err(cx.err(format!(
            "inputs have different element types {} and {}",
            dtype_name(a.data_type()),
            dtype_name(b.data_type())
        )));
    }
    Ok(())
}

pub(crate) fn out_shape(cx: &Ctx, shapes: &[&[usize]], elem: usize) -> Result<Vec<usize>> {
    let s = broadcast_shapes(shapes)
        .ok_or_else(|| cx.err(format!("shapes {shapes:?} cannot be broadcast together")))?;
    cx.check_alloc(&s, elem)?;
    Ok(s)
}

/// Broadcasting binary map. `f` returns `None` for an element it cannot compute (reported as
/// `bad`).
pub(crate) fn zip2<A, B, O>(
    cx: &Ctx,
    a: &ArrayD<A>,
    b: &ArrayD<B>,
    bad: &str,
    mut f: impl FnMut(&A, &B) -> Option<O>,
) -> Result<ArrayD<O>>
where
    O: Default + Clone,
{
    let shape = out_shape(cx, &[a.shape(), b.shape()], std::mem::size_of::<O>())?;
    let av = a
        .broadcast(IxDyn(&shape))
        .ok_or_else(|| cx.err("broadcast failed"))?;
    let bv = b
        .broadcast(IxDyn(&shape))
        .ok_or_else(|| cx.err("broadcast failed"))?;
    let mut failed = false;
    let out = Zip::from(&av).and(&bv).map_collect(|x, y| match f(x, y) {
        Some(v) => v,
        None => {
            failed = true;
            O::default()
        }
    });
    if failed {
        return Err(cx.err(bad.to_string()));
    }
    Ok(out)
}

fn bin_num<T: Num>(cx: &Ctx, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    let fmod = cx.attr_i_or("fmod", 0)? != 0;
    match cx.op {
        "Add" => zip2(cx, a, b, "", |x, y| Some(x.add(*y))),
        "Sub" => zip2(cx, a, b, "", |x, y| Some(x.sub(*y))),
        "Mul" => zip2(cx, a, b, "", |x, y| Some(x.mul(*y))),
        "Div" => zip2(cx, a, b, "integer division by zero", |x, y| x.div(*y)),
        "Mod" => zip2(cx, a, b, "integer modulo by zero", |x, y| x.rem(*y, fmod)),
        "PRelu" => zip2(cx, a, b, "", |x, y| {
            Some(if *x < T::zero() { x.mul(*y) } else { *x })
        }),
        _ => Err(cx.err("not a numeric binary op")),
    }
}

fn bin_int<T: Num + IntBits>(cx: &Ctx, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    match cx.op {
        "BitwiseAnd" => zip2(cx, a, b, "", |x, y| Some(x.band(*y))),
        "BitwiseOr" => zip2(cx, a, b, "", |x, y| Some(x.bor(*y))),
        "BitwiseXor" => zip2(cx, a, b, "", |x, y| Some(x.bxor(*y))),
        "BitShift" => {
            let dir = cx.attr_s("direction")?.unwrap_or_default();
            let left = match dir.as_str() {
                "LEFT" => true,
                "RIGHT" => false,
                other => {
                    return Err(cx.err(format!("direction must be LEFT or RIGHT, got '{other}'")));
                }
            };
            zip2(cx, a, b, "", |x, y| Some(x.shift(*y, left)))
        }
        _ => Err(cx.err("not a bitwise op")),
    }
}

pub(crate) trait IntBits: Copy {
    fn band(self, o: Self) -> Self;
    fn bor(self, o: Self) -> Self;
    fn bxor(self, o: Self) -> Self;
    fn bnot(self) -> Self;
    fn shift(self, o: Self, left: bool) -> Self;
}

macro_rules! int_bits {
    ($($t:ty),*) => {$(
        impl IntBits for $t {
            fn band(self, o: Self) -> Self { self & o }
            fn bor(self, o: Self) -> Self { self | o }
            fn bxor(self, o: Self) -> Self { self ^ o }
            fn bnot(self) -> Self { !self }
            #[allow(unused_comparisons)]
            fn shift(self, o: Self, left: bool) -> Self {
                // Out-of-range amounts (negative or >= width) shift everything out: 0, or -1
                // for an arithmetic right shift of a negative value.
                let bits = (std::mem::size_of::<$t>() * 8) as i128;
                let n = o as i128;
                if n < 0 || n >= bits {
                    return if !left && self < 0 { (0 as $t).wrapping_sub(1) } else { 0 };
                }
                if left { self.wrapping_shl(n as u32) } else { self >> n }
            }
        }
    )*};
}
int_bits!(i8, i16, i32, i64, u8, u16, u32, u64);

pub(crate) fn binary(cx: &Ctx) -> Result<TensorValue> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    if cx.op == "Pow" {
        return pow(cx, a, b);
    }
    same_dtype(cx, a, b)?;
    if cx.op.starts_with("Bitwise") || cx.op == "BitShift" {
        return dispatch_int!(a, x, T => {
            let y = T::get(b).ok_or_else(|| cx.err("dtype mismatch"))?;
            Ok(T::wrap(bin_int(cx, x, y)?))
        }, o => Err(dtype_err(cx, o, "expects integer inputs")));
    }
    dispatch_num!(a, x, T => {
        let y = T::get(b).ok_or_else(|| cx.err("dtype mismatch"))?;
        Ok(T::wrap(bin_num(cx, x, y)?))
    }, o => Err(dtype_err(cx, o, "expects numeric inputs")))
}

fn int_pow(base: i128, e: i128) -> Option<i128> {
    if e < 0 {
        return match base {
            1 => Some(1),
            -1 => Some(if e % 2 == 0 { 1 } else { -1 }),
            0 => None,
            _ => Some(0),
        };
    }
    let mut r: i128 = 1;
    let mut b = base;
    let mut e = e;
    while e > 0 {
        if e & 1 == 1 {
            r = r.wrapping_mul(b);
        }
        b = b.wrapping_mul(b);
        e >>= 1;
    }
    Some(r)
}

/// Pow: base and exponent may have different numeric types; the result has the base's type.
fn pow(cx: &Ctx, a: &TensorValue, b: &TensorValue) -> Result<TensorValue> {
    dispatch_num!(a, x, T => {
        dispatch_num!(b, y, U => {
            let out = zip2(cx, x, y, "integer power with negative exponent of zero", |p, q| {
                if T::IS_FLOAT || U::IS_FLOAT {
                    Some(T::from_f64(p.to_f64().powf(q.to_f64())))
                } else {
                    let base = match p.to_sc() { super::tensor::Sc::I(v) => v, super::tensor::Sc::F(v) => v as i128 };
                    let e = match q.to_sc() { super::tensor::Sc::I(v) => v, super::tensor::Sc::F(v) => v as i128 };
                    int_pow(base, e).map(|r| <T as Castable>::from_sc(super::tensor::Sc::I(r)))
                }
            })?;
            Ok(T::wrap(out))
        }, o => Err(dtype_err(cx, o, "expects a numeric exponent")))
    }, o => Err(dtype_err(cx, o, "expects a numeric base")))
}

pub(crate) fn compare(cx: &Ctx) -> Result<TensorValue> {
    let a = cx.input(0)?;
    let b = cx.input(1)?;
    same_dtype(cx, a, b)?;
    if matches!(cx.op, "And" | "Or" | "Xor") {
        let (TensorValue::Bool(x), TensorValue::Bool(y)) = (a, b) else {
            return Err(dtype_err(cx, a, "expects bool inputs"));
        };
        let out = match cx.op {
            "And" => zip2(cx, x, y, "", |p, q| Some(*p && *q))?,
            "Or" => zip2(cx, x, y, "", |p, q| Some(*p || *q))?,
            _ => zip2(cx, x, y, "", |p, q| Some(*p != *q))?,
        };
        return Ok(TensorValue::Bool(out));
    }
    let op = cx.op;
    dispatch_all!(a, x, T => {
        let y = T::get(b).ok_or_else(|| cx.err("dtype mismatch"))?;
        let out = zip2(cx, x, y, "", |p, q| Some(match op {
            "Equal" => p == q,
            "Less" => p < q,
            "Greater" => p > q,
            "LessOrEqual" => p <= q,
            _ => p >= q,
        }))?;
        Ok(TensorValue::Bool(out))
    })
}

pub(crate) fn variadic(cx: &Ctx) -> Result<TensorValue> {
    let ins: Vec<&TensorValue> = cx.inputs.iter().flatten().copied().collect();
    let Some(first) = ins.first() else {
        return Err(cx.err("needs at least one input"));
    };
    for t in &ins[1..] {
        same_dtype(cx, first, t)?;
    }
    dispatch_num!(*first, x0, T => {
        let mut acc: ArrayD<T> = x0.clone();
        for t in &ins[1..] {
            let y = T::get(t).ok_or_else(|| cx.err("dtype mismatch"))?;
            acc = match cx.op {
                "Max" => zip2(cx, &acc, y, "", |p, q| Some(p.max_of(*q)))?,
                "Min" => zip2(cx, &acc, y, "", |p, q| Some(p.min_of(*q)))?,
                _ => zip2(cx, &acc, y, "", |p, q| Some(p.add(*q)))?,
            };
        }
        if cx.op == "Mean" {
            let n = T::from_f64(ins.len() as f64);
            acc.mapv_inplace(|v| v.div(n).unwrap_or(v));
        }
        Ok(T::wrap(acc))
    }, o => Err(dtype_err(cx, o, "expects numeric inputs")))
}

pub(crate) fn where_op(cx: &Ctx) -> Result<TensorValue> {
    let c = cx.input(0)?;
    let x = cx.input(1)?;
    let y = cx.input(2)?;
    let TensorValue::Bool(c) = c else {
        return Err(dtype_err(cx, c, "condition must be bool"));
    };
    same_dtype(cx, x, y)?;
    dispatch_all!(x, xa, T => {
        let ya = T::get(y).ok_or_else(|| cx.err("dtype mismatch"))?;
        let shape = out_shape(cx, &[c.shape(), xa.shape(), ya.shape()], std::mem::size_of::<T>())?;
        let sh = IxDyn(&shape);
        let cv = c.broadcast(sh.clone()).ok_or_else(|| cx.err("broadcast failed"))?;
        let xv = xa.broadcast(sh.clone()).ok_or_else(|| cx.err("broadcast failed"))?;
        let yv = ya.broadcast(sh).ok_or_else(|| cx.err("broadcast failed"))?;
        let out = Zip::from(&cv).and(&xv).and(&yv).map_collect(|&k, p, q| if k { p.clone() } else { q.clone() });
        Ok(T::wrap(out))
    })
}

/// Applies `f` in f64 to a float tensor and casts back to its type.
pub(crate) fn float_map(cx: &Ctx, t: &TensorValue, f: impl Fn(f64) -> f64) -> Result<TensorValue> {
    Ok(match t {
        TensorValue::F32(a) => TensorValue::F32(a.mapv(|x| f(x as f64) as f32)),
        TensorValue::F64(a) => TensorValue::F64(a.mapv(&f)),
        TensorValue::F16(a) => TensorValue::F16(a.mapv(|x| half::f16::from_f64(f(x.to_f64())))),
        TensorValue::BF16(a) => TensorValue::BF16(a.mapv(|x| half::bf16::from_f64(f(x.to_f64())))),
        other => return Err(dtype_err(cx, other, "expects a floating point input")),
    })
}

/// Error function to about double precision (series with positive terms; ±1 beyond |x| >= 6).
pub(crate) fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    if ax >= 6.0 {
        return 1f64.copysign(x);
    }
    let x2 = ax * ax;
    let mut term = ax;
    let mut sum = ax;
    let mut n = 0u32;
    loop {
        n += 1;
        term *= 2.0 * x2 / (2 * n + 1) as f64;
        sum += term;
        if term <= sum * 1e-17 || n > 1000 {
            break;
        }
    }
    let r = std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum;
    r.min(1.0).copysign(x)
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

pub(crate) fn unary(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let op = cx.op;
    match op {
        "Not" => {
            let TensorValue::Bool(a) = t else {
                return Err(dtype_err(cx, t, "expects a bool input"));
            };
            return Ok(TensorValue::Bool(a.mapv(|b| !b)));
        }
        "BitwiseNot" => {
            return dispatch_int!(t, a, T => Ok(T::wrap(a.mapv(|x| x.bnot()))),
                o => Err(dtype_err(cx, o, "expects an integer input")));
        }
        "IsNaN" => {
            return dispatch_num!(t, a, T => Ok(TensorValue::Bool(a.mapv(|x| x.is_nan()))),
                o => Err(dtype_err(cx, o, "expects a numeric input")));
        }
        "IsInf" => {
            let neg = cx.attr_i_or("detect_negative", 1)? != 0;
            let pos = cx.attr_i_or("detect_positive", 1)? != 0;
            return dispatch_num!(t, a, T => Ok(TensorValue::Bool(a.mapv(|x| {
                let v = x.to_f64();
                v.is_infinite() && ((v > 0.0 && pos) || (v < 0.0 && neg))
            }))), o => Err(dtype_err(cx, o, "expects a numeric input")));
        }
        "Neg" | "Abs" | "Sign" | "Relu" if !t.is_float() => {
            return dispatch_num!(t, a, T => Ok(T::wrap(a.mapv(|x| match op {
                "Neg" => Num::neg(x),
                "Abs" => Num::abs(x),
                "Relu" => if x < T::zero() { T::zero() } else { x },
                _ => if x > T::zero() { T::one() } else if x < T::zero() { T::one().neg() } else { T::zero() },
            }))), o => Err(dtype_err(cx, o, "expects a numeric input")));
        }
        _ => {}
    }
    let alpha = |d: f32| -> Result<f64> { Ok(cx.attr_f_or("alpha", d)? as f64) };
    let f: Box<dyn Fn(f64) -> f64> = match op {
        "Neg" => Box::new(|x| -x),
        "Abs" => Box::new(f64::abs),
        "Sign" => Box::new(|x: f64| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }),
        "Reciprocal" => Box::new(|x| 1.0 / x),
        "Sqrt" => Box::new(f64::sqrt),
        "Exp" => Box::new(f64::exp),
        "Log" => Box::new(f64::ln),
        "Floor" => Box::new(f64::floor),
        "Ceil" => Box::new(f64::ceil),
        "Round" => Box::new(round_half_even),
        "Erf" => Box::new(erf),
        "Tanh" => Box::new(f64::tanh),
        "Sigmoid" => Box::new(|x: f64| {
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        }),
        "Relu" => Box::new(|x: f64| if x < 0.0 { 0.0 } else { x }),
        "LeakyRelu" => {
            let a = alpha(0.01)?;
            Box::new(move |x| if x < 0.0 { a * x } else { x })
        }
        "Elu" => {
            let a = alpha(1.0)?;
            Box::new(move |x: f64| if x < 0.0 { a * (x.exp() - 1.0) } else { x })
        }
        "Selu" => {
            let a = alpha(1.673_263_2)?;
            let g = cx.attr_f_or("gamma", 1.050_701)? as f64;
            Box::new(move |x: f64| {
                if x <= 0.0 {
                    g * (a * x.exp() - a)
                } else {
                    g * x
                }
            })
        }
        "Celu" => {
            let a = alpha(1.0)?;
            if a == 0.0 {
                return Err(cx.err("alpha must not be 0"));
            }
            Box::new(move |x: f64| x.max(0.0) + (a * ((x / a).exp() - 1.0)).min(0.0))
        }
        "ThresholdedRelu" => {
            let a = alpha(1.0)?;
            Box::new(move |x| if x > a { x } else { 0.0 })
        }
        "HardSigmoid" => {
            let a = alpha(0.2)?;
            let b = cx.attr_f_or("beta", 0.5)? as f64;
            Box::new(move |x| (a * x + b).clamp(0.0, 1.0))
        }
        "HardSwish" => Box::new(|x: f64| x * (x / 6.0 + 0.5).clamp(0.0, 1.0)),
        "Softplus" => Box::new(softplus),
        "Softsign" => Box::new(|x: f64| x / (1.0 + x.abs())),
        "Mish" => Box::new(|x: f64| x * softplus(x).tanh()),
        "Swish" => {
            let a = alpha(1.0)?;
            Box::new(move |x: f64| x / (1.0 + (-a * x).exp()))
        }
        "Gelu" => {
            let approx = cx.attr_s_or("approximate", "none")?;
            match approx.as_str() {
                "none" => Box::new(|x: f64| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))),
                "tanh" => Box::new(|x: f64| {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
                }),
                other => {
                    return Err(cx.err(format!(
                        "approximate must be 'none' or 'tanh', got '{other}'"
                    )));
                }
            }
        }
        "Shrink" => {
            let bias = cx.attr_f_or("bias", 0.0)? as f64;
            let lambd = cx.attr_f_or("lambd", 0.5)? as f64;
            let f = move |x: f64| {
                if x < -lambd {
                    x + bias
                } else if x > lambd {
                    x - bias
                } else {
                    0.0
                }
            };
            if !t.is_float() {
                return dispatch_num!(t, a, T => Ok(T::wrap(a.mapv(|x| T::from_f64(f(x.to_f64()))))),
                    o => Err(dtype_err(cx, o, "expects a numeric input")));
            }
            Box::new(f)
        }
        "Sin" => Box::new(f64::sin),
        "Cos" => Box::new(f64::cos),
        "Tan" => Box::new(f64::tan),
        "Asin" => Box::new(f64::asin),
        "Acos" => Box::new(f64::acos),
        "Atan" => Box::new(f64::atan),
        "Sinh" => Box::new(f64::sinh),
        "Cosh" => Box::new(f64::cosh),
        "Asinh" => Box::new(f64::asinh),
        "Acosh" => Box::new(f64::acosh),
        "Atanh" => Box::new(f64::atanh),
        _ => return Err(cx.err("not a unary op")),
    };
    float_map(cx, t, f)
}

fn scalar_of<T: Elem + Copy>(cx: &Ctx, t: &TensorValue, what: &str) -> Result<T> {
    let a = T::get(t).ok_or_else(|| {
        cx.err(format!(
            "{what} must have the input's element type, got {}",
            dtype_name(t.data_type())
        ))
    })?;
    if a.len() != 1 {
        return Err(cx.err(format!(
            "{what} must be a scalar, got shape {:?}",
            a.shape()
        )));
    }
    a.iter()
        .next()
        .copied()
        .ok_or_else(|| cx.err(format!("{what} is empty")))
}

pub(crate) fn clip(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    dispatch_num!(t, a, T => {
        let (lo, hi) = if cx.opset < 11 {
            let lo = cx.attr_f("min")?.map(|v| T::from_f64(v as f64)).unwrap_or_else(T::lowest);
            let hi = cx.attr_f("max")?.map(|v| T::from_f64(v as f64)).unwrap_or_else(T::highest);
            (lo, hi)
        } else {
            let lo = match cx.opt_input(1) { Some(m) => scalar_of::<T>(cx, m, "min")?, None => T::lowest() };
            let hi = match cx.opt_input(2) { Some(m) => scalar_of::<T>(cx, m, "max")?, None => T::highest() };
            (lo, hi)
        };
        Ok(T::wrap(a.mapv(|x| {
            if x.is_nan() { return x; }
            let y = if x < lo { lo } else { x };
            if y > hi { hi } else { y }
        })))
    }, o => Err(dtype_err(cx, o, "expects a numeric input")))
}

pub(crate) fn cast_op(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let to = if cx.op == "CastLike" {
        cx.input(1)?.data_type()
    } else {
        let to = cx
            .attr_i("to")?
            .ok_or_else(|| cx.err("missing attribute 'to'"))?;
        i32::try_from(to).map_err(|_| cx.err(format!("invalid target type {to}")))?
    };
    if to == dtype::UNDEFINED {
        return Err(cx.err("target type is UNDEFINED"));
    }
    t.cast(to).map_err(|e| cx.err(e.to_string()))
}
