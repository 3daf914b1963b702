//! QuantizeLinear / DequantizeLinear: per-tensor, per-axis and blocked.
//!
//! Sub-byte and float8 tensors decode to I8/U8/F32 (see `TensorValue::from_raw`), so a zero
//! point of those types is indistinguishable from an 8-bit/float one here; QuantizeLinear produces
//! only UINT8, INT8, UINT16 and INT16 and refuses other `output_dtype`s.

use super::elementwise::dtype_err;
use super::tensor::{arr, dtype};
use super::{Ctx, Result, TensorValue, dtype_name};

/// Expands a scale or zero point to one value per element of `shape` (row-major).
fn expand_param(
    cx: &Ctx,
    p: &TensorValue,
    shape: &[usize],
    axis: i64,
    block: i64,
    what: &str,
) -> Result<Vec<f64>> {
    let v = p.to_f64_vec();
    let n: usize = shape.iter().product();
    if p.len() == 1 {
        return Ok(vec![v[0]; n]);
    }
    let r = shape.len();
    let ax = cx.axis(axis, r)?;
    let outer: usize = shape[..ax].iter().product();
    let dim = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    if block <= 0 {
        if p.rank() != 1 || p.len() != dim {
            return Err(cx.err(format!(
                "{what} of shape {:?} must be a scalar or have {dim} values (axis {axis})",
                p.shape()
            )));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..outer {
            for &s in &v {
                out.extend(std::iter::repeat_n(s, inner));
            }
        }
        return Ok(out);
    }
    let b = block as usize;
    let ps = p.shape();
    let nb = dim.div_ceil(b);
    let mut expect = shape.to_vec();
    expect[ax] = nb;
    if ps != expect.as_slice() {
        return Err(cx.err(format!(
            "{what} of shape {ps:?} does not block input {shape:?} with block_size {b} on axis {axis}"
        )));
    }
    let mut out = Vec::with_capacity(n);
    for o in 0..outer {
        for j in 0..dim {
            let base = (o * nb + j / b) * inner;
            out.extend_from_slice(&v[base..base + inner]);
        }
    }
    Ok(out)
}

pub(crate) fn dequantize(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    if !scale.is_float() {
        return Err(dtype_err(cx, scale, "x_scale must be a float tensor"));
    }
    if !(x.is_int() || x.is_float()) {
        return Err(dtype_err(
            cx,
            x,
            "x must be an integer (or decoded float8) tensor",
        ));
    }
    let axis = cx.attr_i_or("axis", 1)?;
    let block = cx.attr_i_or("block_size", 0)?;
    let s = x.shape().to_vec();
    let sc = expand_param(cx, scale, &s, axis, block, "x_scale")?;
    let zp = match cx.opt_input(2) {
        Some(z) => {
            if z.data_type() != x.data_type() {
                return Err(cx.err(format!(
                    "x_zero_point has type {}, x has {}",
                    dtype_name(z.data_type()),
                    dtype_name(x.data_type())
                )));
            }
            Some(expand_param(cx, z, &s, axis, block, "x_zero_point")?)
        }
        None => None,
    };
    let xv = x.to_f64_vec();
    let y: Vec<f32> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = v as f32 - zp.as_ref().map_or(0.0, |z| z[i] as f32);
            d * sc[i] as f32
        })
        .collect();
    let out_dt = match cx.attr_i_or("output_dtype", 0)? {
        0 => scale.data_type(),
        d => i32::try_from(d).map_err(|_| cx.err(format!("invalid output_dtype {d}")))?,
    };
    TensorValue::F32(arr(&s, y)?)
        .cast(out_dt)
        .map_err(|e| cx.err(e.to_string()))
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

pub(crate) fn quantize(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    if !x.is_float() && !matches!(x, TensorValue::I32(_)) {
        return Err(dtype_err(cx, x, "x must be a float or int32 tensor"));
    }
    let axis = cx.attr_i_or("axis", 1)?;
    let block = cx.attr_i_or("block_size", 0)?;
    let s = x.shape().to_vec();
    let zp_t = cx.opt_input(2);
    let out_attr = cx.attr_i_or("output_dtype", 0)? as i32;
    let out_dt = match zp_t {
        Some(z) => {
            if out_attr != 0 && out_attr != z.data_type() {
                return Err(cx.err(format!(
                    "output_dtype {} differs from the zero point's type {}",
                    dtype_name(out_attr),
                    dtype_name(z.data_type())
                )));
            }
            z.data_type()
        }
        None if out_attr != 0 => out_attr,
        None => dtype::UINT8,
    };
    let (lo, hi) = match out_dt {
        dtype::UINT8 => (0.0, 255.0),
        dtype::INT8 => (-128.0, 127.0),
        dtype::UINT16 => (0.0, 65535.0),
        dtype::INT16 => (-32768.0, 32767.0),
        other => {
            return Err(super::EvalError::UnsupportedDtype {
                dtype: other,
                context: "QuantizeLinear output (only UINT8, INT8, UINT16, INT16)".into(),
            });
        }
    };
    let sc = expand_param(cx, scale, &s, axis, block, "y_scale")?;
    let zp = match zp_t {
        Some(z) => Some(expand_param(cx, z, &s, axis, block, "y_zero_point")?),
        None => None,
    };
    let xv = x.to_f64_vec();
    let y: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let q = (v as f32 / sc[i] as f32) as f64;
            let q = round_half_even(q) + zp.as_ref().map_or(0.0, |z| z[i]);
            if q.is_nan() { 0.0 } else { q.clamp(lo, hi) }
        })
        .collect();
    TensorValue::F64(arr(&s, y)?)
        .cast(out_dt)
        .map_err(|e| cx.err(e.to_string()))
}
