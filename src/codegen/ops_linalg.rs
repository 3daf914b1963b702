//! MatMul, Gemm, Conv and ConvTranspose.

use super::lower::{Activation, ConvStep, Lowerer, MatMulStep, Res, StepKind, Val, flat_groups};
use super::program::broadcast_shapes;

impl Lowerer<'_> {
    fn require_float(&self, v: &Val, what: &str) -> Res<()> {
        if !v.is_float() {
            return Err(self.unsupported(format!(
                "{what} of type {} (only floating-point products run on the GPU)",
                crate::ir::dtype::name(v.dtype)
            )));
        }
        Ok(())
    }

    /// A matmul's B operand: held as f16 where `buf_f16` allows, else as 32-bit words; the flag
    /// says which.
    fn weight_buf(&mut self, b: &Val) -> Res<(super::BufId, bool)> {
        Ok(match self.buf_f16(b) {
            Some(h) => (h, true),
            None => (self.buf(b)?, false),
        })
    }

    /// MatMul with numpy semantics: 1-D operands are promoted and the added axis dropped;
    /// batch dimensions broadcast through zero strides.
    pub fn lower_matmul(&mut self) -> Res<()> {
        let a = self.req(0)?;
        let b = self.req(1)?;
        self.require_float(&a, "input A")?;
        self.require_float(&b, "input B")?;
        if a.shape.is_empty() || b.shape.is_empty() {
            return Err(self.invalid("MatMul inputs must have rank at least 1"));
        }
        let a_shape = if a.shape.len() == 1 {
            vec![1, a.shape[0]]
        } else {
            a.shape.clone()
        };
        let b_shape = if b.shape.len() == 1 {
            vec![b.shape[0], 1]
        } else {
            b.shape.clone()
        };
        let (m, k) = (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1]);
        let (k2, n) = (b_shape[b_shape.len() - 2], b_shape[b_shape.len() - 1]);
        if k != k2 {
            return Err(self.invalid(format!(
                "inner dimensions differ: A is {:?}, B is {:?}",
                a.shape, b.shape
            )));
        }
        let ab = &a_shape[..a_shape.len() - 2];
        let bb = &b_shape[..b_shape.len() - 2];
        let batch = broadcast_shapes(&[ab, bb])
            .ok_or_else(|| self.invalid("batch dimensions do not broadcast"))?;
        let a_st = super::program::broadcast_strides(ab, &batch).unwrap();
        let b_st = super::program::broadcast_strides(bb, &batch).unwrap();
        let mut out_shape = batch.clone();
        if a.shape.len() > 1 {
            out_shape.push(m);
        }
        if b.shape.len() > 1 {
            out_shape.push(n);
        }
        let out = self.out_buf(0, &out_shape, a.dtype)?;
        let abuf = self.buf(&a)?;
        let (bbuf, b_f16) = self.weight_buf(&b)?;
        let batch_dims = batch
            .iter()
            .enumerate()
            .map(|(d, &e)| [e, a_st[d] * m * k, b_st[d] * k * n, 0])
            .collect();
        self.push(StepKind::MatMul(MatMulStep {
            m,
            n,
            k,
            batch: batch_dims,
            a: abuf,
            a_ms: k,
            a_ks: 1,
            b: bbuf,
            b_ks: n,
            b_ns: 1,
            alpha: 1.0,
            b_f16,
            bias: None,
            act: Activation::NONE,
            out,
        }));
        Ok(())
    }

    /// Gemm: Y = alpha * A' B' + beta * C, transposes through strides, C as the epilogue bias.
    pub fn lower_gemm(&mut self) -> Res<()> {
        let a = self.req(0)?;
        let b = self.req(1)?;
        self.require_float(&a, "input A")?;
        self.require_float(&b, "input B")?;
        if a.shape.len() != 2 || b.shape.len() != 2 {
            return Err(self.invalid("Gemm inputs must be 2-D"));
        }
        let ta = self.attr_i("transA", 0) != 0;
        let tb = self.attr_i("transB", 0) != 0;
        let alpha = self.attr_f("alpha", 1.0);
        let beta = self.attr_f("beta", 1.0);
        let (m, k) = if ta {
            (a.shape[1], a.shape[0])
        } else {
            (a.shape[0], a.shape[1])
        };
        let (k2, n) = if tb {
            (b.shape[1], b.shape[0])
        } else {
            (b.shape[0], b.shape[1])
        };
        if k != k2 {
            return Err(self.invalid(format!(
                "inner dimensions differ: A is {:?}, B is {:?}",
                a.shape, b.shape
            )));
        }
        let c = self.opt(2)?;
        let bias = match c {
            Some(c) if beta != 0.0 => {
                let strides = super::program::broadcast_strides(&c.shape, &[m, n])
                    .ok_or_else(|| self.invalid("C does not broadcast to [M, N]"))?;
                let c = if beta == 1.0 {
                    c
                } else if let Some(t) = c.konst() {
                    let scaled = t
                        .to_f32_array()
                        .ok_or_else(|| self.unsupported("a non-float C"))?
                        .mapv(|v| v * beta);
                    Val {
                        shape: c.shape.clone(),
                        dtype: c.dtype,
                        data: super::lower::Data::Const(std::rc::Rc::new(
                            crate::eval::TensorValue::F32(scaled),
                        )),
                    }
                } else {
                    return Err(self.unsupported("beta other than 1 with a run-time C"));
                };
                Some((self.buf(&c)?, strides[0], strides[1]))
            }
            _ => None,
        };
        // constant weights stored [N, K] are laid out [K, N] now, so the product reads them
        // contiguously along N (and the vectorised kernel applies)
        let (b, tb) = match b.konst() {
            Some(t) if tb => match t.to_f32_array() {
                Some(w) => {
                    let wt = w.t().as_standard_layout().to_owned().into_dyn();
                    let v = Val {
                        shape: vec![k, n],
                        dtype: b.dtype,
                        data: super::lower::Data::Const(std::rc::Rc::new(
                            crate::eval::TensorValue::F32(wt),
                        )),
                    };
                    (v, false)
                }
                None => (b, tb),
            },
            _ => (b, tb),
        };
        let out = self.out_buf(0, &[m, n], a.dtype)?;
        let abuf = self.buf(&a)?;
        let (bbuf, b_f16) = self.weight_buf(&b)?;
        let (a_ms, a_ks) = if ta { (1, m) } else { (k, 1) };
        let (b_ks, b_ns) = if tb { (1, k) } else { (n, 1) };
        self.push(StepKind::MatMul(MatMulStep {
            m,
            n,
            k,
            batch: vec![],
            a: abuf,
            a_ms,
            a_ks,
            b: bbuf,
            b_ks,
            b_ns,
            alpha,
            b_f16,
            bias,
            act: Activation::NONE,
            out,
        }));
        Ok(())
    }

    /// Spatial parameters shared by Conv, ConvTranspose and the pools, for 1-D and 2-D.
    pub fn spatial(&self, spatial_in: &[usize], kernel: &[usize]) -> Res<Spatial> {
        let r = spatial_in.len();
        if r == 0 || r > 2 {
            return Err(self.unsupported(format!(
                "{r}-D spatial input (the kernels handle 1-D and 2-D)"
            )));
        }
        if kernel.len() != r || kernel.contains(&0) {
            return Err(self.invalid(format!(
                "kernel shape {kernel:?} does not fit {r} spatial dimensions"
            )));
        }
        let get = |name: &str, default: usize, len: usize| -> Res<Vec<usize>> {
            match self.attr_ints(name) {
                None => Ok(vec![default; len]),
                Some(v) if v.len() == len && v.iter().all(|x| (0..1 << 20).contains(x)) => {
                    Ok(v.iter().map(|&x| x as usize).collect())
                }
                Some(v) => Err(self.invalid(format!("{name} {v:?} does not fit rank {r}"))),
            }
        };
        let strides = get("strides", 1, r)?;
        let dilations = get("dilations", 1, r)?;
        if strides.contains(&0) || dilations.contains(&0) {
            return Err(self.invalid("strides and dilations must be positive"));
        }
        Ok(Spatial {
            strides,
            dilations,
            pads: get("pads", 0, 2 * r)?,
            auto_pad: self.attr_s("auto_pad", "NOTSET"),
            kernel: kernel.to_vec(),
        })
    }

    pub fn lower_conv(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let w = self.req(1)?;
        self.require_float(&x, "input X")?;
        self.require_float(&w, "weights W")?;
        let r = x.shape.len().saturating_sub(2);
        if w.shape.len() != x.shape.len() || r == 0 {
            return Err(self.invalid("X and W must have the same rank, at least 3"));
        }
        let kernel = self
            .attr_ints("kernel_shape")
            .map(|v| v.iter().map(|&d| d as usize).collect())
            .unwrap_or_else(|| w.shape[2..].to_vec());
        let mut sp = self.spatial(&x.shape[2..], &kernel)?;
        let groups = self.attr_i("group", 1).max(1) as usize;
        let (n, c) = (x.shape[0], x.shape[1]);
        let mo = w.shape[0];
        if c != w.shape[1] * groups || mo % groups != 0 {
            return Err(self.invalid(format!(
                "channels do not fit: X {:?}, W {:?}, group {groups}",
                x.shape, w.shape
            )));
        }
        let out_sp = sp.conv_output(&x.shape[2..]).map_err(|m| self.invalid(m))?;
        let bias = self.opt(2)?;
        let mut out_shape = vec![n, mo];
        out_shape.extend(&out_sp);
        let out = self.out_buf(0, &out_shape, x.dtype)?;
        let info = sp.conv_info(&x.shape, &out_shape, mo, groups, bias.is_some());
        let xb = self.buf(&x)?;
        let wb = self.buf(&w)?;
        let bb = match &bias {
            Some(b) => Some(self.buf(b)?),
            None => None,
        };
        self.push(StepKind::Conv(ConvStep {
            info,
            x: xb,
            w: wb,
            bias: bb,
            act: Activation::NONE,
            out,
        }));
        Ok(())
    }

    pub fn lower_conv_transpose(&mut self) -> Res<()> {
        let x = self.req(0)?;
        let w = self.req(1)?;
        self.require_float(&x, "input X")?;
        self.require_float(&w, "weights W")?;
        let r = x.shape.len().saturating_sub(2);
        if w.shape.len() != x.shape.len() || r == 0 {
            return Err(self.invalid("X and W must have the same rank, at least 3"));
        }
        let kernel: Vec<usize> = self
            .attr_ints("kernel_shape")
            .map(|v| v.iter().map(|&d| d as usize).collect())
            .unwrap_or_else(|| w.shape[2..].to_vec());
        let mut sp = self.spatial(&x.shape[2..], &kernel)?;
        let groups = self.attr_i("group", 1).max(1) as usize;
        let (n, c) = (x.shape[0], x.shape[1]);
        if w.shape[0] != c || c % groups != 0 {
            return Err(self.invalid("W's first dimension must equal X's channels"));
        }
        let mo = w.shape[1] * groups;
        let out_pad = self
            .attr_ints("output_padding")
            .map(|v| v.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>())
            .unwrap_or_else(|| vec![0; r]);
        // the unpadded output extent; padding comes off it (output_shape and SAME_* imply the
        // total, split as auto_pad says)
        let full: Vec<usize> = (0..r)
            .map(|i| {
                sp.strides[i] * (x.shape[2 + i] - 1)
                    + out_pad.get(i).copied().unwrap_or(0)
                    + (kernel[i] - 1) * sp.dilations[i]
                    + 1
            })
            .collect();
        let requested: Option<Vec<usize>> = self
            .attr_ints("output_shape")
            .map(|os| os.iter().rev().take(r).rev().map(|&d| d as usize).collect());
        if requested.as_ref().is_some_and(|os| os.len() != r) {
            return Err(self.invalid("output_shape does not give every spatial dimension"));
        }
        let same = sp.auto_pad == "SAME_UPPER" || sp.auto_pad == "SAME_LOWER";
        let out_sp: Vec<usize> = (0..r)
            .map(|i| {
                let target = match &requested {
                    Some(os) => Some(os[i]),
                    None if same => Some(x.shape[2 + i] * sp.strides[i]),
                    None => None,
                };
                match target {
                    Some(t) => {
                        sp.split_pad(i, full[i].saturating_sub(t));
                        t
                    }
                    None => full[i].saturating_sub(sp.pads[i] + sp.pads[r + i]),
                }
            })
            .collect();
        let bias = self.opt(2)?;
        let mut out_shape = vec![n, mo];
        out_shape.extend(&out_sp);
        let out = self.out_buf(0, &out_shape, x.dtype)?;
        let total = out_shape.iter().product::<usize>();
        let info = sp.conv_info(&x.shape, &out_shape, mo, groups, bias.is_some());
        let xb = self.buf(&x)?;
        let wb = self.buf(&w)?;
        let mut bufs = vec![out, xb, wb];
        bufs.push(match &bias {
            Some(b) => self.buf(b)?,
            None => wb,
        });
        self.raw("conv_transpose2d", info, bufs, flat_groups(total, 64));
        Ok(())
    }
}

/// Strides, dilations, pads and kernel of a 1-D or 2-D window op.
pub struct Spatial {
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    /// begin pads then end pads
    pub pads: Vec<usize>,
    pub auto_pad: String,
    pub kernel: Vec<usize>,
}

impl Spatial {
    /// Splits `total` padding of dimension `i` into begin and end pads: the odd one goes to the
    /// end for SAME_UPPER, to the beginning otherwise.
    fn split_pad(&mut self, i: usize, total: usize) {
        let r = self.kernel.len();
        let (lo, hi) = if self.auto_pad == "SAME_UPPER" {
            (total / 2, total - total / 2)
        } else {
            (total - total / 2, total / 2)
        };
        self.pads[i] = lo;
        self.pads[r + i] = hi;
    }

    /// Output extents of a convolution-like window, resolving auto_pad into `pads`.
    pub fn conv_output(&mut self, input: &[usize]) -> Result<Vec<usize>, String> {
        self.window_output(input, false)
    }

    pub fn window_output(
        &mut self,
        input: &[usize],
        ceil_mode: bool,
    ) -> Result<Vec<usize>, String> {
        let r = input.len();
        let mut out = Vec::with_capacity(r);
        #[allow(clippy::needless_range_loop)] // i indexes pads, kernel, strides and input alike
        for i in 0..r {
            let eff = (self.kernel[i] - 1) * self.dilations[i] + 1;
            let s = self.strides[i].max(1);
            match self.auto_pad.as_str() {
                "SAME_UPPER" | "SAME_LOWER" => {
                    let o = input[i].div_ceil(s);
                    self.split_pad(i, ((o - 1) * s + eff).saturating_sub(input[i]));
                    out.push(o);
                }
                "VALID" => {
                    self.pads[i] = 0;
                    self.pads[r + i] = 0;
                    if input[i] < eff {
                        return Err("the window is larger than the input".into());
                    }
                    out.push((input[i] - eff) / s + 1);
                }
                "NOTSET" | "" => {
                    let padded = input[i] + self.pads[i] + self.pads[r + i];
                    if padded < eff {
                        return Err("the window is larger than the padded input".into());
                    }
                    let span = padded - eff;
                    let mut o = if ceil_mode {
                        span.div_ceil(s)
                    } else {
                        span / s
                    } + 1;
                    // a last window that starts in the end padding is dropped (ceil mode)
                    if ceil_mode && (o - 1) * s >= input[i] + self.pads[i] {
                        o -= 1;
                    }
                    out.push(o);
                }
                other => return Err(format!("auto_pad '{other}'")),
            }
        }
        Ok(out)
    }

    /// The 2-D view (1-D as H = 1): h, w, oh, ow, kh, kw, strides, dilations, begin pads.
    #[allow(clippy::type_complexity)]
    pub fn as_2d(
        &self,
        input: &[usize],
        output: &[usize],
    ) -> (u32, u32, u32, u32, u32, u32, [u32; 2], [u32; 2], [u32; 2]) {
        let r = input.len();
        if r == 1 {
            (
                1,
                input[0] as u32,
                1,
                output[0] as u32,
                1,
                self.kernel[0] as u32,
                [1, self.strides[0] as u32],
                [1, self.dilations[0] as u32],
                [0, self.pads[0] as u32],
            )
        } else {
            (
                input[0] as u32,
                input[1] as u32,
                output[0] as u32,
                output[1] as u32,
                self.kernel[0] as u32,
                self.kernel[1] as u32,
                [self.strides[0] as u32, self.strides[1] as u32],
                [self.dilations[0] as u32, self.dilations[1] as u32],
                [self.pads[0] as u32, self.pads[1] as u32],
            )
        }
    }

    /// Info words 0..=17 of conv2d.wgsl and conv_transpose2d.wgsl.
    pub fn conv_info(
        &self,
        x: &[usize],
        out: &[usize],
        out_channels: usize,
        groups: usize,
        has_bias: bool,
    ) -> Vec<u32> {
        let (h, w, oh, ow, kh, kw, s, d, p) = self.as_2d(&x[2..], &out[2..]);
        vec![
            out.iter().product::<usize>() as u32,
            x[0] as u32,
            x[1] as u32,
            h,
            w,
            out_channels as u32,
            oh,
            ow,
            kh,
            kw,
            s[0],
            s[1],
            d[0],
            d[1],
            p[0],
            p[1],
            groups as u32,
            has_bias as u32,
        ]
    }

    /// End pads in the 2-D view.
    pub fn end_pads_2d(&self) -> [u32; 2] {
        let r = self.kernel.len();
        if r == 1 {
            [0, self.pads[1] as u32]
        } else {
            [self.pads[2] as u32, self.pads[3] as u32]
        }
    }
}
