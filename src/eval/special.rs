//! Value-producing ops: Constant, ConstantOfShape, EyeLike, Range, OneHot, Dropout.

use ndarray::{ArrayD, IxDyn};

use super::elementwise::dtype_err;
use super::shape_ops::shape_input;
use super::tensor::{Elem, Num, Sc};
use super::{Ctx, Result, TensorValue};

fn arr1<T>(v: Vec<T>) -> ArrayD<T> {
    ndarray::Array1::from(v).into_dyn()
}

pub(crate) fn constant(cx: &Ctx) -> Result<TensorValue> {
    let mut found: Vec<TensorValue> = Vec::new();
    if let Some(t) = cx.attr_tensor("value")? {
        found.push(t);
    }
    if cx.has_attr("sparse_value") {
        return Err(cx.err("sparse_value is not supported"));
    }
    if let Some(f) = cx.attr_f("value_float")? {
        found.push(TensorValue::scalar_f32(f));
    }
    if let Some(f) = cx.attr_floats("value_floats")? {
        found.push(TensorValue::F32(arr1(f)));
    }
    if let Some(i) = cx.attr_i("value_int")? {
        found.push(TensorValue::scalar_i64(i));
    }
    if let Some(i) = cx.attr_ints("value_ints")? {
        found.push(TensorValue::I64(arr1(i)));
    }
    if let Some(s) = cx.attr_s("value_string")? {
        found.push(TensorValue::Str(ArrayD::from_elem(IxDyn(&[]), s)));
    }
    if let Some(s) = cx.attr_strings("value_strings")? {
        found.push(TensorValue::Str(arr1(s)));
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(cx.err("no value attribute")),
        n => Err(cx.err(format!("{n} value attributes given, expected exactly one"))),
    }
}

pub(crate) fn dropout(cx: &Ctx) -> Result<Vec<TensorValue>> {
    let x = cx.input(0)?;
    let training = if cx.opset >= 12 {
        match cx.opt_input(2) {
            Some(TensorValue::Bool(b)) => b.iter().next().copied().unwrap_or(false),
            Some(other) => return Err(dtype_err(cx, other, "training_mode must be bool")),
            None => false,
        }
    } else if cx.opset < 7 {
        cx.attr_i_or("is_test", 0)? == 0
    } else {
        false
    };
    let ratio = if cx.opset >= 12 {
        match cx.opt_input(1) {
            Some(r) => r.to_f64_vec().first().copied().unwrap_or(0.5),
            None => 0.5,
        }
    } else {
        cx.attr_f_or("ratio", 0.5)? as f64
    };
    if training && ratio != 0.0 {
        return Err(cx.err("training mode with a nonzero ratio is random and not supported"));
    }
    let mut outs = vec![x.clone()];
    if cx.num_outputs > 1 {
        outs.push(TensorValue::Bool(ArrayD::from_elem(IxDyn(x.shape()), true)));
    }
    Ok(outs)
}

pub(crate) fn constant_of_shape(cx: &Ctx) -> Result<TensorValue> {
    let shape = shape_input(cx, 0, "shape")?;
    let value = match cx.attr_tensor("value")? {
        Some(v) => {
            if v.len() != 1 {
                return Err(cx.err(format!(
                    "value must hold exactly one element, got shape {:?}",
                    v.shape()
                )));
            }
            v
        }
        None => TensorValue::scalar_f32(0.0),
    };
    cx.check_alloc(&shape, value.elem_bytes())?;
    let sh = IxDyn(&shape);
    Ok(dispatch_all!(&value, a, T => {
        let v = a.iter().next().cloned().unwrap_or_default();
        T::wrap(ArrayD::from_elem(sh, v))
    }))
}

pub(crate) fn eye_like(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    if x.rank() != 2 {
        return Err(cx.err(format!("expects a 2-D input, got shape {:?}", x.shape())));
    }
    let dt = match cx.attr_i("dtype")? {
        Some(d) => i32::try_from(d).map_err(|_| cx.err(format!("invalid dtype {d}")))?,
        None => x.data_type(),
    };
    let k = cx.attr_i_or("k", 0)?;
    let (r, c) = (x.shape()[0], x.shape()[1]);
    let ones = ArrayD::from_shape_fn(IxDyn(&[r, c]), |ix| (ix[1] as i64 - ix[0] as i64) == k);
    TensorValue::Bool(ones)
        .cast(dt)
        .map_err(|e| cx.err(e.to_string()))
}

fn scalar(cx: &Ctx, i: usize, what: &str) -> Result<TensorValue> {
    let t = cx.input(i)?;
    if t.len() != 1 {
        return Err(cx.err(format!(
            "{what} must be a scalar, got shape {:?}",
            t.shape()
        )));
    }
    Ok(t.clone())
}

pub(crate) fn range(cx: &Ctx) -> Result<TensorValue> {
    let start = scalar(cx, 0, "start")?;
    let limit = scalar(cx, 1, "limit")?;
    let delta = scalar(cx, 2, "delta")?;
    if start.data_type() != limit.data_type() || start.data_type() != delta.data_type() {
        return Err(cx.err("start, limit and delta must have the same type"));
    }
    fn go<T: Num>(
        cx: &Ctx,
        s: &ArrayD<T>,
        l: &TensorValue,
        d: &TensorValue,
    ) -> Result<TensorValue> {
        let first = |a: &ArrayD<T>| a.iter().next().copied().unwrap_or_else(T::zero);
        let s = first(s);
        let l = T::get(l).map(first).unwrap_or_else(T::zero);
        let d = T::get(d).map(first).unwrap_or_else(T::zero);
        let n: u128 = if T::IS_FLOAT {
            let (s, l, d) = (s.to_f64(), l.to_f64(), d.to_f64());
            if d == 0.0 || !d.is_finite() || !s.is_finite() || !l.is_finite() {
                return Err(cx.err(format!("invalid range start={s} limit={l} delta={d}")));
            }
            let n = ((l - s) / d).ceil();
            if n > 1e30 {
                u128::MAX
            } else {
                n.max(0.0) as u128
            }
        } else {
            let i = |v: T| match v.to_sc() {
                Sc::I(v) => v,
                Sc::F(v) => v as i128,
            };
            let (s, l, d) = (i(s), i(l), i(d));
            if d == 0 {
                return Err(cx.err("delta must not be 0"));
            }
            let span = l - s;
            let n = if (span > 0) == (d > 0) && span != 0 {
                (span.abs() + d.abs() - 1) / d.abs()
            } else {
                0
            };
            n.max(0) as u128
        };
        let n = usize::try_from(n).map_err(|_| cx.err("output size overflows"))?;
        cx.check_alloc(&[n], std::mem::size_of::<T>())?;
        let v: Vec<T> = if T::IS_FLOAT {
            let (s0, d0) = (s.to_f64(), d.to_f64());
            (0..n).map(|k| T::from_f64(s0 + k as f64 * d0)).collect()
        } else {
            let mut v = Vec::with_capacity(n);
            let mut x = s;
            for _ in 0..n {
                v.push(x);
                x = x.add(d);
            }
            v
        };
        Ok(T::wrap(arr1(v)))
    }
    dispatch_num!(&start, s, T => go::<T>(cx, s, &limit, &delta),
        o => Err(dtype_err(cx, o, "expects numeric start/limit/delta")))
}

pub(crate) fn one_hot(cx: &Ctx) -> Result<TensorValue> {
    let idx = cx.input(0)?;
    let depth = cx.input(1)?;
    let values = cx.input(2)?;
    if values.len() != 2 || values.rank() != 1 {
        return Err(cx.err(format!(
            "values must have shape [2], got {:?}",
            values.shape()
        )));
    }
    if depth.len() != 1 {
        return Err(cx.err("depth must be a scalar"));
    }
    let d = depth.to_f64_vec()[0];
    if !(1.0..=1e15).contains(&d) {
        return Err(cx.err(format!("depth must be a positive number, got {d}")));
    }
    let d = d as usize;
    let r = idx.rank() + 1;
    let axis = cx.axis(cx.attr_i_or("axis", -1)?, r)?;
    let mut oshape = idx.shape().to_vec();
    oshape.insert(axis, d);
    cx.check_alloc(&oshape, values.elem_bytes())?;
    let iv: Vec<f64> = idx.to_f64_vec();
    let ishape = idx.shape().to_vec();
    let inner: usize = ishape[axis..].iter().product();
    dispatch_all!(values, v, T => {
        let off = v.iter().next().cloned().unwrap_or_default();
        let on = v.iter().nth(1).cloned().unwrap_or_default();
        let n: usize = oshape.iter().product();
        let mut out = vec![off; n];
        for (k, &x) in iv.iter().enumerate() {
            let mut x = x.trunc();
            if x < 0.0 { x += d as f64; }
            if x < 0.0 || x >= d as f64 { continue; }
            let (o, i) = (k / inner.max(1), k % inner.max(1));
            out[(o * d + x as usize) * inner + i] = on.clone();
        }
        Ok(T::wrap(super::tensor::arr(&oshape, out)?))
    })
}
