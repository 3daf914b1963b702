//! Less common ops: RMSNormalization, SwiGLU, LpNormalization, MeanVarianceNormalization,
//! GroupNormalization, LRN, Upsample, Compress, NonZero, ReverseSequence, Det.

use super::elementwise::{dtype_err, same_dtype};
use super::nn::broadcast_f64;
use super::tensor::{Elem, arr, flat};
use super::{Ctx, Result, TensorValue};

fn float_input<'a>(cx: &Ctx<'a>, i: usize) -> Result<&'a TensorValue> {
    let x = cx.input(i)?;
    if !x.is_float() {
        return Err(dtype_err(cx, x, "expects a floating point input"));
    }
    Ok(x)
}

fn finish(cx: &Ctx, like: &TensorValue, shape: &[usize], v: Vec<f64>) -> Result<TensorValue> {
    TensorValue::F64(arr(shape, v)?)
        .cast(like.data_type())
        .map_err(|e| cx.err(e.to_string()))
}

pub(crate) fn rms_norm(cx: &Ctx) -> Result<TensorValue> {
    let x = float_input(cx, 0)?;
    let s = x.shape().to_vec();
    let ax = cx.axis(cx.attr_i_or("axis", -1)?, s.len())?;
    let eps = cx.attr_f_or("epsilon", 1e-5)? as f64;
    let inner: usize = s[ax..].iter().product();
    let scale = broadcast_f64(cx, cx.input(1)?, &s[ax..], "scale")?;
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; xv.len()];
    for (src, dst) in xv.chunks(inner.max(1)).zip(y.chunks_mut(inner.max(1))) {
        let ms = src.iter().map(|v| v * v).sum::<f64>() / inner as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for (j, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            *d = v * inv * scale[j];
        }
    }
    finish(cx, x, &s, y)
}

pub(crate) fn swiglu(cx: &Ctx) -> Result<TensorValue> {
    let a = float_input(cx, 0)?;
    let b = cx.input(1)?;
    same_dtype(cx, a, b)?;
    if a.shape() != b.shape() {
        return Err(cx.err(format!(
            "A {:?} and B {:?} must have the same shape",
            a.shape(),
            b.shape()
        )));
    }
    let alpha = cx.attr_f_or("alpha", 1.0)? as f64;
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let y = av
        .iter()
        .zip(&bv)
        .map(|(&x, &g)| x / (1.0 + (-alpha * x).exp()) * g)
        .collect();
    finish(cx, a, a.shape(), y)
}

/// Splits a shape at `ax` into (outer, dim, inner).
fn split3(s: &[usize], ax: usize) -> (usize, usize, usize) {
    (
        s[..ax].iter().product(),
        s[ax],
        s[ax + 1..].iter().product(),
    )
}

pub(crate) fn lp_normalization(cx: &Ctx) -> Result<TensorValue> {
    let x = float_input(cx, 0)?;
    let s = x.shape().to_vec();
    let ax = cx.axis(cx.attr_i_or("axis", -1)?, s.len())?;
    let p = cx.attr_i_or("p", 2)?;
    if p != 1 && p != 2 {
        return Err(cx.err(format!("p must be 1 or 2, got {p}")));
    }
    let (outer, dim, inner) = split3(&s, ax);
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; xv.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * dim + j) * inner + i;
            let norm = if p == 1 {
                (0..dim).map(|j| xv[at(j)].abs()).sum::<f64>()
            } else {
                (0..dim).map(|j| xv[at(j)] * xv[at(j)]).sum::<f64>().sqrt()
            };
            for j in 0..dim {
                y[at(j)] = if norm == 0.0 { 0.0 } else { xv[at(j)] / norm };
            }
        }
    }
    finish(cx, x, &s, y)
}

/// Mean and population variance over all axes in `axes`, broadcast back to every element.
fn moments(xv: &[f64], s: &[usize], axes: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let r = s.len();
    let mut st = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    // key of an element: its index with the reduced axes zeroed
    let key = |lin: usize| -> usize {
        let mut k = 0;
        for a in 0..r {
            if !axes.contains(&a) {
                k += ((lin / st[a]) % s[a].max(1)) * st[a];
            }
        }
        k
    };
    let n = xv.len();
    let mut sum = vec![0f64; n.max(1)];
    let mut cnt = vec![0usize; n.max(1)];
    let keys: Vec<usize> = (0..n).map(key).collect();
    for (i, &k) in keys.iter().enumerate() {
        sum[k] += xv[i];
        cnt[k] += 1;
    }
    let mean: Vec<f64> = keys.iter().map(|&k| sum[k] / cnt[k] as f64).collect();
    let mut sq = vec![0f64; n.max(1)];
    for (i, &k) in keys.iter().enumerate() {
        sq[k] += (xv[i] - mean[i]) * (xv[i] - mean[i]);
    }
    let var = keys.iter().map(|&k| sq[k] / cnt[k] as f64).collect();
    (mean, var)
}

pub(crate) fn mvn(cx: &Ctx) -> Result<TensorValue> {
    let x = float_input(cx, 0)?;
    let s = x.shape().to_vec();
    let axes: Vec<usize> = match cx.attr_ints("axes")? {
        Some(a) => a
            .iter()
            .map(|&v| cx.axis(v, s.len()))
            .collect::<Result<_>>()?,
        None => {
            if s.len() != 4 {
                return Err(cx.err(format!(
                    "default axes [0, 2, 3] need a 4-D input, got {s:?}"
                )));
            }
            vec![0, 2, 3]
        }
    };
    let xv = x.to_f64_vec();
    let (mean, var) = moments(&xv, &s, &axes);
    let y = xv
        .iter()
        .zip(mean.iter().zip(&var))
        .map(|(&v, (&m, &va))| (v - m) / (va.sqrt() + 1e-9))
        .collect();
    finish(cx, x, &s, y)
}

pub(crate) fn group_norm(cx: &Ctx) -> Result<TensorValue> {
    let x = float_input(cx, 0)?;
    let s = x.shape().to_vec();
    if s.len() < 3 {
        return Err(cx.err(format!("X must have rank >= 3, got {s:?}")));
    }
    let g = cx
        .attr_i("num_groups")?
        .ok_or_else(|| cx.err("missing attribute 'num_groups'"))?;
    let c = s[1];
    if g <= 0 || c % g as usize != 0 {
        return Err(cx.err(format!("num_groups {g} must divide the {c} channels")));
    }
    let g = g as usize;
    let eps = cx.attr_f_or("epsilon", 1e-5)? as f64;
    let scale = cx.input(1)?.to_f64_vec();
    let bias = cx.input(2)?.to_f64_vec();
    // opset 18 took per-group scale/bias; opset 21 per-channel.
    let per = |v: &[f64], what: &str| -> Result<Vec<f64>> {
        if v.len() == c {
            Ok(v.to_vec())
        } else if v.len() == g {
            Ok((0..c).map(|ch| v[ch / (c / g)]).collect())
        } else {
            Err(cx.err(format!(
                "{what} must have {c} (or {g}) values, got {}",
                v.len()
            )))
        }
    };
    let (scale, bias) = (per(&scale, "scale")?, per(&bias, "bias")?);
    let inner: usize = s[2..].iter().product();
    let gsz = (c / g) * inner;
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; xv.len()];
    for (gi, (src, dst)) in xv
        .chunks(gsz.max(1))
        .zip(y.chunks_mut(gsz.max(1)))
        .enumerate()
    {
        let mu = src.iter().sum::<f64>() / gsz as f64;
        let var = src.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / gsz as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (k, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            let ch = (gi % g) * (c / g) + k / inner.max(1);
            *d = (v - mu) * inv * scale[ch] + bias[ch];
        }
    }
    finish(cx, x, &s, y)
}

pub(crate) fn lrn(cx: &Ctx) -> Result<TensorValue> {
    let x = float_input(cx, 0)?;
    let s = x.shape().to_vec();
    if s.len() < 3 {
        return Err(cx.err(format!("X must have rank >= 3, got {s:?}")));
    }
    let size = cx
        .attr_i("size")?
        .ok_or_else(|| cx.err("missing attribute 'size'"))?;
    if size <= 0 {
        return Err(cx.err(format!("size must be positive, got {size}")));
    }
    let alpha = cx.attr_f_or("alpha", 1e-4)? as f64;
    let beta = cx.attr_f_or("beta", 0.75)? as f64;
    let bias = cx.attr_f_or("bias", 1.0)? as f64;
    let (n, c) = (s[0], s[1]);
    let inner: usize = s[2..].iter().product();
    let c1 = ((size - 1) / 2) as usize;
    let c2 = (size as usize - 1).div_ceil(2) + 1;
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; xv.len()];
    for b in 0..n {
        for ch in 0..c {
            let lo = ch.saturating_sub(c1);
            let hi = (ch + c2).min(c);
            for i in 0..inner {
                let sq: f64 = (lo..hi).map(|k| xv[(b * c + k) * inner + i].powi(2)).sum();
                let p = (b * c + ch) * inner + i;
                y[p] = xv[p] / (bias + alpha / size as f64 * sq).powf(beta);
            }
        }
    }
    finish(cx, x, &s, y)
}

pub(crate) fn upsample(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    let scales: Vec<f64> = if cx.opset >= 9 {
        cx.input(1)?.to_f64_vec()
    } else {
        cx.attr_floats("scales")?
            .ok_or_else(|| cx.err("missing attribute 'scales'"))?
            .iter()
            .map(|&v| v as f64)
            .collect()
    };
    let mode = cx.attr_s_or("mode", "nearest")?;
    super::resize::resize_asymmetric(cx, x, &scales, &mode)
}

pub(crate) fn compress(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    let c = cx.input(1)?;
    let TensorValue::Bool(cond) = c else {
        return Err(dtype_err(cx, c, "condition must be bool"));
    };
    let cond: Vec<bool> = cond.iter().copied().collect();
    let (s, ax) = match cx.attr_i("axis")? {
        Some(a) => (x.shape().to_vec(), cx.axis(a, x.rank())?),
        None => (vec![x.len()], 0),
    };
    let (outer, dim, inner) = split3(&s, ax);
    if cond.len() > dim {
        return Err(cx.err(format!(
            "condition has {} values, axis has {dim}",
            cond.len()
        )));
    }
    let keep: Vec<usize> = (0..cond.len()).filter(|&i| cond[i]).collect();
    let mut oshape = s.clone();
    oshape[ax] = keep.len();
    dispatch_all!(x, a, T => {
        let src = flat(a);
        let mut out: Vec<T> = Vec::with_capacity(outer * keep.len() * inner);
        for o in 0..outer {
            for &j in &keep {
                let base = (o * dim + j) * inner;
                out.extend_from_slice(&src[base..base + inner]);
            }
        }
        Ok(T::wrap(arr(&oshape, out)?))
    })
}

pub(crate) fn nonzero(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    if matches!(x, TensorValue::Str(_)) {
        return Err(dtype_err(cx, x, "expects a numeric or bool input"));
    }
    let s = x.shape().to_vec();
    let r = s.len();
    let v = x.to_f64_vec();
    let nz: Vec<usize> = (0..v.len()).filter(|&i| v[i] != 0.0).collect();
    let mut out = vec![0i64; r * nz.len()];
    for (k, &lin) in nz.iter().enumerate() {
        let mut rem = lin;
        for a in (0..r).rev() {
            out[a * nz.len() + k] = (rem % s[a].max(1)) as i64;
            rem /= s[a].max(1);
        }
    }
    Ok(TensorValue::I64(arr(&[r, nz.len()], out)?))
}

pub(crate) fn reverse_sequence(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    let lt = cx.input(1)?;
    let lens = lt
        .to_i64_vec()
        .ok_or_else(|| dtype_err(cx, lt, "sequence_lens must be int64"))?;
    let s = x.shape().to_vec();
    if s.len() < 2 {
        return Err(cx.err(format!("input must have rank >= 2, got {s:?}")));
    }
    let bax = cx.axis(cx.attr_i_or("batch_axis", 1)?, s.len())?;
    let tax = cx.axis(cx.attr_i_or("time_axis", 0)?, s.len())?;
    if bax == tax || lens.len() != s[bax] {
        return Err(cx.err(format!(
            "batch_axis {bax}/time_axis {tax} or sequence_lens {lens:?} do not fit {s:?}"
        )));
    }
    for &l in &lens {
        if l < 0 || l as usize > s[tax] {
            return Err(cx.err(format!("sequence length {l} is out of range")));
        }
    }
    let r = s.len();
    let mut st = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    let n = x.len();
    let src_of = |lin: usize| -> usize {
        let b = (lin / st[bax]) % s[bax];
        let t = (lin / st[tax]) % s[tax];
        let l = lens[b] as usize;
        if t < l {
            lin - t * st[tax] + (l - 1 - t) * st[tax]
        } else {
            lin
        }
    };
    dispatch_all!(x, a, T => {
        let src = flat(a);
        let out: Vec<T> = (0..n).map(|i| src[src_of(i)].clone()).collect();
        Ok(T::wrap(arr(&s, out)?))
    })
}

pub(crate) fn det(cx: &Ctx) -> Result<TensorValue> {
    let x = float_input(cx, 0)?;
    let s = x.shape().to_vec();
    let r = s.len();
    if r < 2 || s[r - 1] != s[r - 2] {
        return Err(cx.err(format!("expects [..., M, M], got {s:?}")));
    }
    let m = s[r - 1];
    let xv = x.to_f64_vec();
    let mut out = Vec::new();
    for mat in xv.chunks(m * m).take(s[..r - 2].iter().product()) {
        let mut a = mat.to_vec();
        let mut d = 1.0;
        for col in 0..m {
            let piv = (col..m)
                .max_by(|&i, &j| a[i * m + col].abs().total_cmp(&a[j * m + col].abs()))
                .unwrap_or(col);
            if a[piv * m + col] == 0.0 {
                d = 0.0;
                break;
            }
            if piv != col {
                for k in 0..m {
                    a.swap(piv * m + k, col * m + k);
                }
                d = -d;
            }
            let p = a[col * m + col];
            d *= p;
            for i in col + 1..m {
                let f = a[i * m + col] / p;
                for k in col..m {
                    a[i * m + k] -= f * a[col * m + k];
                }
            }
        }
        out.push(d);
    }
    if m == 0 {
        out = vec![1.0; s[..r - 2].iter().product()];
    }
    finish(cx, x, &s[..r - 2], out)
}
