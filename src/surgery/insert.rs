//! `graft insert`: attach a new adapter to every target a pattern selects.
//!
//! Each inserted adapter is built from the same pieces the fold passes recognise, so folding
//! the result gives back a graph with the base's operators and parameter count (the inverse
//! law, tested on every model in models/); only the Houlsby bottleneck, which has a
//! nonlinearity by design, stays.

use ndarray::{Array2, IxDyn};
use serde::Serialize;

use super::emit::{EmitOptions, emit};
use super::params::{Params, Spec, initial};
use super::target::{Target, TargetOp, candidates, select, target_at};
use crate::error::{Error, Result};
use crate::ir::{Graph, Model};
use crate::rewrite::consts::from_f64_like;

/// What `graft insert` did.
#[derive(Clone, Debug, Serialize)]
pub struct InsertReport {
    pub placed: Vec<Placed>,
    /// Targets a `re:` pattern matched that this adapter cannot attach to, with the reason.
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub target: String,
    pub node: String,
    pub reason: String,
}

/// One adapter `graft insert` placed (or, for a dry run, would place).
#[derive(Clone, Debug, Serialize)]
pub struct Placed {
    /// The target's module scope.
    pub target: String,
    /// The target node, as messages name it.
    pub node: String,
    pub op: &'static str,
    /// Features in and out of the target (x·M form).
    pub d_in: usize,
    pub d_out: usize,
    /// Whether the target already had a bias (a folded linear adapter adds one where not).
    pub has_bias: bool,
    /// New weights (empty for a dry run).
    pub tensors: Vec<String>,
    pub nodes_added: usize,
}

/// The name adapter weights of target `t` start with: its scope, made unique among the chosen
/// targets by the node name when two share a scope.
fn adapter_name(t: &Target, all: &[Target], g: &Graph) -> String {
    let shared = all.iter().filter(|o| o.scope == t.scope).count() > 1;
    if shared {
        let node = &g.node(t.node).name;
        format!(
            "{}.{}",
            t.scope,
            node.trim_start_matches('/').replace('/', ".")
        )
    } else {
        t.scope.clone()
    }
}

/// Inserts the adapter `spec` describes at every target `pattern` selects. With `dry_run`
/// nothing changes and the targets are returned.
pub fn insert(
    model: &mut Model,
    pattern: &str,
    spec: &Spec,
    opts: EmitOptions,
    dry_run: bool,
) -> Result<InsertReport> {
    let g = &mut model.graph;
    let cands = candidates(g)?;
    let sel = select(g, &cands, pattern, |g, t| spec.accepts(g, t))?;
    let chosen = sel.chosen;
    let mut placed = Vec::new();
    for (i, t) in chosen.iter().enumerate() {
        let mut p = Placed {
            target: t.scope.clone(),
            node: g.label(t.node),
            op: t.op.name(),
            d_in: t.d_in,
            d_out: t.d_out,
            has_bias: t.bias.is_some(),
            tensors: Vec::new(),
            nodes_added: 0,
        };
        if !dry_run {
            let name = adapter_name(t, &chosen, g);
            let (params, residual) = initial(g, t, spec, i)?;
            let e = place(g, t, &name, &params, residual, opts)?;
            p.tensors = e.tensors;
            p.nodes_added = e.nodes;
        }
        placed.push(p);
    }
    let skipped = sel
        .skipped
        .into_iter()
        .map(|(t, reason)| Skipped {
            target: t.scope.clone(),
            node: g.label(t.node),
            reason,
        })
        .collect();
    Ok(InsertReport { placed, skipped })
}

/// Emits `params` at `t` (re-checking that the target is intact), first storing a PiSSA
/// residual as the target's weight when there is one.
pub fn place(
    g: &mut Graph,
    t: &Target,
    name: &str,
    params: &Params,
    residual: Option<Array2<f64>>,
    opts: EmitOptions,
) -> Result<super::emit::Emitted> {
    let fresh = target_at(g, t.node)
        .filter(|f| f.output == t.output && f.weight == t.weight && f.input == t.input)
        .ok_or_else(|| {
            Error::Usage(format!(
                "'{}' was changed by an earlier adapter; give each target once",
                t.scope
            ))
        })?;
    if let Some(res) = residual {
        replace_weight(g, &fresh, &res)?;
    }
    let fresh = target_at(g, t.node).unwrap_or(fresh);
    emit(g, &fresh, name, params, opts)
}

/// Stores `m` (x·M form) as `t`'s weight in the node's layout. A weight other nodes also read
/// (tied embeddings, shared constants) is cloned first so they keep the original.
pub fn replace_weight(g: &mut Graph, t: &Target, m: &Array2<f64>) -> Result<()> {
    let old = g
        .constant(t.weight)
        .ok_or_else(|| Error::tensor(&g.value(t.weight).name, "the weight is gone"))?;
    let (dtype, external) = (old.dtype, old.is_external());
    let stored = match t.op {
        TargetOp::MatMul | TargetOp::Gemm { trans_b: false } | TargetOp::Gather => m.clone(),
        TargetOp::Gemm { trans_b: true } | TargetOp::Conv { .. } => {
            m.t().as_standard_layout().to_owned()
        }
    };
    let a = stored
        .into_shape_with_order(IxDyn(&t.weight_dims))
        .map_err(|e| Error::graph(e.to_string()))?;
    let tensor = from_f64_like(&a, dtype, external)?;
    let val = g.value(t.weight);
    let shared = val.consumers.len() > 1 || val.is_input || g.is_output(t.weight);
    if shared {
        let name = format!("{}.base_residual", t.scope);
        let v = g.add_initializer(&name, tensor);
        let slot = match t.op {
            TargetOp::Gather => 0,
            _ => 1,
        };
        g.set_input(t.node, slot, Some(v));
    } else {
        g.set_initializer(t.weight, tensor)?;
    }
    Ok(())
}
