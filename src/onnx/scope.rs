//! Names a subgraph reads from its enclosing scopes.

use std::collections::BTreeSet;

use onnx_protobuf::{AttributeProto, GraphProto, NodeProto};

/// Names read by the subgraphs in a node's attributes that those subgraphs do not define.
pub fn node_captures(node: &NodeProto) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in &node.attribute {
        attr_captures(a, &mut out);
    }
    out
}

fn attr_captures(a: &AttributeProto, out: &mut BTreeSet<String>) {
    if let Some(g) = a.g.as_ref() {
        out.extend(free_names(g));
    }
    for g in &a.graphs {
        out.extend(free_names(g));
    }
}

/// Names a graph uses (node inputs, graph outputs, nested subgraphs) but does not define.
pub fn free_names(g: &GraphProto) -> BTreeSet<String> {
    let mut defined: BTreeSet<&str> = BTreeSet::new();
    for i in &g.input {
        defined.insert(&i.name);
    }
    for t in &g.initializer {
        defined.insert(&t.name);
    }
    for s in &g.sparse_initializer {
        if let Some(v) = s.values.as_ref() {
            defined.insert(&v.name);
        }
    }
    for n in &g.node {
        for o in &n.output {
            defined.insert(o);
        }
    }
    let mut free = BTreeSet::new();
    for n in &g.node {
        for i in &n.input {
            if !i.is_empty() && !defined.contains(i.as_str()) {
                free.insert(i.clone());
            }
        }
        for name in node_captures(n) {
            if !defined.contains(name.as_str()) {
                free.insert(name);
            }
        }
    }
    for o in &g.output {
        if !defined.contains(o.name.as_str()) {
            free.insert(o.name.clone());
        }
    }
    free
}
