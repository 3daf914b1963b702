//! Numerical verification: run two models on the CPU evaluator with the same inputs and compare
//! every output (relative Frobenius error and max absolute error, per output).

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayD;
use onnx_protobuf::type_proto;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::TensorValue;
use crate::ir::Model;
use crate::ir::dtype::code;

/// Default tolerance on the relative Frobenius error of a whole network's output, by dtype.
pub fn default_tolerance(dtype: i32) -> f64 {
    match dtype {
        code::FLOAT16 => 1e-2,
        code::BFLOAT16 => 3e-2,
        _ => 1e-4,
    }
}

/// One output's comparison.
#[derive(Clone, Debug, Serialize)]
pub struct OutputDiff {
    pub name: String,
    pub rel_fro: f64,
    pub max_abs: f64,
    pub tolerance: f64,
    pub ok: bool,
}

/// Deterministic random numbers (splitmix64), so the same model gets the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Shapes for a model's inputs: declared dims, with symbolic or unknown ones taken from
/// `overrides` (by input name) or set to 1 for the first axis and 8 otherwise.
pub fn input_shapes(
    model: &Model,
    overrides: &BTreeMap<String, Vec<i64>>,
) -> Result<Vec<(String, i32, Vec<i64>)>> {
    let g = &model.graph;
    let mut out = Vec::new();
    for port in &g.inputs {
        let val = g.value(port.value);
        if val.initializer.is_some() {
            continue;
        }
        let Some(type_proto::Value::TensorType(tt)) =
            port.info.type_.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(Error::Usage(format!(
                "input '{}' is not a tensor; cannot make test inputs for it",
                val.name
            )));
        };
        if let Some(s) = overrides.get(&val.name) {
            out.push((val.name.clone(), tt.elem_type, s.clone()));
            continue;
        }
        let dims: Vec<i64> = match tt.shape.as_ref() {
            None => {
                return Err(Error::Usage(format!(
                    "input '{}' has no declared shape; give one with --input-shape {}=...",
                    val.name, val.name
                )));
            }
            Some(s) => s
                .dim
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    if d.has_dim_value() && d.dim_value() > 0 {
                        d.dim_value()
                    } else if i == 0 {
                        1
                    } else {
                        8
                    }
                })
                .collect(),
        };
        out.push((val.name.clone(), tt.elem_type, dims));
    }
    Ok(out)
}

/// Random inputs: floats standard normal, integers in [0, 4), booleans fair coins.
pub fn random_inputs(
    shapes: &[(String, i32, Vec<i64>)],
    seed: u64,
) -> Result<Vec<(String, TensorValue)>> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    for (name, dtype, dims) in shapes {
        let count = crate::ir::dtype::element_count(dims)
            .filter(|&c| c <= 1 << 28)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "input '{name}': shape {dims:?} is too large to test"
                ))
            })? as usize;
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let bad = |e: ndarray::ShapeError| Error::Usage(format!("input '{name}': {e}"));
        let t = match *dtype {
            code::FLOAT => TensorValue::F32(
                ArrayD::from_shape_vec(shape, (0..count).map(|_| rng.normal() as f32).collect())
                    .map_err(bad)?,
            ),
            code::DOUBLE => TensorValue::F64(
                ArrayD::from_shape_vec(shape, (0..count).map(|_| rng.normal()).collect())
                    .map_err(bad)?,
            ),
            code::FLOAT16 => TensorValue::F16(
                ArrayD::from_shape_vec(
                    shape,
                    (0..count)
                        .map(|_| half::f16::from_f64(rng.normal()))
                        .collect(),
                )
                .map_err(bad)?,
            ),
            code::BFLOAT16 => TensorValue::BF16(
                ArrayD::from_shape_vec(
                    shape,
                    (0..count)
                        .map(|_| half::bf16::from_f64(rng.normal()))
                        .collect(),
                )
                .map_err(bad)?,
            ),
            code::INT64 => TensorValue::I64(
                ArrayD::from_shape_vec(
                    shape,
                    (0..count).map(|_| (rng.next() % 4) as i64).collect(),
                )
                .map_err(bad)?,
            ),
            code::INT32 => TensorValue::I32(
                ArrayD::from_shape_vec(
                    shape,
                    (0..count).map(|_| (rng.next() % 4) as i32).collect(),
                )
                .map_err(bad)?,
            ),
            code::BOOL => TensorValue::Bool(
                ArrayD::from_shape_vec(shape, (0..count).map(|_| rng.next() % 2 == 1).collect())
                    .map_err(bad)?,
            ),
            other => {
                return Err(Error::Usage(format!(
                    "input '{name}' has element type {}, for which graft makes no random inputs (give --inputs)",
                    crate::ir::dtype::name(other)
                )));
            }
        };
        out.push((name.clone(), t));
    }
    Ok(out)
}

/// Inputs from an .npz file (arrays named after the model's inputs).
pub fn npz_inputs(
    path: &Path,
    shapes: &[(String, i32, Vec<i64>)],
) -> Result<Vec<(String, TensorValue)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut npz = ndarray_npy::NpzReader::new(file)
        .map_err(|e| Error::bad_model(path, format!("not a readable .npz file: {e}")))?;
    let mut out = Vec::new();
    for (name, dtype, _) in shapes {
        let key = name.clone();
        let bad = |e: ndarray_npy::ReadNpzError| {
            Error::bad_model(
                path,
                format!(
                    "array '{key}': {e} (expected {})",
                    crate::ir::dtype::name(*dtype)
                ),
            )
        };
        let t = match *dtype {
            code::FLOAT => TensorValue::F32(npz.by_name(&key).map_err(bad)?),
            code::DOUBLE => TensorValue::F64(npz.by_name(&key).map_err(bad)?),
            code::INT64 => TensorValue::I64(npz.by_name(&key).map_err(bad)?),
            code::INT32 => TensorValue::I32(npz.by_name(&key).map_err(bad)?),
            code::BOOL => TensorValue::Bool(npz.by_name(&key).map_err(bad)?),
            other => {
                return Err(Error::bad_model(
                    path,
                    format!(
                        "input '{name}': .npz inputs of type {} are not supported",
                        crate::ir::dtype::name(other)
                    ),
                ));
            }
        };
        out.push((name.clone(), t));
    }
    Ok(out)
}

/// Runs a model on the CPU evaluator.
pub fn run(model: &Model, inputs: &[(String, TensorValue)]) -> Result<Vec<(String, TensorValue)>> {
    let opset = model.opset("").unwrap_or(1);
    let proto = crate::onnx::model_to_proto(model.clone())?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| Error::graph("no graph"))?;
    crate::eval::run_graph(graph, opset, inputs)
        .map_err(|e| Error::graph(format!("evaluating the model: {e}")))
}

/// Compares two runs output by output.
pub fn compare(
    a: &[(String, TensorValue)],
    b: &[(String, TensorValue)],
    tolerance: Option<f64>,
) -> Result<Vec<OutputDiff>> {
    let mut out = Vec::new();
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        if na != nb {
            return Err(Error::graph(format!(
                "outputs differ in name: '{na}' and '{nb}'"
            )));
        }
        if ta.shape() != tb.shape() {
            return Err(Error::graph(format!(
                "output '{na}' has shape {:?} in one model and {:?} in the other",
                ta.shape(),
                tb.shape()
            )));
        }
        let (x, y) = (ta.to_f64_vec(), tb.to_f64_vec());
        let mut diff2 = 0.0;
        let mut norm2 = 0.0;
        let mut max_abs: f64 = 0.0;
        for (p, q) in x.iter().zip(&y) {
            let d = p - q;
            if d.is_nan() && !(p.is_nan() && q.is_nan()) {
                max_abs = f64::INFINITY;
            } else if d.is_finite() {
                diff2 += d * d;
                max_abs = max_abs.max(d.abs());
            }
            if p.is_finite() {
                norm2 += p * p;
            }
        }
        let rel = if norm2 > 0.0 {
            (diff2 / norm2).sqrt()
        } else {
            diff2.sqrt()
        };
        let tol = tolerance.unwrap_or_else(|| default_tolerance(ta.data_type()));
        out.push(OutputDiff {
            name: na.clone(),
            rel_fro: rel,
            max_abs,
            tolerance: tol,
            ok: rel <= tol && max_abs.is_finite(),
        });
    }
    if a.len() != b.len() {
        return Err(Error::graph(format!(
            "the models have {} and {} outputs",
            a.len(),
            b.len()
        )));
    }
    Ok(out)
}

/// Parses every `--input-shape name=1,128` into the overrides [`input_shapes`] takes.
pub fn parse_input_shapes(
    specs: &[String],
) -> Result<std::collections::BTreeMap<String, Vec<i64>>> {
    specs
        .iter()
        .map(|s| parse_input_shape(s).map_err(Error::Usage))
        .collect()
}

/// Parses `name=1,128`.
pub fn parse_input_shape(s: &str) -> std::result::Result<(String, Vec<i64>), String> {
    let (name, dims) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("--input-shape '{s}': expected NAME=D1,D2,..."))?;
    let dims: std::result::Result<Vec<i64>, _> = dims
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.trim().parse::<i64>().ok().filter(|&x| x > 0).ok_or(()))
        .collect();
    let dims = dims.map_err(|_| format!("--input-shape '{s}': dims must be positive integers"))?;
    Ok((name.to_string(), dims))
}

/// Checks one rewrite: the nodes `old` of `before` against the nodes `new` of `after`, both
/// computing `outputs` from `sources`, on random inputs shaped like the sources (static shapes
/// from the graph; `[2, width]` rows when only the width is known; index sources get indices
/// below `index_limit`). Returns the per-output comparison.
#[allow(clippy::too_many_arguments)]
pub fn check_rewrite(
    before: &crate::ir::Graph,
    old: &[crate::ir::NodeId],
    after: &crate::ir::Graph,
    new: &[crate::ir::NodeId],
    sources: &[(crate::ir::ValueId, Option<u64>)],
    outputs: &[crate::ir::ValueId],
    opset: i64,
    tolerance: f64,
) -> Result<Vec<OutputDiff>> {
    use crate::rewrite::types::{elem_type, last_dim, static_shape};
    let mut shapes = Vec::new();
    for &(s, index_limit) in sources {
        let dtype = elem_type(before, s).unwrap_or(code::FLOAT);
        let shape = static_shape(before, s)
            .or_else(|| last_dim(before, s).map(|d| vec![2, d]))
            .ok_or_else(|| {
                Error::graph(format!(
                    "the shape of '{}' is unknown",
                    before.value(s).name
                ))
            })?;
        shapes.push((before.value(s).name.clone(), dtype, shape, index_limit));
    }
    let mut rng = Rng(0x5eed);
    let mut inputs = Vec::new();
    for (name, dtype, shape, limit) in &shapes {
        let t = match limit {
            Some(l) => {
                let count = crate::ir::dtype::element_count(shape).unwrap_or(0) as usize;
                let v: Vec<i64> = (0..count)
                    .map(|_| (rng.next() % (*l).max(1)) as i64)
                    .collect();
                let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                let a = ArrayD::from_shape_vec(dims, v).map_err(|e| Error::graph(e.to_string()))?;
                if *dtype == code::INT32 {
                    TensorValue::I32(a.mapv(|x| x as i32))
                } else {
                    TensorValue::I64(a)
                }
            }
            None => {
                random_inputs(&[(name.clone(), *dtype, shape.clone())], rng.next())?
                    .remove(0)
                    .1
            }
        };
        inputs.push((name.clone(), t));
    }
    let run_sub =
        |g: &crate::ir::Graph, nodes: &[crate::ir::NodeId]| -> Result<Vec<(String, TensorValue)>> {
            let mut gp = onnx_protobuf::GraphProto::new();
            let mut consts = std::collections::BTreeSet::new();
            for &n in nodes {
                let node = g.node(n);
                let name = |v: Option<crate::ir::ValueId>| {
                    v.map(|v| g.value(v).name.clone()).unwrap_or_default()
                };
                gp.node.push(onnx_protobuf::NodeProto {
                    op_type: node.op_type.clone(),
                    domain: node.domain.clone(),
                    input: node.inputs.iter().map(|&v| name(v)).collect(),
                    output: node.outputs.iter().map(|&v| name(v)).collect(),
                    attribute: node.attrs.clone(),
                    ..Default::default()
                });
                for v in node.inputs.iter().flatten() {
                    if g.constant(*v).is_some() {
                        consts.insert(*v);
                    }
                }
            }
            for v in consts {
                let name = g.value(v).name.clone();
                let t = g.constant(v).expect("constant");
                let bytes = t.bytes(&name)?;
                gp.initializer.push(onnx_protobuf::TensorProto {
                    name,
                    dims: t.dims.clone(),
                    data_type: t.dtype,
                    raw_data: bytes.into_owned(),
                    ..Default::default()
                });
            }
            for &o in outputs {
                gp.output.push(onnx_protobuf::ValueInfoProto {
                    name: g.value(o).name.clone(),
                    ..Default::default()
                });
            }
            crate::eval::run_graph(&gp, opset, &inputs).map_err(|e| Error::graph(e.to_string()))
        };
    let a = run_sub(before, old)?;
    let b = run_sub(after, new)?;
    compare(&a, &b, Some(tolerance))
}

/// Calibration batches from an .npz: each input's array is either one batch (the input's own
/// rank) or several stacked along a new first axis.
pub fn calibration_batches(
    path: &Path,
    shapes: &[(String, i32, Vec<i64>)],
) -> Result<Vec<Vec<(String, TensorValue)>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut npz = ndarray_npy::NpzReader::new(file)
        .map_err(|e| Error::bad_model(path, format!("not a readable .npz file: {e}")))?;
    let mut per_input: Vec<Vec<TensorValue>> = Vec::new();
    for (name, dtype, dims) in shapes {
        let bad =
            |e: ndarray_npy::ReadNpzError| Error::bad_model(path, format!("array '{name}': {e}"));
        let arr: ArrayD<f64> = match *dtype {
            code::FLOAT => npz
                .by_name::<ndarray::OwnedRepr<f32>, ndarray::IxDyn>(name)
                .map_err(bad)?
                .mapv(|x| x as f64),
            code::INT64 => npz
                .by_name::<ndarray::OwnedRepr<i64>, ndarray::IxDyn>(name)
                .map_err(bad)?
                .mapv(|x| x as f64),
            other => {
                return Err(Error::bad_model(
                    path,
                    format!(
                        "input '{name}': calibration inputs of type {} are not supported",
                        crate::ir::dtype::name(other)
                    ),
                ));
            }
        };
        let batches: Vec<ArrayD<f64>> = if arr.ndim() == dims.len() {
            vec![arr]
        } else if arr.ndim() == dims.len() + 1 {
            arr.outer_iter().map(|a| a.to_owned()).collect()
        } else {
            return Err(Error::bad_model(
                path,
                format!(
                    "array '{name}' has rank {}, expected {} or {}",
                    arr.ndim(),
                    dims.len(),
                    dims.len() + 1
                ),
            ));
        };
        per_input.push(
            batches
                .into_iter()
                .map(|b| match *dtype {
                    code::INT64 => TensorValue::I64(b.mapv(|x| x as i64)),
                    _ => TensorValue::F32(b.mapv(|x| x as f32)),
                })
                .collect(),
        );
    }
    let n = per_input.first().map_or(0, |b| b.len());
    if per_input.iter().any(|b| b.len() != n) || n == 0 {
        return Err(Error::bad_model(
            path,
            "inputs have different numbers of calibration batches",
        ));
    }
    Ok((0..n)
        .map(|i| {
            shapes
                .iter()
                .zip(&per_input)
                .map(|((name, _, _), b)| (name.clone(), b[i].clone()))
                .collect()
        })
        .collect())
}

/// Mean Frobenius norm of every value the model computes, over calibration batches.
pub fn activation_norms(
    model: &Model,
    batches: &[Vec<(String, TensorValue)>],
) -> Result<std::collections::HashMap<String, f64>> {
    let opset = model.opset("").unwrap_or(1);
    let mut proto = crate::onnx::model_to_proto(model.clone())?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::graph("no graph"))?;
    let mut names: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    for n in &graph.node {
        names.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
    }
    graph.output = names
        .iter()
        .map(|n| onnx_protobuf::ValueInfoProto {
            name: n.clone(),
            ..Default::default()
        })
        .collect();
    let mut sums: std::collections::HashMap<String, f64> = Default::default();
    for batch in batches {
        let outs = crate::eval::run_graph(graph, opset, batch)
            .map_err(|e| Error::graph(format!("running the calibration inputs: {e}")))?;
        for (name, t) in outs {
            let norm = t.to_f64_vec().iter().map(|x| x * x).sum::<f64>().sqrt();
            *sums.entry(name).or_default() += norm;
        }
    }
    let n = batches.len().max(1) as f64;
    Ok(sums.into_iter().map(|(k, v)| (k, v / n)).collect())
}
