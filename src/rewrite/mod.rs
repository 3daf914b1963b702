//! Rewrite helpers shared by passes: constants as f64 arrays, value types, the affine-form
//! algebra that adapter folding rests on, and the classification of nodes as linear maps.

pub mod adapters;
pub mod consts;
pub mod cost;
pub mod form;
pub mod linear;
pub mod region;
pub mod types;

/// An `ints` attribute for a node built by a rewrite.
pub fn ints_attr(name: &str, v: &[i64]) -> onnx_protobuf::AttributeProto {
    onnx_protobuf::AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        type_: onnx_protobuf::attribute_proto::AttributeType::INTS.into(),
        ..Default::default()
    }
}

/// An `int` attribute for a node built by a rewrite.
pub fn int_attr(name: &str, v: i64) -> onnx_protobuf::AttributeProto {
    onnx_protobuf::AttributeProto {
        name: name.into(),
        i: v,
        type_: onnx_protobuf::attribute_proto::AttributeType::INT.into(),
        ..Default::default()
    }
}

/// Union-find root of `x` with path compression (used to group nodes into regions).
pub fn find_root(parent: &mut [usize], x: usize) -> usize {
    let mut r = x;
    while parent[r] != r {
        r = parent[r];
    }
    let mut c = x;
    while parent[c] != r {
        let next = parent[c];
        parent[c] = r;
        c = next;
    }
    r
}

/// Adds `values` with a chain of Add nodes (appended to `nodes`, named after `hint`) and
/// returns the value holding the sum (the value itself when there is only one).
pub fn add_chain(
    g: &mut crate::ir::Graph,
    values: &[crate::ir::ValueId],
    hint: &str,
    nodes: &mut Vec<crate::ir::Node>,
) -> crate::ir::ValueId {
    let mut acc = values[0];
    for &v in &values[1..] {
        let t = g.fresh_value(&format!("{hint}_sum"));
        let mut n = crate::ir::Node::new("Add");
        n.inputs = vec![Some(acc), Some(v)];
        n.outputs = vec![Some(t)];
        nodes.push(n);
        acc = t;
    }
    acc
}

/// Makes the rebuilt nodes (those of `nodes` from `first` on) write `output`: the last one
/// writes it directly when it computes `acc`, otherwise an Identity copies `acc`. The node that
/// writes it takes `name` when it has none, so the root keeps its node name.
pub fn write_output(
    nodes: &mut Vec<crate::ir::Node>,
    first: usize,
    acc: crate::ir::ValueId,
    output: crate::ir::ValueId,
    name: &str,
) {
    match nodes[first..].last_mut() {
        Some(last) if last.outputs[0] == Some(acc) => last.outputs[0] = Some(output),
        _ => {
            let mut n = crate::ir::Node::new("Identity");
            n.inputs = vec![Some(acc)];
            n.outputs = vec![Some(output)];
            nodes.push(n);
        }
    }
    if let Some(last) = nodes.last_mut()
        && last.name.is_empty()
    {
        last.name = name.to_string();
    }
}
