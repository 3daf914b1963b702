//! Pooling: MaxPool (with Indices), AveragePool, GlobalAveragePool, GlobalMaxPool.

use super::elementwise::dtype_err;
use super::nn::{PADDING, geometry, window_table};
use super::tensor::arr;
use super::{Ctx, Result, TensorValue};

pub(crate) fn pool(cx: &Ctx) -> Result<Vec<TensorValue>> {
    let x = cx.input(0)?;
    if !(x.is_float() || matches!(x, TensorValue::I8(_) | TensorValue::U8(_))) {
        return Err(dtype_err(cx, x, "expects a float or 8-bit integer input"));
    }
    let s = x.shape().to_vec();
    if s.len() < 3 {
        return Err(cx.err(format!("X must have rank >= 3, got {s:?}")));
    }
    let (n, c) = (s[0], s[1]);
    let ins = s[2..].to_vec();
    let global = cx.op.starts_with("Global");
    let is_max = cx.op.ends_with("MaxPool");
    let lp = cx.op.ends_with("LpPool");
    let p = if lp {
        cx.attr_i_or("p", 2)? as f64
    } else {
        1.0
    };
    if lp && p <= 0.0 {
        return Err(cx.err(format!("p must be positive, got {p}")));
    }
    let ceil = !global && cx.attr_i_or("ceil_mode", 0)? != 0;
    let (g, outs) = if global {
        let g = super::nn::Geom {
            kernel: ins.clone(),
            strides: vec![1; ins.len()],
            dilations: vec![1; ins.len()],
            pad_begin: vec![0; ins.len()],
            pad_end: vec![0; ins.len()],
        };
        (g, vec![1; ins.len()])
    } else {
        if !cx.has_attr("kernel_shape") {
            return Err(cx.err("missing attribute 'kernel_shape'"));
        }
        geometry(cx, &ins, None, ceil)?
    };
    let include_pad = cx.attr_i_or("count_include_pad", 0)? != 0;
    let col_major = cx.attr_i_or("storage_order", 0)? != 0;
    let mut oshape = vec![n, c];
    oshape.extend_from_slice(&outs);
    cx.check_alloc(&oshape, 8)?;
    let kn: usize = g.kernel.iter().product();
    let on: usize = outs.iter().product();
    cx.check_alloc(&[kn, on], 8)?;
    let table = window_table(&g, &ins, &outs);
    let isz: usize = ins.iter().product();
    let xv = x.to_f64_vec();
    let mut y = Vec::with_capacity(n * c * on);
    let mut idx = Vec::with_capacity(if is_max { n * c * on } else { 0 });
    // column-major spatial index for storage_order=1
    let to_col_major = |off: usize| -> usize {
        let mut rem = off;
        let mut coords = vec![0usize; ins.len()];
        for a in (0..ins.len()).rev() {
            coords[a] = rem % ins[a].max(1);
            rem /= ins[a].max(1);
        }
        let mut r = 0usize;
        let mut st = 1usize;
        for a in 0..ins.len() {
            r += coords[a] * st;
            st *= ins[a];
        }
        r
    };
    for plane in 0..n * c {
        let src = &xv[plane * isz..(plane + 1) * isz];
        for o in 0..on {
            if is_max {
                let mut best = f64::NEG_INFINITY;
                let mut bi = usize::MAX;
                for k in 0..kn {
                    let t = table[k * on + o];
                    if t < PADDING && (bi == usize::MAX || src[t] > best) {
                        best = src[t];
                        bi = t;
                    }
                }
                y.push(best);
                let sp = if bi == usize::MAX {
                    0
                } else if col_major {
                    to_col_major(bi)
                } else {
                    bi
                };
                idx.push((plane * isz + sp) as i64);
            } else {
                let mut sum = 0.0;
                let mut cnt = 0usize;
                for k in 0..kn {
                    let t = table[k * on + o];
                    if t < PADDING {
                        sum += if lp { src[t].abs().powf(p) } else { src[t] };
                        cnt += 1;
                    } else if t == PADDING && include_pad {
                        cnt += 1;
                    }
                }
                y.push(if cnt == 0 {
                    f64::NAN
                } else if lp {
                    // padding contributes zeros: the p-norm of the valid window elements
                    sum.powf(1.0 / p)
                } else {
                    sum / cnt as f64
                });
            }
        }
    }
    let yt = TensorValue::F64(arr(&oshape, y)?)
        .cast(x.data_type())
        .map_err(|e| cx.err(e.to_string()))?;
    let mut outs = vec![yt];
    if is_max && !global && cx.num_outputs > 1 {
        outs.push(TensorValue::I64(arr(&oshape, idx)?));
    }
    Ok(outs)
}
