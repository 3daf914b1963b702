//! Indexing ops: Gather, GatherElements, GatherND, ScatterND, ScatterElements, Trilu, CumSum,
//! ArgMax/ArgMin, TopK.

use super::elementwise::{dtype_err, same_dtype};
use super::tensor::{Elem, Num, arr, flat};
use super::{Ctx, Result, TensorValue};

fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn indices(cx: &Ctx, i: usize) -> Result<(Vec<i64>, Vec<usize>)> {
    let t = cx.input(i)?;
    let v = t
        .to_i64_vec()
        .ok_or_else(|| dtype_err(cx, t, "indices must be int32 or int64"))?;
    Ok((v, t.shape().to_vec()))
}

fn fix_index(cx: &Ctx, i: i64, dim: usize) -> Result<usize> {
    let d = dim as i64;
    let j = if i < 0 { i + d } else { i };
    if j < 0 || j >= d {
        return Err(cx.err(format!(
            "index {i} is out of bounds for an axis of size {dim}"
        )));
    }
    Ok(j as usize)
}

pub(crate) fn gather(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let (idx, ishape) = indices(cx, 1)?;
    let s = t.shape().to_vec();
    if s.is_empty() {
        return Err(cx.err("data must have rank >= 1"));
    }
    let ax = cx.axis(cx.attr_i_or("axis", 0)?, s.len())?;
    let dim = s[ax];
    let idx: Vec<usize> = idx
        .iter()
        .map(|&i| fix_index(cx, i, dim))
        .collect::<Result<_>>()?;
    let mut oshape: Vec<usize> = s[..ax].to_vec();
    oshape.extend_from_slice(&ishape);
    oshape.extend_from_slice(&s[ax + 1..]);
    cx.check_alloc(&oshape, t.elem_bytes())?;
    let outer: usize = s[..ax].iter().product();
    let inner: usize = s[ax + 1..].iter().product();
    dispatch_all!(t, a, T => {
        let src = flat(a);
        let mut out: Vec<T> = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in &idx {
                let base = (o * dim + i) * inner;
                out.extend_from_slice(&src[base..base + inner]);
            }
        }
        Ok(T::wrap(arr(&oshape, out)?))
    })
}

pub(crate) fn gather_elements(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let (idx, ishape) = indices(cx, 1)?;
    let s = t.shape().to_vec();
    if ishape.len() != s.len() {
        return Err(cx.err(format!(
            "indices rank {} differs from data rank {}",
            ishape.len(),
            s.len()
        )));
    }
    let ax = cx.axis(cx.attr_i_or("axis", 0)?, s.len())?;
    let ds = strides_of(&s);
    let is = strides_of(&ishape);
    let mut offs = Vec::with_capacity(idx.len());
    for (k, &i) in idx.iter().enumerate() {
        let mut off = 0usize;
        for d in 0..s.len() {
            let c = (k / is[d]) % ishape[d].max(1);
            let c = if d == ax {
                fix_index(cx, i, s[d])?
            } else {
                if c >= s[d] {
                    return Err(
                        cx.err(format!("indices shape {ishape:?} exceeds data shape {s:?}"))
                    );
                }
                c
            };
            off += c * ds[d];
        }
        offs.push(off);
    }
    dispatch_all!(t, a, T => {
        let src = flat(a);
        Ok(T::wrap(arr(&ishape, offs.iter().map(|&o| src[o].clone()).collect())?))
    })
}

pub(crate) fn gather_nd(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let (idx, ishape) = indices(cx, 1)?;
    let s = t.shape().to_vec();
    let b = usize::try_from(cx.attr_i_or("batch_dims", 0)?)
        .map_err(|_| cx.err("negative batch_dims"))?;
    let q = ishape.len();
    if q == 0 || b >= q || b >= s.len() {
        return Err(cx.err(format!(
            "invalid ranks: data {s:?}, indices {ishape:?}, batch_dims {b}"
        )));
    }
    let k = ishape[q - 1];
    if b + k > s.len() || s[..b] != ishape[..b] {
        return Err(cx.err(format!(
            "indices {ishape:?} do not fit data {s:?} with batch_dims {b}"
        )));
    }
    let mut oshape: Vec<usize> = ishape[..q - 1].to_vec();
    oshape.extend_from_slice(&s[b + k..]);
    cx.check_alloc(&oshape, t.elem_bytes())?;
    let ds = strides_of(&s);
    let inner: usize = s[b + k..].iter().product();
    let batch: usize = s[..b].iter().product();
    let per_batch = ishape[..q - 1]
        .iter()
        .product::<usize>()
        .checked_div(batch)
        .unwrap_or(0);
    let batch_stride = if b == 0 { 0 } else { ds[b - 1] };
    let tuples = idx.len().checked_div(k).unwrap_or(idx.len());
    let n_tuples = if k == 0 {
        ishape[..q - 1].iter().product()
    } else {
        tuples
    };
    let mut starts = Vec::with_capacity(n_tuples);
    for tix in 0..n_tuples {
        let bi = tix.checked_div(per_batch).unwrap_or(0);
        let mut off = bi * batch_stride;
        for j in 0..k {
            off += fix_index(cx, idx[tix * k + j], s[b + j])? * ds[b + j];
        }
        starts.push(off);
    }
    dispatch_all!(t, a, T => {
        let src = flat(a);
        let mut out: Vec<T> = Vec::with_capacity(starts.len() * inner);
        for &o in &starts {
            out.extend_from_slice(&src[o..o + inner]);
        }
        Ok(T::wrap(arr(&oshape, out)?))
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Red {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(cx: &Ctx) -> Result<Red> {
    Ok(match cx.attr_s_or("reduction", "none")?.as_str() {
        "none" => Red::None,
        "add" => Red::Add,
        "mul" => Red::Mul,
        "max" => Red::Max,
        "min" => Red::Min,
        other => return Err(cx.err(format!("unknown reduction '{other}'"))),
    })
}

/// Writes `updates[k]` to `out[offs[k]]` with the given reduction.
fn scatter_apply(
    cx: &Ctx,
    data: &TensorValue,
    updates: &TensorValue,
    offs: &[(usize, usize)],
    red: Red,
) -> Result<TensorValue> {
    same_dtype(cx, data, updates)?;
    if red == Red::None {
        return dispatch_all!(data, a, T => {
            let u = T::get(updates).ok_or_else(|| cx.err("dtype mismatch"))?;
            let us = flat(u);
            let mut out = flat(a).into_owned();
            for &(o, k) in offs { out[o] = us[k].clone(); }
            Ok(T::wrap(arr(a.shape(), out)?))
        });
    }
    dispatch_num!(data, a, T => {
        let u = T::get(updates).ok_or_else(|| cx.err("dtype mismatch"))?;
        let us = flat(u);
        let mut out = flat(a).into_owned();
        for &(o, k) in offs {
            let (x, y) = (out[o], us[k]);
            out[o] = match red { Red::Add => x.add(y), Red::Mul => x.mul(y), Red::Max => x.max_of(y), Red::Min => x.min_of(y), Red::None => y };
        }
        Ok(T::wrap(arr(a.shape(), out)?))
    }, o => Err(dtype_err(cx, o, "reductions need numeric data")))
}

pub(crate) fn scatter_nd(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let (idx, ishape) = indices(cx, 1)?;
    let u = cx.input(2)?;
    let red = reduction(cx)?;
    let s = t.shape().to_vec();
    let q = ishape.len();
    if q == 0 {
        return Err(cx.err("indices must have rank >= 1"));
    }
    let k = ishape[q - 1];
    if k > s.len() {
        return Err(cx.err(format!(
            "index tuples of length {k} exceed data rank {}",
            s.len()
        )));
    }
    let mut ushape: Vec<usize> = ishape[..q - 1].to_vec();
    ushape.extend_from_slice(&s[k..]);
    if u.shape() != ushape.as_slice() {
        return Err(cx.err(format!("updates shape {:?} must be {ushape:?}", u.shape())));
    }
    let ds = strides_of(&s);
    let inner: usize = s[k..].iter().product();
    let n_tuples: usize = ishape[..q - 1].iter().product();
    let mut offs = Vec::with_capacity(n_tuples * inner);
    for tix in 0..n_tuples {
        let mut off = 0;
        for j in 0..k {
            off += fix_index(cx, idx[tix * k + j], s[j])? * ds[j];
        }
        for i in 0..inner {
            offs.push((off + i, tix * inner + i));
        }
    }
    scatter_apply(cx, t, u, &offs, red)
}

pub(crate) fn scatter_elements(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let (idx, ishape) = indices(cx, 1)?;
    let u = cx.input(2)?;
    let red = reduction(cx)?;
    let s = t.shape().to_vec();
    if ishape.len() != s.len() || u.shape() != ishape.as_slice() {
        return Err(cx.err(format!(
            "indices {ishape:?} and updates {:?} must have the same shape and the data's rank ({s:?})",
            u.shape()
        )));
    }
    let ax = cx.axis(cx.attr_i_or("axis", 0)?, s.len())?;
    let ds = strides_of(&s);
    let is = strides_of(&ishape);
    let mut offs = Vec::with_capacity(idx.len());
    for (k, &i) in idx.iter().enumerate() {
        let mut off = 0usize;
        for d in 0..s.len() {
            let c = if d == ax {
                fix_index(cx, i, s[d])?
            } else {
                let c = (k / is[d]) % ishape[d].max(1);
                if c >= s[d] {
                    return Err(
                        cx.err(format!("indices shape {ishape:?} exceeds data shape {s:?}"))
                    );
                }
                c
            };
            off += c * ds[d];
        }
        offs.push((off, k));
    }
    scatter_apply(cx, t, u, &offs, red)
}

pub(crate) fn trilu(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let s = t.shape().to_vec();
    if s.len() < 2 {
        return Err(cx.err(format!("expects rank >= 2, got {s:?}")));
    }
    let k = match cx.opt_input(1) {
        Some(kt) => {
            let v = kt
                .to_i64_vec()
                .ok_or_else(|| dtype_err(cx, kt, "k must be int64"))?;
            if v.len() != 1 {
                return Err(cx.err("k must be a scalar"));
            }
            v[0]
        }
        None => 0,
    };
    let upper = cx.attr_i_or("upper", 1)? != 0;
    let (n, m) = (s[s.len() - 2], s[s.len() - 1]);
    dispatch_all!(t, a, T => {
        let mut out = flat(a).into_owned();
        for (p, v) in out.iter_mut().enumerate() {
            let j = (p % m.max(1)) as i64;
            let i = ((p / m.max(1)) % n.max(1)) as i64;
            let keep = if upper { j - i >= k } else { j - i <= k };
            if !keep { *v = T::default(); }
        }
        Ok(T::wrap(arr(&s, out)?))
    })
}

pub(crate) fn cumsum(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let at = cx.input(1)?;
    let av = at
        .to_i64_vec()
        .ok_or_else(|| dtype_err(cx, at, "axis must be int32 or int64"))?;
    if av.len() != 1 {
        return Err(cx.err("axis must be a scalar"));
    }
    let s = t.shape().to_vec();
    let ax = cx.axis(av[0], s.len())?;
    let exclusive = cx.attr_i_or("exclusive", 0)? != 0;
    let reverse = cx.attr_i_or("reverse", 0)? != 0;
    let prod = cx.op == "CumProd";
    let outer: usize = s[..ax].iter().product();
    let dim = s[ax];
    let inner: usize = s[ax + 1..].iter().product();
    dispatch_num!(t, a, T => {
        let src = flat(a);
        let mut out = vec![T::zero(); src.len()];
        for o in 0..outer {
            for i in 0..inner {
                let mut acc = if prod { T::one() } else { T::zero() };
                for step in 0..dim {
                    let j = if reverse { dim - 1 - step } else { step };
                    let p = (o * dim + j) * inner + i;
                    let next = if prod { acc.mul(src[p]) } else { acc.add(src[p]) };
                    out[p] = if exclusive { acc } else { next };
                    acc = next;
                }
            }
        }
        Ok(T::wrap(arr(&s, out)?))
    }, o => Err(dtype_err(cx, o, "expects a numeric input")))
}

pub(crate) fn arg_reduce(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let s = t.shape().to_vec();
    let ax = cx.axis(cx.attr_i_or("axis", 0)?, s.len().max(1))?;
    if s.is_empty() {
        return Err(cx.err("expects rank >= 1"));
    }
    let keep = cx.attr_i_or("keepdims", 1)? != 0;
    let last = cx.attr_i_or("select_last_index", 0)? != 0;
    let is_max = cx.op == "ArgMax";
    let outer: usize = s[..ax].iter().product();
    let dim = s[ax];
    if dim == 0 {
        return Err(cx.err("cannot take the arg of an empty axis"));
    }
    let inner: usize = s[ax + 1..].iter().product();
    let mut oshape = s.clone();
    if keep {
        oshape[ax] = 1;
    } else {
        oshape.remove(ax);
    }
    dispatch_num!(t, a, T => {
        let src = flat(a);
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let mut best = 0usize;
                let mut bv = src[o * dim * inner + i];
                for j in 1..dim {
                    let v = src[(o * dim + j) * inner + i];
                    if bv.is_nan() { break; }
                    let better = if v.is_nan() { true } else if is_max { v > bv || (last && v == bv) } else { v < bv || (last && v == bv) };
                    if better { best = j; bv = v; }
                }
                out.push(best as i64);
            }
        }
        Ok(TensorValue::I64(arr(&oshape, out)?))
    }, o => Err(dtype_err(cx, o, "expects a numeric input")))
}

pub(crate) fn topk(cx: &Ctx) -> Result<Vec<TensorValue>> {
    let t = cx.input(0)?;
    let s = t.shape().to_vec();
    if s.is_empty() {
        return Err(cx.err("expects rank >= 1"));
    }
    let k = if cx.opset < 10 {
        cx.attr_i("k")?
            .ok_or_else(|| cx.err("missing attribute 'k'"))?
    } else {
        let kt = cx.input(1)?;
        let v = kt
            .to_i64_vec()
            .ok_or_else(|| dtype_err(cx, kt, "K must be int64"))?;
        if v.len() != 1 {
            return Err(cx.err("K must hold one value"));
        }
        v[0]
    };
    let ax = cx.axis(cx.attr_i_or("axis", -1)?, s.len())?;
    let largest = cx.attr_i_or("largest", 1)? != 0;
    let dim = s[ax];
    if k < 0 || k as u64 > dim as u64 {
        return Err(cx.err(format!("k={k} is out of range for an axis of size {dim}")));
    }
    let k = k as usize;
    let outer: usize = s[..ax].iter().product();
    let inner: usize = s[ax + 1..].iter().product();
    let mut oshape = s.clone();
    oshape[ax] = k;
    dispatch_num!(t, a, T => {
        let src = flat(a);
        let mut vals: Vec<T> = vec![T::zero(); outer * k * inner];
        let mut idxs: Vec<i64> = vec![0; outer * k * inner];
        let mut order: Vec<usize> = Vec::with_capacity(dim);
        for o in 0..outer {
            for i in 0..inner {
                order.clear();
                order.extend(0..dim);
                let at = |j: usize| src[(o * dim + j) * inner + i];
                order.sort_by(|&x, &y| {
                    let (a, b) = (at(x), at(y));
                    let c = a.partial_cmp(&b).unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()));
                    let c = if largest { c.reverse() } else { c };
                    c.then(x.cmp(&y))
                });
                for (r, &j) in order.iter().take(k).enumerate() {
                    let p = (o * k + r) * inner + i;
                    vals[p] = at(j);
                    idxs[p] = j as i64;
                }
            }
        }
        Ok(vec![T::wrap(arr(&oshape, vals)?), TensorValue::I64(arr(&oshape, idxs)?)])
    }, o => Err(dtype_err(cx, o, "expects a numeric input")))
}
