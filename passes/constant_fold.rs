//! `constant-fold`: evaluates nodes computed only from constants.
//!
//! The results are stored as initializers.
//! Rewrites: any node of the standard domain that the CPU evaluator supports, whose inputs are all
//! initializers (not graph inputs, which a caller may override), becomes the initializer(s) it
//! computes, under the same output name(s). `Constant` nodes become initializers. `Shape` and
//! `Size` of a value whose declared shape is fully static fold too.
//! Nodes are folded in groups: everything computable from the same constants is evaluated
//! together, so a chain whose intermediate values are large (an `EyeLike` feeding a weight-norm
//! computation, a low-rank product added to a weight) folds when its final result is small.
//! Refuses: nondeterministic operators, quantization operators (a dequantized weight is
//! larger and quantization is how the model ships), nodes with subgraphs, nodes producing a graph output,
//! nodes the evaluator rejects (the reason is reported), and — the size guard — any value that
//! would leave the group (be read by a non-constant node) if it takes, with its name, more
//! bytes than what cutting it frees (dead constants and the removed nodes themselves) plus 64 bytes, or
//! more elements than it frees plus 16, so folding never grows the model file or its parameter
//! count beyond a shape constant (an `Expand` of a scalar to a large shape stays as it is).
//! Sound because the evaluator implements the ONNX operator semantics (checked against the ONNX
//! backend node tests) and the folded values are exactly what the node would compute at run time.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::eval::{TensorValue, eval_node};
use crate::ir::{Model, NodeId, Tensor, ValueId, dtype};

pub struct ConstantFold;

/// Outputs may exceed the bytes they free by this much (a shape or scalar constant).
const SLACK_BYTES: u64 = 64;
/// ... and the parameter count by this many elements.
const SLACK_ELEMENTS: u64 = 16;

/// Quantization is deliberate: a dequantized weight is larger, and a quantized one is the
/// representation the model ships; neither is folded.
const QUANTIZATION: &[&str] = &[
    "DequantizeLinear",
    "QuantizeLinear",
    "DynamicQuantizeLinear",
];

const NONDETERMINISTIC: &[&str] = &[
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
];

fn static_shape(model: &Model, v: ValueId) -> Option<Vec<i64>> {
    let ty = model.graph.value(v).ty.as_ref()?;
    let onnx_protobuf::type_proto::Value::TensorType(tt) = ty.value.as_ref()? else {
        return None;
    };
    let shape = tt.shape.as_ref()?;
    shape
        .dim
        .iter()
        .map(|d| d.has_dim_value().then(|| d.dim_value()).filter(|&x| x >= 0))
        .collect()
}

fn tensor_value(model: &Model, v: ValueId) -> Result<TensorValue> {
    let name = &model.graph.value(v).name;
    let t = model.graph.constant(v).expect("checked constant");
    let bytes = t.bytes(name)?;
    TensorValue::from_raw(t.dtype, &t.dims, &bytes)
        .map_err(|e| crate::Error::tensor(name, e.to_string()))
}

impl Pass for ConstantFold {
    fn name(&self) -> &'static str {
        "constant-fold"
    }
    fn summary(&self) -> &'static str {
        "evaluate nodes computed only from constants (size-guarded: never grows the model)"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<usize> {
        let opset = model.opset("").unwrap_or(1);
        let order = model.graph.topo_order()?;
        // Nodes computable from constants alone, in topological order.
        let mut computable: Vec<NodeId> = Vec::new();
        let mut in_set: HashSet<NodeId> = HashSet::new();
        {
            let g = &model.graph;
            for &n in &order {
                let node = g.node(n);
                let standard = node.domain.is_empty() || node.domain == "ai.onnx";
                if !standard
                    || NONDETERMINISTIC.contains(&node.op_type.as_str())
                    || QUANTIZATION.contains(&node.op_type.as_str())
                    || node
                        .attrs
                        .iter()
                        .any(|a| a.g.is_some() || !a.graphs.is_empty())
                    || !crate::eval::is_supported(&node.op_type, &node.domain)
                    || node
                        .outputs
                        .iter()
                        .flatten()
                        .any(|&o| g.is_output(o) || g.value(o).is_captured())
                {
                    continue;
                }
                let shape_of_static = matches!(node.op_type.as_str(), "Shape" | "Size")
                    && node
                        .inputs
                        .first()
                        .copied()
                        .flatten()
                        .is_some_and(|x| static_shape(model, x).is_some());
                let inputs_known = node.inputs.iter().flatten().all(|&v| {
                    let val = g.value(v);
                    (val.initializer.is_some() && !val.is_input)
                        || g.producer(v).is_some_and(|p| in_set.contains(&p))
                });
                if shape_of_static || inputs_known {
                    computable.push(n);
                    in_set.insert(n);
                }
            }
        }
        // Group into components: a node joins the component of the computable nodes it reads.
        let mut comp: HashMap<NodeId, usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        {
            let g = &model.graph;
            for &n in &computable {
                let id = parent.len();
                parent.push(id);
                comp.insert(n, id);
                if shape_only_node(model, n) {
                    continue;
                }
                for &v in g.node(n).inputs.iter().flatten() {
                    if let Some(p) = g.producer(v)
                        && let Some(&c) = comp.get(&p)
                    {
                        let (a, b) = (
                            crate::rewrite::find_root(&mut parent, c),
                            crate::rewrite::find_root(&mut parent, id),
                        );
                        parent[a] = b;
                    }
                }
            }
        }
        let mut groups: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
        for &n in &computable {
            let root = crate::rewrite::find_root(&mut parent, comp[&n]);
            groups.entry(root).or_default().push(n);
        }
        let mut rewrites = 0;
        for nodes in groups.into_values() {
            rewrites += self.fold_group(model, cx, opset, &nodes)?;
        }
        Ok(rewrites)
    }
}

fn shape_only_node(model: &Model, n: NodeId) -> bool {
    let node = model.graph.node(n);
    matches!(node.op_type.as_str(), "Shape" | "Size")
        && node
            .inputs
            .first()
            .copied()
            .flatten()
            .is_some_and(|x| model.graph.constant(x).is_none() && static_shape(model, x).is_some())
}

impl ConstantFold {
    /// Evaluates one group of constant-computable nodes (in topological order) and, if the
    /// values that leave the group take no more bytes than the constants the group frees (plus a
    /// small slack for shapes and scalars), replaces the group by those values.
    fn fold_group(
        &self,
        model: &mut Model,
        cx: &mut PassContext,
        opset: i64,
        nodes: &[NodeId],
    ) -> Result<usize> {
        let g = &model.graph;
        let set: HashSet<NodeId> = nodes.iter().copied().collect();
        // Before evaluating anything: a large value that would leave the group and is
        // statically known to be bigger than everything the group could free can never pay
        // for itself (a transposed shared embedding table, say); skip the group rather than
        // evaluate it.
        {
            let leaving: Vec<ValueId> = nodes
                .iter()
                .flat_map(|&n| {
                    g.node(n)
                        .outputs
                        .iter()
                        .flatten()
                        .copied()
                        .collect::<Vec<_>>()
                })
                .filter(|o| g.value(*o).consumers.iter().any(|(c, _)| !set.contains(c)))
                .collect();
            let (_, most_freed, _) = dead_after_cut(g, nodes, &set, &leaving);
            for o in &leaving {
                let size = crate::rewrite::types::static_shape(g, *o)
                    .zip(crate::rewrite::types::elem_type(g, *o))
                    .and_then(|(s, dt)| {
                        dtype::element_count(&s).and_then(|c| dtype::byte_len(dt, c))
                    });
                if let Some(size) = size
                    && size > 1 << 20
                    && size > most_freed + SLACK_BYTES
                {
                    let p = g.producer(*o).expect("group output");
                    cx.refuse(
                        g.label(p),
                        format!("folding would add {size} bytes of constants but could free at most {most_freed}"),
                    );
                    return Ok(0);
                }
            }
        }
        let mut values: HashMap<ValueId, TensorValue> = HashMap::new();
        for &n in nodes {
            let node = g.node(n);
            let outs = if shape_only_node(model, n) {
                let dims = static_shape(model, node.inputs[0].expect("checked")).expect("checked");
                vec![shape_only(
                    &node.op_type,
                    &dims,
                    node.attr_int("start"),
                    node.attr_int("end"),
                )]
            } else {
                let mut inputs = Vec::new();
                for i in &node.inputs {
                    inputs.push(match i {
                        Some(x) => Some(match values.get(x) {
                            Some(t) => t.clone(),
                            None => tensor_value(model, *x)?,
                        }),
                        None => None,
                    });
                }
                let refs: Vec<Option<&TensorValue>> = inputs.iter().map(|x| x.as_ref()).collect();
                match eval_node(
                    &node.op_type,
                    &node.domain,
                    opset,
                    &node.attrs,
                    &refs,
                    node.outputs.len(),
                ) {
                    Ok(o) => o,
                    Err(e) => {
                        cx.refuse(g.label(n), format!("cannot evaluate: {e}"));
                        return Ok(0);
                    }
                }
            };
            for (o, t) in node.outputs.iter().zip(outs) {
                if let Some(o) = o {
                    values.insert(*o, t);
                }
            }
        }
        // Values read outside the group become initializers; if that would grow the model,
        // drop the largest of them (their cones stay as they are) until it does not.
        let mut accepted: Vec<ValueId> = Vec::new();
        for &n in nodes {
            for o in g.node(n).outputs.iter().flatten() {
                if g.value(*o).consumers.iter().any(|(c, _)| !set.contains(c)) {
                    accepted.push(*o);
                }
            }
        }
        // The evaluator decodes some narrow types (int4, float8, ...) into wider ones: never
        // write a value back under a type other than the one the model declares.
        let mut mistyped = Vec::new();
        accepted.retain(|v| {
            let declared = crate::rewrite::types::elem_type(g, *v);
            let ok = declared.is_none_or(|d| d == values[v].data_type());
            if !ok {
                mistyped.push(*v);
            }
            ok
        });
        for v in mistyped {
            if let Some(p) = g.producer(v) {
                cx.refuse(
                    g.label(p),
                    format!(
                        "the evaluator cannot produce '{}' in its declared element type",
                        g.value(v).name
                    ),
                );
            }
        }
        // What a new initializer costs in the file: its data, its name and its dims.
        let bytes_of = |v: &ValueId| {
            values[v].to_raw_bytes().len() as u64
                + g.value(*v).name.len() as u64
                + 8 * values[v].shape().len() as u64
                + 8
        };
        // Each value must pay for itself: its bytes may not exceed what cutting it frees (given
        // the other cuts) plus a small slack, so no value rides on another's savings.
        let mut rejected: Vec<(ValueId, u64, u64)> = Vec::new();
        loop {
            let (_, freed_all, elems_all) = dead_after_cut(g, nodes, &set, &accepted);
            let mut worst: Option<(usize, u64, u64, i128)> = None;
            for (i, v) in accepted.iter().enumerate() {
                let others: Vec<ValueId> = accepted.iter().copied().filter(|x| x != v).collect();
                let (_, freed_others, elems_others) = dead_after_cut(g, nodes, &set, &others);
                let marginal = freed_all.saturating_sub(freed_others);
                let marginal_elems = elems_all.saturating_sub(elems_others);
                let cost = bytes_of(v);
                // Neither the file nor the parameter count may grow (beyond a few elements for
                // a shape or scalar constant).
                let elem_excess =
                    values[v].len() as i128 - (marginal_elems + SLACK_ELEMENTS) as i128;
                let excess = (cost as i128 - (marginal + SLACK_BYTES) as i128).max(elem_excess);
                if excess > 0 && worst.is_none_or(|w| excess > w.3) {
                    worst = Some((i, cost, marginal, excess));
                }
            }
            match worst {
                None => break,
                Some((i, cost, marginal, _)) => {
                    let v = accepted.remove(i);
                    rejected.push((v, cost, marginal));
                }
            }
        }
        let (dead, _, _) = dead_after_cut(g, nodes, &set, &accepted);
        for (v, new_bytes, freed) in rejected {
            if let Some(p) = g.producer(v) {
                cx.refuse(
                    g.label(p),
                    format!(
                        "folding would add {new_bytes} bytes of constants but free only {freed}"
                    ),
                );
            }
        }
        if accepted.is_empty() && dead.is_empty() {
            return Ok(0);
        }
        // Large results follow the model's convention: external if its weights were.
        let external_inputs = nodes.iter().any(|&n| {
            g.node(n)
                .inputs
                .iter()
                .flatten()
                .any(|v| g.constant(*v).is_some_and(|t| t.is_external()))
        });
        let g = &mut model.graph;
        let mut removed = 0;
        for &n in nodes {
            let cut = g
                .node(n)
                .outputs
                .iter()
                .flatten()
                .any(|o| accepted.contains(o));
            if cut || dead.contains(&n) {
                g.remove_node(n);
                removed += 1;
            }
        }
        for v in accepted {
            let val = values.remove(&v).expect("evaluated");
            let dims: Vec<i64> = val.shape().iter().map(|&d| d as i64).collect();
            g.set_initializer(
                v,
                Tensor::computed(val.data_type(), dims, val.to_raw_bytes(), external_inputs)?,
            )?;
        }
        Ok(removed)
    }
}

/// Group nodes that become dead when the `cut` values turn into initializers, and the bytes of
/// constants (initializers and Constant-node tensors) that die with them.
fn dead_after_cut(
    g: &crate::ir::Graph,
    nodes: &[NodeId],
    set: &HashSet<NodeId>,
    cut: &[ValueId],
) -> (HashSet<NodeId>, u64, u64) {
    // Walk backwards: a group node is alive if an output it writes is read by an alive group
    // node, or by a node outside the group without being cut.
    let mut alive: HashSet<NodeId> = HashSet::new();
    for &n in nodes.iter().rev() {
        let live = g.node(n).outputs.iter().flatten().any(|o| {
            g.value(*o).consumers.iter().any(|(c, _)| {
                if set.contains(c) {
                    alive.contains(c)
                } else {
                    !cut.contains(o)
                }
            })
        });
        if live {
            alive.insert(n);
        }
    }
    let dead: HashSet<NodeId> = nodes
        .iter()
        .copied()
        .filter(|n| !alive.contains(n))
        .collect();
    let mut freed = 0u64;
    let mut elems = 0u64;
    let mut seen = HashSet::new();
    for &n in &dead {
        let cb = constant_node_bytes(g.node(n));
        freed += cb + node_proto_bytes(g, n);
        elems += cb / 4;
        for &v in g.node(n).inputs.iter().flatten() {
            if !seen.insert(v) {
                continue;
            }
            let val = g.value(v);
            if let Some(t) = &val.initializer
                && !val.is_input
                && !g.is_output(v)
                && val.consumers.iter().all(|(c, _)| dead.contains(c))
            {
                freed += t.byte_len().unwrap_or(0);
                elems += t.numel();
            }
        }
    }
    (dead, freed, elems)
}

/// Roughly what a node takes in the serialized model: its names, op type and attributes.
fn node_proto_bytes(g: &crate::ir::Graph, n: NodeId) -> u64 {
    use onnx_protobuf::Message;
    let node = g.node(n);
    let names: usize = node
        .inputs
        .iter()
        .chain(node.outputs.iter())
        .map(|v| v.map_or(0, |v| g.value(v).name.len()) + 2)
        .sum();
    let attrs: u64 = node
        .attrs
        .iter()
        .filter(|a| a.t.is_none())
        .map(|a| a.compute_size() + 2)
        .sum();
    (node.name.len() + node.op_type.len() + node.domain.len() + names + 6) as u64 + attrs
}

fn constant_node_bytes(node: &crate::ir::Node) -> u64 {
    if node.op_type != "Constant" {
        return 0;
    }
    node.attrs
        .iter()
        .map(|a| {
            a.t.as_ref()
                .map(|t| {
                    dtype::element_count(&t.dims)
                        .and_then(|c| dtype::byte_len(t.data_type, c))
                        .unwrap_or(0)
                })
                .unwrap_or(0)
                + 4 * (a.floats.len() + 2 * a.ints.len()) as u64
                + if a.name == "value_float" || a.name == "value_int" {
                    8
                } else {
                    0
                }
        })
        .sum()
}

/// `Shape` (with start/end) or `Size` of a tensor whose shape is known statically.
fn shape_only(op: &str, dims: &[i64], start: Option<i64>, end: Option<i64>) -> TensorValue {
    if op == "Size" {
        let count = dtype::element_count(dims).unwrap_or(u64::MAX);
        return TensorValue::scalar_i64(count.min(i64::MAX as u64) as i64);
    }
    let r = dims.len() as i64;
    let norm = |x: i64| if x < 0 { (x + r).max(0) } else { x.min(r) };
    let (s, e) = (norm(start.unwrap_or(0)), norm(end.unwrap_or(r)));
    TensorValue::vec_i64(if s < e {
        dims[s as usize..e as usize].to_vec()
    } else {
        vec![]
    })
}
