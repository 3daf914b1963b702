//! `eliminate-identity`: removes Identity nodes, inference-mode Dropout nodes and Casts to the
//! type their input already has.
//!
//! Rewrites: `Y = Identity(X)` — consumers of Y read X instead. When Y is a graph output, X's
//! producer writes Y directly instead (output names never change). `Dropout` counts as an identity
//! when its mask output is unused and it is not in training mode (`training_mode` absent or a
//! constant false). A `Cast` counts as one when its input's element type is known and equals
//! `to` (exporters leave such Casts after adapter branches).
//! Refuses: when Y is a graph output and X is a graph input, an initializer, another graph output
//! or read by a subgraph (the Identity is what gives the output its own name), or when Y is read
//! by a subgraph by name.
//! Sound because Identity, Dropout at inference and a Cast to the same type return their input
//! unchanged.

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::ir::{Model, NodeId};

pub struct EliminateIdentity;

/// `None` when `n` is not an identity-like node; `Some(Err(reason))` for a Dropout that must
/// stay; `Some(Ok(()))` for a removable one.
fn identity_kind(model: &Model, n: NodeId) -> Option<std::result::Result<(), String>> {
    let g = &model.graph;
    let node = g.node(n);
    if !node.domain.is_empty() && node.domain != "ai.onnx" {
        return None;
    }
    node.inputs.first().copied().flatten()?;
    match node.op_type.as_str() {
        "Identity" => Some(Ok(())),
        "Cast" => {
            let x = node.inputs.first().copied().flatten()?;
            let to = node.attr_int("to")?;
            (crate::rewrite::types::elem_type(g, x) == Some(to as i32)).then_some(Ok(()))
        }
        "Dropout" => {
            if let Some(m) = node.outputs.get(1).copied().flatten()
                && (!g.value(m).consumers.is_empty() || g.is_output(m))
            {
                return Some(Err(format!(
                    "its mask output '{}' is used",
                    g.value(m).name
                )));
            }
            if let Some(t) = node.inputs.get(2).copied().flatten() {
                let off = g.constant(t).and_then(|c| {
                    c.bytes("training_mode")
                        .ok()
                        .map(|b| b.iter().all(|&x| x == 0))
                });
                match off {
                    Some(true) => {}
                    Some(false) => return Some(Err("training_mode is true".into())),
                    None => return Some(Err("training_mode is not a constant".into())),
                }
            }
            // Before opset 7 Dropout had an is_test attribute; only is_test=1 is inference.
            if node.attr("is_test").is_some_and(|a| a.i == 0) {
                return Some(Err("is_test is 0 (training)".into()));
            }
            Some(Ok(()))
        }
        _ => None,
    }
}

impl Pass for EliminateIdentity {
    fn name(&self) -> &'static str {
        "eliminate-identity"
    }
    fn summary(&self) -> &'static str {
        "remove Identity and inference-mode Dropout nodes"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<usize> {
        let order = model.graph.topo_order()?;
        let mut rewrites = 0;
        for n in order {
            match identity_kind(model, n) {
                None => continue,
                Some(Err(reason)) => {
                    cx.refuse(model.graph.label(n), reason);
                    continue;
                }
                Some(Ok(())) => {}
            }
            let label = model.graph.label(n);
            let g = &mut model.graph;
            let node = g.node(n).clone();
            let x = node.inputs[0].expect("checked");
            let Some(y) = node.outputs.first().copied().flatten() else {
                continue;
            };
            if g.value(y).is_captured() {
                cx.refuse(
                    label,
                    format!("a subgraph reads '{}' by name", g.value(y).name),
                );
                continue;
            }
            if !g.is_output(y) {
                g.remove_node(n);
                g.replace_uses(y, x);
                rewrites += 1;
                continue;
            }
            let xv = g.value(x);
            let reason = if xv.is_input {
                Some("its input is a graph input")
            } else if xv.initializer.is_some() || xv.sparse {
                Some("its input is an initializer")
            } else if g.is_output(x) {
                Some("its input is also a graph output")
            } else if xv.is_captured() {
                Some("a subgraph reads its input by name")
            } else {
                None
            };
            if let Some(r) = reason {
                cx.refuse(
                    label,
                    format!(
                        "it gives graph output '{}' its own name and {r}",
                        g.value(y).name
                    ),
                );
                continue;
            }
            g.remove_node(n);
            g.merge_into(x, y)?;
            // Carry X's declared type to Y if Y had none.
            if g.value(y).ty.is_none() {
                let t = g.value(x).ty.clone();
                g.value_mut(y).ty = t;
            }
            rewrites += 1;
        }
        Ok(rewrites)
    }
}
