//! Finding adapter-like branches that are still in a graph: a low-rank bottleneck (a projection
//! down to a few features, then back up) — what LoRA, Houlsby, AdaptFormer and similar adapters
//! look like — or a pooled and resampled side branch (TinyTL's lite residual), and saying why
//! it was not folded.

use std::collections::{HashMap, HashSet, VecDeque};

use super::consts::is_const;
use crate::ir::{Graph, NodeId};

/// An adapter-like branch left in the graph.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Leftover {
    /// The down-projection.
    pub down: String,
    /// The up-projection.
    pub up: String,
    pub rank: usize,
    pub reason: String,
}

/// `(d_in, d_out)` of a node that multiplies by a constant weight.
fn widths(g: &Graph, n: NodeId) -> Option<(usize, usize)> {
    let node = g.node(n);
    let w = node.inputs.get(1).copied().flatten()?;
    if !is_const(g, w) {
        return None;
    }
    let dims = &g.constant(w)?.dims;
    let d = |i: usize| dims.get(i).map(|&x| x.max(0) as usize);
    match node.op_type.as_str() {
        "MatMul" if dims.len() == 2 => Some((d(0)?, d(1)?)),
        "Gemm" if dims.len() == 2 => {
            if node.attr_int("transB").unwrap_or(0) != 0 {
                Some((d(1)?, d(0)?))
            } else {
                Some((d(0)?, d(1)?))
            }
        }
        "Conv" if dims.len() >= 3 => {
            let groups = node.attr_int("group").unwrap_or(1).max(1) as usize;
            Some((d(1)? * groups, d(0)?))
        }
        _ => None,
    }
}

const NONLINEAR: &[&str] = &[
    "Relu",
    "Gelu",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Softmax",
    "LeakyRelu",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Mish",
    "Clip",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Pow",
    "Max",
    "Min",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "Resize",
    "Upsample",
    "LayerNormalization",
    "Where",
];

/// Adapter-like bottlenecks still present, with the reason each stayed. `refusals` maps node
/// labels to the reasons passes gave for leaving them alone.
pub fn leftovers(g: &Graph, refusals: &HashMap<String, String>) -> Vec<Leftover> {
    let mut out = Vec::new();
    let Ok(order) = g.topo_order() else {
        return out;
    };
    for &d in &order {
        let Some((din, r)) = widths(g, d) else {
            continue;
        };
        if r == 0 || r * 2 > din {
            continue;
        }
        // Breadth-first from the down-projection, a few nodes deep, to an up-projection.
        let mut queue: VecDeque<(NodeId, Vec<NodeId>)> = VecDeque::new();
        let mut seen = HashSet::new();
        for o in g.node(d).outputs.iter().flatten() {
            for c in g.consumer_nodes(*o) {
                queue.push_back((c, vec![]));
            }
        }
        while let Some((n, path)) = queue.pop_front() {
            if !seen.insert(n) || path.len() > 4 {
                continue;
            }
            let node = g.node(n);
            if matches!(
                node.op_type.as_str(),
                "LayerNormalization" | "Softmax" | "BatchNormalization"
            ) {
                continue;
            }
            if let Some((ui, uo)) = widths(g, n)
                && ui == r
                && uo >= 2 * r
            {
                // The first node on the path that is not affine (a nonlinearity, or a product of
                // two varying tensors, as in a decomposed GELU); name the activation behind it.
                let breaking = path
                    .iter()
                    .copied()
                    .find(|p| {
                        NONLINEAR.contains(&g.node(*p).op_type.as_str())
                            || super::linear::classify(g, *p).is_none() && !is_shape_op(g, *p)
                    })
                    .map(|p| activation_behind(g, p));
                let reason = if let Some(b) = breaking {
                    format!(
                        "{} breaks linearity between {} and {}",
                        g.label(b),
                        g.label(d),
                        g.label(n)
                    )
                } else {
                    explain_linear(g, d, n, refusals)
                };
                out.push(Leftover {
                    down: g.label(d),
                    up: g.label(n),
                    rank: r,
                    reason,
                });
                break;
            }
            if widths(g, n).is_some() {
                continue;
            }
            let mut p2 = path.clone();
            p2.push(n);
            for o in node.outputs.iter().flatten() {
                for c in g.consumer_nodes(*o) {
                    queue.push_back((c, p2.clone()));
                }
            }
        }
    }
    out.extend(resampled_branches(g, &order));
    out
}

/// Side branches that pool their input, pass it through learned weights and resample it back
/// before joining the main path with an Add: TinyTL's lite residuals. Pooling and resampling
/// change the resolution, so no single kernel of the main path can absorb the branch.
fn resampled_branches(g: &Graph, order: &[NodeId]) -> Vec<Leftover> {
    const ACTIVATIONS: &[&str] = &[
        "Relu",
        "Gelu",
        "Erf",
        "Tanh",
        "Sigmoid",
        "LeakyRelu",
        "Elu",
        "Selu",
        "HardSigmoid",
        "HardSwish",
        "Softplus",
        "Mish",
        "Clip",
    ];
    let mut out = Vec::new();
    for &p in order {
        if !matches!(g.node(p).op_type.as_str(), "AveragePool" | "MaxPool") {
            continue;
        }
        // Forward, a few nodes deep, to a resampling node.
        let mut queue: VecDeque<(NodeId, Vec<NodeId>)> = VecDeque::new();
        let mut seen = HashSet::new();
        queue.push_back((p, vec![]));
        while let Some((n, path)) = queue.pop_front() {
            if !seen.insert(n) || path.len() > 6 {
                continue;
            }
            let mut path = path;
            path.push(n);
            if matches!(g.node(n).op_type.as_str(), "Resize" | "Upsample") {
                let weighted: Vec<usize> = path
                    .iter()
                    .filter_map(|&m| widths(g, m).map(|(_, o)| o))
                    .collect();
                if weighted.is_empty() || !joins_with_add(g, n) {
                    break;
                }
                let breaking = path
                    .iter()
                    .copied()
                    .find(|m| ACTIVATIONS.contains(&g.node(*m).op_type.as_str()))
                    .unwrap_or(n);
                out.push(Leftover {
                    down: g.label(p),
                    up: g.label(n),
                    rank: weighted.iter().copied().min().unwrap_or(0),
                    reason: format!(
                        "{} breaks linearity between {} and {}: the branch pools its input, \
                         applies its own weights and resamples it back (a lite residual), which \
                         no kernel of the main path can absorb",
                        g.label(breaking),
                        g.label(p),
                        g.label(n)
                    ),
                });
                break;
            }
            for o in g.node(n).outputs.iter().flatten() {
                for c in g.consumer_nodes(*o) {
                    queue.push_back((c, path.clone()));
                }
            }
        }
    }
    out
}

/// Whether `n`'s output reaches an `Add` within a couple of shape-only or normalising nodes.
fn joins_with_add(g: &Graph, n: NodeId) -> bool {
    let mut cur = vec![n];
    for _ in 0..3 {
        let mut next = Vec::new();
        for m in cur {
            for o in g.node(m).outputs.iter().flatten() {
                for c in g.consumer_nodes(*o) {
                    if matches!(g.node(c).op_type.as_str(), "Add" | "Sum") {
                        return true;
                    }
                    if is_shape_op(g, c) || g.node(c).op_type == "BatchNormalization" {
                        next.push(c);
                    }
                }
            }
        }
        cur = next;
    }
    false
}

fn is_shape_op(g: &Graph, n: NodeId) -> bool {
    matches!(
        g.node(n).op_type.as_str(),
        "Reshape"
            | "Transpose"
            | "Squeeze"
            | "Unsqueeze"
            | "Flatten"
            | "Identity"
            | "Cast"
            | "Dropout"
    )
}

/// For a product of two varying tensors, the activation feeding it (e.g. the Erf of a
/// decomposed GELU), if one is near; else the node itself.
fn activation_behind(g: &Graph, n: NodeId) -> NodeId {
    if NONLINEAR.contains(&g.node(n).op_type.as_str()) {
        return n;
    }
    let mut frontier = vec![n];
    for _ in 0..3 {
        let mut next = Vec::new();
        for m in frontier {
            for v in g.node(m).inputs.iter().flatten() {
                if let Some(p) = g.producer(*v) {
                    if NONLINEAR.contains(&g.node(p).op_type.as_str()) {
                        return p;
                    }
                    next.push(p);
                }
            }
        }
        frontier = next;
    }
    n
}

/// Why a linear bottleneck was not folded.
fn explain_linear(
    g: &Graph,
    down: NodeId,
    up: NodeId,
    refusals: &HashMap<String, String>,
) -> String {
    if let Some(r) = structural_reason(g, down, up, refusals) {
        return r;
    }
    for n in [down, up] {
        if let Some(r) = refusals.get(&g.label(n)) {
            return r.clone();
        }
    }
    "no dense weight reads the same input, so folding would turn the low-rank pair into a dense matrix".into()
}

/// Reasons read off the graph around the branch: where it joins, what the joined layer reads.
fn structural_reason(
    g: &Graph,
    down: NodeId,
    up: NodeId,
    refusals: &HashMap<String, String>,
) -> Option<String> {
    let x = g.node(down).inputs.first().copied().flatten();
    // Find where the branch joins another: an Add downstream of the up-projection.
    let mut cur = g.node(up).outputs.first().copied().flatten();
    for _ in 0..4 {
        let Some(v) = cur else { break };
        let cons = g.consumer_nodes(v);
        let Some(&c) = cons.first() else { break };
        let node = g.node(c);
        if node.op_type == "Add" {
            let other = node.inputs.iter().flatten().copied().find(|&i| i != v);
            if let Some(o) = other {
                let _ = refusals;
                if let Some(p) = g.producer(o) {
                    let target = g.node(p);
                    if matches!(
                        target.op_type.as_str(),
                        "MatMulNBits"
                            | "QLinearMatMul"
                            | "QLinearConv"
                            | "MatMulInteger"
                            | "ConvInteger"
                    ) {
                        return Some(format!(
                            "the layer it adapts, {}, has a quantized weight; merging would need dequantize, merge, requantize, which graft does not do",
                            g.label(p)
                        ));
                    }
                    if let Some(w) = target.inputs.get(1).copied().flatten()
                        && let Some(wp) = g.producer(w)
                        && g.node(wp).op_type == "DequantizeLinear"
                    {
                        return Some(format!(
                            "the layer it adapts, {}, reads a quantized weight through {}; merging would need dequantize, merge, requantize, which graft does not do",
                            g.label(p),
                            g.label(wp)
                        ));
                    }
                    let tin = target.inputs.first().copied().flatten();
                    if tin != x
                        && let Some(t) = tin
                        && let Some(pp) = g.producer(t)
                        && g.node(pp).op_type == "Pad"
                    {
                        let mode = g
                            .node(pp)
                            .attr("mode")
                            .map(|a| String::from_utf8_lossy(&a.s).to_string())
                            .unwrap_or_else(|| "constant".into());
                        return Some(format!(
                            "the branch reads '{}' but {} reads it through {} (mode {mode}); the branch's zero padding would not match",
                            x.map(|v| g.value(v).name.clone()).unwrap_or_default(),
                            g.label(p),
                            g.label(pp)
                        ));
                    }
                    if tin != x {
                        return Some(format!(
                            "the branch reads '{}' but the layer it joins, {}, reads '{}', so there is no single weight to fold it into",
                            x.map(|v| g.value(v).name.clone()).unwrap_or_default(),
                            g.label(p),
                            tin.map(|v| g.value(v).name.clone()).unwrap_or_default()
                        ));
                    }
                }
            }
            break;
        }
        cur = node.outputs.first().copied().flatten();
    }
    None
}
