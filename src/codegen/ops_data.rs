//! Data movement: views (Reshape family), strided copies (Transpose, Slice, Expand, Tile, Pad,
//! Concat, Split, DepthToSpace, SpaceToDepth), index ops (Gather, GatherElements, GatherND,
//! ScatterND) and Trilu.

use std::rc::Rc;

use crate::eval::TensorValue;
use crate::ir::dtype::code;

use super::BufId;
use super::lower::{Data, Lowerer, Res, StepKind, Val, flat_groups};
use super::program::{Builder, broadcast_shapes, broadcast_strides, contiguous, op};

/// One dimension of a strided copy (see shaders/copy.wgsl).
#[derive(Debug, Clone, Copy)]
pub struct Dim {
    pub extent: usize,
    pub out_stride: usize,
    pub in_stride: usize,
    pub in_extent: usize,
    pub start: i64,
    pub step: i64,
    pub mode: u32,
}

impl Dim {
    fn plain(extent: usize, out_stride: usize, in_stride: usize, in_extent: usize) -> Dim {
        Dim {
            extent,
            out_stride,
            in_stride,
            in_extent,
            start: 0,
            step: 1,
            mode: 0,
        }
    }
}

impl Lowerer<'_> {
    /// Emits one strided copy dispatch.
    pub fn copy(&mut self, out: BufId, out_base: usize, src: BufId, dims: &[Dim], fill: u32) {
        let n: usize = dims.iter().map(|d| d.extent).product();
        if n == 0 {
            return;
        }
        let mut info = vec![
            n as u32,
            dims.len() as u32,
            fill,
            0,
            out_base as u32,
            0,
            0,
            0,
        ];
        for d in dims {
            info.extend([
                d.extent as u32,
                d.out_stride as u32,
                d.in_stride as u32,
                d.in_extent as u32,
                d.start as i32 as u32,
                d.step as i32 as u32,
                d.mode,
            ]);
        }
        self.raw("copy", info, vec![out, src], flat_groups(n, 64));
    }

    /// Output 0 of `out_shape`, reading `x` (contiguous) per dimension at `start + c * step`,
    /// coordinates outside `x` handled by `mode` (see [`Dim`]).
    fn remap(
        &mut self,
        x: &Val,
        out_shape: &[usize],
        start: &[i64],
        step: &[i64],
        mode: u32,
        fill: u32,
    ) -> Res<()> {
        let os = contiguous(out_shape);
        let is = contiguous(&x.shape);
        let dims: Vec<Dim> = (0..out_shape.len())
            .map(|d| Dim {
                start: start[d],
                step: step[d],
                mode,
                ..Dim::plain(out_shape[d], os[d], is[d], x.shape[d])
            })
            .collect();
        let out = self.out_buf(0, out_shape, x.dtype)?;
        let src = self.buf(x)?;
        self.copy(out, 0, src, &dims, fill);
        Ok(())
    }

    /// The output as a view of the input's buffer with another shape.
    fn alias(&mut self, x: &Val, shape: Vec<usize>) -> Res<()> {
        if shape.iter().product::<usize>() != x.numel() {
            return Err(self.invalid(format!("cannot view {:?} as {:?}", x.shape, shape)));
        }
        let v = match &x.data {
            Data::Const(t) => {
                let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let t = TensorValue::from_raw(t.data_type(), &dims, &t.to_raw_bytes())
                    .map_err(|e| self.invalid(e.to_string()))?;
                Val {
                    shape: shape.clone(),
                    dtype: x.dtype,
                    data: Data::Const(Rc::new(t)),
                }
            }
            Data::Gpu(b) => Val {
                shape,
                dtype: x.dtype,
                data: Data::Gpu(*b),
            },
        };
        self.set_out(0, v);
        Ok(())
    }

    pub fn lower_view(&mut self, op_type: &str) -> Res<()> {
        let x = self.req(0)?;
        let rank = x.shape.len();
        let shape: Vec<usize> = match op_type {
            "Identity" | "Dropout" => {
                if op_type == "Dropout"
                    && let Some(t) = self.konst(2, "training_mode")?
                    && t.cast(code::INT64)
                        .ok()
                        .and_then(|t| t.to_i64_vec())
                        .is_some_and(|v| v.iter().any(|&x| x != 0))
                {
                    return Err(self.unsupported("training-mode Dropout (random)"));
                }
                if op_type == "Dropout" && self.cur().outputs.get(1).copied().flatten().is_some() {
                    // inference: the mask is all true
                    let mask = TensorValue::Bool(ndarray::ArrayD::from_elem(
                        ndarray::IxDyn(&x.shape),
                        true,
                    ));
                    self.set_out_slot(1, x.shape.clone(), code::BOOL, mask);
                }
                x.shape.clone()
            }
            "Reshape" => {
                let target = self
                    .ints(1, "shape")?
                    .ok_or_else(|| self.invalid("shape is required"))?;
                let allow_zero = self.attr_i("allowzero", 0) != 0;
                let mut out: Vec<i64> = Vec::with_capacity(target.len());
                for (i, &d) in target.iter().enumerate() {
                    out.push(if d == 0 && !allow_zero {
                        *x.shape
                            .get(i)
                            .ok_or_else(|| self.invalid("0 refers past the input's rank"))?
                            as i64
                    } else {
                        d
                    });
                }
                let known: i64 = out.iter().filter(|&&d| d != -1).product();
                if out.iter().filter(|&&d| d == -1).count() > 1 {
                    return Err(self.invalid("more than one -1 in shape"));
                }
                out.iter()
                    .map(|&d| {
                        if d == -1 {
                            if known == 0 {
                                Ok(0)
                            } else {
                                Ok(x.numel() / known as usize)
                            }
                        } else if d < 0 {
                            Err(self.invalid(format!("invalid dimension {d}")))
                        } else {
                            Ok(d as usize)
                        }
                    })
                    .collect::<Res<_>>()?
            }
            "Flatten" => {
                let axis = self.attr_i("axis", 1);
                let a = if axis < 0 { axis + rank as i64 } else { axis };
                if a < 0 || a > rank as i64 {
                    return Err(self.invalid("axis out of range"));
                }
                let a = a as usize;
                vec![x.shape[..a].iter().product(), x.shape[a..].iter().product()]
            }
            "Squeeze" => {
                let axes = match self.attr_ints("axes") {
                    Some(a) => Some(a),
                    None => self.ints(1, "axes")?,
                };
                match axes {
                    None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
                    Some(a) => {
                        let a: Vec<usize> =
                            a.iter().map(|&d| self.axis(d, rank)).collect::<Res<_>>()?;
                        x.shape
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !a.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                }
            }
            "Unsqueeze" => {
                let axes = match self.attr_ints("axes") {
                    Some(a) => a,
                    None => self
                        .ints(1, "axes")?
                        .ok_or_else(|| self.invalid("axes are required"))?,
                };
                let out_rank = rank + axes.len();
                let mut a: Vec<usize> = axes
                    .iter()
                    .map(|&d| self.axis(d, out_rank))
                    .collect::<Res<_>>()?;
                a.sort();
                let mut it = x.shape.iter();
                (0..out_rank)
                    .map(|i| {
                        if a.contains(&i) {
                            1
                        } else {
                            *it.next().unwrap_or(&1)
                        }
                    })
                    .collect()
            }
            other => return Err(self.unsupported(format!("op {other}"))),
        };
        self.alias(&x, shape)
    }

    fn set_out_slot(&mut self, slot: usize, shape: Vec<usize>, dtype: i32, t: TensorValue) {
        if let Some(Some(v)) = self.cur().outputs.get(slot).copied() {
            self.vals.insert(
                v,
                Val {
                    shape,
                    dtype,
                    data: Data::Const(Rc::new(t)),
                },
            );
        }
    }

    pub fn lower_transpose(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let rank = x.shape.len();
        let perm: Vec<usize> = match self.attr_ints("perm") {
            Some(p) => p.iter().map(|&d| self.axis(d, rank)).collect::<Res<_>>()?,
            None => (0..rank).rev().collect(),
        };
        let mut sorted = perm.clone();
        sorted.sort();
        if sorted != (0..rank).collect::<Vec<_>>() {
            return Err(self.invalid(format!("perm {perm:?} is not a permutation")));
        }
        let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
        let os = contiguous(&out_shape);
        let is = contiguous(&x.shape);
        let dims: Vec<Dim> = (0..rank)
            .map(|d| Dim::plain(out_shape[d], os[d], is[perm[d]], x.shape[perm[d]]))
            .collect();
        let out = self.out_buf(0, &out_shape, x.dtype)?;
        let src = self.buf(&x)?;
        self.copy(out, 0, src, &dims, 0);
        Ok(())
    }

    pub fn lower_slice(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let rank = x.shape.len();
        let (starts, ends, axes, steps) = if self.opset >= 10 {
            (
                self.ints(1, "starts")?
                    .ok_or_else(|| self.invalid("starts required"))?,
                self.ints(2, "ends")?
                    .ok_or_else(|| self.invalid("ends required"))?,
                self.ints(3, "axes")?,
                self.ints(4, "steps")?,
            )
        } else {
            (
                self.attr_ints("starts")
                    .ok_or_else(|| self.invalid("starts required"))?,
                self.attr_ints("ends")
                    .ok_or_else(|| self.invalid("ends required"))?,
                self.attr_ints("axes"),
                None,
            )
        };
        let axes: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&d| self.axis(d, rank)).collect::<Res<_>>()?,
            None => (0..starts.len()).collect(),
        };
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(self.invalid("starts, ends, axes and steps differ in length"));
        }
        let mut out_shape = x.shape.clone();
        let mut start = vec![0i64; rank];
        let mut step = vec![1i64; rank];
        for (j, &a) in axes.iter().enumerate() {
            let dim = x.shape[a] as i128;
            let st = steps[j] as i128;
            if st == 0 {
                return Err(self.invalid("a step is zero"));
            }
            let mut s = starts[j] as i128;
            let mut e = ends[j] as i128;
            if s < 0 {
                s += dim;
            }
            if e < 0 {
                e += dim;
            }
            let (s, e) = if st > 0 {
                (s.clamp(0, dim), e.clamp(0, dim))
            } else {
                (s.clamp(0, (dim - 1).max(0)), e.clamp(-1, dim - 1))
            };
            let len = if st > 0 {
                ((e - s).max(0) + st - 1) / st
            } else {
                ((s - e).max(0) + (-st) - 1) / (-st)
            };
            out_shape[a] = len as usize;
            start[a] = s as i64;
            step[a] = st as i64;
        }
        self.remap(&x, &out_shape, &start, &step, 0, 0)
    }

    pub fn lower_expand(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let target: Vec<usize> = self
            .ints(1, "shape")?
            .ok_or_else(|| self.invalid("shape is required"))?
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect();
        let out_shape = broadcast_shapes(&[&x.shape, &target])
            .ok_or_else(|| self.invalid(format!("{:?} does not expand to {target:?}", x.shape)))?;
        let st = broadcast_strides(&x.shape, &out_shape).unwrap();
        let os = contiguous(&out_shape);
        let lead = out_shape.len() - x.shape.len();
        let dims: Vec<Dim> = (0..out_shape.len())
            .map(|d| {
                let ie = if d >= lead { x.shape[d - lead] } else { 1 };
                Dim::plain(out_shape[d], os[d], st[d], ie)
            })
            .collect();
        let out = self.out_buf(0, &out_shape, x.dtype)?;
        let src = self.buf(&x)?;
        self.copy(out, 0, src, &dims, 0);
        Ok(())
    }

    pub fn lower_tile(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let reps = self
            .ints(1, "repeats")?
            .ok_or_else(|| self.invalid("repeats are required"))?;
        if reps.len() != x.shape.len() || reps.iter().any(|&r| r < 0) {
            return Err(self.invalid("repeats must be one non-negative number per axis"));
        }
        let out_shape: Vec<usize> = x
            .shape
            .iter()
            .zip(&reps)
            .map(|(&d, &r)| d * r as usize)
            .collect();
        let rank = x.shape.len();
        self.remap(&x, &out_shape, &vec![0; rank], &vec![1; rank], 4, 0)
    }

    pub fn lower_pad(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let rank = x.shape.len();
        let mode = self.attr_s("mode", "constant");
        let mode_code = match mode.as_str() {
            "constant" => 1,
            "edge" => 2,
            "reflect" => 3,
            "wrap" => 4,
            other => return Err(self.unsupported(format!("mode '{other}'"))),
        };
        let (pads, value, axes) = if self.opset >= 11 {
            let pads = self
                .ints(1, "pads")?
                .ok_or_else(|| self.invalid("pads required"))?;
            let value = self.konst(2, "constant value")?;
            let axes = self.ints(3, "axes")?;
            (pads, value, axes)
        } else {
            let pads = self
                .attr_ints("pads")
                .ok_or_else(|| self.invalid("pads required"))?;
            let v = self.attr_f("value", 0.0);
            (pads, Some(Rc::new(TensorValue::scalar_f32(v))), None)
        };
        let axes: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&d| self.axis(d, rank)).collect::<Res<_>>()?,
            None => (0..rank).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return Err(self.invalid("pads must hold a begin and an end per axis"));
        }
        let mut begin = vec![0i64; rank];
        let mut end = vec![0i64; rank];
        for (j, &a) in axes.iter().enumerate() {
            begin[a] = pads[j];
            end[a] = pads[axes.len() + j];
        }
        let mut out_shape = Vec::with_capacity(rank);
        for d in 0..rank {
            let e = x.shape[d] as i64 + begin[d] + end[d];
            if e < 0 {
                return Err(self.invalid("pads remove more than the axis holds"));
            }
            out_shape.push(e as usize);
        }
        let fill = match value {
            Some(t) if !t.is_empty() => {
                let cast = t.cast(x.dtype).map_err(|e| self.invalid(e.to_string()))?;
                let w = super::lower::to_words(&cast).map_err(|m| self.unsupported(m))?;
                u32::from_le_bytes([w[0], w[1], w[2], w[3]])
            }
            _ => 0,
        };
        if x.numel() == 0 {
            return Err(self.unsupported("padding an empty tensor"));
        }
        let start: Vec<i64> = begin.iter().map(|b| -b).collect();
        self.remap(&x, &out_shape, &start, &vec![1; rank], mode_code, fill)
    }

    pub fn lower_concat(&mut self) -> Res<()> {
        let ins: Vec<Val> = (0..self.cur().inputs.len())
            .map(|i| self.req(i))
            .collect::<Res<_>>()?;
        let first = ins.first().ok_or_else(|| self.invalid("no inputs"))?;
        let rank = first.shape.len();
        let axis = self.axis(self.attr_i("axis", 0), rank)?;
        let mut out_shape = first.shape.clone();
        out_shape[axis] = 0;
        for v in &ins {
            if v.shape.len() != rank || (0..rank).any(|d| d != axis && v.shape[d] != first.shape[d])
            {
                return Err(self.invalid(format!(
                    "input shapes {:?} and {:?} do not concatenate on axis {axis}",
                    first.shape, v.shape
                )));
            }
            out_shape[axis] += v.shape[axis];
        }
        let out = self.out_buf(0, &out_shape, first.dtype)?;
        let os = contiguous(&out_shape);
        let mut at = 0usize;
        for v in &ins {
            if v.numel() > 0 {
                let is = contiguous(&v.shape);
                let dims: Vec<Dim> = (0..rank)
                    .map(|d| Dim::plain(v.shape[d], os[d], is[d], v.shape[d]))
                    .collect();
                let src = self.buf(v)?;
                self.copy(out, at * os[axis], src, &dims, 0);
            }
            at += v.shape[axis];
        }
        Ok(())
    }

    pub fn lower_split(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let rank = x.shape.len();
        let axis = self.axis(self.attr_i("axis", 0), rank)?;
        let outputs = self.cur().outputs.len();
        let split: Vec<usize> = match self.attr_ints("split") {
            Some(s) => s.iter().map(|&d| d.max(0) as usize).collect(),
            None => match self.ints(1, "split")? {
                Some(s) => s.iter().map(|&d| d.max(0) as usize).collect(),
                None => {
                    let parts = self.attr_i("num_outputs", outputs as i64).max(1) as usize;
                    let dim = x.shape[axis];
                    let each = dim.div_ceil(parts);
                    (0..parts)
                        .map(|i| each.min(dim.saturating_sub(i * each)))
                        .collect()
                }
            },
        };
        if split.len() != outputs || split.iter().sum::<usize>() != x.shape[axis] {
            return Err(self.invalid(format!(
                "split {split:?} does not divide axis {axis} of {:?} into {outputs} outputs",
                x.shape
            )));
        }
        let is = contiguous(&x.shape);
        let src = self.buf(&x)?;
        let mut at = 0usize;
        for (slot, &len) in split.iter().enumerate() {
            let mut shape = x.shape.clone();
            shape[axis] = len;
            let os = contiguous(&shape);
            let dims: Vec<Dim> = (0..rank)
                .map(|d| Dim {
                    start: if d == axis { at as i64 } else { 0 },
                    ..Dim::plain(shape[d], os[d], is[d], x.shape[d])
                })
                .collect();
            if self.cur().outputs[slot].is_some() {
                let out = self.out_buf(slot, &shape, x.dtype)?;
                self.copy(out, 0, src, &dims, 0);
            }
            at += len;
        }
        Ok(())
    }

    /// DepthToSpace and SpaceToDepth as one 6-D strided copy each.
    pub fn lower_depth_space(&mut self, to_space: bool) -> Res<()> {
        let x = self.req(0)?;
        if x.shape.len() != 4 {
            return Err(self.invalid("input must be 4-D"));
        }
        let b = self.attr_i("blocksize", 0).max(0) as usize;
        if b == 0 {
            return Err(self.invalid("blocksize must be positive"));
        }
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let (view_in, perm, out_shape) = if to_space {
            if c % (b * b) != 0 {
                return Err(self.invalid("channels are not divisible by blocksize²"));
            }
            let cc = c / (b * b);
            if self.attr_s("mode", "DCR") == "CRD" {
                (
                    vec![n, cc, b, b, h, w],
                    vec![0, 1, 4, 2, 5, 3],
                    vec![n, cc, h * b, w * b],
                )
            } else {
                (
                    vec![n, b, b, cc, h, w],
                    vec![0, 3, 4, 1, 5, 2],
                    vec![n, cc, h * b, w * b],
                )
            }
        } else {
            if h % b != 0 || w % b != 0 {
                return Err(self.invalid("height and width are not divisible by blocksize"));
            }
            let perm = if self.attr_s("mode", "DCR") == "CRD" {
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
        let is = contiguous(&view_in);
        let view_out: Vec<usize> = perm.iter().map(|&p| view_in[p]).collect();
        let os = contiguous(&view_out);
        let dims: Vec<Dim> = (0..6)
            .map(|d| Dim::plain(view_out[d], os[d], is[perm[d]], view_in[perm[d]]))
            .collect();
        let out = self.out_buf(0, &out_shape, x.dtype)?;
        let src = self.buf(&x)?;
        self.copy(out, 0, src, &dims, 0);
        Ok(())
    }

    fn index_input(&self, i: usize) -> Res<Val> {
        let v = self.req(i)?;
        if !matches!(v.dtype, code::INT64 | code::INT32) {
            return Err(self.invalid("indices must be int32 or int64"));
        }
        Ok(v)
    }

    pub fn lower_gather(&mut self) -> Res<()> {
        let data = self.req(0)?;
        let idx = self.index_input(1)?;
        let rank = data.shape.len();
        let axis = self.axis(self.attr_i("axis", 0), rank)?;
        let mut out_shape = data.shape[..axis].to_vec();
        out_shape.extend(&idx.shape);
        out_shape.extend(&data.shape[axis + 1..]);
        let out = self.out_buf(0, &out_shape, data.dtype)?;
        let n: usize = out_shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        if let Some(t) = idx.konst()
            && let Some(v) = t.to_i64_vec()
        {
            let e = data.shape[axis] as i64;
            if let Some(bad) = v.iter().find(|&&i| i < -e || i >= e) {
                return Err(self.invalid(format!("index {bad} is out of range for an axis of {e}")));
            }
        }
        let inner: usize = data.shape[axis + 1..].iter().product();
        let info = vec![
            n as u32,
            inner.max(1) as u32,
            data.shape[axis] as u32,
            idx.numel() as u32,
        ];
        let db = self.buf(&data)?;
        let ib = self.buf(&idx)?;
        self.raw("gather", info, vec![out, db, ib], flat_groups(n, 64));
        Ok(())
    }

    pub fn lower_gather_elements(&mut self) -> Res<()> {
        let data = self.req(0)?;
        let idx = self.index_input(1)?;
        let rank = data.shape.len();
        if idx.shape.len() != rank {
            return Err(self.invalid("indices must have the data's rank"));
        }
        let axis = self.axis(self.attr_i("axis", 0), rank)?;
        let out = self.out_buf(0, &idx.shape, data.dtype)?;
        let n = idx.numel();
        if n == 0 {
            return Ok(());
        }
        let mut info = vec![
            n as u32,
            rank as u32,
            axis as u32,
            data.shape[axis] as u32,
            0,
            0,
            0,
            0,
        ];
        info.extend(idx.shape.iter().map(|&d| d as u32));
        info.extend(contiguous(&data.shape).iter().map(|&d| d as u32));
        let db = self.buf(&data)?;
        let ib = self.buf(&idx)?;
        self.raw(
            "gather_elements",
            info,
            vec![out, db, ib],
            flat_groups(n, 64),
        );
        Ok(())
    }

    pub fn lower_gather_nd(&mut self) -> Res<()> {
        let data = self.req(0)?;
        let idx = self.index_input(1)?;
        let bd = self.attr_i("batch_dims", 0).max(0) as usize;
        let k = *idx
            .shape
            .last()
            .ok_or_else(|| self.invalid("indices must have rank at least 1"))?;
        if bd + k > data.shape.len() || bd >= idx.shape.len() {
            return Err(self.invalid("batch_dims and the index length exceed the data's rank"));
        }
        let mut out_shape = idx.shape[..idx.shape.len() - 1].to_vec();
        out_shape.extend(&data.shape[bd + k..]);
        let out = self.out_buf(0, &out_shape, data.dtype)?;
        let n: usize = out_shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        let slice: usize = data.shape[bd + k..].iter().product();
        let tuples: usize = idx.shape[bd..idx.shape.len() - 1].iter().product();
        let per_batch: usize = data.shape[bd..].iter().product();
        let ds = contiguous(&data.shape);
        let mut info = vec![
            n as u32,
            slice.max(1) as u32,
            k as u32,
            tuples.max(1) as u32,
            per_batch as u32,
            0,
            0,
            0,
        ];
        for j in 0..k {
            info.extend([data.shape[bd + j] as u32, ds[bd + j] as u32]);
        }
        let db = self.buf(&data)?;
        let ib = self.buf(&idx)?;
        self.raw("gather_nd", info, vec![out, db, ib], flat_groups(n, 64));
        Ok(())
    }

    pub fn lower_scatter_nd(&mut self) -> Res<()> {
        let red = self.attr_s("reduction", "none");
        if red != "none" {
            return Err(self.unsupported(format!("reduction '{red}'")));
        }
        let data = self.req(0)?;
        let idx = self.index_input(1)?;
        let upd = self.req(2)?;
        let k = *idx
            .shape
            .last()
            .ok_or_else(|| self.invalid("indices must have rank at least 1"))?;
        if k > data.shape.len() {
            return Err(self.invalid("index tuples are longer than the data's rank"));
        }
        let out = self.out_buf(0, &data.shape, data.dtype)?;
        let rank = data.shape.len();
        let cs = contiguous(&data.shape);
        let dims: Vec<Dim> = (0..rank)
            .map(|d| Dim::plain(data.shape[d], cs[d], cs[d], data.shape[d]))
            .collect();
        let db = self.buf(&data)?;
        self.copy(out, 0, db, &dims, 0);
        let n = upd.numel();
        if n == 0 {
            return Ok(());
        }
        let slice: usize = data.shape[k..].iter().product();
        let mut info = vec![n as u32, slice.max(1) as u32, k as u32, 0, 0, 0, 0, 0];
        for (extent, stride) in data.shape.iter().zip(&cs).take(k) {
            info.extend([*extent as u32, *stride as u32]);
        }
        let ub = self.buf(&upd)?;
        let ib = self.buf(&idx)?;
        self.raw("scatter_nd", info, vec![out, ub, ib], flat_groups(n, 64));
        Ok(())
    }

    /// Trilu as a select against a constant mask over the last two axes.
    pub fn lower_trilu(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let rank = x.shape.len();
        if rank < 2 {
            return Err(self.invalid("input must have rank at least 2"));
        }
        let k = self
            .ints(1, "k")?
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        let upper = self.attr_i("upper", 1) != 0;
        let (m, n) = (x.shape[rank - 2], x.shape[rank - 1]);
        let mask = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[m, n]), |ix| {
            let (i, j) = (ix[0] as i64, ix[1] as i64);
            if upper { j - i >= k } else { j - i <= k }
        });
        let mask = Val {
            shape: vec![m, n],
            dtype: code::BOOL,
            data: Data::Const(Rc::new(TensorValue::Bool(mask))),
        };
        let out = self.out_buf(0, &x.shape, x.dtype)?;
        let mut b = Builder::new(x.shape.clone(), out);
        let mr = self.load_val(&mut b, &mask)?;
        let xr = self.load_val(&mut b, &x)?;
        let z = b.constant(0);
        let r = b.op(op::SELECT, &[mr, xr, z]);
        let prog = b.finish(r);
        self.push(StepKind::Elementwise(prog));
        Ok(())
    }
}
