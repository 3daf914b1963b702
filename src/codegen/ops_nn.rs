//! Normalisations, Softmax, reductions, pooling, Resize and CumSum.

use std::rc::Rc;

use crate::eval::TensorValue;
use crate::ir::dtype::code;

use super::lower::{
    Data, Lowerer, Res, StepKind, Storage, Val, flat_groups, row_groups, storage_of,
};
use super::program::{Builder, Operand, broadcast_strides, contiguous, op};

impl Lowerer<'_> {
    /// BatchNormalization (inference): per-channel scale and shift as elementwise programs;
    /// with constant statistics the scale and shift are computed now.
    pub fn lower_batchnorm(&mut self) -> Res<()> {
        if self.cur().outputs.iter().skip(1).any(|o| o.is_some()) {
            return Err(self.unsupported("training-mode outputs (running mean/var)"));
        }
        let x = self.req(0)?;
        let eps = self.attr_f("epsilon", 1e-5);
        let params: Vec<Val> = (1..5).map(|i| self.req(i)).collect::<Res<_>>()?;
        if x.shape.len() < 2 {
            return Err(self.invalid("X must have rank at least 2"));
        }
        let c = x.shape[1];
        if let Some(p) = params.iter().find(|p| p.numel() != c) {
            return Err(self.invalid(format!(
                "a parameter has {} elements for {c} channels",
                p.numel()
            )));
        }
        // per-channel parameters viewed as [C, 1, ...] against X
        let mut pshape = vec![c];
        pshape.extend(std::iter::repeat_n(1, x.shape.len() - 2));
        let reshaped: Vec<Val> = params
            .iter()
            .map(|p| Val {
                shape: pshape.clone(),
                ..p.clone()
            })
            .collect();
        let out = self.out_buf(0, &x.shape, x.dtype)?;
        let all_const: Option<Vec<Vec<f32>>> = params
            .iter()
            .map(|p| {
                p.konst()
                    .and_then(|t| t.to_f32_array())
                    .map(|a| a.iter().copied().collect())
            })
            .collect();
        let mut b = Builder::new(x.shape.clone(), out);
        let xs = self.load_val(&mut b, &x)?;
        let r = if let Some(v) = all_const {
            let (scale, bias, mean, var) = (&v[0], &v[1], &v[2], &v[3]);
            let k: Vec<f32> = (0..c).map(|i| scale[i] / (var[i] + eps).sqrt()).collect();
            let s: Vec<f32> = (0..c).map(|i| bias[i] - mean[i] * k[i]).collect();
            let mk = |d: Vec<f32>| Val {
                shape: pshape.clone(),
                dtype: code::FLOAT,
                data: Data::Const(Rc::new(TensorValue::F32(
                    ndarray::ArrayD::from_shape_vec(pshape.clone(), d).unwrap(),
                ))),
            };
            let kr = self.load_val(&mut b, &mk(k))?;
            let sr = self.load_val(&mut b, &mk(s))?;
            let t = b.op(op::MUL, &[xs, kr]);
            b.op(op::ADD, &[t, sr])
        } else {
            // (x - mean) * scale / sqrt(var + eps) + bias, in two programs of at most four
            // tensors each
            let mid = self.new_buf(
                4 * x.numel() as u64,
                super::lower::BufKind::Activation,
                "bn",
            );
            let mut first = Builder::new(x.shape.clone(), mid);
            let x1 = self.load_val(&mut first, &x)?;
            let m1 = self.load_val(&mut first, &reshaped[2])?;
            let s1 = self.load_val(&mut first, &reshaped[0])?;
            let d = first.op(op::SUB, &[x1, m1]);
            let t = first.op(op::MUL, &[d, s1]);
            let prog = first.finish(t);
            self.push(StepKind::Elementwise(prog));
            let midv = Val {
                shape: x.shape.clone(),
                dtype: x.dtype,
                data: Data::Gpu(mid),
            };
            b = Builder::new(x.shape.clone(), out);
            let t = self.load_val(&mut b, &midv)?;
            let v = self.load_val(&mut b, &reshaped[3])?;
            let bias = self.load_val(&mut b, &reshaped[1])?;
            let e = b.f32(eps);
            let ve = b.op(op::ADD, &[v, e]);
            let sq = b.op(op::SQRT, &[ve]);
            let q = b.op(op::DIV, &[t, sq]);
            b.op(op::ADD, &[q, bias])
        };
        let prog = b.finish(r);
        self.push(StepKind::Elementwise(prog));
        Ok(())
    }

    /// Loads a value (scalar constants as immediates) into a program over its output shape.
    pub fn load_val(&mut self, b: &mut Builder, v: &Val) -> Res<usize> {
        if let Some(t) = v.konst()
            && v.numel() == 1
        {
            let w = super::lower::to_words(t).map_err(|m| self.unsupported(m))?;
            return Ok(b.constant(u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
        }
        let strides = broadcast_strides(&v.shape, &b.prog.shape)
            .ok_or_else(|| self.invalid(format!("{:?} does not broadcast", v.shape)))?;
        let buf = self.buf(v)?;
        Ok(b.load(Operand { buf, strides }))
    }

    pub fn lower_layernorm(&mut self) -> Res<()> {
        if self.cur().outputs.iter().skip(1).any(|o| o.is_some()) {
            return Err(self.unsupported("the Mean and InvStdDev outputs"));
        }
        let x = self.req(0)?;
        if !x.is_float() {
            return Err(self.unsupported("integer input"));
        }
        let axis = self.axis(self.attr_i("axis", -1), x.shape.len())?;
        let eps = self.attr_f("epsilon", 1e-5);
        let len: usize = x.shape[axis..].iter().product();
        let rows: usize = x.shape[..axis].iter().product();
        let norm_shape = x.shape[axis..].to_vec();
        let scale = self.row_param(1, &norm_shape)?;
        let bias = match self.opt(2)? {
            Some(_) => Some(self.row_param(2, &norm_shape)?),
            None => None,
        };
        let out = self.out_buf(0, &x.shape, x.dtype)?;
        let xb = self.buf(&x)?;
        let sb = self.buf(&scale)?;
        let bb = match &bias {
            Some(b) => self.buf(b)?,
            None => sb,
        };
        let info = vec![
            rows as u32,
            len as u32,
            eps.to_bits(),
            bias.is_some() as u32,
        ];
        self.raw("layernorm", info, vec![out, xb, sb, bb], row_groups(rows));
        Ok(())
    }

    /// A LayerNormalization parameter as exactly one value per normalised element (broadcast
    /// constants are expanded now).
    fn row_param(&self, i: usize, norm_shape: &[usize]) -> Res<Val> {
        let p = self.req(i)?;
        let len: usize = norm_shape.iter().product();
        if p.numel() == len {
            return Ok(p);
        }
        let Some(t) = p.konst() else {
            return Err(self.unsupported("a run-time scale or bias that broadcasts"));
        };
        let a = t
            .to_f32_array()
            .ok_or_else(|| self.invalid("scale and bias must be floating point"))?;
        let full = a
            .broadcast(ndarray::IxDyn(norm_shape))
            .ok_or_else(|| self.invalid("scale or bias does not broadcast"))?
            .to_owned();
        Ok(Val {
            shape: norm_shape.to_vec(),
            dtype: code::FLOAT,
            data: Data::Const(Rc::new(TensorValue::F32(full))),
        })
    }

    pub fn lower_softmax(&mut self, log: bool) -> Res<()> {
        let x = self.req(0)?;
        if !x.is_float() {
            return Err(self.unsupported("integer input"));
        }
        let rank = x.shape.len();
        let (len, inner, rows) = if self.opset >= 13 {
            let axis = self.axis(self.attr_i("axis", -1), rank)?;
            let inner: usize = x.shape[axis + 1..].iter().product();
            let outer: usize = x.shape[..axis].iter().product();
            (
                x.shape.get(axis).copied().unwrap_or(1),
                inner,
                outer * inner,
            )
        } else {
            // before opset 13 the input is coerced to 2-D at `axis`
            let axis = self.axis(self.attr_i("axis", 1), rank.max(1))?;
            let len: usize = x.shape[axis..].iter().product();
            (len, 1, x.shape[..axis].iter().product())
        };
        let out = self.out_buf(0, &x.shape, x.dtype)?;
        let xb = self.buf(&x)?;
        let info = vec![rows as u32, len as u32, inner.max(1) as u32, log as u32];
        self.raw("softmax", info, vec![out, xb], row_groups(rows));
        Ok(())
    }

    /// Reduce* and ArgMax/ArgMin.
    pub fn lower_reduce(&mut self, op_type: &str) -> Res<()> {
        let x = self.req(0)?;
        let integer = !x.is_float();
        if integer && matches!(op_type, "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp") {
            return Err(self.unsupported(format!("{op_type} on integer tensors")));
        }
        let rank = x.shape.len();
        let keep = self.attr_i("keepdims", 1) != 0;
        let arg = op_type == "ArgMax" || op_type == "ArgMin";
        let axes: Vec<usize> = if arg {
            vec![self.axis(self.attr_i("axis", 0), rank)?]
        } else {
            let given = match self.attr_ints("axes") {
                Some(a) => Some(a),
                None => self.ints(1, "axes")?,
            };
            match given {
                Some(a) if !a.is_empty() => {
                    let mut v = a
                        .iter()
                        .map(|&d| self.axis(d, rank))
                        .collect::<Res<Vec<_>>>()?;
                    v.sort();
                    v.dedup();
                    v
                }
                _ => {
                    if self.attr_i("noop_with_empty_axes", 0) != 0 {
                        // an identity
                        let v = x.clone();
                        self.set_out(0, v);
                        return Ok(());
                    }
                    (0..rank).collect()
                }
            }
        };
        let code_of = match op_type {
            "ReduceSum" => 0,
            "ReduceMean" => 1,
            "ReduceMax" => 2,
            "ReduceMin" => 3,
            "ReduceProd" => 4,
            "ReduceSumSquare" => 5,
            "ReduceL1" => 6,
            "ReduceL2" => 7,
            "ReduceLogSum" => 8,
            "ReduceLogSumExp" => 9,
            "ArgMax" => 10,
            _ => 11,
        };
        let strides = contiguous(&x.shape);
        let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
        let mut out_shape = vec![];
        for (d, (&extent, &stride)) in x.shape.iter().zip(&strides).enumerate() {
            if axes.contains(&d) {
                rd.push(extent as u32);
                rs.push(stride as u32);
                if keep {
                    out_shape.push(1);
                }
            } else {
                kd.push(extent as u32);
                ks.push(stride as u32);
                out_shape.push(extent);
            }
        }
        let count: usize = rd.iter().map(|&d| d as usize).product();
        if count == 0 {
            return Err(self.unsupported("reducing an empty axis"));
        }
        let dtype = if arg { code::INT64 } else { x.dtype };
        let out = self.out_buf(0, &out_shape, dtype)?;
        let n: usize = out_shape.iter().product();
        let mut info = vec![
            n as u32,
            code_of,
            kd.len() as u32,
            rd.len() as u32,
            count as u32,
            0,
            (self.attr_i("select_last_index", 0) != 0) as u32,
            integer as u32,
        ];
        info.extend(kd);
        info.extend(ks);
        info.extend(rd);
        info.extend(rs);
        let xb = self.buf(&x)?;
        self.raw("reduce", info, vec![out, xb], flat_groups(n, 64));
        Ok(())
    }

    pub fn lower_pool(&mut self, op_type: &str) -> Res<()> {
        if self.cur().outputs.iter().skip(1).any(|o| o.is_some()) {
            return Err(self.unsupported("the Indices output"));
        }
        let x = self.req(0)?;
        if !x.is_float() {
            return Err(self.unsupported("integer input"));
        }
        if x.shape.len() < 3 {
            return Err(self.invalid("X must have rank at least 3"));
        }
        let spatial_in = x.shape[2..].to_vec();
        let global = op_type.starts_with("Global");
        let kernel: Vec<usize> = if global {
            spatial_in.clone()
        } else {
            self.attr_ints("kernel_shape")
                .ok_or_else(|| self.invalid("kernel_shape is required"))?
                .iter()
                .map(|&d| d as usize)
                .collect()
        };
        let mut sp = self.spatial(&spatial_in, &kernel)?;
        if global {
            sp.strides = vec![1; kernel.len()];
            sp.dilations = vec![1; kernel.len()];
            sp.pads = vec![0; 2 * kernel.len()];
        }
        let ceil = self.attr_i("ceil_mode", 0) != 0;
        let out_sp = sp
            .window_output(&spatial_in, ceil)
            .map_err(|m| self.invalid(m))?;
        let mut out_shape = x.shape[..2].to_vec();
        out_shape.extend(&out_sp);
        let out = self.out_buf(0, &out_shape, x.dtype)?;
        let (h, w, oh, ow, kh, kw, s, d, p) = sp.as_2d(&spatial_in, &out_sp);
        let e = sp.end_pads_2d();
        let mode = if op_type.contains("Max") {
            0
        } else if self.attr_i("count_include_pad", 0) != 0 {
            1
        } else {
            2
        };
        let n: usize = out_shape.iter().product();
        let info = vec![
            n as u32, h, w, oh, ow, kh, kw, s[0], s[1], d[0], d[1], p[0], p[1], e[0], e[1], mode,
        ];
        let xb = self.buf(&x)?;
        self.raw("pool2d", info, vec![out, xb], flat_groups(n, 64));
        Ok(())
    }

    pub fn lower_resize(&mut self) -> Res<()> {
        let x = self.req(0)?;
        if !x.is_float() {
            return Err(self.unsupported("integer input"));
        }
        let rank = x.shape.len();
        if rank > 8 {
            return Err(self.unsupported("rank above 8"));
        }
        let mode = self.attr_s("mode", "nearest");
        let mode_code = match mode.as_str() {
            "nearest" => 0,
            "linear" => 1,
            other => return Err(self.unsupported(format!("mode '{other}'"))),
        };
        if self.attr_i("antialias", 0) != 0 {
            return Err(self.unsupported("antialias"));
        }
        // Resize-10 maps coordinates asymmetrically; the attribute came with opset 11
        let ctm = if self.opset < 11 {
            "asymmetric".to_string()
        } else {
            self.attr_s("coordinate_transformation_mode", "half_pixel")
        };
        let known_at = |mode: &str| match mode {
            "tf_half_pixel_for_nn" => (11..19).contains(&self.opset),
            "half_pixel_symmetric" => self.opset >= 19,
            _ => true,
        };
        if !known_at(&ctm) {
            return Err(self.invalid(format!(
                "coordinate_transformation_mode '{ctm}' does not exist at opset {}",
                self.opset
            )));
        }
        let ctm_code = match ctm.as_str() {
            "half_pixel" => 0,
            "asymmetric" => 1,
            "align_corners" => 2,
            "pytorch_half_pixel" => 3,
            "tf_half_pixel_for_nn" => 4,
            "half_pixel_symmetric" => 5,
            other => {
                return Err(self.unsupported(format!("coordinate_transformation_mode '{other}'")));
            }
        };
        // Resize-10 rounds nearest coordinates down
        let nearest_mode = if self.opset < 11 {
            "floor".to_string()
        } else {
            self.attr_s("nearest_mode", "round_prefer_floor")
        };
        let nearest = match nearest_mode.as_str() {
            "round_prefer_floor" => 0,
            "round_prefer_ceil" => 1,
            "floor" => 2,
            "ceil" => 3,
            other => return Err(self.unsupported(format!("nearest_mode '{other}'"))),
        };
        let axes: Vec<usize> = match self.attr_ints("axes") {
            Some(a) => a.iter().map(|&d| self.axis(d, rank)).collect::<Res<_>>()?,
            None => (0..rank).collect(),
        };
        // inputs: X, roi, scales, sizes (opset >= 11); X, scales (opset 10)
        let (scales_at, sizes_at) = if self.opset >= 11 {
            (2, 3)
        } else {
            (1, usize::MAX)
        };
        let scales: Option<Vec<f32>> = match self.konst(scales_at, "scales")? {
            Some(t) if !t.is_empty() => Some(
                t.to_f32_array()
                    .ok_or_else(|| self.invalid("scales must be float"))?
                    .iter()
                    .copied()
                    .collect(),
            ),
            _ => None,
        };
        let sizes = if sizes_at != usize::MAX {
            self.ints(sizes_at, "sizes")?.filter(|s| !s.is_empty())
        } else {
            None
        };
        let mut out_shape = x.shape.clone();
        let mut scale_per = vec![1.0f32; rank];
        match (scales, sizes) {
            (Some(s), _) => {
                if s.len() != axes.len() {
                    return Err(self.invalid("scales do not match the axes"));
                }
                if s.iter().any(|&v| v <= 0.0 || !v.is_finite()) {
                    return Err(self.invalid(format!("scales {s:?} must be positive")));
                }
                for (j, &a) in axes.iter().enumerate() {
                    scale_per[a] = s[j];
                    out_shape[a] = (x.shape[a] as f32 * s[j]).floor() as usize;
                }
            }
            (None, Some(sz)) => {
                if sz.len() != axes.len() {
                    return Err(self.invalid("sizes do not match the axes"));
                }
                let policy = self.attr_s("keep_aspect_ratio_policy", "stretch");
                if policy != "stretch" {
                    return Err(self.unsupported(format!("keep_aspect_ratio_policy '{policy}'")));
                }
                for (j, &a) in axes.iter().enumerate() {
                    out_shape[a] = sz[j].max(0) as usize;
                    scale_per[a] = out_shape[a] as f32 / x.shape[a] as f32;
                }
            }
            (None, None) => return Err(self.invalid("neither scales nor sizes is given")),
        }
        let out = self.out_buf(0, &out_shape, x.dtype)?;
        let n: usize = out_shape.iter().product();
        let strides = contiguous(&x.shape);
        let mut info = vec![n as u32, rank as u32, mode_code, ctm_code, nearest, 0, 0, 0];
        for (d, stride) in strides.iter().enumerate() {
            info.extend([
                x.shape[d] as u32,
                out_shape[d] as u32,
                scale_per[d].to_bits(),
                *stride as u32,
            ]);
        }
        let xb = self.buf(&x)?;
        self.raw("resize", info, vec![out, xb], flat_groups(n, 64));
        Ok(())
    }

    pub fn lower_cumsum(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let axis = self
            .ints(1, "axis")?
            .and_then(|v| v.first().copied())
            .ok_or_else(|| self.invalid("axis is required"))?;
        let axis = self.axis(axis, x.shape.len())?;
        let inner: usize = x.shape[axis + 1..].iter().product();
        let outer: usize = x.shape[..axis].iter().product();
        let out = self.out_buf(0, &x.shape, x.dtype)?;
        let lines = outer * inner;
        let info = vec![
            lines as u32,
            x.shape[axis] as u32,
            inner.max(1) as u32,
            (self.attr_i("exclusive", 0) != 0) as u32,
            (self.attr_i("reverse", 0) != 0) as u32,
            (storage_of(x.dtype) == Some(Storage::I32)) as u32,
        ];
        let xb = self.buf(&x)?;
        self.raw("cumsum", info, vec![out, xb], flat_groups(lines, 64));
        Ok(())
    }
}
