//! Whole-graph evaluation.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::GraphProto;

use super::{EvalError, EvalOptions, Result, TensorValue, eval_node_with};

/// Runs a graph on the given inputs (initializers supply the rest; an input with the same name
/// as an initializer overrides it). Nodes may be stored in any order; they run in dependency
/// order (ties by stored order). Returns the graph outputs in order.
pub fn run_graph(
    graph: &GraphProto,
    opset: i64,
    inputs: &[(String, TensorValue)],
) -> Result<Vec<(String, TensorValue)>> {
    run_graph_with(graph, opset, inputs, &EvalOptions::default())
}

/// [`run_graph`] with explicit options.
pub fn run_graph_with(
    graph: &GraphProto,
    opset: i64,
    inputs: &[(String, TensorValue)],
    opts: &EvalOptions,
) -> Result<Vec<(String, TensorValue)>> {
    let mut values: HashMap<String, TensorValue> = HashMap::new();
    for init in &graph.initializer {
        let t = TensorValue::from_proto(init)
            .map_err(|e| EvalError::Graph(format!("initializer '{}': {e}", init.name)))?;
        values.insert(init.name.clone(), t);
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(EvalError::Graph(
            "sparse initializers are not supported".into(),
        ));
    }
    for (name, t) in inputs {
        values.insert(name.clone(), t.clone());
    }
    for vi in &graph.input {
        if !values.contains_key(&vi.name) {
            return Err(EvalError::Graph(format!(
                "graph input '{}' was not provided",
                vi.name
            )));
        }
    }
    let order = topo_order(graph, &values)?;
    // remaining uses, so that intermediates can be dropped once consumed
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    for idx in order {
        let node = &graph.node[idx];
        let ins: Vec<Option<&TensorValue>> = node
            .input
            .iter()
            .map(|name| {
                if name.is_empty() {
                    Ok(None)
                } else {
                    values.get(name).map(Some).ok_or_else(|| {
                        EvalError::Graph(format!(
                            "node '{}' ({}) reads '{name}', which is not defined",
                            node.name, node.op_type
                        ))
                    })
                }
            })
            .collect::<Result<_>>()?;
        let outs = eval_node_with(
            &node.op_type,
            &node.domain,
            opset,
            &node.attribute,
            &ins,
            node.output.len(),
            opts,
        )
        .map_err(|e| match e {
            EvalError::Op { op, msg } => EvalError::Op {
                op,
                msg: format!("{msg} (node '{}')", node.name),
            },
            other => other,
        })?;
        for name in node.input.iter().filter(|i| !i.is_empty()) {
            if let Some(u) = uses.get_mut(name.as_str()) {
                *u = u.saturating_sub(1);
                if *u == 0 && !outputs.contains(name.as_str()) {
                    values.remove(name);
                }
            }
        }
        for (k, name) in node.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            match outs.get(k) {
                Some(v) => {
                    values.insert(name.clone(), v.clone());
                }
                None => {
                    return Err(EvalError::Graph(format!(
                        "node '{}' ({}) produced {} outputs, output {k} ('{name}') is missing",
                        node.name,
                        node.op_type,
                        outs.len()
                    )));
                }
            }
        }
    }
    graph
        .output
        .iter()
        .map(|o| {
            values
                .get(&o.name)
                .cloned()
                .map(|v| (o.name.clone(), v))
                .ok_or_else(|| {
                    EvalError::Graph(format!("graph output '{}' was not computed", o.name))
                })
        })
        .collect()
}

/// Kahn's algorithm over the stored node order.
fn topo_order(graph: &GraphProto, available: &HashMap<String, TensorValue>) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), i).is_some() {
                return Err(EvalError::Graph(format!("value '{o}' is produced twice")));
            }
        }
    }
    let n = graph.node.len();
    let mut indeg = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.node.iter().enumerate() {
        let mut seen = HashSet::new();
        for inp in node.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(inp.as_str()) {
                Some(&p) => {
                    if seen.insert(p) {
                        indeg[i] += 1;
                        users[p].push(i);
                    }
                }
                None => {
                    if !available.contains_key(inp) {
                        return Err(EvalError::Graph(format!(
                            "node '{}' ({}) reads '{inp}', which no node, input or initializer defines",
                            node.name, node.op_type
                        )));
                    }
                }
            }
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != n {
        return Err(EvalError::Graph("the graph has a cycle".into()));
    }
    Ok(order)
}
