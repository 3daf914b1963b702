//! `fold-conv`: folds convolution regions — BatchNorm, RepVGG/ACNet branches, conv LoRA — into
//! one Conv per input.
//!
//! Rewrites: a *region* of channel-wise affine nodes (Conv by a constant kernel, ConvTranspose
//! followed only by channel scales, inference-mode BatchNormalization, Mul/Add/Sub/Div by
//! per-channel constants, sums of branches reading the same tensor, identity-like nodes) whose
//! intermediate values stay inside it, rebuilt as one Conv (or ConvTranspose) per input plus the
//! Adds combining several inputs. BatchNormalization after a conv scales its output channels
//! (axis 1 of a ConvTranspose kernel); BatchNormalization before a conv scales its input
//! channels; parallel kernels on the same input are zero-padded to the largest size around the
//! centre and added (RepVGG, ACNet), an identity branch becoming a centred one-hot kernel (per
//! group); a 1×1 conv after a k×k one (conv LoRA's B after A) multiplies into it.
//! Refuses: branches whose strides, dilations or groups differ, or whose padding does not
//! centre the kernels alike (so their outputs do not line up); a constant shift before a padded
//! conv (zero padding would pad the unshifted signal); a k×k conv after another k×k conv (the
//! kernel would grow and borders would not be exact); results that would cost more
//! multiply-adds or parameters than the region (a grouped conv plus a dense branch).
//! Sound because every piece is linear in the region's inputs and convolution distributes over
//! sums of kernels with the same geometry; the merge is computed in f64 and rounded once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ndarray::{Array1, ArrayD, Axis, IxDyn, Slice};
use onnx_protobuf::AttributeProto;

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::ir::{Graph, Model, Node, NodeId, ValueId};
use crate::rewrite::consts::{const_f64, from_f64, from_f64_like, is_const};
use crate::rewrite::region::{Region, regions};
use crate::rewrite::types::{elem_type, shape};

pub struct FoldConv;

/// Geometry shared by kernels that can be added.
#[derive(Clone, Debug, PartialEq)]
struct Geom {
    strides: Vec<i64>,
    dilations: Vec<i64>,
    groups: usize,
}

/// A kernel applied to the source: `[C_out, C_in/groups, k...]` with its padding.
#[derive(Clone, Debug)]
struct Kernel {
    k: ArrayD<f64>,
    pads_begin: Vec<i64>,
    pads_end: Vec<i64>,
    geom: Geom,
    /// ConvTranspose kernel `[C_in, C_out/groups, k...]`; only channel scales compose with it.
    transposed: bool,
    /// The node it came from (its attributes are reused when rebuilding).
    node: NodeId,
}

/// One branch from a source: the identity with per-channel scale, or a kernel.
#[derive(Clone, Debug)]
enum Term {
    /// `x ⊙ s` per channel (`None`: scale 1 everywhere).
    Scale(Option<Array1<f64>>, f64),
    Kernel(Kernel),
}

#[derive(Clone, Debug, Default)]
struct CForm {
    parts: BTreeMap<ValueId, Vec<Term>>,
    /// Per-channel bias.
    bias: Option<Array1<f64>>,
}

/// How a node acts on its non-constant inputs.
#[derive(Clone, Debug)]
enum COp {
    Conv {
        input: ValueId,
        kernel: Kernel,
        bias: Option<Array1<f64>>,
    },
    /// `x ⊙ scale + shift`, per channel (axis 1).
    Channel {
        input: ValueId,
        scale: Option<Array1<f64>>,
        shift: Option<Array1<f64>>,
    },
    Sum {
        a: ValueId,
        b: ValueId,
        sign: f64,
    },
    Pass {
        input: ValueId,
    },
}

impl COp {
    fn inputs(&self) -> Vec<ValueId> {
        match self {
            COp::Conv { input, .. } | COp::Channel { input, .. } | COp::Pass { input } => {
                vec![*input]
            }
            COp::Sum { a, b, .. } => vec![*a, *b],
        }
    }
}

fn rank(g: &Graph, v: ValueId) -> Option<usize> {
    shape(g, v).map(|s| s.len())
}

/// A per-channel vector from a constant shaped `[C,1,..,1]` (or `[1,C,1,..]`) for an input of
/// rank `r`, or a scalar.
fn per_channel(c: &ArrayD<f64>, r: usize) -> Option<Option<Array1<f64>>> {
    if c.len() == 1 {
        return Some(None);
    }
    let s = c.shape();
    // Right-align against [N, C, spatial...].
    if s.len() > r || r < 3 {
        return None;
    }
    let off = r - s.len();
    for (i, &d) in s.iter().enumerate() {
        let axis = i + off;
        if axis != 1 && d != 1 {
            return None;
        }
    }
    if off > 1 {
        return None;
    }
    Some(Some(Array1::from_iter(c.iter().copied())))
}

fn ints(node: &Node, name: &str, n: usize, default: i64) -> Vec<i64> {
    node.attr_ints(name)
        .map(|v| v.to_vec())
        .filter(|v| v.len() == n)
        .unwrap_or_else(|| vec![default; n])
}

fn classify(g: &Graph, n: NodeId) -> Option<COp> {
    let node = g.node(n);
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return None;
    }
    let input = |i: usize| node.inputs.get(i).copied().flatten();
    let konst = |v: ValueId| is_const(g, v);
    let out = node.outputs.first().copied().flatten()?;
    if elem_type(g, out).is_some_and(|t| !crate::rewrite::consts::is_mergeable_float(t)) {
        return None;
    }
    match node.op_type.as_str() {
        "Conv" | "ConvTranspose" => {
            let (x, w) = (input(0)?, input(1)?);
            if konst(x) || !konst(w) {
                return None;
            }
            let k = const_f64(g, w)?;
            if k.ndim() < 3 {
                return None;
            }
            let sp = k.ndim() - 2;
            let transposed = node.op_type == "ConvTranspose";
            if transposed
                && (node.attr("output_shape").is_some()
                    || node
                        .attr_ints("output_padding")
                        .is_some_and(|p| p.iter().any(|&x| x != 0)))
            {
                return None;
            }
            if node
                .attr("auto_pad")
                .is_some_and(|a| a.s != b"NOTSET" && !a.s.is_empty())
            {
                return None;
            }
            let pads = ints(node, "pads", 2 * sp, 0);
            let groups = node.attr_int("group").unwrap_or(1);
            if groups < 1 {
                return None;
            }
            let bias = match input(2) {
                None => None,
                Some(b) if konst(b) => Some(Array1::from_iter(const_f64(g, b)?.iter().copied())),
                Some(_) => return None,
            };
            Some(COp::Conv {
                input: x,
                kernel: Kernel {
                    k,
                    pads_begin: pads[..sp].to_vec(),
                    pads_end: pads[sp..].to_vec(),
                    geom: Geom {
                        strides: ints(node, "strides", sp, 1),
                        dilations: ints(node, "dilations", sp, 1),
                        groups: groups as usize,
                    },
                    transposed,
                    node: n,
                },
                bias,
            })
        }
        "BatchNormalization" => {
            let x = input(0)?;
            if konst(x) || node.outputs.iter().skip(1).flatten().next().is_some() {
                return None;
            }
            if node.attr_int("training_mode").unwrap_or(0) != 0 {
                return None;
            }
            let r = rank(g, x)?;
            if r < 3 {
                return None;
            }
            let get = |i: usize| -> Option<Array1<f64>> {
                let v = input(i)?;
                konst(v).then_some(())?;
                Some(Array1::from_iter(const_f64(g, v)?.iter().copied()))
            };
            let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let eps = node.attr_float("epsilon").unwrap_or(1e-5) as f64;
            let c = gamma.len();
            if [beta.len(), mean.len(), var.len()].iter().any(|&l| l != c) {
                return None;
            }
            let t: Array1<f64> = gamma
                .iter()
                .zip(var.iter())
                .map(|(g, v)| g / (v + eps).sqrt())
                .collect();
            let shift: Array1<f64> = beta
                .iter()
                .zip(mean.iter().zip(t.iter()))
                .map(|(b, (m, t))| b - m * t)
                .collect();
            Some(COp::Channel {
                input: x,
                scale: Some(t),
                shift: Some(shift),
            })
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (input(0)?, input(1)?);
            match (konst(a), konst(b)) {
                (false, false) if matches!(node.op_type.as_str(), "Add" | "Sub") => {
                    // Only 4-D-ish tensors belong to the conv world.
                    if rank(g, a).is_none_or(|r| r < 3) {
                        return None;
                    }
                    Some(COp::Sum {
                        a,
                        b,
                        sign: if node.op_type == "Sub" { -1.0 } else { 1.0 },
                    })
                }
                (false, true) | (true, false) => {
                    let ka = konst(a);
                    let (x, c) = if ka { (b, a) } else { (a, b) };
                    let r = rank(g, x)?;
                    let cv = const_f64(g, c)?;
                    let pc = per_channel(&cv, r)?;
                    let scalar = cv.iter().next().copied().unwrap_or(0.0);
                    let vec_or = |f: &dyn Fn(f64) -> f64| -> Array1<f64> {
                        match &pc {
                            Some(v) => v.mapv(f),
                            None => Array1::from_elem(1, f(scalar)),
                        }
                    };
                    match (node.op_type.as_str(), ka) {
                        ("Add", _) => Some(COp::Channel {
                            input: x,
                            scale: None,
                            shift: Some(vec_or(&|v| v)),
                        }),
                        ("Sub", false) => Some(COp::Channel {
                            input: x,
                            scale: None,
                            shift: Some(vec_or(&|v| -v)),
                        }),
                        ("Sub", true) => Some(COp::Channel {
                            input: x,
                            scale: Some(Array1::from_elem(1, -1.0)),
                            shift: Some(vec_or(&|v| v)),
                        }),
                        ("Mul", _) => Some(COp::Channel {
                            input: x,
                            scale: Some(vec_or(&|v| v)),
                            shift: None,
                        }),
                        ("Div", false) if cv.iter().all(|v| *v != 0.0 && v.is_finite()) => {
                            Some(COp::Channel {
                                input: x,
                                scale: Some(vec_or(&|v| 1.0 / v)),
                                shift: None,
                            })
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        "Identity" => {
            let x = input(0).filter(|&x| !konst(x))?;
            (rank(g, x)? >= 3).then_some(COp::Pass { input: x })
        }
        "Dropout" => {
            let x = input(0).filter(|&x| !konst(x))?;
            let mask_used = node
                .outputs
                .get(1)
                .copied()
                .flatten()
                .is_some_and(|m| !g.value(m).consumers.is_empty() || g.is_output(m));
            (!mask_used && input(2).is_none() && rank(g, x)? >= 3).then_some(COp::Pass { input: x })
        }
        _ => None,
    }
}

/// Broadcasts a length-1 vector to `c` channels.
fn widen(v: &Array1<f64>, c: usize) -> Option<Array1<f64>> {
    if v.len() == c {
        Some(v.clone())
    } else if v.len() == 1 {
        Some(Array1::from_elem(c, v[0]))
    } else {
        None
    }
}

fn out_channels(k: &Kernel) -> usize {
    if k.transposed {
        k.k.shape()[1] * k.geom.groups
    } else {
        k.k.shape()[0]
    }
}

/// Scales the output channels of a kernel.
fn scale_out(k: &mut Kernel, s: &Array1<f64>) -> std::result::Result<(), String> {
    let c = out_channels(k);
    let s = widen(s, c).ok_or("a channel scale does not match the kernel's output channels")?;
    if k.transposed {
        // [C_in, C_out/g, ...]: output channel o lives in group o / (C_out/g), column o % (C_out/g).
        let per = k.k.shape()[1];
        let cin_g = k.k.shape()[0] / k.geom.groups;
        for (i, mut row) in k.k.axis_iter_mut(Axis(0)).enumerate() {
            let grp = i / cin_g.max(1);
            for (j, mut col) in row.axis_iter_mut(Axis(0)).enumerate() {
                col.mapv_inplace(|v| v * s[grp * per + j]);
            }
        }
    } else {
        for (o, mut sl) in k.k.axis_iter_mut(Axis(0)).enumerate() {
            sl.mapv_inplace(|v| v * s[o]);
        }
    }
    Ok(())
}

impl CForm {
    fn source(v: ValueId) -> Self {
        let mut parts = BTreeMap::new();
        parts.insert(v, vec![Term::Scale(None, 1.0)]);
        CForm { parts, bias: None }
    }

    fn channel(
        mut self,
        scale: Option<&Array1<f64>>,
        shift: Option<&Array1<f64>>,
    ) -> std::result::Result<Self, String> {
        if let Some(s) = scale {
            for terms in self.parts.values_mut() {
                for t in terms.iter_mut() {
                    match t {
                        Term::Scale(v, k) => {
                            if s.len() == 1 {
                                *k *= s[0];
                            } else {
                                *v = Some(match v.take() {
                                    None => s.clone(),
                                    Some(old) => {
                                        let c = old.len().max(s.len());
                                        let (a, b) = (
                                            widen(&old, c).ok_or("channel counts differ")?,
                                            widen(s, c).ok_or("channel counts differ")?,
                                        );
                                        a * b
                                    }
                                });
                            }
                        }
                        Term::Kernel(kern) => scale_out(kern, s)?,
                    }
                }
            }
            if let Some(b) = self.bias.take() {
                let c = b.len().max(s.len());
                self.bias = Some(
                    widen(&b, c).ok_or("channel counts differ")?
                        * widen(s, c).ok_or("channel counts differ")?,
                );
            }
        }
        if let Some(c) = shift {
            self.bias = Some(match self.bias.take() {
                None => c.clone(),
                Some(b) => {
                    let n = b.len().max(c.len());
                    widen(&b, n).ok_or("channel counts differ")?
                        + widen(c, n).ok_or("channel counts differ")?
                }
            });
        }
        Ok(self)
    }

    fn plus(mut self, other: CForm, sign: f64) -> std::result::Result<Self, String> {
        for (s, terms) in other.parts {
            let e = self.parts.entry(s).or_default();
            for t in terms {
                e.push(match t {
                    Term::Scale(v, k) => Term::Scale(v, k * sign),
                    Term::Kernel(mut kern) => {
                        kern.k.mapv_inplace(|x| x * sign);
                        Term::Kernel(kern)
                    }
                });
            }
        }
        if let Some(b) = other.bias {
            let b = b.mapv(|x| x * sign);
            self.bias = Some(match self.bias.take() {
                None => b,
                Some(a) => {
                    let n = a.len().max(b.len());
                    widen(&a, n).ok_or("channel counts differ")?
                        + widen(&b, n).ok_or("channel counts differ")?
                }
            });
        }
        Ok(self)
    }

    /// Applies a conv to this form.
    fn conv(self, k: &Kernel, bias: Option<&Array1<f64>>) -> std::result::Result<Self, String> {
        let mut out = CForm::default();
        let pointwise = k.k.shape()[2..].iter().all(|&d| d == 1)
            && k.geom.strides.iter().all(|&s| s == 1)
            && k.pads_begin.iter().chain(&k.pads_end).all(|&p| p == 0)
            && k.geom.groups == 1
            && !k.transposed;
        let unpadded = k.pads_begin.iter().chain(&k.pads_end).all(|&p| p == 0);
        for (s, terms) in self.parts {
            let mut new_terms = Vec::new();
            for t in terms {
                match t {
                    Term::Scale(v, sc) => {
                        let mut kk = k.clone();
                        if k.transposed && v.is_some() {
                            return Err(
                                "a channel scale before a ConvTranspose is not folded".into()
                            );
                        }
                        scale_in(&mut kk, v.as_ref(), sc)?;
                        new_terms.push(Term::Kernel(kk));
                    }
                    Term::Kernel(prev) => {
                        if prev.transposed {
                            return Err("a conv after a ConvTranspose is not folded".into());
                        }
                        if pointwise {
                            new_terms.push(Term::Kernel(mix_after(&prev, &k.k)?));
                        } else if is_pointwise(&prev) {
                            new_terms.push(Term::Kernel(mix_before(k, &prev)?));
                        } else {
                            return Err(
                                "a conv after another spatial conv would grow the kernel and change the borders".into(),
                            );
                        }
                    }
                }
            }
            out.parts.insert(s, new_terms);
        }
        // The bias passes through the conv: Σ_kernel K·b per output channel, exact only when
        // nothing is padded (padding would pad zeros, not the bias).
        if let Some(b) = self.bias {
            if b.iter().any(|&x| x != 0.0) && !unpadded {
                return Err(
                    "a constant shift before a padded conv would need padding with the shift, not zeros".into(),
                );
            }
            out.bias = Some(kernel_times_bias(k, &b)?);
        }
        if let Some(cb) = bias {
            out = out.channel(None, Some(cb))?;
        }
        Ok(out)
    }
}

fn is_pointwise(k: &Kernel) -> bool {
    k.k.shape()[2..].iter().all(|&d| d == 1)
        && k.geom.strides.iter().all(|&s| s == 1)
        && k.geom.dilations.iter().all(|&d| d == 1)
        && k.pads_begin.iter().chain(&k.pads_end).all(|&p| p == 0)
        && k.geom.groups == 1
        && !k.transposed
}

/// Scales a kernel's input channels (a channel scale before the conv).
fn scale_in(k: &mut Kernel, v: Option<&Array1<f64>>, sc: f64) -> std::result::Result<(), String> {
    if sc != 1.0 {
        k.k.mapv_inplace(|x| x * sc);
    }
    let Some(v) = v else { return Ok(()) };
    let cin_g = k.k.shape()[1];
    let cout_g = k.k.shape()[0] / k.geom.groups;
    let cin = cin_g * k.geom.groups;
    let v = widen(v, cin).ok_or("a channel scale does not match the conv's input channels")?;
    for (o, mut sl) in k.k.axis_iter_mut(Axis(0)).enumerate() {
        let grp = o / cout_g.max(1);
        for (i, mut col) in sl.axis_iter_mut(Axis(0)).enumerate() {
            col.mapv_inplace(|x| x * v[grp * cin_g + i]);
        }
    }
    Ok(())
}

/// Σ over input channels and taps of K·b, per output channel.
fn kernel_times_bias(k: &Kernel, b: &Array1<f64>) -> std::result::Result<Array1<f64>, String> {
    if k.transposed {
        return Err("a shift before a ConvTranspose is not folded".into());
    }
    let cin_g = k.k.shape()[1];
    let cout = k.k.shape()[0];
    let cout_g = cout / k.geom.groups;
    let b = widen(b, cin_g * k.geom.groups)
        .ok_or("a shift does not match the conv's input channels")?;
    let mut out = Array1::zeros(cout);
    for (o, sl) in k.k.axis_iter(Axis(0)).enumerate() {
        let grp = o / cout_g.max(1);
        for (i, col) in sl.axis_iter(Axis(0)).enumerate() {
            out[o] += col.sum() * b[grp * cin_g + i];
        }
    }
    Ok(out)
}

/// Expands a grouped kernel to groups = 1 (block diagonal).
fn ungroup(k: &Kernel) -> Kernel {
    if k.geom.groups == 1 {
        return k.clone();
    }
    let s = k.k.shape().to_vec();
    let (cout, cin_g, g) = (s[0], s[1], k.geom.groups);
    let cout_g = cout / g;
    let mut shape = s.clone();
    shape[1] = cin_g * g;
    let mut full = ArrayD::<f64>::zeros(IxDyn(&shape));
    for o in 0..cout {
        let grp = o / cout_g.max(1);
        for i in 0..cin_g {
            let src = k.k.index_axis(Axis(0), o).index_axis(Axis(0), i).to_owned();
            full.index_axis_mut(Axis(0), o)
                .index_axis_mut(Axis(0), grp * cin_g + i)
                .assign(&src);
        }
    }
    let mut out = k.clone();
    out.k = full;
    out.geom.groups = 1;
    out
}

/// A pointwise `[C2, C1, 1...]` conv after `prev`: `K'[o] = Σ_c W[o,c]·K[c]`.
fn mix_after(prev: &Kernel, w: &ArrayD<f64>) -> std::result::Result<Kernel, String> {
    let prev = ungroup(prev);
    let (c2, c1) = (w.shape()[0], w.shape()[1]);
    if prev.k.shape()[0] != c1 {
        return Err("channel counts of consecutive convs do not match".into());
    }
    let mut shape = prev.k.shape().to_vec();
    shape[0] = c2;
    let mut out = ArrayD::<f64>::zeros(IxDyn(&shape));
    for o in 0..c2 {
        let mut dst = out.index_axis_mut(Axis(0), o);
        for c in 0..c1 {
            let wv = w[[o, c]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, w.ndim() - 2))
                .collect::<Vec<_>>()
                .as_slice()];
            if wv != 0.0 {
                dst.scaled_add(wv, &prev.k.index_axis(Axis(0), c));
            }
        }
    }
    let mut k = prev.clone();
    k.k = out;
    Ok(k)
}

/// A spatial conv `k` after a pointwise `prev` (`[C1, C0]`): `K'[o,i] = Σ_c K[o,c]·P[c,i]`.
fn mix_before(k: &Kernel, prev: &Kernel) -> std::result::Result<Kernel, String> {
    let kk = ungroup(k);
    let (c1, c0) = (prev.k.shape()[0], prev.k.shape()[1]);
    if kk.k.shape()[1] != c1 {
        return Err("channel counts of consecutive convs do not match".into());
    }
    let mut shape = kk.k.shape().to_vec();
    shape[1] = c0;
    let mut out = ArrayD::<f64>::zeros(IxDyn(&shape));
    let p = |c: usize, i: usize| {
        let idx: Vec<usize> = [c, i]
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, prev.k.ndim() - 2))
            .collect();
        prev.k[idx.as_slice()]
    };
    for o in 0..shape[0] {
        for i in 0..c0 {
            let mut dst = out.index_axis_mut(Axis(0), o);
            let mut dst = dst.index_axis_mut(Axis(0), i);
            for c in 0..c1 {
                let pv = p(c, i);
                if pv != 0.0 {
                    dst.scaled_add(pv, &kk.k.index_axis(Axis(0), o).index_axis(Axis(0), c));
                }
            }
        }
    }
    let mut r = kk;
    r.k = out;
    Ok(r)
}

/// The result of adding a source's terms.
enum Combined {
    Scale(Option<Array1<f64>>, f64),
    Kernel(Kernel),
}

/// Adds parallel terms: kernels zero-padded to the largest size around their centres; the
/// identity as a centred one-hot kernel.
fn combine(terms: &[Term]) -> std::result::Result<Combined, String> {
    let kernels: Vec<&Kernel> = terms
        .iter()
        .filter_map(|t| match t {
            Term::Kernel(k) => Some(k),
            _ => None,
        })
        .collect();
    if kernels.is_empty() {
        let mut vec: Option<Array1<f64>> = None;
        let mut scalar = 0.0;
        for t in terms {
            if let Term::Scale(v, k) = t {
                match v {
                    None => scalar += k,
                    Some(v) => {
                        let add = v.mapv(|x| x * k);
                        vec = Some(match vec.take() {
                            None => add,
                            Some(a) => a + add,
                        });
                    }
                }
            }
        }
        return Ok(match vec {
            None => Combined::Scale(None, scalar),
            Some(v) => Combined::Scale(Some(v + scalar), 1.0),
        });
    }
    if kernels.len() == 1 && terms.len() == 1 {
        return Ok(Combined::Kernel(kernels[0].clone()));
    }
    if kernels.iter().any(|k| k.transposed) {
        return Err("ConvTranspose branches are not added to other branches".into());
    }
    let geom = kernels[0].geom.clone();
    if kernels
        .iter()
        .any(|k| k.geom.strides != geom.strides || k.geom.dilations != geom.dilations)
    {
        return Err("parallel branches use different strides or dilations".into());
    }
    let groups = kernels[0].geom.groups;
    if kernels.iter().any(|k| k.geom.groups != groups) {
        return Err("parallel branches use different groups".into());
    }
    let sp = kernels[0].k.ndim() - 2;
    // Largest size per spatial dim; each kernel must sit centred in it with matching pads.
    let size: Vec<usize> = (0..sp)
        .map(|d| {
            kernels
                .iter()
                .map(|k| k.k.shape()[2 + d])
                .max()
                .unwrap_or(1)
        })
        .collect();
    let big = kernels[0];
    let cout = big.k.shape()[0];
    let cin_g = big.k.shape()[1];
    let mut shape = vec![cout, cin_g];
    shape.extend(&size);
    let mut acc = ArrayD::<f64>::zeros(IxDyn(&shape));
    let mut target_pads: Option<(Vec<i64>, Vec<i64>)> = None;
    for k in &kernels {
        if k.k.shape()[0] != cout || k.k.shape()[1] != cin_g {
            return Err("parallel kernels have different channel counts".into());
        }
        let mut view = acc.view_mut();
        let (mut pb, mut pe) = (Vec::new(), Vec::new());
        for (d, &bs) in size.iter().enumerate() {
            let ks = k.k.shape()[2 + d];
            let dil = geom.dilations[d];
            if (bs - ks) % 2 != 0 {
                return Err("kernels of different parity cannot be centred together".into());
            }
            let off = (bs - ks) / 2;
            // Centred in the big kernel, its pads grow by the offset on both sides.
            pb.push(k.pads_begin[d] + off as i64 * dil);
            pe.push(k.pads_end[d] + off as i64 * dil);
            view.slice_axis_inplace(Axis(2 + d), Slice::from(off..off + ks));
        }
        match &target_pads {
            None => target_pads = Some((pb, pe)),
            Some((b0, e0)) if *b0 == pb && *e0 == pe => {}
            Some(_) => {
                return Err(
                    "parallel branches are padded differently, so their outputs do not line up"
                        .into(),
                );
            }
        }
        view += &k.k;
    }
    // Identity terms: a one-hot at the centre of each output channel's own input channel.
    for t in terms {
        if let Term::Scale(v, sc) = t {
            if geom.strides.iter().any(|&s| s != 1) {
                return Err("an identity branch next to a strided conv".into());
            }
            if size.iter().any(|&s| s % 2 == 0) {
                return Err("an identity branch next to an even-sized kernel".into());
            }
            let cout_g = cout / groups;
            if cout_g != cin_g {
                return Err("an identity branch needs as many input as output channels".into());
            }
            for o in 0..cout {
                let mut idx = vec![o, o % cin_g];
                idx.extend(size.iter().map(|s| s / 2));
                let scale = v
                    .as_ref()
                    .map_or(1.0, |v| if v.len() == 1 { v[0] } else { v[o] });
                acc[idx.as_slice()] += scale * sc;
            }
        }
    }
    let mut out = big.clone();
    out.k = acc;
    if let Some((pb, pe)) = target_pads {
        out.pads_begin = pb;
        out.pads_end = pe;
    }
    // Reuse the attributes of the node whose kernel already has the final size.
    if let Some(k) = kernels.iter().find(|k| k.k.shape()[2..] == size[..]) {
        out.node = k.node;
    }
    Ok(Combined::Kernel(out))
}

fn macs(k: &Kernel) -> u64 {
    k.k.len() as u64
}

impl Pass for FoldConv {
    fn name(&self) -> &'static str {
        "fold-conv"
    }
    fn summary(&self) -> &'static str {
        "fold BatchNorm, RepVGG/ACNet branches and conv LoRA into one Conv per input"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<usize> {
        fold_conv(model, cx)
    }
}

/// Runs the fold; returns how many regions were rewritten and what each did.
pub fn fold_conv(model: &mut Model, cx: &mut PassContext) -> Result<usize> {
    let mut order = model.graph.topo_order()?;
    let mut ops: HashMap<NodeId, COp> = HashMap::new();
    for &n in &order {
        if let Some(op) = classify(&model.graph, n) {
            ops.insert(n, op);
        }
    }
    let inputs: HashMap<NodeId, Vec<ValueId>> =
        ops.iter().map(|(n, op)| (*n, op.inputs())).collect();
    let mut cuts: HashSet<ValueId> = HashSet::new();
    let mut done = 0;
    // Regions whose pieces do not compose are cut where they failed and found again; each
    // round adds at least one cut, so this ends.
    let mut pending: Option<Vec<Region>> = Some(regions(&model.graph, &inputs, &order, &cuts));
    while let Some(regs) = pending.take() {
        let mut new_cut = false;
        for region in regs {
            let g = &model.graph;
            // Only regions with a conv (or a BatchNormalization) are this pass's business.
            if !region.nodes.iter().any(|n| {
                matches!(
                    g.node(*n).op_type.as_str(),
                    "Conv" | "ConvTranspose" | "BatchNormalization"
                )
            }) {
                continue;
            }
            let label = g.label(region.roots[0]);
            let mut forms: HashMap<ValueId, CForm> = HashMap::new();
            let mut err = None;
            for &n in &order {
                if !region.nodes.contains(&n) {
                    continue;
                }
                let y = g.node(n).outputs[0].expect("output");
                let get = |v: ValueId| forms.get(&v).cloned().unwrap_or_else(|| CForm::source(v));
                let f = match &ops[&n] {
                    COp::Conv {
                        input,
                        kernel,
                        bias,
                    } => get(*input).conv(kernel, bias.as_ref()),
                    COp::Channel {
                        input,
                        scale,
                        shift,
                    } => get(*input).channel(scale.as_ref(), shift.as_ref()),
                    COp::Sum { a, b, sign } => get(*a).plus(get(*b), *sign),
                    COp::Pass { input } => Ok(get(*input)),
                };
                match f {
                    Ok(f) => {
                        forms.insert(y, f);
                    }
                    Err(e) => {
                        err = Some((n, format!("{}: {e}", g.label(n))));
                        break;
                    }
                }
            }
            if let Some((n, e)) = err {
                // Cut before the node that failed and try the pieces on either side.
                let before = cuts.len();
                for v in ops[&n].inputs() {
                    if g.producer(v).is_some_and(|p| region.nodes.contains(&p)) {
                        cuts.insert(v);
                    }
                }
                if cuts.len() > before {
                    new_cut = true;
                } else {
                    cx.refuse(
                        label,
                        format!("its convolution branches cannot be merged exactly: {e}"),
                    );
                }
                continue;
            }
            let mut plans = Vec::new();
            let mut err: Option<String> = None;
            for &r in &region.roots {
                let y = g.node(r).outputs[0].expect("output");
                let f = &forms[&y];
                let mut parts = Vec::new();
                for (s, terms) in &f.parts {
                    match combine(terms) {
                        Ok(c) => parts.push((*s, c)),
                        Err(e) => {
                            err = Some(e);
                            break;
                        }
                    }
                }
                plans.push((r, y, parts, f.bias.clone()));
            }
            if let Some(e) = err {
                let before = cuts.len();
                for &r in &region.roots {
                    for v in ops[&r].inputs() {
                        if g.producer(v).is_some_and(|p| region.nodes.contains(&p)) {
                            cuts.insert(v);
                        }
                    }
                }
                if cuts.len() > before {
                    new_cut = true;
                } else {
                    cx.refuse(
                        label,
                        format!("its convolution branches cannot be merged exactly: {e}"),
                    );
                }
                continue;
            }
            // Cost per output pixel: kernel taps × channels; channel ops one per channel.
            let before: u64 = region
                .nodes
                .iter()
                .map(|n| match &ops[n] {
                    COp::Conv { kernel, .. } => macs(kernel),
                    COp::Pass { .. } => 0,
                    _ => 1,
                })
                .sum();
            let mut after = 0u64;
            let mut nodes_after = 0usize;
            for (_, _, parts, bias) in &plans {
                for (_, c) in parts {
                    match c {
                        Combined::Kernel(k) => {
                            after += macs(k);
                            nodes_after += 1;
                        }
                        Combined::Scale(None, s) if *s == 1.0 => {}
                        Combined::Scale(..) => {
                            after += 1;
                            nodes_after += 1;
                        }
                    }
                }
                nodes_after += parts.len().saturating_sub(1);
                after += parts.len().saturating_sub(1) as u64;
                let conv_takes_bias = parts.iter().any(|(_, c)| matches!(c, Combined::Kernel(_)));
                if bias.is_some() && !conv_takes_bias {
                    nodes_after += 1;
                    after += 1;
                }
            }
            let nodes_before = region.nodes.len();
            // Parameters: constants only the region reads (and the weights it rewrites) against
            // what the rebuilt convs, scales and biases hold.
            let mut params_before = 0u64;
            let mut seen_consts = HashSet::new();
            for n in &region.nodes {
                for v in g.node(*n).inputs.iter().flatten() {
                    if is_const(g, *v) && seen_consts.insert(*v) {
                        let only_here = g
                            .consumer_nodes(*v)
                            .iter()
                            .all(|c| region.nodes.contains(c));
                        if only_here {
                            params_before += g.constant(*v).map_or(0, |t| t.numel());
                        }
                    }
                }
            }
            let params_after: u64 = plans
                .iter()
                .map(|(_, _, parts, bias)| {
                    parts
                        .iter()
                        .map(|(_, c)| match c {
                            Combined::Kernel(k) => k.k.len() as u64,
                            Combined::Scale(Some(v), _) => v.len() as u64,
                            Combined::Scale(None, s) if *s == 1.0 => 0,
                            Combined::Scale(None, _) => 1,
                        })
                        .sum::<u64>()
                        + bias.as_ref().map_or(0, |b| b.len() as u64)
                })
                .sum();
            let has_conv = region
                .nodes
                .iter()
                .any(|n| matches!(g.node(*n).op_type.as_str(), "Conv" | "ConvTranspose"));
            if after > before
                || params_after > params_before
                || (after == before && nodes_after >= nodes_before && params_after == params_before)
            {
                if (after > before || params_after > params_before) && has_conv {
                    cx.refuse(
                        label,
                        format!(
                            "merging would cost more ({before} -> {after} multiply-adds per output pixel, {params_before} -> {params_after} parameters)"
                        ),
                    );
                }
                continue;
            }
            // Rebuild.
            let backup = model.graph.clone();
            let g = &mut model.graph;
            let outside: HashMap<ValueId, usize> = region
                .nodes
                .iter()
                .flat_map(|n| {
                    g.node(*n)
                        .inputs
                        .iter()
                        .flatten()
                        .copied()
                        .collect::<Vec<_>>()
                })
                .filter(|v| is_const(g, *v))
                .map(|v| {
                    let k = g
                        .consumer_nodes(v)
                        .iter()
                        .filter(|n| !region.nodes.contains(n))
                        .count();
                    (v, k)
                })
                .collect();
            let removed: HashMap<NodeId, Node> = region
                .nodes
                .iter()
                .map(|&n| (n, g.remove_node(n)))
                .collect();
            let mut new_nodes = Vec::new();
            let mut described = Vec::new();
            for (root, y, parts, bias) in &plans {
                let out_name = g.value(*y).name.clone();
                let dtype = elem_type(g, *y).unwrap_or(crate::ir::dtype::code::FLOAT);
                let mut produced = Vec::new();
                let first = new_nodes.len();
                // The bias rides on the first conv (Conv adds it for free); without one, an Add.
                let bias_host = parts
                    .iter()
                    .position(|(_, c)| matches!(c, Combined::Kernel(_)));
                for (pi, (s, c)) in parts.iter().enumerate() {
                    match c {
                        Combined::Scale(None, k) if *k == 1.0 => produced.push(*s),
                        Combined::Scale(v, k) => {
                            let vec = v
                                .clone()
                                .map(|v| v.mapv(|x| x * k))
                                .unwrap_or_else(|| Array1::from_elem(1, *k));
                            let r = rank(g, *s).unwrap_or(4);
                            let mut shp = vec![vec.len()];
                            shp.extend(std::iter::repeat_n(1, r.saturating_sub(2)));
                            let arr = vec.into_shape_with_order(IxDyn(&shp)).expect("sized");
                            let c = g.add_initializer(
                                &format!("{out_name}_scale"),
                                from_f64(&arr, dtype),
                            );
                            let t = g.fresh_value(&format!("{out_name}_scaled"));
                            let mut n = Node::new("Mul");
                            n.inputs = vec![Some(*s), Some(c)];
                            n.outputs = vec![Some(t)];
                            new_nodes.push(n);
                            produced.push(t);
                        }
                        Combined::Kernel(k) => {
                            let anchor = &removed[&k.node];
                            let mut n = anchor.clone();
                            n.order = 0;
                            let w_old = anchor.inputs.get(1).copied().flatten();
                            let wdtype = w_old
                                .and_then(|w| g.constant(w).map(|t| t.dtype))
                                .unwrap_or(dtype);
                            let ext = w_old
                                .and_then(|w| g.constant(w))
                                .is_some_and(|t| t.is_external());
                            let tensor = from_f64_like(&k.k, wdtype, ext)?;
                            let w = match w_old {
                                Some(w)
                                    if outside.get(&w).copied().unwrap_or(0) == 0
                                        && !g.value(w).is_input =>
                                {
                                    g.set_initializer(w, tensor)?;
                                    w
                                }
                                Some(w) => {
                                    let name = format!("{}_folded", g.value(w).name);
                                    g.add_initializer(&name, tensor)
                                }
                                None => g.add_initializer(&format!("{out_name}_weight"), tensor),
                            };
                            n.attrs.retain(|a| {
                                !matches!(a.name.as_str(), "kernel_shape" | "pads" | "group")
                            });
                            let ks: Vec<i64> = k.k.shape()[2..].iter().map(|&d| d as i64).collect();
                            n.attrs.push(crate::rewrite::ints_attr("kernel_shape", &ks));
                            let pads: Vec<i64> =
                                k.pads_begin.iter().chain(&k.pads_end).copied().collect();
                            if pads.iter().any(|&p| p != 0) {
                                n.attrs.push(crate::rewrite::ints_attr("pads", &pads));
                            }
                            if k.geom.groups != 1 {
                                n.attrs.push(AttributeProto {
                                    name: "group".into(),
                                    i: k.geom.groups as i64,
                                    type_: onnx_protobuf::attribute_proto::AttributeType::INT
                                        .into(),
                                    ..Default::default()
                                });
                            }
                            n.attrs.sort_by(|a, b| a.name.cmp(&b.name));
                            n.inputs = vec![Some(*s), Some(w)];
                            if bias_host == Some(pi)
                                && let Some(b) = bias
                            {
                                let cout = out_channels(k);
                                let bv = widen(b, cout)
                                    .ok_or_else(|| crate::Error::graph("bias width"))?;
                                let bt = from_f64(&bv.into_dyn(), wdtype);
                                let old_b = anchor.inputs.get(2).copied().flatten();
                                let bvid = match old_b {
                                    Some(ob)
                                        if outside.get(&ob).copied().unwrap_or(0) == 0
                                            && !g.value(ob).is_input =>
                                    {
                                        g.set_initializer(ob, bt)?;
                                        ob
                                    }
                                    _ => g.add_initializer(&format!("{out_name}_bias"), bt),
                                };
                                n.inputs.push(Some(bvid));
                            }
                            let t = g.fresh_value(&format!("{out_name}_conv"));
                            n.outputs = vec![Some(t)];
                            described.push(g.value(w).name.clone());
                            new_nodes.push(n);
                            produced.push(t);
                        }
                    }
                }
                let mut acc = crate::rewrite::add_chain(g, &produced, &out_name, &mut new_nodes);
                if let Some(b) = bias
                    && bias_host.is_none()
                {
                    let r = rank(g, *y).unwrap_or(4);
                    let mut shp = vec![b.len()];
                    shp.extend(std::iter::repeat_n(1, r.saturating_sub(2)));
                    let arr = b.clone().into_shape_with_order(IxDyn(&shp)).expect("sized");
                    let c = g.add_initializer(&format!("{out_name}_bias"), from_f64(&arr, dtype));
                    let t = g.fresh_value(&format!("{out_name}_biased"));
                    let mut n = Node::new("Add");
                    n.inputs = vec![Some(acc), Some(c)];
                    n.outputs = vec![Some(t)];
                    new_nodes.push(n);
                    acc = t;
                }
                crate::rewrite::write_output(&mut new_nodes, first, acc, *y, &removed[root].name);
            }
            let order_key = removed.values().map(|r| r.order).max().unwrap_or(0);
            let mut failed = None;
            let mut added = Vec::new();
            for mut n in new_nodes {
                if n.order == 0 {
                    n.order = order_key;
                }
                match g.add_node(n) {
                    Ok(id) => added.push(id),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                model.graph = backup;
                cx.refuse(label, format!("rebuild failed: {e}"));
                continue;
            }
            let sources: Vec<(ValueId, Option<u64>)> = plans
                .iter()
                .flat_map(|p| p.2.iter().map(|(s, _)| (*s, None)))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let outputs: Vec<ValueId> = plans.iter().map(|p| p.1).collect();
            let old_nodes: Vec<NodeId> = region.nodes.iter().copied().collect();
            let opset = model.opset("").unwrap_or(1);
            cx.check_rewrite(
                &label,
                &backup,
                &old_nodes,
                &model.graph,
                &added,
                &sources,
                &outputs,
                opset,
            )?;
            done += 1;
            let kinds: BTreeSet<&str> = region
                .nodes
                .iter()
                .map(|n| match removed[n].op_type.as_str() {
                    "BatchNormalization" => "BatchNorm",
                    "Conv" | "ConvTranspose" => "conv",
                    _ => "channel op",
                })
                .collect();
            let convs = region
                .nodes
                .iter()
                .filter(|n| removed[n].op_type == "Conv")
                .count();
            let method = if convs >= 2 && plans.iter().all(|p| p.2.len() == 1) {
                if region.nodes.iter().any(|n| removed[n].op_type == "Mul") && convs == 3 {
                    "conv branches (RepVGG/ACNet or conv LoRA)".to_string()
                } else {
                    "parallel or sequential convs (RepVGG/ACNet branches or conv LoRA)".to_string()
                }
            } else {
                kinds.into_iter().collect::<Vec<_>>().join(" + ")
            };
            cx.rewrote(crate::driver::Rewrite {
                pass: String::new(),
                method,
                target: described.first().cloned().unwrap_or(label),
                rank: None,
                parameters_removed: params_before as i64 - params_after as i64,
                macs_before: before,
                macs_after: after,
                nodes_removed: nodes_before.saturating_sub(nodes_after),
                delta_fidelity: None,
            });
        }
        if new_cut {
            // The graph changed where regions were rewritten: classify again before retrying.
            let order2 = model.graph.topo_order()?;
            ops.clear();
            for &n in &order2 {
                if let Some(op) = classify(&model.graph, n) {
                    ops.insert(n, op);
                }
            }
            let inputs2: HashMap<NodeId, Vec<ValueId>> =
                ops.iter().map(|(n, op)| (*n, op.inputs())).collect();
            cuts.retain(|v| model.graph.value(*v).producer.is_some());
            pending = Some(regions(&model.graph, &inputs2, &order2, &cuts));
            order = order2;
        }
    }
    Ok(done)
}
