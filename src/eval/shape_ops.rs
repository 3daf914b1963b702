//! Shape and data-movement ops: Shape, Size, Reshape, Flatten, Squeeze, Unsqueeze, Transpose,
//! Concat, Split, Slice, Expand, Tile, Pad, DepthToSpace, SpaceToDepth.

use ndarray::{ArrayD, Axis, IxDyn};

use super::elementwise::same_dtype;
use super::tensor::{Elem, arr, flat, std_owned};
use super::{Ctx, Result, TensorValue, dtype_name};

/// Copies `a` into the same data with a new shape (element counts must match).
pub(crate) fn reshape_arr<T: Clone>(cx: &Ctx, a: &ArrayD<T>, shape: &[usize]) -> Result<ArrayD<T>> {
    let n: usize = shape.iter().product();
    if n != a.len() {
        return Err(cx.err(format!(
            "cannot reshape {} elements of shape {:?} into {:?}",
            a.len(),
            a.shape(),
            shape
        )));
    }
    arr(shape, flat(a).into_owned())
}

/// Builds an output by mapping each output index, axis by axis, to an input index (`None` means
/// "use `fill`"). `maps[k].len()` is the output extent of axis k. The caller checks the size.
pub(crate) fn remap_axes<T: Clone>(
    a: &ArrayD<T>,
    maps: &[Vec<Option<usize>>],
    fill: &T,
) -> Result<ArrayD<T>> {
    let src = flat(a);
    let in_shape = a.shape();
    let rank = in_shape.len();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * in_shape[i + 1];
    }
    let out_shape: Vec<usize> = maps.iter().map(|m| m.len()).collect();
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    fn rec<T: Clone>(
        axis: usize,
        off: Option<usize>,
        maps: &[Vec<Option<usize>>],
        strides: &[usize],
        src: &[T],
        fill: &T,
        out: &mut Vec<T>,
    ) {
        if axis == maps.len() {
            out.push(match off {
                Some(o) => src[o].clone(),
                None => fill.clone(),
            });
            return;
        }
        for m in &maps[axis] {
            let next = match (off, m) {
                (Some(o), Some(i)) => Some(o + i * strides[axis]),
                _ => None,
            };
            rec(axis + 1, next, maps, strides, src, fill, out);
        }
    }
    if n > 0 {
        rec(0, Some(0), maps, &strides, &src, fill, &mut out);
    }
    arr(&out_shape, out)
}

pub(crate) fn shape(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let r = t.rank() as i64;
    let clampi = |v: i64| -> i64 {
        let v = if v < 0 { v.saturating_add(r) } else { v };
        v.clamp(0, r)
    };
    let start = clampi(cx.attr_i_or("start", 0)?);
    let end = match cx.attr_i("end")? {
        Some(e) => clampi(e),
        None => r,
    };
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let sel = if start < end {
        dims[start as usize..end as usize].to_vec()
    } else {
        Vec::new()
    };
    Ok(TensorValue::vec_i64(sel))
}

pub(crate) fn size(cx: &Ctx) -> Result<TensorValue> {
    Ok(TensorValue::scalar_i64(cx.input(0)?.len() as i64))
}

pub(crate) fn reshape(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let spec = if cx.opset < 5 {
        cx.attr_ints("shape")?
            .ok_or_else(|| cx.err("missing attribute 'shape'"))?
    } else {
        cx.ints_input(1, "shape")?
            .ok_or_else(|| cx.err("missing input 'shape'"))?
    };
    let allowzero = cx.attr_i_or("allowzero", 0)? != 0;
    let in_shape = t.shape();
    let mut out: Vec<usize> = Vec::with_capacity(spec.len());
    let mut infer: Option<usize> = None;
    for (i, &d) in spec.iter().enumerate() {
        if d == -1 {
            if infer.is_some() {
                return Err(cx.err(format!("shape {spec:?} has more than one -1")));
            }
            infer = Some(i);
            out.push(1);
        } else if d == 0 && !allowzero {
            let v = in_shape.get(i).ok_or_else(|| {
                cx.err(format!(
                    "shape {spec:?} copies dimension {i} (0) but the input has rank {}",
                    in_shape.len()
                ))
            })?;
            out.push(*v);
        } else if d < 0 {
            return Err(cx.err(format!("invalid dimension {d} in shape {spec:?}")));
        } else {
            out.push(usize::try_from(d).map_err(|_| cx.err("dimension too large"))?);
        }
    }
    if allowzero && infer.is_some() && spec.contains(&0) {
        return Err(cx.err("allowzero=1 with both 0 and -1 in the shape is invalid"));
    }
    let total = t.len();
    let known = out
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| cx.err(format!("shape {spec:?} overflows")))?;
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return Err(cx.err(format!(
                "cannot infer -1 in {spec:?} for {total} elements of shape {in_shape:?}"
            )));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(cx.err(format!(
            "cannot reshape {total} elements of shape {in_shape:?} into {spec:?}"
        )));
    }
    dispatch_all!(t, a, T => Ok(T::wrap(reshape_arr(cx, a, &out)?)))
}

pub(crate) fn flatten(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let r = t.rank();
    let axis = cx.attr_i_or("axis", 1)?;
    let ax = if axis == r as i64 {
        r
    } else {
        cx.axis(axis, r)?
    };
    let s = t.shape();
    let outer: usize = s[..ax].iter().product();
    let inner: usize = s[ax..].iter().product();
    dispatch_all!(t, a, T => Ok(T::wrap(reshape_arr(cx, a, &[outer, inner])?)))
}

fn axes_arg(cx: &Ctx, input_from: i64) -> Result<Option<Vec<i64>>> {
    if cx.opset >= input_from {
        cx.ints_input(1, "axes")
    } else {
        cx.attr_ints("axes")
    }
}

pub(crate) fn squeeze(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let s = t.shape();
    let axes = axes_arg(cx, 13)?;
    let mut drop = vec![false; s.len()];
    match axes.filter(|a| !a.is_empty()) {
        None => {
            for (i, &d) in s.iter().enumerate() {
                drop[i] = d == 1;
            }
        }
        Some(ax) => {
            for a in ax {
                let i = cx.axis(a, s.len())?;
                if s[i] != 1 {
                    return Err(cx.err(format!(
                        "cannot squeeze axis {a} of size {} (shape {s:?})",
                        s[i]
                    )));
                }
                drop[i] = true;
            }
        }
    }
    let out: Vec<usize> = s
        .iter()
        .zip(&drop)
        .filter(|(_, d)| !**d)
        .map(|(&v, _)| v)
        .collect();
    dispatch_all!(t, a, T => Ok(T::wrap(reshape_arr(cx, a, &out)?)))
}

pub(crate) fn unsqueeze(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let s = t.shape();
    let axes = axes_arg(cx, 13)?.ok_or_else(|| cx.err("missing axes"))?;
    let r = s.len() + axes.len();
    let mut ins = vec![false; r];
    for a in &axes {
        let i = cx.axis(*a, r)?;
        if ins[i] {
            return Err(cx.err(format!("duplicate axis {a} in {axes:?}")));
        }
        ins[i] = true;
    }
    let mut it = s.iter();
    let out: Vec<usize> = ins
        .iter()
        .map(|&b| if b { 1 } else { *it.next().unwrap_or(&1) })
        .collect();
    dispatch_all!(t, a, T => Ok(T::wrap(reshape_arr(cx, a, &out)?)))
}

pub(crate) fn permutation(cx: &Ctx, perm: &[i64], r: usize) -> Result<Vec<usize>> {
    if perm.len() != r {
        return Err(cx.err(format!("perm {perm:?} does not match rank {r}")));
    }
    let mut seen = vec![false; r];
    let mut out = Vec::with_capacity(r);
    for &p in perm {
        let i = cx.axis(p, r)?;
        if seen[i] {
            return Err(cx.err(format!("perm {perm:?} is not a permutation")));
        }
        seen[i] = true;
        out.push(i);
    }
    Ok(out)
}

pub(crate) fn transpose_arr<T: Clone>(a: &ArrayD<T>, perm: &[usize]) -> ArrayD<T> {
    std_owned(a.view().permuted_axes(IxDyn(perm)))
}

pub(crate) fn transpose(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let r = t.rank();
    let perm = match cx.attr_ints("perm")? {
        Some(p) => permutation(cx, &p, r)?,
        None => (0..r).rev().collect(),
    };
    dispatch_all!(t, a, T => Ok(T::wrap(transpose_arr(a, &perm))))
}

pub(crate) fn concat(cx: &Ctx) -> Result<TensorValue> {
    let ins: Vec<&TensorValue> = cx.inputs.iter().flatten().copied().collect();
    let Some(first) = ins.first() else {
        return Err(cx.err("needs at least one input"));
    };
    let axis = cx
        .attr_i("axis")?
        .ok_or_else(|| cx.err("missing attribute 'axis'"))?;
    let r = first.rank();
    let ax = cx.axis(axis, r)?;
    let mut total = 0usize;
    for t in &ins {
        same_dtype(cx, first, t)?;
        if t.rank() != r {
            return Err(cx.err(format!(
                "inputs have different ranks ({:?} vs {:?})",
                first.shape(),
                t.shape()
            )));
        }
        for k in 0..r {
            if k != ax && t.shape()[k] != first.shape()[k] {
                return Err(cx.err(format!(
                    "input shapes {:?} and {:?} differ outside axis {axis}",
                    first.shape(),
                    t.shape()
                )));
            }
        }
        total = total
            .checked_add(t.shape()[ax])
            .ok_or_else(|| cx.err("size overflow"))?;
    }
    let mut oshape = first.shape().to_vec();
    oshape[ax] = total;
    cx.check_alloc(&oshape, first.elem_bytes())?;
    dispatch_all!(*first, _a0, T => {
        let views: Vec<_> = ins.iter().map(|t| T::get(t).map(|a| a.view())).collect::<Option<Vec<_>>>()
            .ok_or_else(|| cx.err("dtype mismatch"))?;
        let out = ndarray::concatenate(Axis(ax), &views).map_err(|e| cx.err(e.to_string()))?;
        Ok(T::wrap(std_owned(out.view())))
    })
}

pub(crate) fn split(cx: &Ctx) -> Result<Vec<TensorValue>> {
    let t = cx.input(0)?;
    let r = t.rank();
    let ax = cx.axis(cx.attr_i_or("axis", 0)?, r)?;
    let dim = t.shape()[ax];
    let split = if cx.opset >= 13 {
        cx.ints_input(1, "split")?
    } else {
        cx.attr_ints("split")?
    };
    let sizes: Vec<usize> = match split {
        Some(s) if !s.is_empty() => {
            let mut v = Vec::with_capacity(s.len());
            for x in &s {
                v.push(usize::try_from(*x).map_err(|_| cx.err(format!("negative split {s:?}")))?);
            }
            if v.iter().sum::<usize>() != dim {
                return Err(cx.err(format!("split {s:?} does not sum to the axis length {dim}")));
            }
            v
        }
        _ => {
            let n = match cx.attr_i("num_outputs")? {
                Some(n) if n > 0 => n as usize,
                Some(n) => return Err(cx.err(format!("num_outputs must be positive, got {n}"))),
                None => cx.num_outputs,
            };
            if cx.opset < 18 && dim % n != 0 {
                return Err(cx.err(format!(
                    "axis length {dim} is not divisible into {n} outputs"
                )));
            }
            let chunk = dim.div_ceil(n);
            let mut v = Vec::with_capacity(n);
            let mut left = dim;
            for _ in 0..n {
                let c = chunk.min(left);
                v.push(c);
                left -= c;
            }
            v
        }
    };
    let mut outs = Vec::with_capacity(sizes.len());
    let mut start = 0usize;
    for &sz in &sizes {
        let s0 = start;
        outs.push(dispatch_all!(t, a, T => {
            let v = a.slice_axis(Axis(ax), ndarray::Slice::from(s0..s0 + sz));
            T::wrap(std_owned(v))
        }));
        start += sz;
    }
    Ok(outs)
}

pub(crate) fn slice(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let s = t.shape().to_vec();
    let r = s.len();
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        (
            cx.attr_ints("starts")?
                .ok_or_else(|| cx.err("missing attribute 'starts'"))?,
            cx.attr_ints("ends")?
                .ok_or_else(|| cx.err("missing attribute 'ends'"))?,
            cx.attr_ints("axes")?,
            None,
        )
    } else {
        (
            cx.ints_input(1, "starts")?
                .ok_or_else(|| cx.err("missing input 'starts'"))?,
            cx.ints_input(2, "ends")?
                .ok_or_else(|| cx.err("missing input 'ends'"))?,
            cx.ints_input(3, "axes")?,
            cx.ints_input(4, "steps")?,
        )
    };
    if starts.len() != ends.len() {
        return Err(cx.err(format!(
            "starts {starts:?} and ends {ends:?} differ in length"
        )));
    }
    let axes: Vec<i64> = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps: Vec<i64> = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(cx.err("starts, ends, axes and steps must have the same length"));
    }
    let mut maps: Vec<Vec<Option<usize>>> = s.iter().map(|&d| (0..d).map(Some).collect()).collect();
    let mut seen = vec![false; r];
    for k in 0..starts.len() {
        let ax = cx.axis(axes[k], r)?;
        if seen[ax] {
            return Err(cx.err(format!("axis {} repeated in axes {axes:?}", axes[k])));
        }
        seen[ax] = true;
        let step = steps[k] as i128;
        if step == 0 {
            return Err(cx.err("step must not be 0"));
        }
        let dim = s[ax] as i128;
        let mut st = starts[k] as i128;
        let mut en = ends[k] as i128;
        if st < 0 {
            st += dim;
        }
        if en < 0 {
            en += dim;
        }
        let idx: Vec<Option<usize>> = if step > 0 {
            let st = st.clamp(0, dim);
            let en = en.clamp(0, dim);
            let mut v = Vec::new();
            let mut i = st;
            while i < en {
                v.push(Some(i as usize));
                i += step;
            }
            v
        } else {
            let st = st.clamp(0, (dim - 1).max(0));
            let en = en.clamp(-1, dim - 1);
            let mut v = Vec::new();
            let mut i = st;
            while i > en && dim > 0 {
                v.push(Some(i as usize));
                i += step;
            }
            v
        };
        maps[ax] = idx;
    }
    dispatch_all!(t, a, T => Ok(T::wrap(remap_axes(a, &maps, &T::default())?)))
}

pub(crate) fn shape_input(cx: &Ctx, i: usize, what: &str) -> Result<Vec<usize>> {
    let v = cx
        .ints_input(i, what)?
        .ok_or_else(|| cx.err(format!("missing input '{what}'")))?;
    v.iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| cx.err(format!("negative dimension {d} in {what} {v:?}")))
        })
        .collect()
}

pub(crate) fn expand(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let shape = shape_input(cx, 1, "shape")?;
    let out = super::elementwise::out_shape(cx, &[t.shape(), &shape], t.elem_bytes())?;
    dispatch_all!(t, a, T => {
        let v = a.broadcast(IxDyn(&out)).ok_or_else(|| cx.err("broadcast failed"))?;
        Ok(T::wrap(std_owned(v)))
    })
}

pub(crate) fn tile(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let reps = shape_input(cx, 1, "repeats")?;
    let s = t.shape();
    if reps.len() != s.len() {
        return Err(cx.err(format!(
            "repeats {reps:?} must have one entry per input dimension ({s:?})"
        )));
    }
    let mut out = Vec::with_capacity(s.len());
    for (d, r) in s.iter().zip(&reps) {
        out.push(
            d.checked_mul(*r)
                .ok_or_else(|| cx.err("output size overflows"))?,
        );
    }
    cx.check_alloc(&out, t.elem_bytes())?;
    let maps: Vec<Vec<Option<usize>>> = s
        .iter()
        .zip(&out)
        .map(|(&d, &o)| (0..o).map(|i| Some(i % d.max(1))).collect())
        .collect();
    dispatch_all!(t, a, T => Ok(T::wrap(remap_axes(a, &maps, &T::default())?)))
}

/// A scalar of the tensor's element type from a (possibly different-typed) scalar value.
fn fill_value<T: Elem>(cx: &Ctx, v: &TensorValue) -> Result<T> {
    let c = v.cast(T::DTYPE).map_err(|e| cx.err(e.to_string()))?;
    T::get(&c)
        .and_then(|a| a.iter().next().cloned())
        .ok_or_else(|| cx.err("constant value is empty"))
}

pub(crate) fn pad(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let s = t.shape().to_vec();
    let r = s.len();
    let mode = cx.attr_s_or("mode", "constant")?;
    let (pads, value, axes): (Vec<i64>, Option<TensorValue>, Option<Vec<i64>>) = if cx.opset < 11 {
        let p = if cx.opset < 2 {
            cx.attr_ints("paddings")?
        } else {
            cx.attr_ints("pads")?
        }
        .ok_or_else(|| cx.err("missing attribute 'pads'"))?;
        (
            p,
            Some(TensorValue::scalar_f32(cx.attr_f_or("value", 0.0)?)),
            None,
        )
    } else {
        let p = cx
            .ints_input(1, "pads")?
            .ok_or_else(|| cx.err("missing input 'pads'"))?;
        let v = cx.opt_input(2).cloned();
        if let Some(v) = &v {
            if v.len() != 1 {
                return Err(cx.err(format!(
                    "constant_value must be a scalar, got shape {:?}",
                    v.shape()
                )));
            }
            if v.data_type() != t.data_type() {
                return Err(cx.err(format!(
                    "constant_value has type {}, input has {}",
                    dtype_name(v.data_type()),
                    dtype_name(t.data_type())
                )));
            }
        }
        (p, v, cx.ints_input(3, "axes")?)
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&x| cx.axis(x, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(cx.err(format!(
            "pads {pads:?} must have 2 entries per padded axis ({} axes)",
            axes.len()
        )));
    }
    let n = axes.len();
    let mut begin = vec![0i64; r];
    let mut end = vec![0i64; r];
    for (k, &ax) in axes.iter().enumerate() {
        begin[ax] = pads[k];
        end[ax] = pads[k + n];
    }
    let mut out_shape = Vec::with_capacity(r);
    for i in 0..r {
        let o = s[i] as i128 + begin[i] as i128 + end[i] as i128;
        if o < 0 || o > usize::MAX as i128 {
            return Err(cx.err(format!(
                "pads {pads:?} give a negative or huge output for shape {s:?}"
            )));
        }
        out_shape.push(o as usize);
    }
    cx.check_alloc(&out_shape, t.elem_bytes())?;
    let mut maps = Vec::with_capacity(r);
    for i in 0..r {
        let d = s[i] as i64;
        let mut m = Vec::with_capacity(out_shape[i]);
        for o in 0..out_shape[i] as i64 {
            let j = o - begin[i];
            let v = if j >= 0 && j < d {
                Some(j as usize)
            } else {
                match mode.as_str() {
                    "constant" => None,
                    _ if d == 0 => {
                        return Err(cx.err(format!("mode {mode} cannot pad an empty axis")));
                    }
                    "edge" => Some(j.clamp(0, d - 1) as usize),
                    "wrap" => Some(j.rem_euclid(d) as usize),
                    "reflect" => {
                        if d == 1 {
                            Some(0)
                        } else {
                            let p = 2 * (d - 1);
                            let mm = j.rem_euclid(p);
                            Some(if mm >= d { p - mm } else { mm } as usize)
                        }
                    }
                    other => return Err(cx.err(format!("unknown mode '{other}'"))),
                }
            };
            m.push(v);
        }
        maps.push(m);
    }
    dispatch_all!(t, a, T => {
        let fill: T = match &value { Some(v) => fill_value::<T>(cx, v)?, None => T::default() };
        Ok(T::wrap(remap_axes(a, &maps, &fill)?))
    })
}

pub(crate) fn depth_space(cx: &Ctx) -> Result<TensorValue> {
    let t = cx.input(0)?;
    let s = t.shape().to_vec();
    if s.len() != 4 {
        return Err(cx.err(format!("expects a 4-D input, got {s:?}")));
    }
    let b = cx
        .attr_i("blocksize")?
        .ok_or_else(|| cx.err("missing attribute 'blocksize'"))?;
    if b <= 0 {
        return Err(cx.err(format!("blocksize must be positive, got {b}")));
    }
    if b > 1 << 16 {
        return Err(cx.err(format!("blocksize {b} is too large")));
    }
    let b = b as usize;
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let (mid, perm, out): (Vec<usize>, Vec<usize>, Vec<usize>) = if cx.op == "DepthToSpace" {
        if c % (b * b) != 0 {
            return Err(cx.err(format!(
                "channels {c} not divisible by blocksize² {}",
                b * b
            )));
        }
        let cc = c / (b * b);
        let out = vec![n, cc, h * b, w * b];
        if cx.attr_s_or("mode", "DCR")? == "CRD" {
            (vec![n, cc, b, b, h, w], vec![0, 1, 4, 2, 5, 3], out)
        } else {
            (vec![n, b, b, cc, h, w], vec![0, 3, 4, 1, 5, 2], out)
        }
    } else {
        if h % b != 0 || w % b != 0 {
            return Err(cx.err(format!(
                "spatial dims {h}x{w} not divisible by blocksize {b}"
            )));
        }
        let perm = if cx.attr_s_or("mode", "DCR")? == "CRD" {
            vec![0, 1, 3, 5, 2, 4]
        } else {
            vec![0, 3, 5, 1, 2, 4]
        };
        (
            vec![n, c, h / b, b, w / b, b],
            perm,
            vec![n, c * b * b, h / b, w / b],
        )
    };
    dispatch_all!(t, a, T => {
        let m = reshape_arr(cx, a, &mid)?;
        let p = transpose_arr(&m, &perm);
        Ok(T::wrap(reshape_arr(cx, &p, &out)?))
    })
}
