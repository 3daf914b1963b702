//! Patches: a pass collects its edits, then applies them all at once. Application is validated
//! and atomic — on any error the graph is left exactly as it was.

use super::graph::{Graph, Node, NodeId, ValueId};
use super::tensor::Tensor;
use crate::error::{Error, Result};

#[derive(Debug)]
enum Edit {
    AddNode(Box<Node>),
    ReplaceUses { old: ValueId, new: ValueId },
    RemoveNode(NodeId),
    SetInitializer { value: ValueId, tensor: Box<Tensor> },
}

/// A set of graph edits applied together: nodes added first, then uses redirected, then nodes
/// removed, then initializers set.
#[derive(Debug, Default)]
pub struct Patch {
    edits: Vec<Edit>,
}

impl Patch {
    pub fn new() -> Self {
        Patch::default()
    }
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }
    pub fn add_node(&mut self, node: Node) {
        self.edits.push(Edit::AddNode(Box::new(node)));
    }
    /// Redirect every node input reading `old` to `new` (graph outputs are not changed).
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        self.edits.push(Edit::ReplaceUses { old, new });
    }
    pub fn remove_node(&mut self, n: NodeId) {
        self.edits.push(Edit::RemoveNode(n));
    }
    pub fn set_initializer(&mut self, value: ValueId, tensor: Tensor) {
        self.edits.push(Edit::SetInitializer {
            value,
            tensor: Box::new(tensor),
        });
    }

    /// Applies the edits. Validates them, applies them to a copy, verifies the result and only
    /// then replaces `g`. Returns the number of edits.
    pub fn apply(self, g: &mut Graph) -> Result<usize> {
        let count = self.edits.len();
        if count == 0 {
            return Ok(0);
        }
        let mut work = g.clone();
        let mut removed = Vec::new();
        let (mut adds, mut replaces, mut removes, mut sets) = (vec![], vec![], vec![], vec![]);
        for e in self.edits {
            match e {
                Edit::AddNode(n) => adds.push(*n),
                Edit::ReplaceUses { old, new } => replaces.push((old, new)),
                Edit::RemoveNode(n) => removes.push(n),
                Edit::SetInitializer { value, tensor } => sets.push((value, *tensor)),
            }
        }
        for n in adds {
            work.add_node(n)?;
        }
        for (old, new) in replaces {
            if old == new {
                continue;
            }
            if work.value(old).is_captured() {
                return Err(Error::graph(format!(
                    "cannot redirect uses of '{}': a subgraph reads it by name",
                    work.value(old).name
                )));
            }
            work.replace_uses(old, new);
        }
        for n in removes {
            if !work.nodes.contains_node(n) {
                if removed.contains(&n) {
                    continue;
                }
                return Err(Error::graph(format!("node {n:?} does not exist")));
            }
            work.remove_node(n);
            removed.push(n);
        }
        for (v, t) in sets {
            work.set_initializer(v, t)?;
        }
        super::verify::verify(&work)?;
        *g = work;
        Ok(count)
    }
}
