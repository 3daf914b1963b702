//! `graft extract`: a LoRA adapter from a fine-tune (ADAPTERS.md §11).
//!
//! The base and the tuned model must be the same graph (same operators, attributes and wiring;
//! only constant values may differ). For every adapter target (MatMul/Gemm weights, Conv
//! kernels, embedding tables) whose weight changed, the delta `ΔW = W_tuned − W_base` (PyTorch
//! layout, f64) is truncated by SVD — Eckart–Young: the best rank-r approximation in the
//! Frobenius norm — to `B = U_r·Σ_r`, `A = V_rᵀ`, written as a PEFT adapter with scale 1.
//! Other changed constants (biases, norms) cannot be carried by a low-rank adapter; they are
//! reported, not dropped silently.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use super::params::weight_xm;
use super::target::{Target, TargetOp, candidates};
use crate::error::{Error, Result};
use crate::ir::{Graph, Model, ValueId};
use crate::lowrank::{RankRule, truncate};
use crate::peft::{ExtractedModule, ModuleKind};
use crate::rewrite::consts::const_f64;

/// What one extracted layer kept.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub module: String,
    pub node: String,
    /// `[d_out, d_in]` of the delta (Conv: `[C_out, C_in·k…]`; embeddings: `[dim, vocab]`).
    pub shape: [usize; 2],
    pub rank: usize,
    pub energy_kept: f64,
    /// `‖ΔW − B·A‖_F / ‖ΔW‖_F`.
    pub delta_rel_error: f64,
    /// `‖ΔW‖_F / ‖W_base‖_F`: how much the fine-tune moved this weight.
    pub delta_rel_size: f64,
    pub method: String,
}

/// A changed constant the adapter does not carry.
#[derive(Clone, Debug, Serialize)]
pub struct NotCarried {
    pub tensor: String,
    /// `‖Δ‖_F / ‖base‖_F`.
    pub rel_change: f64,
    pub why: String,
}

/// The extraction result.
#[derive(Debug, Serialize)]
pub struct Extraction {
    #[serde(skip)]
    pub modules: Vec<ExtractedModule>,
    pub layers: Vec<LayerReport>,
    pub not_carried: Vec<NotCarried>,
    /// Targets whose weight did not change.
    pub unchanged: usize,
}

fn structure_error(what: String) -> Error {
    Error::Usage(format!(
        "the two models differ beyond weight values: {what} (extract needs the same export of \
         the same architecture)"
    ))
}

/// Pairs every value of `a` with its counterpart in `b`, checking that the graphs are the same
/// but for constant values.
fn pair_values(a: &Graph, b: &Graph) -> Result<HashMap<ValueId, ValueId>> {
    let (oa, ob) = (a.topo_order()?, b.topo_order()?);
    if oa.len() != ob.len() {
        return Err(structure_error(format!(
            "{} nodes against {}",
            oa.len(),
            ob.len()
        )));
    }
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut link = |x: ValueId, y: ValueId, at: &str| -> Result<()> {
        match map.get(&x) {
            Some(&prev) if prev != y => Err(structure_error(format!(
                "{at}: '{}' is wired to '{}' in one model and '{}' in the other",
                a.value(x).name,
                b.value(prev).name,
                b.value(y).name
            ))),
            _ => {
                map.insert(x, y);
                Ok(())
            }
        }
    };
    for (pa, pb) in a.inputs.iter().zip(&b.inputs) {
        link(pa.value, pb.value, "graph inputs")?;
    }
    if a.inputs.len() != b.inputs.len() || a.outputs.len() != b.outputs.len() {
        return Err(structure_error("different graph inputs or outputs".into()));
    }
    for (&na, &nb) in oa.iter().zip(&ob) {
        let (x, y) = (a.node(na), b.node(nb));
        let at = a.label(na);
        if x.op_type != y.op_type
            || x.domain != y.domain
            || x.inputs.len() != y.inputs.len()
            || x.outputs.len() != y.outputs.len()
        {
            return Err(structure_error(format!("{at} against {}", b.label(nb))));
        }
        if x.attrs != y.attrs {
            return Err(structure_error(format!("{at}: attributes differ")));
        }
        for (i, (vx, vy)) in x.inputs.iter().zip(&y.inputs).enumerate() {
            match (vx, vy) {
                (None, None) => {}
                (Some(vx), Some(vy)) => {
                    let (cx, cy) = (a.constant(*vx), b.constant(*vy));
                    match (cx, cy) {
                        (Some(tx), Some(ty)) if tx.dims != ty.dims || tx.dtype != ty.dtype => {
                            return Err(structure_error(format!(
                                "{at}: input {i} is {:?} in one model and {:?} in the other",
                                tx.dims, ty.dims
                            )));
                        }
                        (Some(_), None) | (None, Some(_)) => {
                            return Err(structure_error(format!(
                                "{at}: input {i} is a constant in only one model"
                            )));
                        }
                        _ => {}
                    }
                    link(*vx, *vy, &at)?;
                }
                _ => {
                    return Err(structure_error(format!(
                        "{at}: input {i} is optional in one"
                    )));
                }
            }
        }
        for (vx, vy) in x.outputs.iter().zip(&y.outputs) {
            if let (Some(vx), Some(vy)) = (vx, vy) {
                link(*vx, *vy, &at)?;
            }
        }
    }
    Ok(map)
}

fn fro(a: &ArrayD<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The PEFT module path of a target: its scope without `strip` at the front.
fn module_path(t: &Target, strip: &str) -> String {
    let s = t.scope.strip_prefix(strip).unwrap_or(&t.scope);
    s.trim_matches('.').to_string()
}

/// Extracts a LoRA adapter carrying `tuned − base`. `strip` is removed from the front of module
/// scopes to give PEFT module paths (an export wrapper's prefix such as `m.`).
pub fn extract(base: &Model, tuned: &Model, rule: RankRule, strip: &str) -> Result<Extraction> {
    let (ga, gb) = (&base.graph, &tuned.graph);
    let map = pair_values(ga, gb)?;
    let targets = candidates(ga)?;
    let mut out = Extraction {
        modules: Vec::new(),
        layers: Vec::new(),
        not_carried: Vec::new(),
        unchanged: 0,
    };
    let mut carried: Vec<ValueId> = Vec::new();
    let mut seen_paths: HashMap<String, String> = HashMap::new();
    for t in &targets {
        let wb = map[&t.weight];
        let tb = Target {
            weight: wb,
            ..t.clone()
        };
        let (ma, mb) = (weight_xm(ga, t)?, weight_xm(gb, &tb)?);
        let delta_xm = &mb - &ma;
        if delta_xm.iter().all(|&x| x == 0.0) {
            out.unchanged += 1;
            continue;
        }
        let path = module_path(t, strip);
        if let Some(other) = seen_paths.insert(path.clone(), ga.label(t.node)) {
            return Err(Error::Usage(format!(
                "module path '{path}' names both {other} and {}; PEFT keys need one module per \
                 path",
                ga.label(t.node)
            )));
        }
        // PyTorch layout: ΔW [d_out, d_in] = Δ_xMᵀ (embeddings: [dim, vocab]).
        let delta = delta_xm.t();
        let lr = truncate(delta, rule, 0)
            .map_err(|e| Error::tensor(&ga.value(t.weight).name, format!("SVD: {e}")))?;
        let r = lr.singular_values.len().max(1);
        let (a, b) = if lr.singular_values.is_empty() {
            (
                ndarray::Array2::zeros((1, t.d_in)),
                ndarray::Array2::zeros((t.d_out, 1)),
            )
        } else {
            (lr.a.clone(), lr.b.clone())
        };
        let (kind, a_shape, b_shape) = match t.op {
            TargetOp::Gather => (ModuleKind::Embedding, vec![r, t.d_in], vec![t.d_out, r]),
            TargetOp::Conv { groups } => {
                if groups != 1 {
                    out.not_carried.push(NotCarried {
                        tensor: ga.value(t.weight).name.clone(),
                        rel_change: fro(&delta_xm.clone().into_dyn()) / fro(&ma.into_dyn()),
                        why: format!("grouped Conv (group={groups}): PEFT's conv LoRA is dense"),
                    });
                    continue;
                }
                let mut ashape = vec![r];
                ashape.extend_from_slice(&t.weight_dims[1..]);
                let mut bshape = vec![t.d_out, r];
                bshape.extend(std::iter::repeat_n(1, t.weight_dims.len() - 2));
                (ModuleKind::Linear, ashape, bshape)
            }
            _ => (ModuleKind::Linear, vec![r, t.d_in], vec![t.d_out, r]),
        };
        let to32 = |m: ndarray::Array2<f64>, shape: &[usize]| -> Result<ArrayD<f32>> {
            m.mapv(|x| x as f32)
                .as_standard_layout()
                .to_owned()
                .into_shape_with_order(IxDyn(shape))
                .map_err(|e| Error::graph(e.to_string()))
        };
        let rel_size = fro(&delta_xm.clone().into_dyn()) / fro(&ma.into_dyn()).max(1e-300);
        out.modules.push(ExtractedModule {
            path: path.clone(),
            kind,
            a: to32(a, &a_shape)?,
            b: to32(b, &b_shape)?,
        });
        out.layers.push(LayerReport {
            module: path,
            node: ga.label(t.node),
            shape: [t.d_out, t.d_in],
            rank: lr.singular_values.len(),
            energy_kept: lr.energy_kept,
            delta_rel_error: lr.rel_error,
            delta_rel_size: rel_size,
            method: lr.method.to_string(),
        });
        carried.push(t.weight);
    }
    // Every other changed constant is reported.
    for (va, t) in ga.initializers() {
        if carried.contains(&va) {
            continue;
        }
        let Some(&vb) = map.get(&va) else { continue };
        let (Some(x), Some(y)) = (const_f64(ga, va), const_f64(gb, vb)) else {
            let same = match gb.constant(vb) {
                Some(tb) => t.bytes(&ga.value(va).name)? == tb.bytes(&gb.value(vb).name)?,
                None => false,
            };
            if !same {
                out.not_carried.push(NotCarried {
                    tensor: ga.value(va).name.clone(),
                    rel_change: f64::NAN,
                    why: "a non-float constant changed".into(),
                });
            }
            continue;
        };
        let d = &y - &x;
        let n = fro(&d);
        if n > 0.0 {
            out.not_carried.push(NotCarried {
                tensor: ga.value(va).name.clone(),
                rel_change: n / fro(&x).max(1e-300),
                why: "not the weight of a MatMul, Gemm, Conv or embedding lookup (a bias, a \
                      norm, …); a LoRA adapter cannot carry it"
                    .into(),
            });
        }
    }
    if out.modules.is_empty() {
        return Err(Error::Usage(
            "no adapter target's weight differs between the two models; nothing to extract".into(),
        ));
    }
    Ok(out)
}
