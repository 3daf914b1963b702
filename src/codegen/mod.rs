//! Lowering a graph to a WGSL execution plan (`graft compile --emit-wgsl`).
//!
//! Pipeline: bind every input's shape (and, where a value decides shapes, its value) → walk the
//! nodes in order, evaluating on the CPU every node whose inputs are all known now (shape
//! arithmetic, constant subgraphs) and lowering the rest to steps (kernels from `shaders/`) →
//! fuse (matmul/conv epilogues, elementwise chains) → allocate buffers by lifetime → emit the
//! plan ([`plan::Plan`]), the kernels and the weights.
//!
//! All GPU tensors are 32-bit words: f32 for floating types (f16/bf16 computed in f32) and i32
//! for integers and bool, so no 64-bit shader support is needed; int64 values outside i32 are
//! refused when they are uploaded or read.

mod emit;
mod fuse;
mod lower;
mod ops_data;
mod ops_doc;
mod ops_ew;
mod ops_linalg;
mod ops_nn;
pub mod plan;
pub mod program;
pub mod shaders;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use crate::eval::TensorValue;
use crate::ir::{Model, ValueId};
use crate::{Error, Result};

pub use emit::{Compiled, read_dir, write_dir};
pub use lower::to_words;
use lower::{Data, Fail, Lowerer, Val};
pub use ops_doc::ops_markdown;

/// A logical buffer during lowering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub usize);

/// What to specialise the plan for.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Shapes of graph inputs (required for inputs with symbolic dimensions).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Values of graph inputs that may be used to decide shapes (from `graft run`'s inputs).
    /// Only those the model needs at compile time are bound; the plan records which.
    pub input_values: HashMap<String, TensorValue>,
    /// Force a matmul variant ("naive" or "tiled") instead of choosing by size.
    pub matmul_variant: Option<String>,
    /// Turn off fusion (for tests and for reading plans).
    pub no_fusion: bool,
    /// Compile elementwise programs into their own pipelines (the `specialised` entry point of
    /// `elementwise.wgsl`) instead of interpreting them: faster dispatches, a pipeline compile
    /// per distinct program.
    pub specialise: bool,
    /// Allow kernels that need the adapter's `shader-f16` feature: float16 weights of MatMul and
    /// Gemm are then stored as f16 (half the memory), and the plan says so.
    pub shader_f16: bool,
    /// The model file, recorded in the plan so a run with other shapes can recompile.
    pub source: Option<std::path::PathBuf>,
}

/// Ops the WGSL backend lowers to kernels (besides those evaluated at compile time, see
/// [`COMPILE_TIME_OPS`]).
pub fn kernel_ops() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ops_ew::OPS.to_vec();
    v.extend([
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "LayerNormalization",
        "Softmax",
        "LogSoftmax",
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ArgMax",
        "ArgMin",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Resize",
        "CumSum",
        "Identity",
        "Dropout",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Slice",
        "Expand",
        "Tile",
        "Pad",
        "Concat",
        "Split",
        "DepthToSpace",
        "SpaceToDepth",
        "Gather",
        "GatherElements",
        "GatherND",
        "ScatterND",
        "Trilu",
        "EyeLike",
    ]);
    v.sort();
    v.dedup();
    v
}

/// Ops whose results depend only on shapes or on inputs that must be known at compile time;
/// they are evaluated on the CPU while compiling and become constants in the plan.
pub const COMPILE_TIME_OPS: &[&str] = &["Constant", "ConstantOfShape", "Range", "Shape", "Size"];

/// Compiles a model into an execution plan for the given shapes.
///
/// When an input's value decides a shape (a Reshape target fed by a graph input, say) and
/// `opts.input_values` holds it, the plan is specialised on that value too; otherwise the error
/// names the input.
pub fn compile(model: &Model, opts: &CompileOptions) -> Result<Compiled> {
    let mut static_inputs: HashSet<String> = HashSet::new();
    loop {
        match compile_once(model, opts, &static_inputs) {
            Ok(c) => return Ok(c),
            Err(CompileFail::NeedsInput(name)) => {
                if !static_inputs.insert(name.clone()) {
                    return Err(Error::Compile(format!(
                        "input '{name}' is needed at compile time but binding it did not help"
                    )));
                }
            }
            Err(CompileFail::Error(e)) => return Err(e),
        }
    }
}

enum CompileFail {
    NeedsInput(String),
    Error(Error),
}

impl From<Error> for CompileFail {
    fn from(e: Error) -> Self {
        CompileFail::Error(e)
    }
}

fn compile_once(
    model: &Model,
    opts: &CompileOptions,
    static_inputs: &HashSet<String>,
) -> std::result::Result<Compiled, CompileFail> {
    let graph = &model.graph;
    let opset = model.opset("").unwrap_or(1);
    let mut lw = Lowerer::new(graph, opset);
    lw.shader_f16 = opts.shader_f16;
    // initializers
    for (v, t) in graph.initializers() {
        let name = &graph.value(v).name;
        let bytes = t.bytes(name)?;
        let tv = TensorValue::from_raw(t.dtype, &t.dims, &bytes)
            .map_err(|e| Error::tensor(name.clone(), e.to_string()))?;
        lw.vals.insert(
            v,
            Val {
                shape: tv.shape().to_vec(),
                dtype: t.dtype,
                data: Data::Const(Rc::new(tv)),
            },
        );
    }
    // graph inputs
    let mut spec = plan::Specialisation::default();
    let mut runtime_inputs = Vec::new();
    for port in &graph.inputs {
        let name = graph.value(port.value).name.clone();
        let has_default = graph.value(port.value).initializer.is_some();
        let given_shape = opts.input_shapes.get(&name);
        if has_default && given_shape.is_none() && !opts.input_values.contains_key(&name) {
            continue; // its initializer is its value
        }
        let dtype = port
            .info
            .type_
            .as_ref()
            .and_then(|t| match &t.value {
                Some(onnx_protobuf::type_proto::Value::TensorType(tt)) => Some(tt.elem_type),
                _ => None,
            })
            .ok_or_else(|| {
                Error::Compile(format!(
                    "input '{name}' is not a tensor: not supported by the WGSL backend"
                ))
            })?;
        let shape = match given_shape {
            Some(s) => s.clone(),
            None => declared_shape(&port.info).map_err(|d| {
                Error::Compile(format!(
                    "input '{name}' has dimension '{d}' that is not fixed; give its shape \
                     (--input-shape {name}=...)"
                ))
            })?,
        };
        if static_inputs.contains(&name) {
            let t = opts
                .input_values
                .get(&name)
                .ok_or_else(|| Error::Compile(format!("input '{name}' has no value to bind")))?;
            spec.input_values
                .insert(name.clone(), t.to_i64_vec().unwrap_or_default());
            spec.input_shapes.insert(name.clone(), shape.clone());
            lw.vals.insert(
                port.value,
                Val {
                    shape,
                    dtype,
                    data: Data::Const(Rc::new(t.clone())),
                },
            );
            continue;
        }
        if lower::storage_of(dtype).is_none() {
            return Err(Error::Compile(format!(
                "input '{name}' has element type {}, which has no GPU storage: not supported by the WGSL backend",
                crate::ir::dtype::name(dtype)
            ))
            .into());
        }
        let n = lower::checked_numel(&shape).ok_or_else(|| {
            Error::Compile(format!(
                "input '{name}' of shape {shape:?} exceeds the 2^30 elements one GPU buffer holds"
            ))
        })?;
        let b = lw.new_buf(4 * n as u64, lower::BufKind::Input, &name);
        spec.input_shapes.insert(name.clone(), shape.clone());
        lw.vals.insert(
            port.value,
            Val {
                shape: shape.clone(),
                dtype,
                data: Data::Gpu(b),
            },
        );
        runtime_inputs.push((name, port.value));
    }
    // nodes
    let order = graph.topo_order()?;
    for id in order {
        lw.node = Some(id);
        let node = graph.node(id);
        if let Err(f) = lower_node(&mut lw, opset) {
            let label = node.label();
            return Err(match f {
                Fail::Unsupported(m) => CompileFail::Error(Error::Compile(format!(
                    "{label}: not supported by the WGSL backend: {m} (see docs/ops.md)"
                ))),
                Fail::Invalid(m) => CompileFail::Error(Error::Compile(format!("{label}: {m}"))),
                Fail::NeedsValue { value, msg } => {
                    // bind the graph inputs it comes from, if we have their values
                    match source_inputs(graph, &lw, &value) {
                        Some(inputs)
                            if !inputs.is_empty()
                                && inputs.iter().all(|i| opts.input_values.contains_key(i)) =>
                        {
                            let pick = inputs
                                .into_iter()
                                .find(|i| !static_inputs.contains(i))
                                .unwrap_or_default();
                            CompileFail::NeedsInput(pick)
                        }
                        _ => CompileFail::Error(Error::Compile(format!(
                            "{label}: {msg}; it is computed at run time here, so the plan \
                             cannot be specialised"
                        ))),
                    }
                }
            });
        }
    }
    lw.node = None;
    let mut outputs = Vec::new();
    for port in &graph.outputs {
        let name = graph.value(port.value).name.clone();
        let v = lw.vals.get(&port.value).cloned().ok_or_else(|| {
            Error::Compile(format!("output '{name}' is not computed by any node"))
        })?;
        outputs.push((name, v));
    }
    let inputs: Vec<(String, Val)> = runtime_inputs
        .iter()
        .map(|(n, v)| (n.clone(), lw.vals[v].clone()))
        .collect();
    if !opts.no_fusion {
        fuse::fuse(&mut lw, &outputs);
    }
    Ok(emit::emit(lw, inputs, outputs, spec, opts)?)
}

/// The shape a value info declares, or the name of its first non-fixed dimension.
fn declared_shape(info: &onnx_protobuf::ValueInfoProto) -> std::result::Result<Vec<usize>, String> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    let Some(onnx_protobuf::type_proto::Value::TensorType(tt)) =
        info.type_.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err("?".into());
    };
    let Some(shape) = tt.shape.as_ref() else {
        return Err("(no shape)".into());
    };
    shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(D::DimValue(v)) if *v >= 0 => Ok(*v as usize),
            Some(D::DimParam(p)) => Err(p.clone()),
            _ => Err("?".into()),
        })
        .collect()
}

/// The graph inputs a value is computed from (walking producers); `None` if it is unknown.
fn source_inputs(graph: &crate::ir::Graph, lw: &Lowerer, value: &str) -> Option<Vec<String>> {
    let start = graph.find_value(value)?;
    let mut seen: HashSet<ValueId> = HashSet::new();
    let mut stack = vec![start];
    let mut out = BTreeMap::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if matches!(lw.vals.get(&v).map(|x| &x.data), Some(Data::Const(_))) {
            continue;
        }
        if graph.inputs.iter().any(|p| p.value == v) {
            out.insert(graph.value(v).name.clone(), ());
            continue;
        }
        let node = graph.producer(v)?;
        for i in graph.node(node).inputs.iter().flatten() {
            stack.push(*i);
        }
    }
    Some(out.into_keys().collect())
}

fn lower_node(lw: &mut Lowerer, opset: i64) -> lower::Res<()> {
    let node = lw.cur();
    let op = node.op_type.as_str();
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Err(lw.unsupported(format!("domain '{}'", node.domain)));
    }
    // every input known now: evaluate on the CPU
    let present: Vec<Option<Val>> = (0..node.inputs.len())
        .map(|i| lw.opt(i))
        .collect::<lower::Res<_>>()?;
    let all_const = present
        .iter()
        .all(|v| v.as_ref().is_none_or(|v| v.konst().is_some()));
    match op {
        "Shape" => {
            let x = lw.req(0)?;
            let r = x.shape.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let s = clamp(lw.attr_i("start", 0)) as usize;
            let e = clamp(lw.attr_i("end", r)) as usize;
            let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
            return set_const(lw, TensorValue::vec_i64(dims));
        }
        "Size" => {
            let x = lw.req(0)?;
            return set_const(lw, TensorValue::scalar_i64(x.numel() as i64));
        }
        "CastLike"
            if present
                .first()
                .is_some_and(|v| v.as_ref().is_some_and(|v| v.konst().is_some())) =>
        {
            // only the second input's type matters, so a constant first input casts now
            let x = lw.req(0)?;
            let to = lw.req(1)?.dtype;
            let t = x
                .konst()
                .expect("checked constant")
                .cast(to)
                .map_err(|e| lw.invalid(e.to_string()))?;
            return set_const(lw, t);
        }
        "EyeLike" => {
            let x = lw.req(0)?;
            if x.shape.len() != 2 {
                return Err(lw.invalid("input must be 2-D"));
            }
            let k = lw.attr_i("k", 0);
            let dtype = lw
                .cur()
                .attr_int("dtype")
                .map(|d| d as i32)
                .unwrap_or(x.dtype);
            let eye = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&x.shape), |ix| {
                if ix[1] as i64 - ix[0] as i64 == k {
                    1.0f32
                } else {
                    0.0
                }
            });
            let t = TensorValue::F32(eye)
                .cast(dtype)
                .map_err(|e| lw.invalid(e.to_string()))?;
            return set_const(lw, t);
        }
        _ => {}
    }
    if all_const && crate::eval::is_supported(op, &node.domain) {
        let refs: Vec<Option<&TensorValue>> = present
            .iter()
            .map(|v| v.as_ref().and_then(|v| v.konst().map(|t| t.as_ref())))
            .collect();
        let outs = crate::eval::eval_node(
            op,
            &node.domain,
            opset,
            &node.attrs,
            &refs,
            node.outputs.len(),
        )
        .map_err(|e| lw.invalid(format!("evaluating at compile time: {e}")))?;
        for (slot, t) in outs.into_iter().enumerate() {
            let dtype = t.data_type();
            lw.set_out(
                slot,
                Val {
                    shape: t.shape().to_vec(),
                    dtype,
                    data: Data::Const(Rc::new(t)),
                },
            );
        }
        return Ok(());
    }
    if COMPILE_TIME_OPS.contains(&op) {
        let i = present
            .iter()
            .position(|v| v.as_ref().is_some_and(|v| v.konst().is_none()))
            .unwrap_or(0);
        return Err(Fail::NeedsValue {
            value: lw.input_name(i),
            msg: format!("input '{}' must be known at compile time", lw.input_name(i)),
        });
    }
    if ops_ew::OPS.contains(&op) {
        return lw.lower_elementwise(op);
    }
    match op {
        "MatMul" => lw.lower_matmul(),
        "Gemm" => lw.lower_gemm(),
        "Conv" => lw.lower_conv(),
        "ConvTranspose" => lw.lower_conv_transpose(),
        "BatchNormalization" => lw.lower_batchnorm(),
        "LayerNormalization" => lw.lower_layernorm(),
        "Softmax" => lw.lower_softmax(false),
        "LogSoftmax" => lw.lower_softmax(true),
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => lw.lower_pool(op),
        "Resize" => lw.lower_resize(),
        "CumSum" => lw.lower_cumsum(),
        "Identity" | "Dropout" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
            lw.lower_view(op)
        }
        "Transpose" => lw.lower_transpose(),
        "Slice" => lw.lower_slice(),
        "Expand" => lw.lower_expand(),
        "Tile" => lw.lower_tile(),
        "Pad" => lw.lower_pad(),
        "Concat" => lw.lower_concat(),
        "Split" => lw.lower_split(),
        "DepthToSpace" => lw.lower_depth_space(true),
        "SpaceToDepth" => lw.lower_depth_space(false),
        "Gather" => lw.lower_gather(),
        "GatherElements" => lw.lower_gather_elements(),
        "GatherND" => lw.lower_gather_nd(),
        "ScatterND" => lw.lower_scatter_nd(),
        "Trilu" => lw.lower_trilu(),
        o if o.starts_with("Reduce") || o == "ArgMax" || o == "ArgMin" => lw.lower_reduce(o),
        other => Err(lw.unsupported(format!("op {other}"))),
    }
}

fn set_const(lw: &mut Lowerer, t: TensorValue) -> lower::Res<()> {
    let dtype = t.data_type();
    lw.set_out(
        0,
        Val {
            shape: t.shape().to_vec(),
            dtype,
            data: Data::Const(Rc::new(t)),
        },
    );
    Ok(())
}
