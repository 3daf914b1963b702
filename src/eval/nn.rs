//! Network ops: Conv, ConvTranspose, BatchNormalization, InstanceNormalization,
//! LayerNormalization, Softmax/LogSoftmax/Hardmax.

use ndarray::{ArrayD, IxDyn};

use super::elementwise::{dtype_err, same_dtype};
use super::linalg::gemm_kernel;
use super::tensor::{Num, arr, flat};
use super::{Ctx, Result, TensorValue};

/// Spatial geometry shared by Conv and pooling.
pub(crate) struct Geom {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<usize>,
    pub pad_end: Vec<usize>,
}

fn positive(cx: &Ctx, v: Option<Vec<i64>>, n: usize, what: &str) -> Result<Vec<usize>> {
    match v {
        None => Ok(vec![1; n]),
        Some(v) => {
            if v.len() != n {
                return Err(cx.err(format!("{what} {v:?} must have {n} entries")));
            }
            v.iter()
                .map(|&x| {
                    if x <= 0 || x > 1 << 31 {
                        Err(cx.err(format!("{what} {v:?} must be positive (and below 2^31)")))
                    } else {
                        Ok(x as usize)
                    }
                })
                .collect()
        }
    }
}

/// Reads kernel/stride/dilation/pads attributes and resolves auto_pad for input spatial `ins`.
/// With `ceil_mode`, output sizes round up (pooling).
pub(crate) fn geometry(
    cx: &Ctx,
    ins: &[usize],
    kernel: Option<Vec<usize>>,
    ceil_mode: bool,
) -> Result<(Geom, Vec<usize>)> {
    let n = ins.len();
    let kernel = match kernel {
        Some(k) => k,
        None => positive(cx, cx.attr_ints("kernel_shape")?, n, "kernel_shape")?,
    };
    if kernel.len() != n || kernel.contains(&0) {
        return Err(cx.err(format!(
            "kernel_shape {kernel:?} must have {n} positive entries"
        )));
    }
    let strides = positive(cx, cx.attr_ints("strides")?, n, "strides")?;
    let dilations = positive(cx, cx.attr_ints("dilations")?, n, "dilations")?;
    let auto_pad = cx.attr_s_or("auto_pad", "NOTSET")?;
    let mut pb = vec![0usize; n];
    let mut pe = vec![0usize; n];
    let mut outs = Vec::with_capacity(n);
    match auto_pad.as_str() {
        "NOTSET" | "" => {
            if let Some(p) = cx.attr_ints("pads")? {
                if p.len() != 2 * n || p.iter().any(|&x| !(0..=1 << 31).contains(&x)) {
                    return Err(cx.err(format!("pads {p:?} must be {} non-negative values", 2 * n)));
                }
                for i in 0..n {
                    pb[i] = p[i] as usize;
                    pe[i] = p[i + n] as usize;
                }
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            for i in 0..n {
                let ek = (kernel[i] - 1) * dilations[i] + 1;
                let o = ins[i].div_ceil(strides[i]);
                let total = ((o.max(1) - 1) * strides[i] + ek).saturating_sub(ins[i]);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    pb[i] = small;
                    pe[i] = total - small;
                } else {
                    pb[i] = total - small;
                    pe[i] = small;
                }
            }
        }
        other => return Err(cx.err(format!("unknown auto_pad '{other}'"))),
    }
    for i in 0..n {
        let ek = (kernel[i] - 1)
            .checked_mul(dilations[i])
            .and_then(|v| v.checked_add(1))
            .ok_or_else(|| cx.err("kernel extent overflows"))?;
        let span = ins[i] + pb[i] + pe[i];
        if span < ek {
            return Err(cx.err(format!(
                "kernel extent {ek} exceeds padded input {span} on spatial axis {i}"
            )));
        }
        let mut o = if ceil_mode {
            (span - ek).div_ceil(strides[i]) + 1
        } else {
            (span - ek) / strides[i] + 1
        };
        if ceil_mode && (o - 1) * strides[i] >= ins[i] + pb[i] {
            o -= 1;
        }
        outs.push(o);
    }
    Ok((
        Geom {
            kernel,
            strides,
            dilations,
            pad_begin: pb,
            pad_end: pe,
        },
        outs,
    ))
}

/// Table entry for a window position in the explicit padding.
pub(crate) const PADDING: usize = usize::MAX - 1;
/// Table entry for a window position beyond the padded input (ceil_mode).
pub(crate) const OUTSIDE: usize = usize::MAX;

/// For each (kernel position, output position) pair, the input spatial offset, or [`PADDING`] /
/// [`OUTSIDE`].
pub(crate) fn window_table(g: &Geom, ins: &[usize], outs: &[usize]) -> Vec<usize> {
    let n = ins.len();
    let kn: usize = g.kernel.iter().product();
    let on: usize = outs.iter().product();
    let mut in_str = vec![1usize; n];
    for i in (0..n.saturating_sub(1)).rev() {
        in_str[i] = in_str[i + 1] * ins[i + 1];
    }
    let mut table = Vec::with_capacity(kn * on);
    let mut kidx = vec![0usize; n];
    for _ in 0..kn {
        let mut oidx = vec![0usize; n];
        for _ in 0..on {
            let mut off = 0usize;
            let mut ok = true;
            let mut outside = false;
            for a in 0..n {
                let p = (oidx[a] * g.strides[a] + kidx[a] * g.dilations[a]) as i64
                    - g.pad_begin[a] as i64;
                if p < 0 || p >= ins[a] as i64 {
                    if p < -(g.pad_begin[a] as i64) || p >= (ins[a] + g.pad_end[a]) as i64 {
                        outside = true;
                    }
                    ok = false;
                }
                if ok {
                    off += p as usize * in_str[a];
                }
            }
            table.push(if outside {
                OUTSIDE
            } else if ok {
                off
            } else {
                PADDING
            });
            for a in (0..n).rev() {
                oidx[a] += 1;
                if oidx[a] < outs[a] {
                    break;
                }
                oidx[a] = 0;
            }
        }
        for a in (0..n).rev() {
            kidx[a] += 1;
            if kidx[a] < g.kernel[a] {
                break;
            }
            kidx[a] = 0;
        }
    }
    table
}

/// Runs `f` in the compute type of a float tensor: f16/bf16 via f32.
macro_rules! float_compute {
    ($cx:expr, $x:expr, $f:ident ( $($arg:expr),* )) => {{
        match $x {
            TensorValue::F32(_) => $f::<f32>($($arg),*),
            TensorValue::F64(_) => $f::<f64>($($arg),*),
            TensorValue::F16(_) | TensorValue::BF16(_) => $f::<f32>($($arg),*),
            other => Err(dtype_err($cx, other, "expects a floating point input")),
        }
    }};
}

/// The tensor's values as `T` (f16/bf16 widened), checking the element type matches `like`.
pub(crate) fn as_compute<T: Num>(
    cx: &Ctx,
    t: &TensorValue,
    like: &TensorValue,
    what: &str,
) -> Result<ArrayD<T>> {
    same_dtype(cx, like, t).map_err(|_| {
        cx.err(format!(
            "{what} has type {}, expected {}",
            super::dtype_name(t.data_type()),
            super::dtype_name(like.data_type())
        ))
    })?;
    if let Some(a) = T::get(t) {
        return Ok(a.clone());
    }
    dispatch_num!(t, a, U => Ok(a.mapv(|v| T::from_f64(v.to_f64()))),
        o => Err(dtype_err(cx, o, "expects a numeric input")))
}

/// Converts a compute-type result back to the element type of `like`.
pub(crate) fn back<T: Num>(cx: &Ctx, r: ArrayD<T>, like: &TensorValue) -> Result<TensorValue> {
    let t = T::wrap(r);
    if t.data_type() == like.data_type() {
        return Ok(t);
    }
    t.cast(like.data_type()).map_err(|e| cx.err(e.to_string()))
}

fn conv_t<T: Num>(cx: &Ctx) -> Result<TensorValue> {
    let xt = cx.input(0)?;
    let x = as_compute::<T>(cx, xt, xt, "X")?;
    let w = as_compute::<T>(cx, cx.input(1)?, xt, "W")?;
    let xs = x.shape().to_vec();
    let ws = w.shape().to_vec();
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(cx.err(format!(
            "X {xs:?} and W {ws:?} must have the same rank >= 3"
        )));
    }
    let group = cx.attr_i_or("group", 1)?;
    if group <= 0 {
        return Err(cx.err(format!("group must be positive, got {group}")));
    }
    let group = group as usize;
    let (n, c) = (xs[0], xs[1]);
    let m = ws[0];
    if c % group != 0 || m % group != 0 || ws[1] * group != c {
        return Err(cx.err(format!(
            "channels do not fit groups: X {xs:?}, W {ws:?}, group {group}"
        )));
    }
    let kshape = ws[2..].to_vec();
    if let Some(k) = cx.attr_ints("kernel_shape")?
        && k.iter().map(|&v| v as usize).collect::<Vec<_>>() != kshape
    {
        return Err(cx.err(format!("kernel_shape {k:?} does not match W {ws:?}")));
    }
    let ins = xs[2..].to_vec();
    let (g, outs) = geometry(cx, &ins, Some(kshape.clone()), false)?;
    let mut oshape = vec![n, m];
    oshape.extend_from_slice(&outs);
    cx.check_alloc(&oshape, std::mem::size_of::<T>())?;
    let cg = c / group;
    let mg = m / group;
    let kn: usize = kshape.iter().product();
    let on: usize = outs.iter().product();
    let isz: usize = ins.iter().product();
    cx.check_alloc(&[cg, kn, on], std::mem::size_of::<T>())?;
    cx.check_alloc(&[kn, on], std::mem::size_of::<usize>())?;
    let table = window_table(&g, &ins, &outs);
    let xf = flat(&x);
    let wf = flat(&w);
    let bias = match cx.opt_input(2) {
        Some(b) => {
            let b = as_compute::<T>(cx, b, xt, "B")?;
            if b.len() != m {
                return Err(cx.err(format!("B has {} values, expected {m}", b.len())));
            }
            Some(flat(&b).into_owned())
        }
        None => None,
    };
    let mut out = vec![T::zero(); n * m * on];
    let mut cols = vec![T::zero(); cg * kn * on];
    for b in 0..n {
        for gi in 0..group {
            for ci in 0..cg {
                let xbase = (b * c + gi * cg + ci) * isz;
                let xc = &xf[xbase..xbase + isz];
                let dst = &mut cols[ci * kn * on..(ci + 1) * kn * on];
                for (d, &t) in dst.iter_mut().zip(&table) {
                    *d = if t >= PADDING { T::zero() } else { xc[t] };
                }
            }
            let wg = &wf[gi * mg * cg * kn..(gi + 1) * mg * cg * kn];
            let ob = &mut out[(b * m + gi * mg) * on..(b * m + (gi + 1) * mg) * on];
            gemm_kernel(mg, cg * kn, on, wg, &cols, ob);
        }
    }
    if let Some(bias) = bias {
        for (i, chunk) in out.chunks_mut(on.max(1)).enumerate() {
            let bv = bias[i % m];
            for v in chunk {
                *v = v.add(bv);
            }
        }
    }
    back(cx, arr(&oshape, out)?, xt)
}

pub(crate) fn conv(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    float_compute!(cx, x, conv_t(cx))
}

fn conv_transpose_t<T: Num>(cx: &Ctx) -> Result<TensorValue> {
    let xt = cx.input(0)?;
    let x = as_compute::<T>(cx, xt, xt, "X")?;
    let w = as_compute::<T>(cx, cx.input(1)?, xt, "W")?;
    let xs = x.shape().to_vec();
    let ws = w.shape().to_vec();
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(cx.err(format!(
            "X {xs:?} and W {ws:?} must have the same rank >= 3"
        )));
    }
    let group = cx.attr_i_or("group", 1)?;
    if group <= 0 {
        return Err(cx.err(format!("group must be positive, got {group}")));
    }
    let group = group as usize;
    let (n, c) = (xs[0], xs[1]);
    if ws[0] != c || c % group != 0 {
        return Err(cx.err(format!("W {ws:?} does not fit X {xs:?} with group {group}")));
    }
    let mg = ws[1];
    let m = mg * group;
    let cg = c / group;
    let sp = xs.len() - 2;
    let ins = xs[2..].to_vec();
    let kshape = ws[2..].to_vec();
    let strides = positive(cx, cx.attr_ints("strides")?, sp, "strides")?;
    let dil = positive(cx, cx.attr_ints("dilations")?, sp, "dilations")?;
    let opad: Vec<i64> = match cx.attr_ints("output_padding")? {
        Some(v) if v.len() >= sp => v[..sp].to_vec(),
        Some(v) => return Err(cx.err(format!("output_padding {v:?} must have {sp} entries"))),
        None => vec![0; sp],
    };
    let oshape_attr: Option<Vec<i64>> = match cx.attr_ints("output_shape")? {
        Some(v) if v.len() == sp => Some(v),
        Some(v) if v.len() == sp + 2 => Some(v[2..].to_vec()),
        Some(v) => return Err(cx.err(format!("output_shape {v:?} must have {sp} entries"))),
        None => None,
    };
    let auto_pad = cx.attr_s_or("auto_pad", "NOTSET")?;
    let pads_attr = cx.attr_ints("pads")?;
    // Bound every size so that the i64 arithmetic below cannot overflow.
    let lim = 1i64 << 30;
    let too_big = |v: &[i64]| v.iter().any(|x| x.abs() > lim);
    let as_i64 = |v: &[usize]| {
        v.iter()
            .map(|&x| x.min(usize::MAX >> 1) as i64)
            .collect::<Vec<_>>()
    };
    if too_big(&as_i64(&strides))
        || too_big(&as_i64(&dil))
        || too_big(&as_i64(&kshape))
        || too_big(&as_i64(&ins))
        || too_big(&opad)
        || oshape_attr.as_deref().is_some_and(too_big)
        || pads_attr.as_deref().is_some_and(too_big)
    {
        return Err(cx.err("sizes, strides, dilations or pads exceed 2^30"));
    }
    let ek: Vec<i64> = (0..sp)
        .map(|i| ((kshape[i] as i64 - 1) * dil[i] as i64) + 1)
        .collect();
    let (pb, outs): (Vec<i64>, Vec<i64>) =
        if pads_attr.is_none() && (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
            let outs: Vec<i64> = oshape_attr
                .clone()
                .unwrap_or_else(|| (0..sp).map(|i| (ins[i] * strides[i]) as i64).collect());
            let mut pb = Vec::new();
            for i in 0..sp {
                let total = strides[i] as i64 * (ins[i] as i64 - 1) + opad[i] + ek[i] - outs[i];
                pb.push(if auto_pad == "SAME_UPPER" {
                    total.div_euclid(2)
                } else {
                    total - total.div_euclid(2)
                });
            }
            (pb, outs)
        } else {
            let p = pads_attr.unwrap_or_else(|| vec![0; 2 * sp]);
            if p.len() != 2 * sp {
                return Err(cx.err(format!("pads {p:?} must have {} entries", 2 * sp)));
            }
            let outs = match &oshape_attr {
                Some(o) => o.clone(),
                None => (0..sp)
                    .map(|i| {
                        strides[i] as i64 * (ins[i] as i64 - 1) + opad[i] + ek[i] - p[i] - p[i + sp]
                    })
                    .collect(),
            };
            (p[..sp].to_vec(), outs)
        };
    if outs.iter().any(|&o| o < 0) {
        return Err(cx.err(format!("computed output shape {outs:?} is negative")));
    }
    let outs: Vec<usize> = outs.iter().map(|&o| o as usize).collect();
    let mut oshape = vec![n, m];
    oshape.extend_from_slice(&outs);
    cx.check_alloc(&oshape, std::mem::size_of::<T>())?;
    let kn: usize = kshape.iter().product();
    let isz: usize = ins.iter().product();
    let on: usize = outs.iter().product();
    cx.check_alloc(&[mg, kn, isz], std::mem::size_of::<T>())?;
    cx.check_alloc(&[kn, isz], std::mem::size_of::<usize>())?;
    // table[(k, i)] = output offset or MAX
    let mut o_str = vec![1usize; sp];
    for i in (0..sp.saturating_sub(1)).rev() {
        o_str[i] = o_str[i + 1] * outs[i + 1];
    }
    let mut table = Vec::with_capacity(kn * isz);
    let mut kidx = vec![0usize; sp];
    for _ in 0..kn {
        let mut iidx = vec![0usize; sp];
        for _ in 0..isz {
            let mut off = 0usize;
            let mut ok = true;
            for a in 0..sp {
                let p = (iidx[a] * strides[a] + kidx[a] * dil[a]) as i64 - pb[a];
                if p < 0 || p >= outs[a] as i64 {
                    ok = false;
                    break;
                }
                off += p as usize * o_str[a];
            }
            table.push(if ok { off } else { usize::MAX });
            for a in (0..sp).rev() {
                iidx[a] += 1;
                if iidx[a] < ins[a] {
                    break;
                }
                iidx[a] = 0;
            }
        }
        for a in (0..sp).rev() {
            kidx[a] += 1;
            if kidx[a] < kshape[a] {
                break;
            }
            kidx[a] = 0;
        }
    }
    let xf = flat(&x);
    let wf = flat(&w);
    let mut out = vec![T::zero(); n * m * on];
    let mut cols = vec![T::zero(); mg * kn * isz];
    for gi in 0..group {
        // W_g^T: [(mg*kn) x cg]
        let mut wt = vec![T::zero(); mg * kn * cg];
        for ci in 0..cg {
            for r in 0..mg * kn {
                wt[r * cg + ci] = wf[(gi * cg + ci) * mg * kn + r];
            }
        }
        for b in 0..n {
            let xb = &xf[(b * c + gi * cg) * isz..(b * c + (gi + 1) * cg) * isz];
            cols.iter_mut().for_each(|v| *v = T::zero());
            gemm_kernel(mg * kn, cg, isz, &wt, xb, &mut cols);
            for mi in 0..mg {
                let ob = &mut out[(b * m + gi * mg + mi) * on..(b * m + gi * mg + mi + 1) * on];
                for k in 0..kn {
                    let src = &cols[(mi * kn + k) * isz..(mi * kn + k + 1) * isz];
                    let tb = &table[k * isz..(k + 1) * isz];
                    for (&t, &v) in tb.iter().zip(src) {
                        if t != usize::MAX {
                            ob[t] = ob[t].add(v);
                        }
                    }
                }
            }
        }
    }
    if let Some(bt) = cx.opt_input(2) {
        let b = as_compute::<T>(cx, bt, xt, "B")?;
        if b.len() != m {
            return Err(cx.err(format!("B has {} values, expected {m}", b.len())));
        }
        let bf = flat(&b);
        for (i, chunk) in out.chunks_mut(on.max(1)).enumerate() {
            for v in chunk {
                *v = v.add(bf[i % m]);
            }
        }
    }
    back(cx, arr(&oshape, out)?, xt)
}

pub(crate) fn conv_transpose(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    float_compute!(cx, x, conv_transpose_t(cx))
}

/// Per-channel vector (length `c`) from input `i`, as f64.
fn channel_vec(cx: &Ctx, i: usize, c: usize, what: &str) -> Result<Vec<f64>> {
    let t = cx.input(i)?;
    let v = t.to_f64_vec();
    if v.len() != c || !(t.is_float()) {
        return Err(cx.err(format!(
            "{what} must be a float vector of {c} values, got {} of shape {:?}",
            super::dtype_name(t.data_type()),
            t.shape()
        )));
    }
    Ok(v)
}

pub(crate) fn batch_norm(cx: &Ctx) -> Result<Vec<TensorValue>> {
    let x = cx.input(0)?;
    if !x.is_float() {
        return Err(dtype_err(cx, x, "expects a floating point input"));
    }
    let s = x.shape().to_vec();
    if s.len() < 2 {
        return Err(cx.err(format!("X must have rank >= 2, got {s:?}")));
    }
    let c = s[1];
    let eps = cx.attr_f_or("epsilon", 1e-5)? as f64;
    let momentum = cx.attr_f_or("momentum", 0.9)? as f64;
    let training = if cx.opset >= 14 {
        cx.attr_i_or("training_mode", 0)? != 0
    } else if cx.opset < 7 {
        cx.attr_i_or("is_test", 0)? == 0 && cx.num_outputs > 1
    } else {
        cx.num_outputs > 1
    };
    let scale = channel_vec(cx, 1, c, "scale")?;
    let bias = channel_vec(cx, 2, c, "B")?;
    let mut mean = channel_vec(cx, 3, c, "mean")?;
    let mut var = channel_vec(cx, 4, c, "var")?;
    let xv = x.to_f64_vec();
    let inner: usize = s[2..].iter().product();
    let n = s[0];
    let (run_mean, run_var) = (mean.clone(), var.clone());
    if training {
        let cnt = (n * inner) as f64;
        for ch in 0..c {
            let mut sum = 0.0;
            for b in 0..n {
                sum += xv[(b * c + ch) * inner..(b * c + ch + 1) * inner]
                    .iter()
                    .sum::<f64>();
            }
            let mu = sum / cnt;
            let mut sq = 0.0;
            for b in 0..n {
                sq += xv[(b * c + ch) * inner..(b * c + ch + 1) * inner]
                    .iter()
                    .map(|v| (v - mu) * (v - mu))
                    .sum::<f64>();
            }
            mean[ch] = mu;
            var[ch] = sq / cnt;
        }
    }
    let mut y = Vec::with_capacity(xv.len());
    for (i, &v) in xv.iter().enumerate() {
        let ch = (i / inner.max(1)) % c.max(1);
        y.push((v - mean[ch]) / (var[ch] + eps).sqrt() * scale[ch] + bias[ch]);
    }
    let cast = |v: Vec<f64>, sh: &[usize]| -> Result<TensorValue> {
        TensorValue::F64(arr(sh, v)?)
            .cast(x.data_type())
            .map_err(|e| cx.err(e.to_string()))
    };
    let mut outs = vec![cast(y, &s)?];
    if training {
        let rm: Vec<f64> = (0..c)
            .map(|i| run_mean[i] * momentum + mean[i] * (1.0 - momentum))
            .collect();
        let rv: Vec<f64> = (0..c)
            .map(|i| run_var[i] * momentum + var[i] * (1.0 - momentum))
            .collect();
        if cx.opset >= 14 {
            outs.push(cast(rm, &[c])?);
            outs.push(cast(rv, &[c])?);
        } else {
            outs.push(cast(rm, &[c])?);
            outs.push(cast(rv, &[c])?);
            outs.push(cast(mean.clone(), &[c])?);
            outs.push(cast(var.clone(), &[c])?);
        }
        outs.truncate(cx.num_outputs.max(1));
    }
    Ok(outs)
}

pub(crate) fn instance_norm(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    if !x.is_float() {
        return Err(dtype_err(cx, x, "expects a floating point input"));
    }
    let s = x.shape().to_vec();
    if s.len() < 3 {
        return Err(cx.err(format!("X must have rank >= 3, got {s:?}")));
    }
    let c = s[1];
    let eps = cx.attr_f_or("epsilon", 1e-5)? as f64;
    let scale = channel_vec(cx, 1, c, "scale")?;
    let bias = channel_vec(cx, 2, c, "B")?;
    let xv = x.to_f64_vec();
    let inner: usize = s[2..].iter().product();
    let mut y = vec![0f64; xv.len()];
    for (row, (src, dst)) in xv
        .chunks(inner.max(1))
        .zip(y.chunks_mut(inner.max(1)))
        .enumerate()
    {
        let ch = row % c.max(1);
        let mu = src.iter().sum::<f64>() / inner as f64;
        let var = src.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v - mu) * inv * scale[ch] + bias[ch];
        }
    }
    TensorValue::F64(arr(&s, y)?)
        .cast(x.data_type())
        .map_err(|e| cx.err(e.to_string()))
}

/// Broadcasts `t` to `shape` (right-aligned) and returns its values as f64.
pub(crate) fn broadcast_f64(
    cx: &Ctx,
    t: &TensorValue,
    shape: &[usize],
    what: &str,
) -> Result<Vec<f64>> {
    let a = ArrayD::from_shape_vec(IxDyn(t.shape()), t.to_f64_vec())
        .map_err(|e| cx.err(e.to_string()))?;
    let v = a.broadcast(IxDyn(shape)).ok_or_else(|| {
        cx.err(format!(
            "{what} of shape {:?} does not broadcast to {shape:?}",
            t.shape()
        ))
    })?;
    Ok(v.iter().copied().collect())
}

pub(crate) fn layer_norm(cx: &Ctx) -> Result<Vec<TensorValue>> {
    let x = cx.input(0)?;
    if !x.is_float() {
        return Err(dtype_err(cx, x, "expects a floating point input"));
    }
    let s = x.shape().to_vec();
    let r = s.len();
    let ax = cx.axis(cx.attr_i_or("axis", -1)?, r)?;
    let eps = cx.attr_f_or("epsilon", 1e-5)? as f64;
    let stash = cx.attr_i_or("stash_type", 1)?;
    let inner: usize = s[ax..].iter().product();
    let outer: usize = s[..ax].iter().product();
    let scale = broadcast_f64(cx, cx.input(1)?, &s[ax..], "Scale")?;
    let bias = match cx.opt_input(2) {
        Some(b) => Some(broadcast_f64(cx, b, &s[ax..], "B")?),
        None => None,
    };
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; xv.len()];
    let mut means = Vec::with_capacity(outer);
    let mut invs = Vec::with_capacity(outer);
    for o in 0..outer {
        let src = &xv[o * inner..(o + 1) * inner];
        let mu = src.iter().sum::<f64>() / inner as f64;
        let var = src.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, &v) in src.iter().enumerate() {
            let mut t = (v - mu) * inv * scale[j];
            if let Some(b) = &bias {
                t += b[j];
            }
            y[o * inner + j] = t;
        }
        means.push(mu);
        invs.push(inv);
    }
    let xt = x.data_type();
    let mut outs = vec![
        TensorValue::F64(arr(&s, y)?)
            .cast(xt)
            .map_err(|e| cx.err(e.to_string()))?,
    ];
    if cx.num_outputs > 1 {
        let mut st: Vec<usize> = s[..ax].to_vec();
        st.extend(std::iter::repeat_n(1, r - ax));
        let sdt = if stash == 1 { super::dtype::FLOAT } else { xt };
        outs.push(
            TensorValue::F64(arr(&st, means)?)
                .cast(sdt)
                .map_err(|e| cx.err(e.to_string()))?,
        );
        if cx.num_outputs > 2 {
            outs.push(
                TensorValue::F64(arr(&st, invs)?)
                    .cast(sdt)
                    .map_err(|e| cx.err(e.to_string()))?,
            );
        }
    }
    Ok(outs)
}

pub(crate) fn softmax(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    if !x.is_float() {
        return Err(dtype_err(cx, x, "expects a floating point input"));
    }
    let s = x.shape().to_vec();
    let r = s.len();
    let legacy = cx.opset < 13;
    let axis = cx.attr_i_or("axis", if legacy { 1 } else { -1 })?;
    if r == 0 {
        return Err(cx.err("expects rank >= 1"));
    }
    let ax = cx.axis(axis, r)?;
    // Legacy: coerce to 2-D [prod(:axis), prod(axis:)]; otherwise reduce along the single axis.
    let (outer, dim, inner) = if legacy {
        (
            s[..ax].iter().product::<usize>(),
            s[ax..].iter().product::<usize>(),
            1usize,
        )
    } else {
        (
            s[..ax].iter().product::<usize>(),
            s[ax],
            s[ax + 1..].iter().product::<usize>(),
        )
    };
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; xv.len()];
    let op = cx.op;
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * dim + j) * inner + i;
            let mx = (0..dim)
                .map(|j| xv[at(j)])
                .fold(f64::NEG_INFINITY, f64::max);
            match op {
                "Hardmax" => {
                    let first = (0..dim).find(|&j| xv[at(j)] == mx).unwrap_or(0);
                    if dim > 0 {
                        y[at(first)] = 1.0;
                    }
                }
                _ => {
                    let sum: f64 = (0..dim).map(|j| (xv[at(j)] - mx).exp()).sum();
                    for j in 0..dim {
                        let e = xv[at(j)] - mx;
                        y[at(j)] = if op == "LogSoftmax" {
                            e - sum.ln()
                        } else {
                            e.exp() / sum
                        };
                    }
                }
            }
        }
    }
    TensorValue::F64(arr(&s, y)?)
        .cast(x.data_type())
        .map_err(|e| cx.err(e.to_string()))
}
