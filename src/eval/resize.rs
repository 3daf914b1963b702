//! Resize (nearest / linear / cubic, all coordinate transformation modes, antialias, axes,
//! keep_aspect_ratio_policy), separably one axis at a time as in the ONNX reference.

use super::elementwise::dtype_err;
use super::tensor::arr;
use super::{Ctx, Result, TensorValue};

enum Kind {
    Nearest(String),
    Linear { antialias: bool },
    Cubic { a: f64, antialias: bool },
}

fn coeffs(kind: &Kind, ratio: f64, scale: f64) -> Vec<f64> {
    match kind {
        Kind::Nearest(mode) => {
            if ratio.fract() == 0.0 {
                return vec![0.0, 1.0];
            }
            let up = match mode.as_str() {
                "round_prefer_ceil" => ratio >= 0.5,
                "floor" => false,
                "ceil" => true,
                _ => ratio > 0.5,
            };
            if up { vec![0.0, 1.0] } else { vec![1.0, 0.0] }
        }
        Kind::Linear { antialias: false } => vec![1.0 - ratio, ratio],
        Kind::Linear { antialias: true } => {
            let scale = scale.min(1.0);
            let start = (-1.0 / scale).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            let c: Vec<f64> = (start..start + footprint)
                .map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0))
                .collect();
            let s: f64 = c.iter().sum();
            c.into_iter().map(|v| v / s).collect()
        }
        Kind::Cubic {
            a,
            antialias: false,
        } => {
            let a = *a;
            let r = ratio;
            vec![
                ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                ((a + 2.0) * (1.0 - r) - (a + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
                ((a * ((1.0 - r) + 1.0) - 5.0 * a) * ((1.0 - r) + 1.0) + 8.0 * a)
                    * ((1.0 - r) + 1.0)
                    - 4.0 * a,
            ]
        }
        Kind::Cubic { a, antialias: true } => {
            let a = *a;
            let scale = scale.min(1.0);
            let f = |x: f64| {
                let x = x.abs();
                let (x2, x3) = (x * x, x * x * x);
                if x <= 1.0 {
                    (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                } else if x < 2.0 {
                    a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            };
            let i_start = (-2.0 / scale).floor() as i64 + 1;
            let i_end = 2 - i_start;
            let c: Vec<f64> = (i_start..i_end)
                .map(|i| f(scale * (i as f64 - ratio)))
                .collect();
            let s: f64 = c.iter().sum();
            c.into_iter().map(|v| v / s).collect()
        }
    }
}

struct AxisPlan {
    /// For each output position: (input indices, weights) or `None` for extrapolation.
    taps: Vec<Option<(Vec<usize>, Vec<f64>)>>,
}

#[allow(clippy::too_many_arguments)]
fn plan_axis(
    kind: &Kind,
    ctm: &str,
    scale: f64,
    in_w: usize,
    out_w: usize,
    roi: Option<(f64, f64)>,
    exclude_outside: bool,
) -> AxisPlan {
    let out_f = scale * in_w as f64;
    let mut taps = Vec::with_capacity(out_w);
    for y in 0..out_w {
        let y = y as f64;
        let inw = in_w as f64;
        let x = match ctm {
            "align_corners" => {
                if out_f == 1.0 {
                    0.0
                } else {
                    y * (inw - 1.0) / (out_f - 1.0)
                }
            }
            "asymmetric" => y / scale,
            "tf_crop_and_resize" => {
                let (r0, r1) = roi.unwrap_or((0.0, 1.0));
                let x = if out_f == 1.0 {
                    (r1 - r0) * (inw - 1.0) / 2.0
                } else {
                    y * (r1 - r0) * (inw - 1.0) / (out_f - 1.0)
                };
                x + r0 * (inw - 1.0)
            }
            "pytorch_half_pixel" => {
                if out_f == 1.0 {
                    -0.5
                } else {
                    (y + 0.5) / scale - 0.5
                }
            }
            "half_pixel_symmetric" => {
                let adj = out_w as f64 / out_f;
                let center = inw / 2.0;
                center * (1.0 - adj) + (y + 0.5) / scale - 0.5
            }
            _ => (y + 0.5) / scale - 0.5,
        };
        if ctm == "tf_crop_and_resize" && (x < 0.0 || x > inw - 1.0) {
            taps.push(None);
            continue;
        }
        let xi = x.floor();
        let ratio = if x == xi { 1.0 } else { x - xi };
        let mut c = coeffs(kind, ratio, scale);
        let n = c.len() as i64;
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let p = xp.floor() as i64;
        let frac = xp - p as f64;
        let off = if n % 2 == 0 {
            if frac == 0.0 { -(n / 2) } else { -(n / 2) + 1 }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 { base } else { base + 1 }
        };
        let start = p + off;
        let idx: Vec<i64> = (0..n).map(|j| start + j - pad).collect();
        if exclude_outside {
            for (k, &i) in idx.iter().enumerate() {
                if i < 0 || i >= in_w as i64 {
                    c[k] = 0.0;
                }
            }
            let s: f64 = c.iter().sum();
            let s = if s == 0.0 { 1.0 } else { s };
            for v in c.iter_mut() {
                *v /= s;
            }
        }
        let idx: Vec<usize> = idx
            .iter()
            .map(|&i| i.clamp(0, in_w as i64 - 1).max(0) as usize)
            .collect();
        taps.push(Some((idx, c)));
    }
    AxisPlan { taps }
}

fn apply_axis(
    data: &[f64],
    shape: &[usize],
    axis: usize,
    plan: &AxisPlan,
    extrap: f64,
) -> (Vec<f64>, Vec<usize>) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let in_w = shape[axis];
    let out_w = plan.taps.len();
    let mut out = vec![0f64; outer * out_w * inner];
    for o in 0..outer {
        for (y, tap) in plan.taps.iter().enumerate() {
            let dst = &mut out[(o * out_w + y) * inner..(o * out_w + y + 1) * inner];
            match tap {
                None => dst.iter_mut().for_each(|v| *v = extrap),
                Some((idx, w)) => {
                    for (&i, &wt) in idx.iter().zip(w) {
                        if wt == 0.0 {
                            continue;
                        }
                        let src = &data[(o * in_w + i) * inner..(o * in_w + i + 1) * inner];
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d += wt * s;
                        }
                    }
                }
            }
        }
    }
    let mut ns = shape.to_vec();
    ns[axis] = out_w;
    (out, ns)
}

fn floats(cx: &Ctx, i: usize) -> Result<Option<Vec<f64>>> {
    match cx.opt_input(i) {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.is_float() => Ok(Some(t.to_f64_vec())),
        Some(t) => Err(dtype_err(
            cx,
            t,
            &format!("input {i} must be a float tensor"),
        )),
    }
}

pub(crate) fn resize(cx: &Ctx) -> Result<TensorValue> {
    let x = cx.input(0)?;
    if !(x.is_float() || x.is_int()) {
        return Err(dtype_err(cx, x, "expects a numeric input"));
    }
    let s = x.shape().to_vec();
    let r = s.len();
    let legacy = cx.opset < 11;
    let (roi, scales, sizes) = if legacy {
        (None, floats(cx, 1)?, None)
    } else {
        let sizes = match cx.opt_input(3) {
            Some(t) if !t.is_empty() => Some(
                t.to_i64_vec()
                    .ok_or_else(|| dtype_err(cx, t, "sizes must be int64"))?,
            ),
            _ => None,
        };
        (floats(cx, 1)?, floats(cx, 2)?, sizes)
    };
    let axes: Vec<usize> = match cx.attr_ints("axes")? {
        Some(a) => a.iter().map(|&v| cx.axis(v, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    let na = axes.len();
    let mode = cx.attr_s_or("mode", "nearest")?;
    let antialias = cx.attr_i_or("antialias", 0)? != 0;
    let ctm = if legacy {
        "asymmetric".to_string()
    } else {
        cx.attr_s_or("coordinate_transformation_mode", "half_pixel")?
    };
    let known = [
        "half_pixel",
        "half_pixel_symmetric",
        "pytorch_half_pixel",
        "align_corners",
        "asymmetric",
        "tf_crop_and_resize",
    ];
    if !known.contains(&ctm.as_str()) {
        return Err(cx.err(format!("unknown coordinate_transformation_mode '{ctm}'")));
    }
    let kind = match mode.as_str() {
        "nearest" => {
            if antialias {
                return Err(cx.err("antialias is not defined for mode 'nearest'"));
            }
            let nm = if legacy {
                "floor".to_string()
            } else {
                cx.attr_s_or("nearest_mode", "round_prefer_floor")?
            };
            if !["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"].contains(&nm.as_str())
            {
                return Err(cx.err(format!("unknown nearest_mode '{nm}'")));
            }
            Kind::Nearest(nm)
        }
        "linear" | "bilinear" | "trilinear" => Kind::Linear { antialias },
        "cubic" | "bicubic" => Kind::Cubic {
            a: cx.attr_f_or("cubic_coeff_a", -0.75)? as f64,
            antialias,
        },
        other => return Err(cx.err(format!("unknown mode '{other}'"))),
    };
    let exclude = cx.attr_i_or("exclude_outside", 0)? != 0;
    let extrap = cx.attr_f_or("extrapolation_value", 0.0)? as f64;
    let policy = cx.attr_s_or("keep_aspect_ratio_policy", "stretch")?;
    // full-rank scales and output sizes
    let mut fscale = vec![1.0f64; r];
    let mut fsize: Vec<usize> = s.clone();
    match (&scales, &sizes) {
        (Some(_), Some(_)) => return Err(cx.err("only one of scales and sizes may be given")),
        (None, None) => return Err(cx.err("one of scales and sizes is required")),
        (Some(sc), None) => {
            if sc.len() != na {
                return Err(cx.err(format!("scales {sc:?} must have {na} entries")));
            }
            for (k, &a) in axes.iter().enumerate() {
                if sc[k].is_nan() || sc[k] <= 0.0 || !sc[k].is_finite() {
                    return Err(cx.err(format!("scales {sc:?} must be positive")));
                }
                fscale[a] = sc[k];
                let o = (sc[k] * s[a] as f64).floor();
                if o > 1e15 {
                    return Err(cx.err("output size overflows"));
                }
                fsize[a] = o as usize;
            }
        }
        (None, Some(sz)) => {
            if sz.len() != na {
                return Err(cx.err(format!("sizes {sz:?} must have {na} entries")));
            }
            for (k, &a) in axes.iter().enumerate() {
                if sz[k] < 0 {
                    return Err(cx.err(format!("sizes {sz:?} must be non-negative")));
                }
                fsize[a] = sz[k] as usize;
                fscale[a] = sz[k] as f64 / s[a] as f64;
            }
            if policy != "stretch" {
                let vals = axes.iter().map(|&a| fscale[a]);
                let sc = match policy.as_str() {
                    "not_larger" => vals.fold(f64::INFINITY, f64::min),
                    "not_smaller" => vals.fold(f64::NEG_INFINITY, f64::max),
                    other => {
                        return Err(cx.err(format!("unknown keep_aspect_ratio_policy '{other}'")));
                    }
                };
                for &a in &axes {
                    fscale[a] = sc;
                    fsize[a] = (sc * s[a] as f64 + 0.5) as usize;
                }
            }
        }
    }
    let roi_full: Option<Vec<f64>> = match &roi {
        Some(v) if ctm == "tf_crop_and_resize" => {
            if v.len() != 2 * na {
                return Err(cx.err(format!("roi {v:?} must have {} entries", 2 * na)));
            }
            let mut full = vec![0.0; r];
            full.extend(std::iter::repeat_n(1.0, r));
            for (k, &a) in axes.iter().enumerate() {
                full[a] = v[k];
                full[r + a] = v[na + k];
            }
            Some(full)
        }
        _ => None,
    };
    if ctm == "tf_crop_and_resize" && roi_full.is_none() {
        return Err(cx.err("tf_crop_and_resize needs roi"));
    }
    cx.check_alloc(&fsize, 8)?;
    let mut data = x.to_f64_vec();
    let mut shape = s.clone();
    for &a in &axes {
        let trivial_roi = roi_full
            .as_ref()
            .is_none_or(|v| (v[a] - 0.0).abs() < 1e-9 && (v[a + r] - 1.0).abs() < 1e-9);
        if (fscale[a] - 1.0).abs() < 1e-9 && fsize[a] == shape[a] && trivial_roi {
            continue;
        }
        if shape[a] == 0 {
            return Err(cx.err("cannot resize an empty axis"));
        }
        let plan = plan_axis(
            &kind,
            &ctm,
            fscale[a],
            shape[a],
            fsize[a],
            roi_full.as_ref().map(|v| (v[a], v[a + r])),
            exclude,
        );
        let (d, ns) = apply_axis(&data, &shape, a, &plan, extrap);
        data = d;
        shape = ns;
    }
    if x.is_int() {
        data.iter_mut().for_each(|v| {
            let r = v.round();
            *v = if (*v - v.trunc()).abs() == 0.5 {
                2.0 * (*v / 2.0).round()
            } else {
                r
            };
        });
    }
    TensorValue::F64(arr(&shape, data)?)
        .cast(x.data_type())
        .map_err(|e| cx.err(e.to_string()))
}

/// Upsample (opsets 7-9): asymmetric coordinates, nearest = floor, or linear.
pub(crate) fn resize_asymmetric(
    cx: &Ctx,
    x: &TensorValue,
    scales: &[f64],
    mode: &str,
) -> Result<TensorValue> {
    if !(x.is_float() || x.is_int()) {
        return Err(dtype_err(cx, x, "expects a numeric input"));
    }
    let s = x.shape().to_vec();
    if scales.len() != s.len() {
        return Err(cx.err(format!("scales {scales:?} must have {} entries", s.len())));
    }
    let kind = match mode {
        "nearest" => Kind::Nearest("floor".into()),
        "linear" | "bilinear" => Kind::Linear { antialias: false },
        other => return Err(cx.err(format!("unknown mode '{other}'"))),
    };
    let mut fsize = Vec::with_capacity(s.len());
    for (i, &sc) in scales.iter().enumerate() {
        if sc.is_nan() || sc < 1.0 || !sc.is_finite() {
            return Err(cx.err(format!("scales {scales:?} must be finite and >= 1")));
        }
        let o = (sc * s[i] as f64).floor();
        if o > 1e15 {
            return Err(cx.err("output size overflows"));
        }
        fsize.push(o as usize);
    }
    cx.check_alloc(&fsize, 8)?;
    let mut data = x.to_f64_vec();
    let mut shape = s.clone();
    for a in 0..s.len() {
        if fsize[a] == shape[a] || shape[a] == 0 {
            continue;
        }
        let plan = plan_axis(
            &kind,
            "asymmetric",
            scales[a],
            shape[a],
            fsize[a],
            None,
            false,
        );
        let (d, ns) = apply_axis(&data, &shape, a, &plan, 0.0);
        data = d;
        shape = ns;
    }
    TensorValue::F64(arr(&shape, data)?)
        .cast(x.data_type())
        .map_err(|e| cx.err(e.to_string()))
}
