//! `fold-linear`: folds linear regions — adapters included — into one MatMul/Gemm per input.
//!
//! Rewrites: a *region* is a set of nodes that are affine along the feature (last) axis
//! (MatMul/Gemm by constant weights, Add/Sub/Mul/Div/Neg by constants, sums of two such values,
//! Identity, inference Dropout, same-type Cast, row-regrouping Reshape) whose intermediate
//! results are used only inside the region. Its result is `y = Σ_s s·M_s + c` over the region's
//! input tensors `s`; the region is rebuilt as one MatMul/Gemm per input (reusing the existing
//! base op, its layout and its weight initializer), a per-feature Mul when only scales are
//! involved, the Adds that combine several inputs, and one bias. This single mechanism folds
//! LoRA, rsLoRA, PiSSA, DoRA (after constant folding of its norm), IA3 (either side), linear
//! adapters before or after a linear, AdapterBias, Hydra, ResLoRA's block shortcut, several
//! adapters on one layer and chains of linears with no nonlinearity between them.
//! Refuses: a region whose rebuilt form would cost more multiply-adds or parameters than what
//! it replaces (so a lone low-rank pair is never turned into a dense matrix); regions whose
//! pieces do not fit together (shape mismatches); weights of element types it cannot merge.
//! Values used outside a region (shared intermediates) end the region there, so their other
//! users never change. A weight initializer that other nodes also read is cloned, never
//! changed in place.
//! Sound because every op in a region is affine in the region's inputs, so the region computes
//! exactly `Σ_s s·M_s + c`; the merge is computed in f64 from the stored weights and rounded
//! once to the weight's element type.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ndarray::{Array1, ArrayD, IxDyn};

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::ir::{Graph, Model, Node, NodeId, ValueId};
use crate::rewrite::consts::{from_f64, from_f64_like, is_const};
use crate::rewrite::form::{Combined, Form, Source, Term};
use crate::rewrite::linear::{LinOp, classify};
use crate::rewrite::region::{Region, regions};
use crate::rewrite::types::{elem_type, last_dim, static_shape};

pub struct FoldLinear;

/// The affine form of every value computed inside a region.
fn forms(
    g: &Graph,
    ops: &HashMap<NodeId, LinOp>,
    region: &Region,
    order: &[NodeId],
) -> std::result::Result<HashMap<ValueId, Form>, String> {
    let mut out: HashMap<ValueId, Form> = HashMap::new();
    // A root's output is rebuilt and kept, so other roots read it as an input, never by
    // expanding its form (that would compute it twice).
    let root_outputs: HashSet<ValueId> = region
        .roots
        .iter()
        .filter_map(|r| g.node(*r).outputs.first().copied().flatten())
        .collect();
    let form_of = |out: &HashMap<ValueId, Form>, v: ValueId| -> Form {
        if root_outputs.contains(&v) {
            return Form::source(v);
        }
        out.get(&v).cloned().unwrap_or_else(|| Form::source(v))
    };
    for &n in order {
        if !region.nodes.contains(&n) {
            continue;
        }
        let y = g.node(n).outputs[0].expect("classified nodes have an output");
        let f = match &ops[&n] {
            LinOp::Dense { input, w, bias, .. } => {
                let load = |w: &crate::rewrite::linear::WeightRef| w.load(g);
                let f = form_of(&out, *input).then_stored(w, &load)?;
                match bias {
                    Some(b) => f.then_shift(b)?,
                    None => f,
                }
            }
            LinOp::Elementwise {
                input,
                scale,
                shift,
            } => {
                let mut f = form_of(&out, *input);
                if let Some(s) = scale {
                    f = f.then_scale(s)?;
                }
                if let Some(c) = shift {
                    f = f.then_shift(c)?;
                }
                f
            }
            LinOp::Sum { a, b, sign } => form_of(&out, *a).plus(form_of(&out, *b), *sign)?,
            LinOp::Pass { input } => form_of(&out, *input),
            LinOp::Lookup { ids, table } => Form::lookup_stored(*ids, table),
            LinOp::Outer { input, w } => form_of(&out, *input).then_dense(w)?,
        };
        out.insert(y, f);
    }
    Ok(out)
}

/// Per-row multiply-adds of a node (dense ops: d_in·d_out; elementwise: output width).
fn node_macs(g: &Graph, n: NodeId, op: &LinOp) -> u64 {
    match op {
        LinOp::Dense { w, bias, .. } => {
            (w.nrows() * w.ncols() + bias.as_ref().map_or(0, |_| w.ncols())) as u64
        }
        LinOp::Pass { .. } => 0,
        LinOp::Lookup { table, .. } => table.ncols() as u64,
        LinOp::Outer { w, .. } => w.ncols() as u64,
        _ => {
            let out = g.node(n).outputs[0].expect("output");
            last_dim(g, out).unwrap_or(1).max(1) as u64
        }
    }
}

/// How one source of a root is rebuilt.
struct SourcePlan {
    source: Source,
    combined: Combined,
    /// The region node whose op (and weight layout) a dense result reuses.
    anchor: Option<NodeId>,
    terms: Vec<Term>,
    /// Other sources with the same matrix and shape: they are added to this one before the
    /// product (`(a + b)·M`, not `a·M + b·M`).
    also: Vec<ValueId>,
}

struct RootPlan {
    root: NodeId,
    output: ValueId,
    sources: Vec<SourcePlan>,
    bias: Option<ArrayD<f64>>,
}

fn width_of(g: &Graph, v: ValueId) -> Option<usize> {
    last_dim(g, v).filter(|&d| d > 0).map(|d| d as usize)
}

fn plan_root(
    g: &Graph,
    ops: &HashMap<NodeId, LinOp>,
    region: &Region,
    root: NodeId,
    form: &Form,
) -> std::result::Result<RootPlan, String> {
    let output = g.node(root).outputs[0].expect("output");
    let mut sources = Vec::new();
    for (&s, terms) in &form.parts {
        let width = match s {
            Source::Value(v) => width_of(g, v),
            Source::OneHot(_) => None,
        };
        let load = |w: &crate::rewrite::linear::WeightRef| w.load(g);
        let combined = Form::combine(terms, width, &load)?;
        let anchor = match combined.dim() {
            Some(dim) => region
                .nodes
                .iter()
                .copied()
                .filter(|n| match (&ops[n], s) {
                    // Any dense op of the region with the merged shape can host the result
                    // (its weight initializer and layout are reused); one reading the source
                    // itself is preferred.
                    (LinOp::Dense { w, .. }, Source::Value(_)) => w.dim() == dim,
                    (LinOp::Lookup { ids, table, .. }, Source::OneHot(v)) => {
                        *ids == v && table.dim() == dim
                    }
                    _ => false,
                })
                .max_by_key(|n| {
                    let reads_source = reads_from(g, ops, *n, s.value());
                    (
                        reads_source,
                        g.node(*n).op_type == "Gemm",
                        std::cmp::Reverse(g.node(*n).order),
                    )
                }),
            _ => None,
        };
        sources.push(SourcePlan {
            source: s,
            combined,
            anchor,
            terms: terms.clone(),
            also: Vec::new(),
        });
    }
    // Sources that reach the same matrix (a residual sum feeding a linear) share one product.
    let mut i = 0;
    while i < sources.len() {
        let mut j = i + 1;
        while j < sources.len() {
            let (a, b) = (&sources[i], &sources[j]);
            let shared = matches!((a.source, b.source), (Source::Value(_), Source::Value(_)))
                && a.combined.dim().is_some()
                && same_combined(&a.combined, &b.combined)
                && static_shape(g, a.source.value()).is_some()
                && static_shape(g, a.source.value()) == static_shape(g, b.source.value());
            if shared {
                let b = sources.remove(j);
                let a = &mut sources[i];
                a.also.push(b.source.value());
                a.also.extend(b.also);
                a.terms.extend(b.terms);
                if a.anchor.is_none() {
                    a.anchor = b.anchor;
                }
            } else {
                j += 1;
            }
        }
        i += 1;
    }
    Ok(RootPlan {
        root,
        output,
        sources,
        bias: form.bias.clone(),
    })
}

/// Whether two merged results are the same matrix (so their sources can share one product).
fn same_combined(a: &Combined, b: &Combined) -> bool {
    match (a, b) {
        (Combined::Dense(x), Combined::Dense(y)) => x == y,
        (
            Combined::Patched {
                base: b1,
                scale: s1,
                pairs: p1,
            },
            Combined::Patched {
                base: b2,
                scale: s2,
                pairs: p2,
            },
        ) => {
            b1.value == b2.value
                && b1.transposed == b2.transposed
                && b1.alpha == b2.alpha
                && s1 == s2
                && p1.len() == p2.len()
                && p1
                    .iter()
                    .zip(p2)
                    .all(|((k1, l1, r1), (k2, l2, r2))| k1 == k2 && l1 == l2 && r1 == r2)
        }
        _ => false,
    }
}

/// Multiply-adds and node count of a rebuilt root; parameters it adds.
fn plan_cost(g: &Graph, p: &RootPlan) -> (u64, usize, u64) {
    // The output's width; when its type is unknown, the merged matrices' (or the bias's) width.
    let width = width_of(g, p.output)
        .or_else(|| {
            p.sources
                .iter()
                .find_map(|s| s.combined.dim().map(|(_, cols)| cols))
        })
        .or_else(|| p.bias.as_ref().map(|b| b.len()))
        .unwrap_or(1) as u64;
    let (mut macs, mut nodes, mut params) = (0u64, 0usize, 0u64);
    let mut producing = 0;
    for s in &p.sources {
        match &s.combined {
            Combined::Scaled(k) if *k == 1.0 => {}
            Combined::Scaled(_) => {
                macs += width;
                nodes += 1;
                params += 1;
            }
            Combined::Diag(v) => {
                macs += v.len() as u64;
                nodes += 1;
                params += v.len() as u64;
            }
            c @ (Combined::Dense(_) | Combined::Patched { .. }) => {
                let (rows, cols) = c.dim().expect("matrix");
                macs += match s.source {
                    Source::Value(_) => (rows * cols) as u64,
                    Source::OneHot(_) => cols as u64,
                };
                macs += (rows * s.also.len()) as u64;
                nodes += 1 + s.also.len();
                params += (rows * cols) as u64;
            }
        }
        producing += 1;
    }
    if producing > 1 {
        macs += width * (producing - 1) as u64;
        nodes += producing - 1;
    }
    if let Some(b) = &p.bias {
        let gemm_bias = p.sources.len() == 1
            && p.sources[0]
                .anchor
                .is_some_and(|a| g.node(a).op_type == "Gemm")
            && row_vector(b);
        if !gemm_bias {
            nodes += 1;
        }
        macs += width;
        params += b.len() as u64;
    }
    (macs, nodes.max(1), params)
}

/// Whether a bias can be Gemm's `C` as a vector: a scalar, a vector, or a `[1, n]` row (Gemm's
/// output is a matrix, so a row broadcasts the same way a vector does).
fn row_vector(b: &ArrayD<f64>) -> bool {
    b.ndim() <= 1 || (b.ndim() == 2 && b.shape()[0] == 1)
}

/// A short description of what a root's branches were, for the report.
fn describe(g: &Graph, p: &RootPlan) -> (String, Option<usize>) {
    let mut kinds = BTreeSet::new();
    let mut rank = None;
    for s in &p.sources {
        let lowrank: Vec<usize> = s
            .terms
            .iter()
            .filter_map(|t| t.rank())
            .filter(|&r| {
                s.terms
                    .iter()
                    .filter_map(|t| t.d_in())
                    .max()
                    .is_some_and(|d| r < d)
            })
            .collect();
        if !lowrank.is_empty() {
            rank = lowrank.iter().copied().min();
            kinds.insert(if lowrank.len() > 1 {
                format!("{} low-rank branches", lowrank.len())
            } else {
                "low-rank branch".to_string()
            });
        }
        if s.terms.iter().any(|t| {
            t.factors
                .iter()
                .any(|f| matches!(f, crate::rewrite::form::Factor::Diag(_)))
        }) {
            kinds.insert("feature scale".into());
        }
        if s.terms.iter().any(|t| t.is_identity()) && s.terms.iter().any(|t| t.has_dense()) {
            kinds.insert("residual linear adapter".into());
        }
        if s.terms.iter().filter(|t| t.has_dense()).count() > 1 && rank.is_none() {
            kinds.insert("parallel linears".into());
        }
        if s.terms.iter().any(|t| {
            t.factors
                .iter()
                .filter(|f| matches!(f, crate::rewrite::form::Factor::Dense(_)))
                .count()
                >= 2
                && t.rank().is_some_and(|r| r >= t.d_in().unwrap_or(0))
        }) {
            kinds.insert("sequential linears".into());
        }
    }
    let _ = g;
    let method = if kinds.is_empty() {
        "affine chain".to_string()
    } else {
        kinds.into_iter().collect::<Vec<_>>().join(" + ")
    };
    (method, rank)
}

/// Emits the nodes of one rebuilt root. Returns the nodes to add.
fn build_root(
    g: &mut Graph,
    p: &RootPlan,
    weight_users: &HashMap<ValueId, usize>,
    removed: &HashMap<NodeId, Node>,
    spare: &mut Vec<ValueId>,
    fidelity: &mut Option<f64>,
    merge_dtype: Option<i32>,
) -> std::result::Result<Vec<Node>, String> {
    let out_name = g.value(p.output).name.clone();
    let out_dtype = elem_type(g, p.output)
        .or_else(|| {
            p.sources.iter().find_map(|s| match s.source {
                Source::Value(v) => elem_type(g, v),
                Source::OneHot(_) => None,
            })
        })
        .unwrap_or(crate::ir::dtype::code::FLOAT);
    let mut nodes: Vec<Node> = Vec::new();
    let mut produced: Vec<ValueId> = Vec::new();
    // The bias goes into the Gemm of the first source built as one (Gemm adds it once).
    let bias_source = p.bias.as_ref().filter(|b| row_vector(b)).and_then(|_| {
        p.sources.iter().position(|s| {
            matches!(s.combined, Combined::Dense(_) | Combined::Patched { .. })
                && s.anchor.is_some_and(|a| removed[&a].op_type == "Gemm")
        })
    });
    let mut bias_done = false;
    let mut flattened = false;
    for (si, s) in p.sources.iter().enumerate() {
        let sv = if s.also.is_empty() {
            s.source.value()
        } else {
            let mut all = vec![s.source.value()];
            all.extend(&s.also);
            crate::rewrite::add_chain(g, &all, &format!("{out_name}_input"), &mut nodes)
        };
        if let Source::OneHot(ids) = s.source {
            if s.combined.dim().is_none() {
                return Err("a lookup table folded into something that is not a table".into());
            }
            let (mut node, table) = match s.anchor {
                Some(a) => {
                    let an = removed[&a].clone();
                    let t = an
                        .inputs
                        .first()
                        .copied()
                        .flatten()
                        .filter(|&w| is_const(g, w));
                    (an, t)
                }
                None => (Node::new("Gather"), None),
            };
            let dtype = table
                .and_then(|w| g.constant(w).map(|t| t.dtype))
                .unwrap_or(out_dtype);
            let ext = table
                .and_then(|w| g.constant(w))
                .is_some_and(|t| t.is_external());
            let tensor = match &s.combined {
                Combined::Patched { base, scale, pairs } if table == Some(base.value) => {
                    stream_patch(g, base, *scale, pairs, dtype, ext, fidelity)?
                }
                c => {
                    let load = |w: &crate::rewrite::linear::WeightRef| w.load(g);
                    let m = c.to_dense(&load)?.expect("matrix");
                    from_f64_like(&m.into_dyn(), dtype, ext).map_err(|e| e.to_string())?
                }
            };
            let w = match table {
                Some(w)
                    if weight_users.get(&w).copied().unwrap_or(0) == 0
                        && !base_of_another(p, si, w)
                        && !g.value(w).is_input
                        && !g.is_output(w) =>
                {
                    g.set_initializer(w, tensor).map_err(|e| e.to_string())?;
                    w
                }
                Some(w) => {
                    let name = format!("{}_folded", g.value(w).name);
                    g.add_initializer(&name, tensor)
                }
                None => g.add_initializer(&format!("{out_name}_table"), tensor),
            };
            let t = g.fresh_value(&format!("{out_name}_lookup"));
            node.order = 0;
            node.op_type = "Gather".into();
            node.attrs.retain(|a| a.name == "axis");
            node.inputs = vec![Some(w), Some(ids)];
            node.outputs = vec![Some(t)];
            nodes.push(node);
            produced.push(t);
            continue;
        }
        let v = match &s.combined {
            Combined::Scaled(k) if *k == 1.0 => sv,
            Combined::Scaled(k) => {
                let c = g.add_initializer(
                    &format!("{out_name}_scale"),
                    from_f64(&ArrayD::from_elem(IxDyn(&[]), *k), out_dtype),
                );
                let t = g.fresh_value(&format!("{out_name}_scaled"));
                let mut n = Node::new("Mul");
                n.inputs = vec![Some(sv), Some(c)];
                n.outputs = vec![Some(t)];
                nodes.push(n);
                t
            }
            Combined::Diag(vec) => {
                let c = g.add_initializer(
                    &format!("{out_name}_scale"),
                    from_f64(&vec.clone().into_dyn(), out_dtype),
                );
                let t = g.fresh_value(&format!("{out_name}_scaled"));
                let mut n = Node::new("Mul");
                n.inputs = vec![Some(sv), Some(c)];
                n.outputs = vec![Some(t)];
                nodes.push(n);
                t
            }
            c @ (Combined::Dense(_) | Combined::Patched { .. }) => {
                let (rows, cols) = c.dim().expect("matrix");
                let (mut node, weight_value, trans_b, gemm) = match s.anchor {
                    Some(a) => {
                        let an = removed[&a].clone();
                        let gemm = an.op_type == "Gemm";
                        let tb = gemm && an.attr_int("transB").unwrap_or(0) != 0;
                        let w = an
                            .inputs
                            .get(1)
                            .copied()
                            .flatten()
                            .filter(|&w| is_const(g, w));
                        (an, w, tb, gemm)
                    }
                    None => (Node::new("MatMul"), None, false, false),
                };
                let stored_dtype = weight_value
                    .and_then(|w| g.constant(w).map(|t| t.dtype))
                    .unwrap_or(out_dtype);
                // `--merge-dtype f32`: a float16/bfloat16 merge is kept in float32 and its linear
                // runs in float32 between two Casts.
                let promote = merge_dtype == Some(crate::ir::dtype::code::FLOAT)
                    && matches!(
                        stored_dtype,
                        crate::ir::dtype::code::FLOAT16 | crate::ir::dtype::code::BFLOAT16
                    );
                let dtype = if promote {
                    crate::ir::dtype::code::FLOAT
                } else {
                    stored_dtype
                };
                let sv = if promote {
                    let (n, t) = cast_node(
                        g,
                        sv,
                        crate::ir::dtype::code::FLOAT,
                        &format!("{out_name}_f32_in"),
                    );
                    nodes.push(n);
                    t
                } else {
                    sv
                };
                let ext = weight_value
                    .and_then(|w| g.constant(w))
                    .is_some_and(|t| t.is_external());
                let tensor = match c {
                    // The anchor's own weight plus low-rank products: stream it block by block.
                    Combined::Patched { base, scale, pairs }
                        if weight_value == Some(base.value)
                            && base.transposed == trans_b
                            && !promote =>
                    {
                        stream_patch(g, base, *scale, pairs, dtype, ext, fidelity)?
                    }
                    _ => {
                        let load = |w: &crate::rewrite::linear::WeightRef| w.load(g);
                        let m = c.to_dense(&load)?.expect("matrix");
                        let stored = if trans_b { m.t() } else { m.view() };
                        if matches!(
                            dtype,
                            crate::ir::dtype::code::FLOAT16 | crate::ir::dtype::code::BFLOAT16
                        ) && let Some(old) =
                            weight_value.and_then(|w| crate::rewrite::consts::const_f64(g, w))
                            && old.shape() == stored.shape()
                        {
                            let rounded = crate::rewrite::consts::to_f64(
                                &from_f64(&stored.to_owned().into_dyn(), dtype),
                                "merged",
                            )
                            .map_err(|e| e.to_string())?;
                            let (mut err, mut delta) = (0.0f64, 0.0f64);
                            for ((r, s), o) in rounded.iter().zip(stored.iter()).zip(old.iter()) {
                                err += (r - s) * (r - s);
                                delta += (s - o) * (s - o);
                            }
                            note_fidelity(fidelity, err, delta);
                        }
                        crate::rewrite::consts::matrix_tensor(stored, dtype, ext)
                            .map_err(|e| e.to_string())?
                    }
                };
                // Overwrite the weight in place only when nothing outside the region reads it.
                let w = match weight_value {
                    Some(w)
                        if weight_users.get(&w).copied().unwrap_or(0) == 0
                            && !base_of_another(p, si, w)
                            && !g.value(w).is_input
                            && !g.is_output(w) =>
                    {
                        g.set_initializer(w, tensor).map_err(|e| e.to_string())?;
                        w
                    }
                    Some(w) => {
                        let name = format!("{}_folded", g.value(w).name);
                        g.add_initializer(&name, tensor)
                    }
                    None => g.add_initializer(&format!("{out_name}_weight"), tensor),
                };
                let t = g.fresh_value(&format!("{out_name}_linear"));
                node.order = 0;
                node.outputs = vec![Some(t)];
                node.captures.clear();
                if gemm {
                    node.attrs.retain(|a| a.name != "alpha" && a.name != "beta");
                    let mut input = sv;
                    let rank2 = static_shape(g, s.source.value()).is_some_and(|sh| sh.len() == 2);
                    if !rank2 {
                        flattened = true;
                        // Gemm needs a matrix: flatten the rows, multiply, restore below.
                        let (r, flat) =
                            reshape_node(g, sv, &[-1, rows as i64], &format!("{out_name}_2d"));
                        nodes.push(r);
                        input = flat;
                    }
                    let old_bias = node.inputs.get(2).copied().flatten();
                    node.inputs = vec![Some(input), Some(w)];
                    if bias_source == Some(si)
                        && let Some(b) = &p.bias
                        && row_vector(b)
                    {
                        let bv: Array1<f64> = if b.ndim() == 0 {
                            Array1::from_elem(cols, b.iter().next().copied().unwrap_or(0.0))
                        } else {
                            Array1::from_iter(b.iter().copied())
                        };
                        let bname = old_bias;
                        let bt = from_f64(&bv.into_dyn(), dtype);
                        let c = match bname {
                            Some(c)
                                if weight_users.get(&c).copied().unwrap_or(0) == 0
                                    && !g.value(c).is_input =>
                            {
                                g.set_initializer(c, bt).map_err(|e| e.to_string())?;
                                c
                            }
                            _ => g.add_initializer(&format!("{out_name}_bias"), bt),
                        };
                        node.inputs.push(Some(c));
                        bias_done = true;
                    }
                } else {
                    node.op_type = "MatMul".into();
                    node.attrs.clear();
                    node.inputs = vec![Some(sv), Some(w)];
                }
                nodes.push(node);
                let t = if promote {
                    let (n, back) = cast_node(g, t, stored_dtype, &format!("{out_name}_from_f32"));
                    nodes.push(n);
                    back
                } else {
                    t
                };
                if flattened {
                    // Restore the source's rows right away, before other sources are added.
                    let mut shape = static_shape(g, s.source.value())
                        .ok_or("a Gemm needs flattened rows but the input's shape is unknown")?;
                    *shape.last_mut().ok_or("rank-0 input")? = cols as i64;
                    flattened = false;
                    let (n, r) = reshape_node(g, t, &shape, &format!("{out_name}_rows"));
                    nodes.push(n);
                    r
                } else {
                    t
                }
            }
        };
        produced.push(v);
    }
    // Sources may group rows differently (a flattened Gemm input next to a residual of the
    // original rank): bring each to the root's shape before adding when the element counts
    // agree, so the sum does not broadcast two layouts of the same rows against each other.
    let mut all_at_root_shape = false;
    if produced.len() > 1
        && let Some(out_shape) = static_shape(g, p.output)
        && let Some(width) = width_of(g, p.output)
    {
        all_at_root_shape = true;
        let total: i64 = out_shape.iter().product();
        for (i, s) in p.sources.iter().enumerate() {
            let Some(mut sh) = static_shape(g, s.source.value()) else {
                all_at_root_shape = false;
                continue;
            };
            match s.source {
                Source::Value(_) => {
                    if let Some(last) = sh.last_mut() {
                        *last = width as i64;
                    }
                }
                Source::OneHot(_) => sh.push(width as i64),
            }
            if sh != out_shape && sh.iter().product::<i64>() == total {
                let (n, r) =
                    reshape_node(g, produced[i], &out_shape, &format!("{out_name}_regrouped"));
                nodes.push(n);
                produced[i] = r;
            } else if sh != out_shape {
                all_at_root_shape = false;
            }
        }
    }
    // Combine sources.
    let mut acc = crate::rewrite::add_chain(g, &produced, &out_name, &mut nodes);
    if let Some(b) = &p.bias
        && !bias_done
    {
        // Reuse a bias initializer the region no longer needs (same shape and type), so the
        // model keeps its names where it can.
        let t = from_f64(b, out_dtype);
        let c = match spare.iter().position(|&c| {
            g.constant(c)
                .is_some_and(|old| old.dims == t.dims && old.dtype == t.dtype)
        }) {
            Some(i) => {
                let c = spare.remove(i);
                g.set_initializer(c, t).map_err(|e| e.to_string())?;
                c
            }
            None => g.add_initializer(&format!("{out_name}_bias"), t),
        };
        let t = g.fresh_value(&format!("{out_name}_biased"));
        let mut n = Node::new("Add");
        n.inputs = vec![Some(acc), Some(c)];
        n.outputs = vec![Some(t)];
        nodes.push(n);
        acc = t;
    }
    // Restore the root's shape when the region regrouped rows.
    // (When shapes are unknown no rows were regrouped: the caller refuses such regions.)
    let natural = natural_shape(g, p);
    if let Some(shape) =
        static_shape(g, p.output).filter(|w| natural.as_ref() != Some(w) && !all_at_root_shape)
    {
        let (n, t) = reshape_node(g, acc, &shape, &format!("{out_name}_reshaped"));
        nodes.push(n);
        acc = t;
    }
    crate::rewrite::write_output(&mut nodes, 0, acc, p.output, &removed[&p.root].name);
    Ok(nodes)
}

/// Whether another source of the plan still reads weight `w` lazily (as the base of its
/// low-rank patch): then `w` must not be overwritten in place before that source is built.
fn base_of_another(p: &RootPlan, me: usize, w: ValueId) -> bool {
    p.sources.iter().enumerate().any(|(j, o)| {
        j != me && matches!(&o.combined, Combined::Patched { base, .. } if base.value == w)
    })
}

/// Keeps the worst delta fidelity seen: ‖rounded − exact‖ / ‖exact − original‖.
fn note_fidelity(fidelity: &mut Option<f64>, err: f64, delta: f64) {
    if delta > 0.0 {
        let f = (err / delta).sqrt();
        *fidelity = Some(fidelity.map_or(f, |x: f64| x.max(f)));
    }
}

/// Low-rank products `s·L·R` added to a base weight.
type LowRankPairs = Vec<(f64, ndarray::Array2<f64>, ndarray::Array2<f64>)>;

/// `k·W + Σ s·L·R` in W's stored layout, computed a block of rows at a time.
struct PatchRows {
    base: crate::ir::Tensor,
    name: String,
    pairs: Arc<LowRankPairs>,
    k: f64,
    transposed: bool,
    cols: usize,
    dtype: i32,
}

impl PatchRows {
    /// Rows `r0..r1`, encoded; with `fidelity`, also the squared rounding error and the squared
    /// change (for the delta fidelity of low-precision weights).
    fn rows(
        &self,
        r0: usize,
        r1: usize,
        fidelity: bool,
    ) -> std::result::Result<(Vec<u8>, f64, f64), String> {
        let esize =
            crate::ir::dtype::bits(self.base.dtype).ok_or("unknown element type")? as usize / 8;
        let raw = self
            .base
            .sample(
                &self.name,
                (r0 * self.cols * esize) as u64,
                (r1 - r0) * self.cols * esize,
            )
            .map_err(|e| e.to_string())?;
        if self.dtype == crate::ir::dtype::code::FLOAT && !fidelity {
            return self.rows_f32(&raw, r0, r1).map(|b| (b, 0.0, 0.0));
        }
        let orig = crate::rewrite::consts::decode_f64(&raw, self.base.dtype)
            .ok_or("cannot read the weight")?;
        let mut acc = ndarray::Array2::from_shape_vec((r1 - r0, self.cols), orig.clone())
            .map_err(|e| e.to_string())?;
        if self.k != 1.0 {
            acc.mapv_inplace(|x| x * self.k);
        }
        for (s, l, r) in self.pairs.iter() {
            if self.transposed {
                // Stored rows are output features: rows r0..r1 of (L·R)ᵀ = R[:, r0..r1]ᵀ·Lᵀ.
                let rs = r.slice(ndarray::s![.., r0..r1]);
                ndarray::linalg::general_mat_mul(*s, &rs.t(), &l.t(), 1.0, &mut acc);
            } else {
                let ls = l.slice(ndarray::s![r0..r1, ..]);
                ndarray::linalg::general_mat_mul(*s, &ls, r, 1.0, &mut acc);
            }
        }
        let vals = acc.as_slice().ok_or("non-contiguous block")?;
        let mut bytes = Vec::with_capacity(vals.len() * esize);
        crate::rewrite::consts::encode_f64(vals, self.dtype, &mut bytes);
        let (mut e2, mut d2) = (0.0, 0.0);
        if fidelity {
            let rounded =
                crate::rewrite::consts::decode_f64(&bytes, self.dtype).unwrap_or_default();
            for ((r, e), o) in rounded.iter().zip(vals).zip(&orig) {
                e2 += (r - e) * (r - e);
                d2 += (e - o) * (e - o);
            }
        }
        Ok((bytes, e2, d2))
    }
}

impl PatchRows {
    /// The float32 path: `k·W + Σ s·L·R` computed in f32 (ADAPTERS.md §12.1: merges in f32;
    /// the f32 result is what is stored either way), without an f64 copy of the rows.
    fn rows_f32(&self, raw: &[u8], r0: usize, r1: usize) -> std::result::Result<Vec<u8>, String> {
        let vals: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut acc = ndarray::Array2::from_shape_vec((r1 - r0, self.cols), vals)
            .map_err(|e| e.to_string())?;
        if self.k != 1.0 {
            let k = self.k as f32;
            acc.mapv_inplace(|x| x * k);
        }
        for (s, l, r) in self.pairs.iter() {
            if self.transposed {
                let rs = r.slice(ndarray::s![.., r0..r1]).mapv(|x| x as f32);
                let lt = l.t().mapv(|x| x as f32);
                ndarray::linalg::general_mat_mul(*s as f32, &rs.t(), &lt, 1.0, &mut acc);
            } else {
                let ls = l.slice(ndarray::s![r0..r1, ..]).mapv(|x| x as f32);
                let r32 = r.mapv(|x| x as f32);
                ndarray::linalg::general_mat_mul(*s as f32, &ls, &r32, 1.0, &mut acc);
            }
        }
        let mut bytes = Vec::with_capacity(acc.len() * 4);
        for v in acc.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Ok(bytes)
    }
}

/// Merges `k·W + Σ s·L·R` (in W's stored layout) without holding the full matrix: a large
/// float32/float64 result becomes rows computed on demand (saving streams them straight into
/// the output); a float16/bfloat16 one is computed now, a block at a time on all cores, to
/// measure its delta fidelity; small ones stay in memory.
fn stream_patch(
    g: &Graph,
    base: &crate::rewrite::linear::WeightRef,
    scale: f64,
    pairs: &[(f64, ndarray::Array2<f64>, ndarray::Array2<f64>)],
    dtype: i32,
    external: bool,
    fidelity: &mut Option<f64>,
) -> std::result::Result<crate::ir::Tensor, String> {
    use std::io::Write;
    let name = g.value(base.value).name.clone();
    let t = g
        .constant(base.value)
        .ok_or("the base weight disappeared")?;
    if t.dims.len() != 2 || t.dtype != dtype {
        return Err("the base weight is not a matrix of the merged type".into());
    }
    let (srows, scols) = (t.dims[0] as usize, t.dims[1] as usize);
    let esize = crate::ir::dtype::bits(t.dtype).ok_or("unknown element type")? as usize / 8;
    let low_precision = matches!(
        dtype,
        crate::ir::dtype::code::FLOAT16 | crate::ir::dtype::code::BFLOAT16
    );
    let len = (srows * scols * esize) as u64;
    let patch = PatchRows {
        base: t.clone(),
        name,
        pairs: Arc::new(pairs.to_vec()),
        k: scale * base.alpha,
        transposed: base.transposed,
        cols: scols,
        dtype,
    };
    let large = external || len as usize > crate::ir::Tensor::SPILL_BYTES;
    if large && !low_precision {
        // Saving asks for a few MiB of rows at a time: compute them on all cores.
        let rows_of = crate::ir::tensor::RowGen(Arc::new(move |r0, r1| {
            use rayon::prelude::*;
            let parts = rayon::current_num_threads().max(1);
            let step = (r1 - r0).div_ceil(parts).max(1);
            let blocks = (r0..r1)
                .step_by(step)
                .collect::<Vec<_>>()
                .par_iter()
                .map(|&a| patch.rows(a, (a + step).min(r1), false).map(|(b, _, _)| b))
                .collect::<std::result::Result<Vec<_>, String>>()
                .map_err(crate::Error::graph)?;
            Ok(blocks.concat())
        }));
        return Ok(crate::ir::Tensor {
            dtype,
            dims: t.dims.clone(),
            data: crate::ir::TensorData::Rows {
                rows: srows,
                row_bytes: scols * esize,
                rows_of,
                external,
            },
        });
    }
    let mut memory: Vec<u8> = Vec::new();
    let mut out = if large {
        let dir = crate::ir::Tensor::spill_dir();
        let file = tempfile::tempfile_in(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Some(std::io::BufWriter::with_capacity(1 << 22, file))
    } else {
        None
    };
    let block = (1usize << 22) / (scols.max(1) * 8) + 1;
    let (mut err, mut delta_sq) = (0.0f64, 0.0f64);
    // Blocks run on all cores a batch at a time and are written in order.
    use rayon::prelude::*;
    let starts: Vec<usize> = (0..srows).step_by(block).collect();
    for batch in starts.chunks(2 * rayon::current_num_threads().max(1)) {
        let done = batch
            .par_iter()
            .map(|&r0| patch.rows(r0, (r0 + block).min(srows), low_precision))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        for (bytes, e2, d2) in done {
            err += e2;
            delta_sq += d2;
            match out.as_mut() {
                Some(w) => w.write_all(&bytes).map_err(|e| e.to_string())?,
                None => memory.extend_from_slice(&bytes),
            }
        }
    }
    if low_precision {
        note_fidelity(fidelity, err, delta_sq);
    }
    match out {
        Some(w) => {
            let file = w.into_inner().map_err(|e| e.to_string())?;
            Ok(crate::ir::Tensor::spilled(
                dtype,
                t.dims.clone(),
                file,
                len,
                external,
            ))
        }
        None => Ok(crate::ir::Tensor::from_raw(dtype, t.dims.clone(), memory)),
    }
}

/// A Reshape of `input` to the constant `shape`, writing a fresh value named after `hint`.
fn reshape_node(g: &mut Graph, input: ValueId, shape: &[i64], hint: &str) -> (Node, ValueId) {
    let bytes = shape.iter().flat_map(|x| x.to_le_bytes()).collect();
    let t = crate::ir::Tensor::from_raw(
        crate::ir::dtype::code::INT64,
        vec![shape.len() as i64],
        bytes,
    );
    let shp = g.add_initializer(&format!("{hint}_shape"), t);
    let out = g.fresh_value(hint);
    let mut n = Node::new("Reshape");
    n.inputs = vec![Some(input), Some(shp)];
    n.outputs = vec![Some(out)];
    (n, out)
}

/// `Cast(input, to)` writing a fresh value named after `hint`.
fn cast_node(g: &mut Graph, input: ValueId, to: i32, hint: &str) -> (Node, ValueId) {
    let out = g.fresh_value(hint);
    let mut n = Node::new("Cast");
    n.inputs = vec![Some(input)];
    n.outputs = vec![Some(out)];
    n.attrs = vec![crate::rewrite::int_attr("to", i64::from(to))];
    (n, out)
}

/// The weight initializer a MatMul/Gemm anchor reads.
fn an_weight(g: &Graph, a: NodeId) -> Option<ValueId> {
    g.node(a)
        .inputs
        .get(1)
        .copied()
        .flatten()
        .filter(|&w| is_const(g, w))
}

/// The static shape the rebuilt root naturally has (sources' rows, output features, broadcast
/// with the bias), when known.
fn natural_shape(g: &Graph, p: &RootPlan) -> Option<Vec<i64>> {
    let mut shape: Option<Vec<i64>> = None;
    let width = width_of(g, p.output)? as i64;
    for s in &p.sources {
        let mut sh = static_shape(g, s.source.value())?;
        match s.source {
            Source::Value(_) => *sh.last_mut()? = width,
            Source::OneHot(_) => sh.push(width),
        }
        shape = Some(match shape {
            None => sh,
            Some(prev) => broadcast_shapes(&prev, &sh)?,
        });
    }
    if let Some(b) = &p.bias {
        let bs: Vec<i64> = b.shape().iter().map(|&d| d as i64).collect();
        shape = Some(match shape {
            None => bs,
            Some(prev) => broadcast_shapes(&prev, &bs)?,
        });
    }
    shape
}

fn broadcast_shapes(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let r = a.len().max(b.len());
    let get = |s: &[i64], i: usize| {
        if i + s.len() < r {
            1
        } else {
            s[i + s.len() - r]
        }
    };
    (0..r)
        .map(|i| {
            let (x, y) = (get(a, i), get(b, i));
            if x == y || y == 1 {
                Some(x)
            } else if x == 1 {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

/// One anchor hosts one result: later claims build a fresh node instead.
fn dedupe_anchors(plans: &mut [RootPlan]) {
    let mut claimed = HashSet::new();
    for p in plans.iter_mut() {
        for src in p.sources.iter_mut() {
            if let Some(a) = src.anchor
                && !claimed.insert(a)
            {
                src.anchor = None;
            }
        }
    }
}

/// Whether dense node `n` reads `source`, directly or through a few non-dense affine nodes.
fn reads_from(g: &Graph, ops: &HashMap<NodeId, LinOp>, n: NodeId, source: ValueId) -> bool {
    let mut frontier: Vec<ValueId> = ops[&n].inputs();
    for _ in 0..4 {
        if frontier.contains(&source) {
            return true;
        }
        let mut next = Vec::new();
        for v in frontier {
            if let Some(p) = g.producer(v)
                && let Some(op) = ops.get(&p)
                && !matches!(op, LinOp::Dense { .. } | LinOp::Lookup { .. })
            {
                next.extend(op.inputs());
            }
        }
        frontier = next;
    }
    false
}

/// Moves the terms of inputs that feed only low-rank branches onto the region's main input,
/// scaled by the ratio of their mean calibration norms (`x_k ≈ (n̄_k / n̄_main)·x_main`).
/// Returns the new form and a note per substitution.
fn substitute(g: &Graph, form: &Form, norms: &HashMap<String, f64>) -> (Form, Vec<String>) {
    let mut f = form.clone();
    let dense_size = |terms: &[Term]| -> usize {
        terms
            .iter()
            .filter(|t| t.rank().is_none() && t.has_dense())
            .map(|t| t.d_in().unwrap_or(0) * t.d_out().unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    let Some(main) = f
        .parts
        .iter()
        .filter(|(s, _)| matches!(s, Source::Value(_)))
        .max_by_key(|(_, t)| dense_size(t))
        .map(|(s, _)| *s)
    else {
        return (f, vec![]);
    };
    let main_name = g.value(main.value()).name.clone();
    let Some(&main_norm) = norms.get(&main_name).filter(|n| **n > 0.0) else {
        return (f, vec![]);
    };
    let main_width = Form::dims(&f.parts[&main]).0;

    let mut notes = Vec::new();
    let others: Vec<Source> = f.parts.keys().copied().filter(|s| *s != main).collect();
    for s in others {
        let Source::Value(v) = s else { continue };
        let terms = &f.parts[&s];
        let low_rank_only = terms
            .iter()
            .all(|t| t.rank().is_some_and(|r| t.d_in().is_some_and(|d| r < d)));
        let name = &g.value(v).name;
        let (Some(&n), true) = (norms.get(name), low_rank_only) else {
            continue;
        };
        if Form::dims(terms).0 != main_width {
            continue;
        }
        let alpha = n / main_norm;
        let mut moved = f.parts.remove(&s).expect("present");
        for t in moved.iter_mut() {
            t.scale *= alpha;
        }
        f.parts.get_mut(&main).expect("main").extend(moved);
        notes.push(format!("'{name}' ≈ {alpha:.4}·'{main_name}'"));
    }
    (f, notes)
}

impl Pass for FoldLinear {
    fn name(&self) -> &'static str {
        "fold-linear"
    }
    fn summary(&self) -> &'static str {
        "fold linear regions (LoRA, DoRA, IA3, linear adapters, chains) into one MatMul/Gemm per input"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<usize> {
        fold_linear(model, cx)
    }
}

/// Runs the fold; returns the number of rewritten regions and what each did.
pub fn fold_linear(model: &mut Model, cx: &mut PassContext) -> Result<usize> {
    let opset = model.opset("").unwrap_or(1);
    let order = model.graph.topo_order()?;
    let mut ops: HashMap<NodeId, LinOp> = HashMap::new();
    for &n in &order {
        if let Some(op) = classify(&model.graph, n) {
            ops.insert(n, op);
        }
    }
    let inputs: HashMap<NodeId, Vec<ValueId>> =
        ops.iter().map(|(n, op)| (*n, op.inputs())).collect();
    let regions = regions(&model.graph, &inputs, &order, &HashSet::new());
    let mut done = 0;
    for region in regions {
        let g = &model.graph;
        let all_forms = match forms(g, &ops, &region, &order) {
            Ok(f) => f,
            Err(e) => {
                cx.refuse(
                    g.label(region.roots[0]),
                    format!("its linear pieces do not fit together: {e}"),
                );
                continue;
            }
        };
        let mut plans = Vec::new();
        let mut failed = None;
        for &r in &region.roots {
            let y = g.node(r).outputs[0].expect("output");
            match plan_root(g, &ops, &region, r, &all_forms[&y]) {
                Ok(p) => plans.push(p),
                Err(e) => failed = Some(e),
            }
        }
        dedupe_anchors(&mut plans);
        if let Some(e) = failed {
            cx.refuse(
                g.label(region.roots[0]),
                format!("cannot combine its branches: {e}"),
            );
            continue;
        }
        // Shapes: a region that regrouped rows needs static shapes to be rebuilt.
        let regroups = region.nodes.iter().any(|n| {
            matches!(
                g.node(*n).op_type.as_str(),
                "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze"
            )
        });
        if regroups && plans.iter().any(|p| static_shape(g, p.output).is_none()) {
            cx.refuse(g.label(region.roots[0]), "it reshapes rows and its output shape is not known statically (run shape-infer first)");
            continue;
        }
        // Cost before: every node of the region; parameters: constants only the region reads.
        let macs_before: u64 = region.nodes.iter().map(|n| node_macs(g, *n, &ops[n])).sum();
        let nodes_before = region.nodes.len();
        let mut region_consts: BTreeSet<ValueId> = BTreeSet::new();
        for &n in &region.nodes {
            for v in g.node(n).inputs.iter().flatten() {
                if is_const(g, *v) {
                    region_consts.insert(*v);
                }
            }
        }
        // Reads of each constant from outside the region.
        let mut outside_users: HashMap<ValueId, usize> = HashMap::new();
        for &c in &region_consts {
            let k = g
                .consumer_nodes(c)
                .iter()
                .filter(|n| !region.nodes.contains(n))
                .count()
                + usize::from(g.is_output(c));
            outside_users.insert(c, k);
        }
        let anchors: HashSet<ValueId> = plans
            .iter()
            .flat_map(|p| {
                p.sources
                    .iter()
                    .filter_map(|s| s.anchor.and_then(|a| an_weight(g, a)))
            })
            .collect();
        let params_before: u64 = region_consts
            .iter()
            .filter(|c| outside_users[c] == 0 || anchors.contains(c))
            .map(|c| g.constant(*c).map_or(0, |t| t.numel()))
            .sum();
        let (mut macs_after, mut nodes_after, mut params_after) = (0u64, 0usize, 0u64);
        for p in &plans {
            let (m, k, q) = plan_cost(g, p);
            macs_after += m;
            nodes_after += k;
            params_after += q;
        }
        let mut better = macs_after <= macs_before
            && params_after <= params_before
            && (macs_after < macs_before || nodes_after < nodes_before);
        let label = g.label(region.roots[0]);
        // With calibration norms, an input that only feeds low-rank branches (a ResLoRA
        // shortcut from an earlier block) can be approximated by the main input scaled by the
        // ratio of their mean norms; the merge is then approximate and reported as such.
        let mut approximations: Vec<String> = Vec::new();
        if !better && let Some(norms) = cx.calibration.clone() {
            let mut new_plans = Vec::new();
            let mut notes = Vec::new();
            for &r in &region.roots {
                let y = g.node(r).outputs[0].expect("output");
                let (f, n) = substitute(g, &all_forms[&y], &norms);
                notes.extend(n);
                match plan_root(g, &ops, &region, r, &f) {
                    Ok(p) => new_plans.push(p),
                    Err(_) => break,
                }
            }
            if !notes.is_empty() && new_plans.len() == region.roots.len() {
                let (mut m2, mut k2, mut q2) = (0u64, 0usize, 0u64);
                for p in &new_plans {
                    let (m, k, q) = plan_cost(g, p);
                    m2 += m;
                    k2 += k;
                    q2 += q;
                }
                if m2 <= macs_before
                    && q2 <= params_before
                    && (m2 < macs_before || k2 < nodes_before)
                {
                    plans = new_plans;
                    dedupe_anchors(&mut plans);
                    macs_after = m2;
                    nodes_after = k2;
                    params_after = q2;
                    better = true;
                    approximations = notes;
                }
            }
        }
        if !better {
            if macs_after > macs_before || params_after > params_before {
                let (method, _) = describe(g, &plans[0]);
                if method.contains("low-rank") || method.contains("adapter") {
                    cx.refuse(
                        label,
                        format!(
                            "folding its {method} would cost more than it saves ({macs_before} -> {macs_after} multiply-adds per row, {params_before} -> {params_after} parameters): there is no dense weight on the same input to fold it into"
                        ),
                    );
                }
            }
            continue;
        }
        // Rewrite: remove the region, then add the rebuilt roots.
        let descriptions: Vec<(String, Option<usize>, String)> = plans
            .iter()
            .map(|p| {
                let (mut m, r) = describe(g, p);
                if !approximations.is_empty() {
                    m = format!("{m} (approximate: {})", approximations.join("; "));
                }
                let target = p
                    .sources
                    .iter()
                    .find_map(|s| s.anchor)
                    .map(|a| g.label(a))
                    .unwrap_or_else(|| g.label(p.root));
                (m, r, target)
            })
            .collect();
        let backup = model.graph.clone();
        let g = &mut model.graph;
        let removed: HashMap<NodeId, Node> = region
            .nodes
            .iter()
            .map(|&n| (n, g.remove_node(n)))
            .collect();
        let anchor_inputs: HashSet<ValueId> = plans
            .iter()
            .flat_map(|p| p.sources.iter().filter_map(|s| s.anchor))
            .flat_map(|a| {
                removed[&a]
                    .inputs
                    .iter()
                    .flatten()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut spare: Vec<ValueId> = region_consts
            .iter()
            .copied()
            .filter(|c| {
                outside_users[c] == 0
                    && !anchors.contains(c)
                    && !anchor_inputs.contains(c)
                    && !g.value(*c).is_input
                    && !g.is_output(*c)
                    && g.constant(*c).is_some_and(|t| t.dims.len() == 1)
            })
            .collect();
        let mut new_nodes = Vec::new();
        let mut ok = true;
        let mut fidelity: Option<f64> = None;
        for p in &plans {
            match build_root(
                g,
                p,
                &outside_users,
                &removed,
                &mut spare,
                &mut fidelity,
                cx.merge_dtype,
            ) {
                Ok(ns) => new_nodes.extend(ns),
                Err(e) => {
                    cx.refuse(label.clone(), format!("rebuild failed: {e}"));
                    ok = false;
                    break;
                }
            }
        }
        let mut added = Vec::new();
        if ok {
            for mut n in new_nodes {
                if n.order == 0 {
                    n.order = removed.values().map(|r| r.order).max().unwrap_or(0);
                }
                match g.add_node(n) {
                    Ok(id) => added.push(id),
                    Err(e) => {
                        cx.refuse(label.clone(), format!("rebuild failed: {e}"));
                        ok = false;
                        break;
                    }
                }
            }
        }
        if !ok {
            model.graph = backup;
            continue;
        }
        let sources: Vec<(ValueId, Option<u64>)> = plans
            .iter()
            .flat_map(|p| p.sources.iter())
            .map(|s| match s.source {
                Source::Value(v) => (v, None),
                Source::OneHot(v) => (
                    v,
                    Some(match &s.combined {
                        Combined::Dense(m) => m.nrows() as u64,
                        _ => 1,
                    }),
                ),
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let outputs: Vec<ValueId> = plans.iter().map(|p| p.output).collect();
        let old_nodes: Vec<NodeId> = region.nodes.iter().copied().collect();
        cx.check_rewrite(
            &label,
            &backup,
            &old_nodes,
            &model.graph,
            &added,
            &sources,
            &outputs,
            opset,
        )?;
        done += 1;
        for (method, rank, target) in descriptions {
            cx.rewrote(crate::driver::Rewrite {
                pass: String::new(),
                method,
                target,
                rank,
                parameters_removed: params_before as i64 - params_after as i64,
                macs_before,
                macs_after,
                nodes_removed: nodes_before.saturating_sub(nodes_after),
                delta_fidelity: fidelity,
            });
        }
    }
    Ok(done)
}
