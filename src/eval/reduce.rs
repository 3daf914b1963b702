//! Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare.
//! Floats accumulate in f64; integers in i128 (wrapping to the element type).

use super::elementwise::dtype_err;
use super::shape_ops::transpose_arr;
use super::tensor::{Castable, Elem, Num, Sc, arr, flat};
use super::{Ctx, Result, TensorValue};

/// Axes to reduce (sorted, unique) or `None` for a no-op.
pub(crate) fn reduce_axes(cx: &Ctx, rank: usize, input_from: i64) -> Result<Option<Vec<usize>>> {
    let axes = if cx.opset >= input_from {
        cx.ints_input(1, "axes")?
    } else {
        cx.attr_ints("axes")?
    };
    let noop = cx.attr_i_or("noop_with_empty_axes", 0)? != 0;
    let axes = match axes {
        Some(a) if !a.is_empty() => a,
        _ => {
            if noop {
                return Ok(None);
            }
            return Ok(Some((0..rank).collect()));
        }
    };
    let mut out: Vec<usize> = Vec::with_capacity(axes.len());
    for &a in &axes {
        let i = cx.axis(a, rank)?;
        if out.contains(&i) {
            return Err(cx.err(format!("axis {a} repeated in axes {axes:?}")));
        }
        out.push(i);
    }
    out.sort_unstable();
    Ok(Some(out))
}

fn red_f(op: &str, xs: &[f64]) -> f64 {
    match op {
        "ReduceSum" => xs.iter().sum(),
        "ReduceMean" => xs.iter().sum::<f64>() / xs.len() as f64,
        "ReduceMax" => xs.iter().fold(f64::NEG_INFINITY, |a, &b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }),
        "ReduceMin" => xs.iter().fold(f64::INFINITY, |a, &b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        }),
        "ReduceProd" => xs.iter().product(),
        "ReduceL1" => xs.iter().map(|x| x.abs()).sum(),
        "ReduceL2" => xs.iter().map(|x| x * x).sum::<f64>().sqrt(),
        "ReduceSumSquare" => xs.iter().map(|x| x * x).sum(),
        "ReduceLogSum" => xs.iter().sum::<f64>().ln(),
        _ => {
            // ReduceLogSumExp, stabilized by the maximum.
            let m = xs.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            if !m.is_finite() {
                return xs.iter().map(|x| x.exp()).sum::<f64>().ln();
            }
            m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        }
    }
}

fn red_i<T: Num>(op: &str, xs: &[T]) -> T {
    let w = |v: T| match v.to_sc() {
        Sc::I(i) => i,
        Sc::F(f) => f as i128,
    };
    let back = |v: i128| <T as Castable>::from_sc(Sc::I(v));
    match op {
        "ReduceSum" => back(xs.iter().fold(0i128, |a, &b| a.wrapping_add(w(b)))),
        "ReduceProd" => back(xs.iter().fold(1i128, |a, &b| a.wrapping_mul(w(b)))),
        "ReduceMax" => xs.iter().fold(T::lowest(), |a, &b| a.max_of(b)),
        "ReduceMin" => xs.iter().fold(T::highest(), |a, &b| a.min_of(b)),
        "ReduceL1" => back(xs.iter().fold(0i128, |a, &b| a.wrapping_add(w(b).abs()))),
        "ReduceSumSquare" => back(
            xs.iter()
                .fold(0i128, |a, &b| a.wrapping_add(w(b).wrapping_mul(w(b)))),
        ),
        "ReduceMean" => {
            if xs.is_empty() {
                return T::zero();
            }
            let s = xs.iter().fold(0i128, |a, &b| a.wrapping_add(w(b)));
            back(s / xs.len() as i128)
        }
        _ => {
            let f: Vec<f64> = xs.iter().map(|x| x.to_f64()).collect();
            T::from_f64(red_f(op, &f))
        }
    }
}

pub(crate) fn reduce(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    if let TensorValue::Bool(_) = t {
        if !matches!(cx.op, "ReduceMax" | "ReduceMin") {
            return Err(dtype_err(cx, t, "expects a numeric input"));
        }
        let u = t
            .cast(super::dtype::UINT8)
            .map_err(|e| cx.err(e.to_string()))?;
        let mut ins: Vec<Option<&TensorValue>> = cx.inputs.to_vec();
        ins[0] = Some(&u);
        let sub = Ctx {
            inputs: &ins,
            ..*cx
        };
        let r = reduce(&sub)?;
        return r
            .cast(super::dtype::BOOL)
            .map_err(|e| cx.err(e.to_string()));
    }
    let s = t.shape().to_vec();
    let r = s.len();
    let from = if cx.op == "ReduceSum" { 13 } else { 18 };
    let Some(axes) = reduce_axes(cx, r, from)? else {
        return Ok(t.clone());
    };
    let keep = cx.attr_i_or("keepdims", 1)? != 0;
    let kept: Vec<usize> = (0..r).filter(|i| !axes.contains(i)).collect();
    let mut perm = kept.clone();
    perm.extend_from_slice(&axes);
    let trailing = perm.iter().enumerate().all(|(i, &p)| i == p);
    let chunk: usize = axes.iter().map(|&a| s[a]).product();
    let n_out: usize = kept.iter().map(|&a| s[a]).product();
    let oshape: Vec<usize> = if keep {
        (0..r)
            .map(|i| if axes.contains(&i) { 1 } else { s[i] })
            .collect()
    } else {
        kept.iter().map(|&i| s[i]).collect()
    };
    let op = cx.op;
    dispatch_num!(t, a, T => {
        let data: Vec<T> = if trailing { flat(a).into_owned() } else { flat(&transpose_arr(a, &perm)).into_owned() };
        let mut out = Vec::with_capacity(n_out);
        for o in 0..n_out {
            let xs = &data[o * chunk..(o + 1) * chunk];
            out.push(if T::IS_FLOAT {
                let f: Vec<f64> = xs.iter().map(|x| x.to_f64()).collect();
                T::from_f64(red_f(op, &f))
            } else {
                red_i(op, xs)
            });
        }
        Ok(T::wrap(arr(&oshape, out)?))
    }, o => Err(dtype_err(cx, o, "expects a numeric input")))
}
