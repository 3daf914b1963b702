//! Classifying nodes as affine maps along the last (feature) axis of one or two non-constant
//! inputs. This is what lets adapter folding be one general mechanism instead of a matcher per
//! adapter method: LoRA, DoRA, IA3, linear adapters, Hydra, AdapterBias, … are all built from
//! these pieces.

use std::sync::Arc;

use ndarray::{Array2, ArrayD, Ix2};

use super::consts::{const_f64, is_const};
use super::form::per_feature;
use super::types::{elem_type, last_dim, static_shape};
use crate::ir::{Graph, NodeId, ValueId};

/// A constant weight read lazily (multi-GB models keep their weights on disk until a region
/// that uses them is folded).
#[derive(Clone, Debug)]
pub struct WeightRef {
    pub value: ValueId,
    /// `[d_in, d_out]` in x·M form.
    pub rows: usize,
    pub cols: usize,
    /// Stored as `[d_out, d_in]` (Gemm transB=1).
    pub transposed: bool,
    pub alpha: f64,
}

impl WeightRef {
    pub fn dim(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    pub fn nrows(&self) -> usize {
        self.rows
    }
    pub fn ncols(&self) -> usize {
        self.cols
    }
    /// The weight in x·M form, as f64.
    pub fn load(&self, g: &Graph) -> Result<Arc<Array2<f64>>, String> {
        let a = const_f64(g, self.value).ok_or("the weight cannot be read")?;
        let mut w = a.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?;
        if self.transposed {
            w = w.reversed_axes().as_standard_layout().to_owned();
        }
        if self.alpha != 1.0 {
            w.mapv_inplace(|x| x * self.alpha);
        }
        Ok(Arc::new(w))
    }
    fn of(g: &Graph, v: ValueId, transposed: bool, alpha: f64) -> Option<Self> {
        let t = g.constant(v)?;
        if t.dims.len() != 2 || !super::consts::is_mergeable_float(t.dtype) {
            return None;
        }
        let (a, b) = (t.dims[0].max(0) as usize, t.dims[1].max(0) as usize);
        let (rows, cols) = if transposed { (b, a) } else { (a, b) };
        Some(WeightRef {
            value: v,
            rows,
            cols,
            transposed,
            alpha,
        })
    }
}

/// How a node's output depends on its non-constant input(s).
#[derive(Clone, Debug)]
pub enum LinOp {
    /// `out = in · W + bias` (MatMul or Gemm by a constant); `w` in x·M form `[d_in, d_out]`.
    Dense {
        input: ValueId,
        w: WeightRef,
        bias: Option<ArrayD<f64>>,
    },
    /// `out = in ⊙ scale + shift` (Mul, Div, Add, Sub, Neg by constants).
    Elementwise {
        input: ValueId,
        scale: Option<ArrayD<f64>>,
        shift: Option<ArrayD<f64>>,
    },
    /// `out = in · w` for a one-feature input and a constant feature vector (outer product).
    Outer { input: ValueId, w: Arc<Array2<f64>> },
    /// `out = a + sign · b`.
    Sum { a: ValueId, b: ValueId, sign: f64 },
    /// `out = in` (Identity, inference Dropout, Cast to the same type, a Reshape that only
    /// regroups rows).
    Pass { input: ValueId },
    /// `out = Gather(table, ids)` along axis 0 from a constant `[V, d]` table.
    Lookup { ids: ValueId, table: WeightRef },
}

impl LinOp {
    /// The non-constant inputs.
    pub fn inputs(&self) -> Vec<ValueId> {
        match self {
            LinOp::Dense { input, .. }
            | LinOp::Outer { input, .. }
            | LinOp::Elementwise { input, .. }
            | LinOp::Pass { input } => vec![*input],
            LinOp::Sum { a, b, .. } => vec![*a, *b],
            LinOp::Lookup { ids, .. } => vec![*ids],
        }
    }
}

fn is_standard(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// Whether `v` holds real numbers graft can merge (when its type is known).
fn float_or_unknown(g: &Graph, v: ValueId) -> bool {
    elem_type(g, v).is_none_or(super::consts::is_mergeable_float)
}

/// A constant scale/shift must not grow the rank of the value it applies to (that would change
/// the leading shape of the result); when the value's rank is unknown only vectors qualify.
fn fits_rank(g: &Graph, x: ValueId, c: &ArrayD<f64>) -> bool {
    match super::types::shape(g, x) {
        Some(s) => {
            c.ndim() <= s.len()
                && s.last().is_some_and(|d| match d {
                    super::types::Dim::Known(n) => {
                        let last = *c.shape().last().unwrap_or(&1);
                        last == 1 || last as i64 == *n
                    }
                    _ => true,
                })
        }
        None => c.ndim() <= 1,
    }
}

/// Classifies node `n`, or `None` when it is not affine in the sense above.
pub fn classify(g: &Graph, n: NodeId) -> Option<LinOp> {
    let node = g.node(n);
    if !is_standard(&node.domain) {
        return None;
    }
    let out = node.outputs.first().copied().flatten()?;
    if !float_or_unknown(g, out) {
        return None;
    }
    let input = |i: usize| node.inputs.get(i).copied().flatten();
    let konst = |v: ValueId| is_const(g, v);
    match node.op_type.as_str() {
        "MatMul" => {
            let (a, b) = (input(0)?, input(1)?);
            if konst(a) || !konst(b) {
                return None;
            }
            // A rank-1 left operand drops an axis; only accept ranks we know are >= 2.
            if super::types::shape(g, a).is_none_or(|s| s.len() < 2) {
                return None;
            }
            Some(LinOp::Dense {
                input: a,
                w: WeightRef::of(g, b, false, 1.0)?,
                bias: None,
            })
        }
        "Gemm" => {
            let (a, b) = (input(0)?, input(1)?);
            if konst(a) || !konst(b) || node.attr_int("transA").unwrap_or(0) != 0 {
                return None;
            }
            let alpha = node.attr_float("alpha").unwrap_or(1.0) as f64;
            let beta = node.attr_float("beta").unwrap_or(1.0) as f64;
            let w = WeightRef::of(g, b, node.attr_int("transB").unwrap_or(0) != 0, alpha)?;
            let bias = match input(2) {
                None => None,
                Some(c) if konst(c) => Some(const_f64(g, c)?.mapv(|x| x * beta)),
                Some(_) => return None,
            };
            Some(LinOp::Dense { input: a, w, bias })
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (input(0)?, input(1)?);
            let sign = if node.op_type == "Sub" { -1.0 } else { 1.0 };
            match (konst(a), konst(b)) {
                (false, false) => {
                    if matches!(node.op_type.as_str(), "Add" | "Sub") {
                        Some(LinOp::Sum { a, b, sign })
                    } else {
                        None
                    }
                }
                (true, true) => None,
                (ka, _) => {
                    let (x, c) = if ka { (b, a) } else { (a, b) };
                    // The scalar tail of a decomposed activation (GELU's `× 0.5` after the
                    // product x·(1 + erf(·))) stays where it is: absorbing it into the next
                    // weight is exact but hides the pattern runtimes fuse. Per-feature scales
                    // there (IA3 on a feed-forward input) still fold.
                    if matches!(node.op_type.as_str(), "Mul" | "Div")
                        && g.constant(c).is_some_and(|t| t.numel() == 1)
                        && g.producer(x).is_some_and(|p| {
                            let pn = g.node(p);
                            pn.op_type == "Mul" && pn.inputs.iter().flatten().all(|v| !konst(*v))
                        })
                    {
                        return None;
                    }
                    let cv = const_f64(g, c)?;
                    // A one-feature value times a feature vector is an outer product: a dense
                    // [1, D] map (AdapterBias's token-dependent shift α·v).
                    if node.op_type == "Mul"
                        && last_dim(g, x) == Some(1)
                        && cv.len() > 1
                        && let Some(Some(v)) = per_feature(&cv)
                        && cv.ndim() <= super::types::shape(g, x).map_or(1, |s| s.len())
                    {
                        let w = v.into_shape_with_order((1, cv.len())).ok()?;
                        return Some(LinOp::Outer {
                            input: x,
                            w: Arc::new(w),
                        });
                    }
                    if !fits_rank(g, x, &cv) {
                        return None;
                    }
                    match node.op_type.as_str() {
                        "Add" => Some(LinOp::Elementwise {
                            input: x,
                            scale: None,
                            shift: Some(cv),
                        }),
                        "Sub" if !ka => Some(LinOp::Elementwise {
                            input: x,
                            scale: None,
                            shift: Some(cv.mapv(|v| -v)),
                        }),
                        // c - x
                        "Sub" => Some(LinOp::Elementwise {
                            input: x,
                            scale: Some(ArrayD::from_elem(ndarray::IxDyn(&[]), -1.0)),
                            shift: Some(cv),
                        }),
                        "Mul" => {
                            per_feature(&cv)?;
                            Some(LinOp::Elementwise {
                                input: x,
                                scale: Some(cv),
                                shift: None,
                            })
                        }
                        // x / c (c / x is not affine)
                        "Div" if !ka && cv.iter().all(|v| *v != 0.0 && v.is_finite()) => {
                            per_feature(&cv)?;
                            Some(LinOp::Elementwise {
                                input: x,
                                scale: Some(cv.mapv(|v| 1.0 / v)),
                                shift: None,
                            })
                        }
                        _ => None,
                    }
                }
            }
        }
        "Gather" => {
            let (t, ids) = (input(0)?, input(1)?);
            if !konst(t) || konst(ids) || node.attr_int("axis").unwrap_or(0) != 0 {
                return None;
            }
            Some(LinOp::Lookup {
                ids,
                table: WeightRef::of(g, t, false, 1.0)?,
            })
        }
        // BatchNormalization on [N, C] (BatchNorm1d before a Linear): C is the last axis.
        "BatchNormalization" => {
            let x = input(0).filter(|&x| !konst(x))?;
            if super::types::shape(g, x)?.len() != 2
                || node.outputs.iter().skip(1).flatten().next().is_some()
                || node.attr_int("training_mode").unwrap_or(0) != 0
            {
                return None;
            }
            let get = |i: usize| -> Option<ndarray::Array1<f64>> {
                let v = input(i).filter(|&v| konst(v))?;
                Some(ndarray::Array1::from_iter(const_f64(g, v)?.iter().copied()))
            };
            let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let eps = node.attr_float("epsilon").unwrap_or(1e-5) as f64;
            let c = gamma.len();
            if [beta.len(), mean.len(), var.len()].iter().any(|&l| l != c) {
                return None;
            }
            let t: ndarray::Array1<f64> = gamma
                .iter()
                .zip(&var)
                .map(|(g, v)| g / (v + eps).sqrt())
                .collect();
            let shift: ndarray::Array1<f64> = beta
                .iter()
                .zip(mean.iter().zip(&t))
                .map(|(b, (m, t))| b - m * t)
                .collect();
            Some(LinOp::Elementwise {
                input: x,
                scale: Some(t.into_dyn()),
                shift: Some(shift.into_dyn()),
            })
        }
        "Neg" => Some(LinOp::Elementwise {
            input: input(0).filter(|&x| !konst(x))?,
            scale: Some(ArrayD::from_elem(ndarray::IxDyn(&[]), -1.0)),
            shift: None,
        }),
        "Identity" => Some(LinOp::Pass {
            input: input(0).filter(|&x| !konst(x))?,
        }),
        "Dropout" => {
            let x = input(0).filter(|&x| !konst(x))?;
            let mask_used = node
                .outputs
                .get(1)
                .copied()
                .flatten()
                .is_some_and(|m| !g.value(m).consumers.is_empty() || g.is_output(m));
            let training = match input(2) {
                None => false,
                Some(t) => g
                    .constant(t)
                    .and_then(|c| {
                        c.bytes("training_mode")
                            .ok()
                            .map(|b| b.iter().any(|&x| x != 0))
                    })
                    .unwrap_or(true),
            };
            (!mask_used && !training).then_some(LinOp::Pass { input: x })
        }
        "Cast" => {
            let x = input(0).filter(|&x| !konst(x))?;
            let to = node.attr_int("to")? as i32;
            (elem_type(g, x) == Some(to) && elem_type(g, out).is_none_or(|t| t == to))
                .then_some(LinOp::Pass { input: x })
        }
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
            let x = input(0).filter(|&x| !konst(x))?;
            let (si, so) = (static_shape(g, x)?, static_shape(g, out)?);
            let same_rows = !si.is_empty()
                && !so.is_empty()
                && si.last() == so.last()
                && si.iter().product::<i64>() == so.iter().product::<i64>();
            same_rows.then_some(LinOp::Pass { input: x })
        }
        _ => None,
    }
}
