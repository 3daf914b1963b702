//! The graph: nodes in a petgraph `StableGraph` (indices stay valid while passes delete), values with
//! one producer and a list of consumers, graph inputs/outputs in order, initializers as tensors.
//!
//! Every mutation goes through the methods here, which keep node inputs, value consumer lists and
//! graph edges consistent; `verify` checks that they are.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use onnx_protobuf::{AttributeProto, GraphProto, NodeProto, TypeProto, ValueInfoProto};
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;

use super::tensor::Tensor;
use crate::error::{Error, Result};

pub type NodeId = NodeIndex<u32>;

/// Index of a value in its graph. Stable for the graph's life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// How a node uses a value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Its input at this position.
    Input(usize),
    /// A subgraph of the node (If/Loop/Scan) reads the value by name from the outer scope.
    Capture,
}

/// A named tensor-valued edge of the graph.
#[derive(Clone, Debug, Default)]
pub struct Value {
    pub name: String,
    /// Type from the model's value_info, graph input/output declarations, or a shape inference.
    pub ty: Option<TypeProto>,
    /// The full value_info entry as loaded (doc string, metadata), if the model had one.
    pub info: Option<ValueInfoProto>,
    pub producer: Option<(NodeId, usize)>,
    pub consumers: Vec<(NodeId, Slot)>,
    pub initializer: Option<Tensor>,
    /// Defined by a sparse initializer (kept in the graph shell, never rewritten).
    pub sparse: bool,
    /// Declared as a graph input.
    pub is_input: bool,
}

impl Value {
    /// Whether something in the graph defines this value.
    pub fn is_defined(&self) -> bool {
        self.producer.is_some() || self.initializer.is_some() || self.sparse || self.is_input
    }
    /// Whether a subgraph refers to this value by name (such values must keep their name).
    pub fn is_captured(&self) -> bool {
        self.consumers.iter().any(|(_, s)| *s == Slot::Capture)
    }
}

/// One operator application.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<Option<ValueId>>,
    pub attrs: Vec<AttributeProto>,
    /// Outer-scope values that this node's subgraphs read.
    pub captures: Vec<ValueId>,
    /// The node as loaded, less inputs/outputs/attributes: keeps doc_string, overload, metadata and
    /// unknown fields.
    pub shell: NodeProto,
    /// Position used to break ties in topological order (original nodes keep file order).
    pub order: u64,
}

impl Node {
    pub fn new(op_type: &str) -> Self {
        Node {
            op_type: op_type.to_string(),
            ..Default::default()
        }
    }
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attrs.iter().find(|a| a.name == name)
    }
    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).map(|a| a.i)
    }
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| &a.ints[..])
    }
    pub fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).map(|a| a.f)
    }
    /// A human label for messages: `Add node 'name'` or `Add node #12` when unnamed.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("{} node #{}", self.op_type, self.order)
        } else {
            format!("{} node '{}'", self.op_type, self.name)
        }
    }
}

/// A graph port: a graph input or output, with its declaration as loaded.
#[derive(Clone, Debug)]
pub struct Port {
    pub value: ValueId,
    pub info: ValueInfoProto,
}

/// A computation graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: StableGraph<Node, ValueId, petgraph::Directed, u32>,
    pub values: Vec<Value>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Initializers in file order (new ones appended).
    pub initializer_order: Vec<ValueId>,
    /// value_info entries in file order (new ones appended).
    pub value_info_order: Vec<ValueId>,
    /// The graph as loaded, less nodes/initializers/inputs/outputs/value_info: keeps name,
    /// doc_string, sparse initializers, quantization annotations, metadata and unknown fields.
    pub shell: GraphProto,
    names: HashMap<String, ValueId>,
    /// How many nodes carry each (non-empty) node name: new nodes get unique names.
    node_names: HashMap<String, usize>,
    next_order: u64,
}

impl Graph {
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }
    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.0 as usize]
    }
    pub fn node(&self, n: NodeId) -> &Node {
        &self.nodes[n]
    }
    pub fn node_mut(&mut self, n: NodeId) -> &mut Node {
        &mut self.nodes[n]
    }
    pub fn node_count(&self) -> usize {
        self.nodes.node_count()
    }
    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        (0..self.values.len() as u32).map(ValueId)
    }
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.node_indices()
    }
    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.iter().any(|p| p.value == v)
    }
    /// The constant tensor of a value, if it is an initializer.
    pub fn constant(&self, v: ValueId) -> Option<&crate::ir::Tensor> {
        self.value(v).initializer.as_ref()
    }
    /// Initializers in order, with their value ids.
    pub fn initializers(&self) -> impl Iterator<Item = (ValueId, &Tensor)> + '_ {
        self.initializer_order
            .iter()
            .filter_map(|&v| self.value(v).initializer.as_ref().map(|t| (v, t)))
    }

    /// Creates a value with exactly this name. Errors if the name is taken.
    pub fn add_value(&mut self, name: &str) -> Result<ValueId> {
        if self.names.contains_key(name) {
            return Err(Error::graph(format!(
                "value name '{name}' is defined twice"
            )));
        }
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value {
            name: name.to_string(),
            ..Default::default()
        });
        self.names.insert(name.to_string(), id);
        Ok(id)
    }

    /// Looks a value up by name, creating an (as yet undefined) one if absent.
    pub fn value_by_name(&mut self, name: &str) -> ValueId {
        match self.names.get(name) {
            Some(&v) => v,
            None => self.add_value(name).expect("name checked free"),
        }
    }

    /// Creates a value with a fresh name derived from `hint`.
    pub fn fresh_value(&mut self, hint: &str) -> ValueId {
        let name = self.fresh_name(hint);
        self.add_value(&name).expect("fresh name is free")
    }

    /// A name no value has: `hint`, else `hint_1`, `hint_2`, ...
    pub fn fresh_name(&self, hint: &str) -> String {
        if !self.names.contains_key(hint) && !hint.is_empty() {
            return hint.to_string();
        }
        let base = if hint.is_empty() { "v" } else { hint };
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.names.contains_key(n))
            .expect("infinite")
    }

    /// Adds a new initializer value under a fresh name derived from `hint`.
    pub fn add_initializer(&mut self, hint: &str, tensor: Tensor) -> ValueId {
        let v = self.fresh_value(hint);
        self.value_mut(v).initializer = Some(tensor);
        self.initializer_order.push(v);
        v
    }

    /// Sets the tensor of an existing initializer value.
    pub fn set_initializer(&mut self, v: ValueId, tensor: Tensor) -> Result<()> {
        let val = self.value_mut(v);
        if val.producer.is_some() || val.sparse {
            return Err(Error::graph(format!(
                "'{}' is produced by a node; it cannot also be an initializer",
                val.name
            )));
        }
        // A declared type that no longer fits the tensor (a reused name for a reshaped or
        // retyped weight) would contradict it in the saved file: drop it.
        let fits = |ty: &Option<TypeProto>| match ty.as_ref().and_then(|t| t.value.as_ref()) {
            Some(onnx_protobuf::type_proto::Value::TensorType(tt)) => {
                tt.elem_type == tensor.dtype
                    && tt.shape.as_ref().is_none_or(|sh| {
                        sh.dim.len() == tensor.dims.len()
                            && sh
                                .dim
                                .iter()
                                .zip(&tensor.dims)
                                .all(|(d, &n)| !d.has_dim_value() || d.dim_value() == n)
                    })
            }
            _ => true,
        };
        if !fits(&val.ty) {
            val.ty = None;
        }
        if val
            .info
            .as_ref()
            .is_some_and(|i| !fits(&i.type_.clone().into_option()))
        {
            val.info = None;
            self.value_info_order.retain(|&x| x != v);
        }
        let val = self.value_mut(v);
        let was = val.initializer.replace(tensor).is_some();
        if !was {
            self.initializer_order.push(v);
        }
        Ok(())
    }

    /// Drops an initializer's tensor (the value stays, undefined unless it is a graph input).
    pub fn remove_initializer(&mut self, v: ValueId) {
        self.value_mut(v).initializer = None;
        self.initializer_order.retain(|&x| x != v);
    }

    /// Adds a node. Its outputs must not be defined elsewhere.
    pub fn add_node(&mut self, mut node: Node) -> Result<NodeId> {
        for (i, out) in node.outputs.iter().enumerate() {
            if let Some(o) = *out {
                let val = self.value(o);
                if val.is_defined() {
                    return Err(Error::graph(format!(
                        "{}: output {i} '{}' is already defined",
                        node.label(),
                        val.name
                    )));
                }
                if node.outputs[..i].contains(&Some(o)) {
                    return Err(Error::graph(format!(
                        "{}: output '{}' appears twice",
                        node.label(),
                        val.name
                    )));
                }
            }
        }
        if node.order == 0 {
            self.next_order += 1;
            node.order = self.next_order;
        } else {
            self.next_order = self.next_order.max(node.order);
        }
        if !node.name.is_empty() && self.node_names.get(&node.name).is_some_and(|&c| c > 0) {
            let base = node.name.clone();
            node.name = (1..)
                .map(|i| format!("{base}_{i}"))
                .find(|n| self.node_names.get(n).is_none_or(|&c| c == 0))
                .expect("infinite");
        }
        if !node.name.is_empty() {
            *self.node_names.entry(node.name.clone()).or_default() += 1;
        }
        let inputs = node.inputs.clone();
        let outputs = node.outputs.clone();
        let captures = node.captures.clone();
        let id = self.nodes.add_node(node);
        for (i, out) in outputs.iter().enumerate() {
            if let Some(o) = *out {
                self.value_mut(o).producer = Some((id, i));
                // Edges from this new producer to consumers that already exist.
                let consumers = self.value(o).consumers.clone();
                for (c, _) in consumers {
                    self.nodes.add_edge(id, c, o);
                }
            }
        }
        for (i, inp) in inputs.iter().enumerate() {
            if let Some(v) = *inp {
                self.link_use(v, id, Slot::Input(i));
            }
        }
        for v in captures {
            self.link_use(v, id, Slot::Capture);
        }
        Ok(id)
    }

    fn link_use(&mut self, v: ValueId, node: NodeId, slot: Slot) {
        self.value_mut(v).consumers.push((node, slot));
        if let Some((p, _)) = self.value(v).producer {
            self.nodes.add_edge(p, node, v);
        }
    }

    fn unlink_use(&mut self, v: ValueId, node: NodeId, slot: Slot) {
        let cons = &mut self.value_mut(v).consumers;
        if let Some(pos) = cons.iter().position(|&(n, s)| n == node && s == slot) {
            cons.remove(pos);
        }
        if let Some((p, _)) = self.value(v).producer {
            let edge = self
                .nodes
                .edges_connecting(p, node)
                .find(|e| *e.weight() == v)
                .map(|e| e.id());
            if let Some(e) = edge {
                self.nodes.remove_edge(e);
            }
        }
    }

    /// Removes a node; its outputs become undefined, its inputs lose a consumer.
    pub fn remove_node(&mut self, id: NodeId) -> Node {
        let node = self.nodes[id].clone();
        for (i, inp) in node.inputs.iter().enumerate() {
            if let Some(v) = *inp {
                self.unlink_use(v, id, Slot::Input(i));
            }
        }
        for &v in &node.captures {
            self.unlink_use(v, id, Slot::Capture);
        }
        for out in node.outputs.iter().flatten() {
            self.value_mut(*out).producer = None;
        }
        if let Some(c) = self.node_names.get_mut(&node.name) {
            *c = c.saturating_sub(1);
        }
        self.nodes.remove_node(id).expect("node exists")
    }

    /// Points input `slot` of `node` at `value` (or at nothing).
    pub fn set_input(&mut self, node: NodeId, slot: usize, value: Option<ValueId>) {
        if let Some(old) = self.nodes[node].inputs.get(slot).copied().flatten() {
            self.unlink_use(old, node, Slot::Input(slot));
        }
        let inputs = &mut self.nodes[node].inputs;
        if inputs.len() <= slot {
            inputs.resize(slot + 1, None);
        }
        inputs[slot] = value;
        if let Some(v) = value {
            self.link_use(v, node, Slot::Input(slot));
        }
    }

    /// Makes every node input that reads `old` read `new` instead. Graph outputs and subgraph
    /// captures refer to values by name and are not changed; callers check `can_replace` first.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        let uses: Vec<(NodeId, Slot)> = self.value(old).consumers.clone();
        for (n, s) in uses {
            if let Slot::Input(i) = s {
                self.set_input(n, i, Some(new));
            }
        }
    }

    /// Whether all uses of `v` can be redirected to another value (no graph output or subgraph
    /// refers to it by name).
    pub fn can_replace(&self, v: ValueId) -> bool {
        !self.is_output(v) && !self.value(v).is_captured()
    }

    /// Nodes reading `v` (each once, in consumer order).
    pub fn consumer_nodes(&self, v: ValueId) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for &(n, _) in &self.value(v).consumers {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// A label for messages: `Add node 'name'`, or `Add node producing 'y'` when unnamed.
    pub fn label(&self, n: NodeId) -> String {
        let node = self.node(n);
        if !node.name.is_empty() {
            return node.label();
        }
        match node.outputs.iter().flatten().next() {
            Some(&o) => format!("{} node producing '{}'", node.op_type, self.value(o).name),
            None => node.label(),
        }
    }

    /// The node producing `v`, if any.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        self.value(v).producer.map(|(n, _)| n)
    }

    /// Nodes in topological order; ties broken by `Node::order` so the result is deterministic.
    /// Errors with the nodes on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        let mut indeg: BTreeMap<NodeId, usize> = BTreeMap::new();
        for n in self.nodes.node_indices() {
            indeg.insert(
                n,
                self.nodes
                    .edges_directed(n, petgraph::Direction::Incoming)
                    .count(),
            );
        }
        let mut heap: BinaryHeap<std::cmp::Reverse<(u64, NodeId)>> = BinaryHeap::new();
        for (&n, &d) in &indeg {
            if d == 0 {
                heap.push(std::cmp::Reverse((self.nodes[n].order, n)));
            }
        }
        let mut out = Vec::with_capacity(indeg.len());
        while let Some(std::cmp::Reverse((_, n))) = heap.pop() {
            out.push(n);
            for e in self.nodes.edges_directed(n, petgraph::Direction::Outgoing) {
                let t = e.target();
                let d = indeg.get_mut(&t).expect("node");
                *d -= 1;
                if *d == 0 {
                    heap.push(std::cmp::Reverse((self.nodes[t].order, t)));
                }
            }
        }
        if out.len() != indeg.len() {
            let stuck: Vec<String> = indeg
                .iter()
                .filter(|(n, _)| !out.contains(n))
                .take(4)
                .map(|(&n, _)| self.nodes[n].label())
                .collect();
            return Err(Error::graph(format!(
                "the graph has a cycle through {}",
                stuck.join(", ")
            )));
        }
        Ok(out)
    }

    /// Renames a value. Errors if the new name is taken.
    pub fn rename_value(&mut self, v: ValueId, name: &str) -> Result<()> {
        if self.names.contains_key(name) {
            return Err(Error::graph(format!("value name '{name}' is taken")));
        }
        let old = std::mem::replace(&mut self.value_mut(v).name, name.to_string());
        self.names.remove(&old);
        self.names.insert(name.to_string(), v);
        for port in self.inputs.iter_mut().chain(self.outputs.iter_mut()) {
            if port.value == v {
                port.info.name = name.to_string();
            }
        }
        if let Some(info) = &mut self.value_mut(v).info {
            info.name = name.to_string();
        }
        Ok(())
    }

    /// Makes `new`'s producer write `old`'s name instead: after this, consumers of `old` (graph
    /// outputs included) see what `new` computed. `old` must have no producer and no initializer;
    /// `new` must not be a graph input/output or captured. Used to drop Identity-like nodes that
    /// feed graph outputs without changing output names.
    pub fn merge_into(&mut self, new: ValueId, old: ValueId) -> Result<()> {
        if self.value(old).is_defined() {
            return Err(Error::graph(format!(
                "'{}' is still defined",
                self.value(old).name
            )));
        }
        let (p, slot) = self
            .value(new)
            .producer
            .ok_or_else(|| Error::graph(format!("'{}' has no producer", self.value(new).name)))?;
        self.replace_uses(new, old);
        // Rewire the producer's output slot.
        self.value_mut(new).producer = None;
        self.nodes[p].outputs[slot] = Some(old);
        self.value_mut(old).producer = Some((p, slot));
        let consumers = self.value(old).consumers.clone();
        for (c, _) in consumers {
            self.nodes.add_edge(p, c, old);
        }
        Ok(())
    }

    /// Total parameters and their bytes: elements of all initializers and of the tensors held
    /// by `Constant` nodes (so turning a Constant node into an initializer changes neither).
    pub fn parameter_stats(&self) -> (u64, u64) {
        let mut count = 0u64;
        let mut bytes = 0u64;
        for (_, t) in self.initializers() {
            count += t.numel();
            bytes += t.byte_len().unwrap_or(0);
        }
        for n in self.node_ids() {
            let node = self.node(n);
            if node.op_type != "Constant" || !(node.domain.is_empty() || node.domain == "ai.onnx") {
                continue;
            }
            for a in &node.attrs {
                if let Some(t) = a.t.as_ref() {
                    let c = super::dtype::element_count(&t.dims).unwrap_or(0);
                    count += c;
                    bytes += super::dtype::byte_len(t.data_type, c).unwrap_or(0);
                } else if a.name == "value_float" || a.name == "value_int" {
                    count += 1;
                    bytes += if a.name == "value_int" { 8 } else { 4 };
                } else if a.name == "value_floats" {
                    count += a.floats.len() as u64;
                    bytes += 4 * a.floats.len() as u64;
                } else if a.name == "value_ints" {
                    count += a.ints.len() as u64;
                    bytes += 8 * a.ints.len() as u64;
                }
            }
        }
        (count, bytes)
    }

    pub(crate) fn set_next_order(&mut self, n: u64) {
        self.next_order = n;
    }
}
