//! `dce`: dead-code elimination.
//!
//! Rewrites: removes nodes none of whose outputs reach a graph output, initializers nothing
//! reads, and value_info entries of values that no longer exist.
//! Refuses: never removes graph inputs (they are the model's interface), initializers that are
//! also graph inputs, or anything a subgraph reads by name.
//! Sound because ONNX operators are pure: a node whose results are never used cannot affect the
//! graph outputs.

use std::collections::HashSet;

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::ir::{Model, NodeId, ValueId};

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn summary(&self) -> &'static str {
        "remove nodes whose results are never used, unused initializers and stale value_info"
    }
    fn run(&self, model: &mut Model, _cx: &mut PassContext) -> Result<usize> {
        let g = &mut model.graph;
        // Mark live values backwards from the graph outputs.
        let mut live_nodes: HashSet<NodeId> = HashSet::new();
        let mut live_values: HashSet<ValueId> = HashSet::new();
        let mut stack: Vec<ValueId> = g.outputs.iter().map(|p| p.value).collect();
        while let Some(v) = stack.pop() {
            if !live_values.insert(v) {
                continue;
            }
            if let Some(n) = g.producer(v)
                && live_nodes.insert(n)
            {
                let node = g.node(n);
                stack.extend(node.inputs.iter().flatten().copied());
                stack.extend(node.captures.iter().copied());
            }
        }
        let dead: Vec<NodeId> = g.node_ids().filter(|n| !live_nodes.contains(n)).collect();
        let mut rewrites = dead.len();
        for n in dead {
            g.remove_node(n);
        }
        let unused: Vec<ValueId> = g
            .initializer_order
            .iter()
            .copied()
            .filter(|&v| {
                let val = g.value(v);
                val.consumers.is_empty() && !val.is_input && !g.is_output(v)
            })
            .collect();
        rewrites += unused.len();
        for v in unused {
            g.remove_initializer(v);
        }
        let order = std::mem::take(&mut g.value_info_order);
        let (keep, stale): (Vec<ValueId>, Vec<ValueId>) =
            order.into_iter().partition(|&v| g.value(v).is_defined());
        rewrites += stale.len();
        for v in stale {
            g.value_mut(v).info = None;
        }
        g.value_info_order = keep;
        Ok(rewrites)
    }
}
