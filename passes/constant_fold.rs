//! `constant-fold`: evaluates nodes computed only from constants.
//!
//! The results are stored as initializers.
//! Rewrites: any node of the standard domain that the CPU evaluator supports, whose inputs are all
//! initializers (not graph inputs, which a caller may override), becomes the initializer(s) it
//! computes, under the same output name(s). `Constant` nodes become initializers. `Shape` and
//! `Size` of a value whose declared shape is fully static fold too.
//! Refuses: nondeterministic operators, nodes with subgraphs, nodes producing a graph output,
//! nodes the evaluator rejects (the reason is reported), and — the size guard — any fold whose
//! results take more bytes than the constants it frees plus 64 bytes, so folding never grows the
//! model (an `Expand` of a scalar to a large shape stays as it is).
//! Sound because the evaluator implements the ONNX operator semantics (checked against the ONNX
//! backend node tests) and the folded values are exactly what the node would compute at run time.

use std::collections::HashSet;

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::eval::{TensorValue, eval_node};
use crate::ir::{Model, NodeId, Tensor, ValueId, dtype};

pub struct ConstantFold;

/// Outputs may exceed the bytes they free by this much (a shape or scalar constant).
const SLACK_BYTES: u64 = 64;

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

/// What folding node `n` would free: bytes of constant inputs read only by it.
fn freed_bytes(model: &Model, n: NodeId) -> u64 {
    let g = &model.graph;
    let node = g.node(n);
    let mut seen = HashSet::new();
    let mut freed = 0;
    for &v in node.inputs.iter().flatten() {
        if !seen.insert(v) {
            continue;
        }
        let val = g.value(v);
        if let Some(t) = &val.initializer
            && g.consumer_nodes(v) == [n]
            && !g.is_output(v)
        {
            freed += t.byte_len().unwrap_or(0);
        }
    }
    if node.op_type == "Constant" {
        freed += node
            .attrs
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
            })
            .sum::<u64>();
    }
    freed
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
        let mut rewrites = 0;
        for n in model.graph.topo_order()? {
            let g = &model.graph;
            let node = g.node(n);
            let standard = node.domain.is_empty() || node.domain == "ai.onnx";
            if !standard
                || NONDETERMINISTIC.contains(&node.op_type.as_str())
                || node
                    .attrs
                    .iter()
                    .any(|a| a.g.is_some() || !a.graphs.is_empty())
                || !crate::eval::is_supported(&node.op_type, &node.domain)
            {
                continue;
            }
            if node.outputs.iter().flatten().any(|&o| g.is_output(o)) {
                continue;
            }
            let shape_of_static =
                matches!(node.op_type.as_str(), "Shape" | "Size")
                    && node.inputs.first().copied().flatten().is_some_and(|x| {
                        g.constant(x).is_none() && static_shape(model, x).is_some()
                    });
            let all_const = node.inputs.iter().flatten().all(|&v| {
                let val = g.value(v);
                val.initializer.is_some() && !val.is_input
            });
            if shape_of_static {
                let dims = static_shape(model, node.inputs[0].expect("checked")).expect("checked");
                let out = shape_only(
                    &node.op_type,
                    &dims,
                    node.attr_int("start"),
                    node.attr_int("end"),
                );
                let outputs = node.outputs.clone();
                rewrites += self.commit(model, n, vec![out], &outputs)?;
                continue;
            }
            if !all_const {
                continue;
            }
            let label = g.label(n);
            let mut inputs = Vec::new();
            for i in &node.inputs {
                inputs.push(match i {
                    Some(x) => Some(tensor_value(model, *x)?),
                    None => None,
                });
            }
            let refs: Vec<Option<&TensorValue>> = inputs.iter().map(|x| x.as_ref()).collect();
            let outs = match eval_node(
                &node.op_type,
                &node.domain,
                opset,
                &node.attrs,
                &refs,
                node.outputs.len(),
            ) {
                Ok(o) => o,
                Err(e) => {
                    cx.refuse(label, format!("cannot evaluate: {e}"));
                    continue;
                }
            };
            let out_bytes: u64 = outs.iter().map(|t| t.to_raw_bytes().len() as u64).sum();
            let freed = freed_bytes(model, n);
            if out_bytes > freed + SLACK_BYTES {
                cx.refuse(
                    label,
                    format!(
                        "folding would add {out_bytes} bytes of constants but free only {freed}"
                    ),
                );
                continue;
            }
            let outputs = model.graph.node(n).outputs.clone();
            rewrites += self.commit(model, n, outs, &outputs)?;
        }
        Ok(rewrites)
    }
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

impl ConstantFold {
    /// Replaces node `n` by initializers holding `values` under its output names.
    fn commit(
        &self,
        model: &mut Model,
        n: NodeId,
        values: Vec<TensorValue>,
        outputs: &[Option<ValueId>],
    ) -> Result<usize> {
        let g = &mut model.graph;
        g.remove_node(n);
        for (val, out) in values.into_iter().zip(outputs) {
            let Some(o) = *out else { continue };
            let dims: Vec<i64> = val.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::from_raw(val.data_type(), dims, val.to_raw_bytes());
            g.set_initializer(o, t)?;
        }
        Ok(1)
    }
}
