//! `cse`: common-subexpression elimination.
//!
//! Rewrites: two nodes with the same operator, domain, attributes and inputs compute the same
//! values, so the later one's consumers read the earlier one's outputs and the later node goes
//! away. Two initializers with the same element type, shape and bytes become one.
//! Refuses: nodes with subgraph attributes, nondeterministic operators (Random*, Multinomial,
//! Bernoulli), operators from non-standard domains (their purity is unknown), nodes whose
//! outputs are graph outputs or read by a subgraph by name, and initializers that are graph
//! inputs (a caller may override them).
//! Sound because standard ONNX operators are pure functions of their inputs and attributes.

use std::collections::HashMap;

use onnx_protobuf::Message;

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::ir::{Model, NodeId, ValueId};

pub struct Cse;

const NONDETERMINISTIC: &[&str] = &[
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
];

fn attr_key(node: &crate::ir::Node) -> Option<Vec<u8>> {
    let mut attrs = node.attrs.clone();
    attrs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut key = Vec::new();
    for a in &attrs {
        if a.g.is_some() || !a.graphs.is_empty() {
            return None;
        }
        key.extend(a.write_to_bytes().ok()?);
        key.push(0xff);
    }
    Some(key)
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }
    fn summary(&self) -> &'static str {
        "merge nodes that compute the same thing and initializers with identical contents"
    }
    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<usize> {
        let mut rewrites = dedup_initializers(model)?;
        let g = &mut model.graph;
        type Key = (String, String, Vec<Option<ValueId>>, Vec<u8>, usize);
        let mut seen: HashMap<Key, NodeId> = HashMap::new();
        for n in g.topo_order()? {
            let node = g.node(n);
            let standard = node.domain.is_empty() || node.domain == "ai.onnx";
            if !standard || NONDETERMINISTIC.contains(&node.op_type.as_str()) {
                continue;
            }
            let Some(ak) = attr_key(node) else { continue };
            let key = (
                node.op_type.clone(),
                node.domain.clone(),
                node.inputs.clone(),
                ak,
                node.outputs.len(),
            );
            match seen.get(&key) {
                None => {
                    seen.insert(key, n);
                }
                Some(&first) => {
                    let outs = node.outputs.clone();
                    let replaceable = outs.iter().flatten().all(|&o| g.can_replace(o));
                    if !replaceable {
                        continue;
                    }
                    let first_outs = g.node(first).outputs.clone();
                    if first_outs
                        .iter()
                        .zip(&outs)
                        .any(|(a, b)| a.is_none() && b.is_some())
                    {
                        continue;
                    }
                    g.remove_node(n);
                    for (a, b) in first_outs.iter().zip(&outs) {
                        if let (Some(a), Some(b)) = (a, b) {
                            g.replace_uses(*b, *a);
                        }
                    }
                    rewrites += 1;
                }
            }
        }
        Ok(rewrites)
    }
}

/// Merges initializers with identical type, shape and bytes (first one in file order wins).
fn dedup_initializers(model: &mut Model) -> Result<usize> {
    let g = &mut model.graph;
    let mut seen: HashMap<(i32, Vec<i64>, Vec<u8>), ValueId> = HashMap::new();
    let mut merges = Vec::new();
    for (v, t) in g.initializers() {
        let val = g.value(v);
        if val.is_input || g.is_output(v) || val.is_captured() {
            continue;
        }
        let name = &val.name;
        if t.dtype == crate::ir::dtype::code::STRING || t.byte_len().is_none() {
            continue;
        }
        // A cheap fingerprint first (a few bytes from the start, middle and end): only tensors
        // whose fingerprints collide are read whole and compared.
        let len = t.byte_len().unwrap_or(0);
        let mut fp = Vec::new();
        for at in [0, len / 2, len.saturating_sub(32)] {
            match t.sample(name, at, 32) {
                Ok(b) => fp.extend(b),
                Err(_) => continue,
            }
        }
        let key = (t.dtype, t.dims.clone(), fp);
        match seen.get(&key) {
            None => {
                seen.insert(key, v);
            }
            Some(&first) => {
                // Confirm byte equality (the fingerprint is only a sample).
                let a = g
                    .constant(first)
                    .expect("init")
                    .bytes(&g.value(first).name)?;
                let b = t.bytes(name)?;
                if a == b {
                    merges.push((v, first));
                }
            }
        }
    }
    let n = merges.len();
    for (dup, keep) in merges {
        g.replace_uses(dup, keep);
        g.remove_initializer(dup);
    }
    Ok(n)
}
