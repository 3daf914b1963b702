//! `graft apply`: put a PEFT adapter (or several, weighted) onto an ONNX export of its base
//! model, without PyTorch.
//!
//! Each adapted module is found by its scope (the module path PEFT keys carry, matched as a
//! dotted suffix of the scope the exporter recorded; see [`super::target`]) and confirmed by
//! shape; where exporters left no scope, by comparing the base checkpoint's weight with the
//! node's (`--base-weights`). A module that matches no node, or several, is an error naming
//! it: every adapter tensor is used exactly once.
//!
//! By default the deltas are merged straight into the matched weights (x·M form, ADAPTERS.md
//! §1.1): LoRA `M + s·A·B`, DoRA `(M + s·A·B)·diag(m ⊘ ‖M + s·A·B‖_col)`, IA3
//! `M·diag(l)` with the bias scaled too (output side) or `diag(l)·M` (input side). Nothing else
//! in the graph changes; a weight other nodes share (tied embeddings) is cloned first. With
//! `--no-fold` the adapters become branches, built by the same emitter as `graft insert`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Axis};
use serde::Serialize;

use super::emit::{EmitOptions, emit};
use super::insert::replace_weight;
use super::params::{Params, Side, column_norms, weight_xm};
use super::target::{Target, TargetOp, candidates, suffix_match};
use crate::error::{Error, Result};
use crate::ir::{Graph, Model, NodeId};
use crate::peft::{ModuleAdapter, ModuleKind, PeftAdapter};
use crate::rewrite::consts::{const_f64, from_f64_like};

/// One adapter folder and its weight in the combination.
pub struct WeightedAdapter {
    pub adapter: PeftAdapter,
    pub weight: f64,
}

/// Base weights from a safetensors checkpoint, for matching modules whose scope the export lost.
pub struct BaseWeights {
    pub path: PathBuf,
    tensors: BTreeMap<String, ndarray::ArrayD<f32>>,
}

impl BaseWeights {
    /// Reads every floating-point tensor of a safetensors file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::bad_model(path, format!("not a safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if let Ok(a) = crate::peft::tensor_f32(path, &name, &view) {
                tensors.insert(name, a);
            }
        }
        Ok(BaseWeights {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The checkpoint's `<module>.weight`, the key matched on dotted-suffix boundaries either
    /// way (checkpoints of task heads carry a prefix such as `bert.`).
    fn weight_of(&self, module: &str) -> Option<&ndarray::ArrayD<f32>> {
        let want = format!("{module}.weight");
        let hits: Vec<_> = self
            .tensors
            .iter()
            .filter(|(k, _)| suffix_match(k, &want) || suffix_match(&want, k))
            .collect();
        match hits.as_slice() {
            [(_, v)] => Some(v),
            _ => None,
        }
    }
}

/// How a module was matched to its node.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub module: String,
    pub adapter: String,
    pub node: String,
    pub kind: &'static str,
    /// `scope` or `base-weights`.
    pub matched_by: &'static str,
    pub rank: usize,
    pub scale: f64,
    pub weight: f64,
}

fn kind_name(m: &ModuleAdapter) -> &'static str {
    match (m.kind, m.magnitude.is_some(), m.is_conv()) {
        (ModuleKind::Ia3, ..) => "ia3",
        (ModuleKind::Embedding, false, _) => "lora-embedding",
        (ModuleKind::Embedding, true, _) => "dora-embedding",
        (ModuleKind::Linear, true, _) => "dora",
        (ModuleKind::Linear, false, true) => "lora-conv",
        (ModuleKind::Linear, false, false) => "lora",
    }
}

/// `(d_in, d_out)` in x·M form that the module's tensors imply, and the node kinds it fits.
fn module_dims(m: &ModuleAdapter) -> Option<(Option<usize>, usize)> {
    match m.kind {
        ModuleKind::Linear | ModuleKind::Embedding => {
            let a = m.lora_a.as_ref()?;
            let b = m.lora_b.as_ref()?;
            let d_in: usize = a.shape()[1..].iter().product();
            Some((Some(d_in), b.shape()[0]))
        }
        ModuleKind::Ia3 => {
            let l = m.ia3.as_ref()?;
            let n = l.len();
            if m.feedforward {
                Some((Some(n), 0))
            } else {
                Some((None, n))
            }
        }
    }
}

fn fits(m: &ModuleAdapter, t: &Target) -> bool {
    let op_ok = match m.kind {
        ModuleKind::Embedding => t.op == TargetOp::Gather,
        ModuleKind::Linear if m.is_conv() => matches!(t.op, TargetOp::Conv { .. }),
        ModuleKind::Linear => matches!(t.op, TargetOp::MatMul | TargetOp::Gemm { .. }),
        ModuleKind::Ia3 => t.op != TargetOp::Gather,
    };
    if !op_ok {
        return false;
    }
    let Some((d_in, d_out)) = module_dims(m) else {
        return false;
    };
    match m.kind {
        ModuleKind::Ia3 if m.feedforward => {
            let width = match t.op {
                TargetOp::Conv { groups } => t.weight_dims[1] * groups,
                _ => t.d_in,
            };
            Some(width) == d_in
        }
        ModuleKind::Ia3 => t.d_out == d_out,
        _ => d_in == Some(t.d_in) && d_out == t.d_out,
    }
}

/// Whether the checkpoint weight `w` (PyTorch layout) is the target's weight.
fn same_weight(g: &Graph, t: &Target, w: &ndarray::ArrayD<f32>, fan_in_fan_out: bool) -> bool {
    let Ok(m) = weight_xm(g, t) else {
        return false;
    };
    let flat: Option<Array2<f64>> = {
        let w64 = w.mapv(f64::from);
        let rows = w.shape().first().copied().unwrap_or(0);
        let cols: usize = w.shape().iter().skip(1).product();
        w64.into_shape_with_order((rows, cols)).ok()
    };
    let Some(flat) = flat else {
        return false;
    };
    // x·M form: Linear stores [out, in] (transpose); Conv1D and embeddings store M itself.
    let as_xm = if fan_in_fan_out || t.op == TargetOp::Gather {
        flat
    } else {
        flat.reversed_axes()
    };
    if as_xm.dim() != m.dim() {
        return false;
    }
    let scale = m.iter().fold(0.0f64, |a, x| a.max(x.abs())).max(1e-30);
    as_xm
        .iter()
        .zip(m.iter())
        .all(|(a, b)| (a - b).abs() <= 1e-5 * scale)
}

/// The modules each target receives, found by scope or by base weights.
struct Plan {
    target: Target,
    modules: Vec<(usize, usize)>,
}

/// Matches every module of every adapter to one node, or fails naming the modules that match
/// none or several.
fn plan(
    g: &Graph,
    adapters: &[WeightedAdapter],
    base: Option<&BaseWeights>,
) -> Result<(Vec<Plan>, Vec<Applied>)> {
    let cands = candidates(g)?;
    let mut by_node: BTreeMap<NodeId, Plan> = BTreeMap::new();
    let mut applied = Vec::new();
    let mut unmatched = Vec::new();
    let mut ambiguous = Vec::new();
    for (ai, wa) in adapters.iter().enumerate() {
        for (mi, m) in wa.adapter.modules.iter().enumerate() {
            let by_scope: Vec<&Target> = cands
                .iter()
                .filter(|t| suffix_match(&t.scope, &m.path) && fits(m, t))
                .collect();
            let (hit, how) = match by_scope.as_slice() {
                [t] => (Some(*t), "scope"),
                [] => {
                    let by_value: Vec<&Target> = match base.and_then(|b| b.weight_of(&m.path)) {
                        Some(w) => cands
                            .iter()
                            .filter(|t| fits(m, t) && same_weight(g, t, w, m.fan_in_fan_out))
                            .collect(),
                        None => Vec::new(),
                    };
                    match by_value.as_slice() {
                        [t] => (Some(*t), "base-weights"),
                        [] => (None, ""),
                        many => {
                            ambiguous.push(format!(
                                "{} (its base weight equals {} nodes' weights: {})",
                                m.path,
                                many.len(),
                                many.iter()
                                    .map(|t| g.label(t.node))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ));
                            continue;
                        }
                    }
                }
                many => {
                    ambiguous.push(format!(
                        "{} (matches {})",
                        m.path,
                        many.iter()
                            .map(|t| g.label(t.node))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    continue;
                }
            };
            let Some(t) = hit else {
                let near: Vec<&str> = cands
                    .iter()
                    .filter(|t| suffix_match(&t.scope, &m.path))
                    .map(|t| t.op.name())
                    .collect();
                unmatched.push(if near.is_empty() {
                    m.path.clone()
                } else {
                    format!(
                        "{} (a {} node has that scope but not the module's shape)",
                        m.path,
                        near.join("/")
                    )
                });
                continue;
            };
            applied.push(Applied {
                module: m.path.clone(),
                adapter: wa.adapter.dir.display().to_string(),
                node: g.label(t.node),
                kind: kind_name(m),
                matched_by: how,
                rank: m.rank,
                scale: m.scale,
                weight: wa.weight,
            });
            by_node
                .entry(t.node)
                .or_insert_with(|| Plan {
                    target: t.clone(),
                    modules: Vec::new(),
                })
                .modules
                .push((ai, mi));
        }
    }
    if !unmatched.is_empty() || !ambiguous.is_empty() {
        let mut msg = String::new();
        if !unmatched.is_empty() {
            msg.push_str(&format!(
                "no node found for {} module{}: {}",
                unmatched.len(),
                if unmatched.len() == 1 { "" } else { "s" },
                unmatched.join(", ")
            ));
            if base.is_none() {
                msg.push_str(
                    " (if the export lost module names, pass the base checkpoint with \
                     --base-weights model.safetensors)",
                );
            }
        }
        if !ambiguous.is_empty() {
            if !msg.is_empty() {
                msg.push_str("; ");
            }
            msg.push_str(&format!("ambiguous: {}", ambiguous.join(", ")));
        }
        return Err(Error::Usage(msg));
    }
    Ok((by_node.into_values().collect(), applied))
}

fn arr1(a: &ndarray::ArrayD<f32>) -> Array1<f64> {
    a.iter().map(|&v| f64::from(v)).collect()
}

/// PyTorch-layout factors → x·M form: `P = A_flatᵀ [d_in, r]`, `Q = B_flatᵀ [r, d_out]`.
fn xm_factors(m: &ModuleAdapter) -> Result<(Array2<f64>, Array2<f64>)> {
    let bad = || Error::tensor(&m.path, "incomplete LoRA factors");
    let a = m.lora_a.as_ref().ok_or_else(bad)?;
    let b = m.lora_b.as_ref().ok_or_else(bad)?;
    let r = a.shape()[0];
    let a2 = a
        .mapv(f64::from)
        .into_shape_with_order((r, a.len() / r.max(1)))
        .map_err(|e| Error::tensor(&m.path, e.to_string()))?;
    let out = b.shape()[0];
    let b2 = b
        .mapv(f64::from)
        .into_shape_with_order((out, b.len() / out.max(1)))
        .map_err(|e| Error::tensor(&m.path, e.to_string()))?;
    Ok((
        a2.reversed_axes().as_standard_layout().to_owned(),
        b2.reversed_axes().as_standard_layout().to_owned(),
    ))
}

/// The combined parameters for one target.
fn combine(p: &Plan, adapters: &[WeightedAdapter]) -> Result<Params> {
    let mods: Vec<(&ModuleAdapter, f64)> = p
        .modules
        .iter()
        .map(|&(a, m)| (&adapters[a].adapter.modules[m], adapters[a].weight))
        .collect();
    let scope = &p.target.scope;
    let ia3 = mods
        .iter()
        .filter(|(m, _)| m.kind == ModuleKind::Ia3)
        .count();
    if ia3 > 0 && ia3 < mods.len() {
        return Err(Error::Usage(format!(
            "{scope}: IA3 and LoRA adapters on the same module cannot be combined"
        )));
    }
    if ia3 > 0 {
        let side = if mods[0].0.feedforward {
            Side::Input
        } else {
            Side::Output
        };
        let mut l: Option<Array1<f64>> = None;
        for (m, w) in &mods {
            if (*w - 1.0).abs() > 0.0 {
                return Err(Error::Usage(format!(
                    "{scope}: --weights applies to LoRA adapters; IA3 vectors ({}) are \
                     combined by product with weight 1",
                    m.path
                )));
            }
            if m.feedforward != (side == Side::Input) {
                return Err(Error::Usage(format!(
                    "{scope}: IA3 adapters scale both its input and its output; apply them \
                     one at a time"
                )));
            }
            let v = arr1(m.ia3.as_ref().expect("IA3 module has its vector"));
            l = Some(match l {
                Some(acc) => acc * &v,
                None => v,
            });
        }
        return Ok(Params::Ia3 {
            l: l.expect("at least one"),
            side,
        });
    }
    let dora = mods.iter().filter(|(m, _)| m.magnitude.is_some()).count();
    if dora > 0 && (mods.len() > 1 || (mods[0].1 - 1.0).abs() > 0.0) {
        return Err(Error::Usage(format!(
            "{scope}: a DoRA adapter renormalises the whole weight, so it cannot be weighted \
             or combined with another adapter on the same module"
        )));
    }
    let mut ps = Vec::new();
    let mut qs = Vec::new();
    let mut bias: Option<Array1<f64>> = None;
    for (m, w) in &mods {
        let (pa, q) = xm_factors(m)?;
        let k = m.scale * w;
        ps.push(pa);
        qs.push(q * k);
        if let Some(bb) = &m.lora_b_bias {
            let v = arr1(bb) * k;
            bias = Some(match bias {
                Some(acc) => acc + &v,
                None => v,
            });
        }
    }
    let p_views: Vec<_> = ps.iter().map(|a| a.view()).collect();
    let q_views: Vec<_> = qs.iter().map(|a| a.view()).collect();
    let a = ndarray::concatenate(Axis(1), &p_views).map_err(|e| Error::graph(e.to_string()))?;
    let b = ndarray::concatenate(Axis(0), &q_views).map_err(|e| Error::graph(e.to_string()))?;
    let magnitude = mods[0].0.magnitude.as_ref().filter(|_| dora > 0).map(arr1);
    Ok(Params::Lora {
        a,
        b,
        scale: 1.0,
        bias,
        magnitude,
    })
}

/// Stores a new bias for `t` (Gemm's C, or the constant of the Add after a MatMul), cloning it
/// when something else reads it.
fn replace_bias(g: &mut Graph, t: &Target, bias: &Array1<f64>) -> Result<()> {
    let Some(bv) = t.bias else {
        return Err(Error::Usage(format!(
            "{}: the adapter changes the bias but the node has none; use --no-fold",
            t.scope
        )));
    };
    let old = g
        .constant(bv)
        .ok_or_else(|| Error::tensor(&g.value(bv).name, "the bias is not a constant"))?;
    let (dtype, external, dims) = (old.dtype, old.is_external(), old.dims.clone());
    let shape: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
    let a = bias
        .clone()
        .into_shape_with_order(ndarray::IxDyn(&shape))
        .map_err(|e| Error::tensor(&g.value(bv).name, e.to_string()))?;
    let tensor = from_f64_like(&a, dtype, external)?;
    let val = g.value(bv);
    if val.consumers.len() > 1 || val.is_input || g.is_output(bv) {
        // The bias is read by the node itself (Gemm, Conv) or by the Add after a MatMul.
        let reader = match t.op {
            TargetOp::MatMul => g.producer(t.module_output),
            _ => Some(t.node),
        }
        .ok_or_else(|| Error::graph(format!("{}: the bias's reader is gone", t.scope)))?;
        let slot = g
            .node(reader)
            .inputs
            .iter()
            .position(|&i| i == Some(bv))
            .ok_or_else(|| Error::graph(format!("{}: the bias's reader is gone", t.scope)))?;
        let v = g.add_initializer(&format!("{}.bias_merged", t.scope), tensor);
        g.set_input(reader, slot, Some(v));
    } else {
        g.set_initializer(bv, tensor)?;
    }
    Ok(())
}

fn current_bias(g: &Graph, t: &Target) -> Option<Array1<f64>> {
    let b = const_f64(g, t.bias?)?;
    Some(b.iter().copied().collect())
}

/// Merges `params` into `t`'s weights (see the module docs).
fn merge(g: &mut Graph, t: &Target, params: &Params) -> Result<()> {
    let m = weight_xm(g, t)?;
    match params {
        Params::Lora {
            a,
            b,
            scale,
            bias,
            magnitude,
        } => {
            let mut full = m + &(a.dot(b) * *scale);
            if let Some(mag) = magnitude {
                let n = column_norms(&full);
                for (j, mut col) in full.columns_mut().into_iter().enumerate() {
                    let c = if n[j] > 0.0 { mag[j] / n[j] } else { 1.0 };
                    col.mapv_inplace(|x| x * c);
                }
            }
            replace_weight(g, t, &full)?;
            if let Some(extra) = bias {
                let old = current_bias(g, t).ok_or_else(|| {
                    Error::Usage(format!(
                        "{}: lora_B has a bias but the node has none to merge it into; use \
                         --no-fold",
                        t.scope
                    ))
                })?;
                replace_bias(g, t, &(old + &(extra * *scale)))?;
            }
        }
        Params::Ia3 { l, side } => {
            let mut full = m;
            match side {
                Side::Output => {
                    for (j, mut col) in full.columns_mut().into_iter().enumerate() {
                        col.mapv_inplace(|x| x * l[j]);
                    }
                    replace_weight(g, t, &full)?;
                    if let Some(old) = current_bias(g, t) {
                        if old.len() != l.len() {
                            return Err(Error::Usage(format!(
                                "{}: the bias is broadcast; IA3 needs one per output; use \
                                 --no-fold",
                                t.scope
                            )));
                        }
                        replace_bias(g, t, &(&old * l))?;
                    }
                }
                Side::Input => {
                    let per = match t.op {
                        TargetOp::Conv { groups } => {
                            if groups != 1 {
                                return Err(Error::Usage(format!(
                                    "{}: IA3 on the input of a grouped Conv; use --no-fold",
                                    t.scope
                                )));
                            }
                            t.d_in / l.len()
                        }
                        _ => 1,
                    };
                    for (i, mut row) in full.rows_mut().into_iter().enumerate() {
                        row.mapv_inplace(|x| x * l[i / per]);
                    }
                    replace_weight(g, t, &full)?;
                }
            }
        }
        Params::Linear { .. } => {
            return Err(Error::graph("PEFT adapters are LoRA, DoRA or IA3"));
        }
    }
    Ok(())
}

/// Applies the adapters to `model`: merged into the weights (`fold`) or as branches.
pub fn apply(
    model: &mut Model,
    adapters: &[WeightedAdapter],
    base: Option<&BaseWeights>,
    fold: bool,
) -> Result<Vec<Applied>> {
    let g = &mut model.graph;
    let (plans, applied) = plan(g, adapters, base)?;
    for p in &plans {
        let params = combine(p, adapters)?;
        if fold {
            merge(g, &p.target, &params)?;
        } else {
            let fresh = super::target::target_at(g, p.target.node)
                .ok_or_else(|| Error::graph(format!("{} changed", p.target.scope)))?;
            emit(g, &fresh, &p.target.scope, &params, EmitOptions::default())?;
        }
    }
    Ok(applied)
}
