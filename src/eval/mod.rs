//! CPU reference evaluator for ONNX nodes and graphs.
//!
//! Used by constant folding (weights computed only from initializers become constants) and by the
//! numerical verifier, which runs a model before and after rewriting on the same inputs.
//!
//! Design:
//! - [`TensorValue`] holds one `ndarray::ArrayD` per ONNX element type. float16/bfloat16 are computed
//!   in f32 (elementwise: per element; heavy ops: whole tensor) and cast back.
//! - [`eval_node`] evaluates one node; every malformed input (shape, attribute, dtype) is an
//!   [`EvalError`] naming the op, never a panic. Output sizes are checked with checked arithmetic and
//!   capped by [`EvalOptions::max_tensor_bytes`] before anything is allocated.
//! - [`run_graph`] evaluates a whole `GraphProto` in dependency order.
//!
//! The conformance suite is the ONNX backend node tests (`tests/eval_conformance.rs`).
//!
//! Limits, by design:
//! - Only the default ONNX domain. No control flow (If/Loop/Scan), sequences, optionals, RNNs,
//!   Attention, random ops, training losses or string ops beyond Equal/Cast.
//! - float8, float4, int4 and int2 data decode to F32/I8/U8 (there are no variants for them):
//!   Cast/QuantizeLinear to those types is refused, and CastLike/QuantizeLinear with a decoded
//!   tensor as the type source sees the wider type. Callers writing results back into a model
//!   must compare `data_type()` with the declared type.
//! - Training-mode Dropout with a nonzero ratio is refused (it is random).

// The dispatch macros instantiate element-generic code at each concrete type, where clippy
// sees `.clone()` on Copy types and `as` casts to the same type.
#![allow(clippy::clone_on_copy, clippy::unnecessary_cast)]

#[macro_use]
mod macros;
mod attrs;
mod elementwise;
mod extra;
mod graph;
mod index_ops;
mod linalg;
mod nn;
mod pool;
mod quant;
mod reduce;
mod resize;
mod shape_ops;
mod special;
mod tensor;

#[cfg(test)]
mod tests;

pub use graph::{run_graph, run_graph_with};
pub use tensor::{TensorValue, dtype, dtype_name};

pub(crate) use attrs::Ctx;

use onnx_protobuf::AttributeProto;

/// Error from evaluating a node or graph. Messages name the op and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The op (or this form of it) is not implemented by the evaluator.
    #[error("unsupported op {domain}{sep}{op} (opset {opset})", sep = if domain.is_empty() { "" } else { "::" })]
    UnsupportedOp {
        op: String,
        domain: String,
        opset: i64,
    },
    /// The node is malformed or its inputs do not fit it.
    #[error("{op}: {msg}")]
    Op { op: String, msg: String },
    /// A tensor could not be decoded or converted.
    #[error("tensor: {0}")]
    Tensor(String),
    /// An element type the evaluator does not handle here.
    #[error("unsupported data type {dtype} ({name}){ctx}", name = dtype_name(*dtype), ctx = if context.is_empty() { String::new() } else { format!(" in {context}") })]
    UnsupportedDtype { dtype: i32, context: String },
    /// A tensor would exceed the configured allocation limit (or overflow usize).
    #[error(
        "{what}: output of {elements} elements ({bytes} bytes) exceeds the limit of {limit} bytes"
    )]
    TooLarge {
        what: String,
        elements: u128,
        bytes: u128,
        limit: usize,
    },
    /// The graph is malformed (missing values, cycles, unknown outputs).
    #[error("graph: {0}")]
    Graph(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

/// Options for evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Largest tensor (in bytes) any single op may produce. Default 2 GiB.
    pub max_tensor_bytes: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            max_tensor_bytes: 1usize << 31,
        }
    }
}

/// Ops of the default ONNX domain that the evaluator implements.
const SUPPORTED: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "BitShift",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Compress",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumProd",
    "CumSum",
    "DepthToSpace",
    "DequantizeLinear",
    "Det",
    "Div",
    "Dropout",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "GroupNormalization",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LRN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "LpPool",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "NonZero",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "QuantizeLinear",
    "RMSNormalization",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "ReverseSequence",
    "Round",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "SwiGLU",
    "Swish",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

/// The op types (default ONNX domain) the evaluator implements.
pub fn supported_ops() -> &'static [&'static str] {
    SUPPORTED
}

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// Whether `eval_node` implements this op. Individual attribute forms may still be refused with an
/// error (see the conformance test's `KNOWN_GAPS`).
pub fn is_supported(op_type: &str, domain: &str) -> bool {
    is_default_domain(domain) && SUPPORTED.contains(&op_type)
}

/// Evaluate one node with default options. `inputs[i]` is `None` for an omitted optional input.
/// Returns exactly the outputs the op produces for `num_outputs` requested outputs (at least one).
pub fn eval_node(
    op_type: &str,
    domain: &str,
    opset: i64,
    attrs: &[AttributeProto],
    inputs: &[Option<&TensorValue>],
    num_outputs: usize,
) -> Result<Vec<TensorValue>> {
    eval_node_with(
        op_type,
        domain,
        opset,
        attrs,
        inputs,
        num_outputs,
        &EvalOptions::default(),
    )
}

/// [`eval_node`] with explicit options.
pub fn eval_node_with(
    op_type: &str,
    domain: &str,
    opset: i64,
    attrs: &[AttributeProto],
    inputs: &[Option<&TensorValue>],
    num_outputs: usize,
    opts: &EvalOptions,
) -> Result<Vec<TensorValue>> {
    if !is_supported(op_type, domain) {
        return Err(EvalError::UnsupportedOp {
            op: op_type.to_string(),
            domain: domain.to_string(),
            opset,
        });
    }
    let ctx = Ctx::new(op_type, opset, attrs, inputs, num_outputs.max(1), opts);
    let outs = dispatch(&ctx)?;
    if outs.is_empty() {
        return Err(ctx.err("produced no outputs"));
    }
    Ok(outs)
}

fn one(t: TensorValue) -> Result<Vec<TensorValue>> {
    Ok(vec![t])
}

fn dispatch(cx: &Ctx) -> Result<Vec<TensorValue>> {
    use elementwise as ew;
    match cx.op {
        // elementwise arithmetic
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "BitShift" | "BitwiseAnd" | "BitwiseOr"
        | "BitwiseXor" | "PRelu" => one(ew::binary(cx)?),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            one(ew::compare(cx)?)
        }
        "Max" | "Min" | "Sum" | "Mean" => one(ew::variadic(cx)?),
        "Where" => one(ew::where_op(cx)?),
        "Not" | "BitwiseNot" | "Neg" | "Abs" | "Sign" | "Reciprocal" | "Sqrt" | "Exp" | "Log"
        | "Floor" | "Ceil" | "Round" | "Erf" | "Tanh" | "Sigmoid" | "Relu" | "LeakyRelu"
        | "Elu" | "Selu" | "Celu" | "HardSigmoid" | "HardSwish" | "Softplus" | "Softsign"
        | "Mish" | "Gelu" | "ThresholdedRelu" | "Shrink" | "Sin" | "Cos" | "Tan" | "Asin"
        | "Acos" | "Atan" | "Sinh" | "Cosh" | "Asinh" | "Acosh" | "Atanh" | "IsNaN" | "IsInf"
        | "Swish" => one(ew::unary(cx)?),
        "Clip" => one(ew::clip(cx)?),
        "Cast" | "CastLike" => one(ew::cast_op(cx)?),
        // constants and shapes
        "Constant" => one(special::constant(cx)?),
        "Identity" => one(cx.input(0)?.clone()),
        "Dropout" => special::dropout(cx),
        "Shape" => one(shape_ops::shape(cx)?),
        "Size" => one(shape_ops::size(cx)?),
        "ConstantOfShape" => one(special::constant_of_shape(cx)?),
        "EyeLike" => one(special::eye_like(cx)?),
        "Range" => one(special::range(cx)?),
        "OneHot" => one(special::one_hot(cx)?),
        "Reshape" => one(shape_ops::reshape(cx)?),
        "Flatten" => one(shape_ops::flatten(cx)?),
        "Squeeze" => one(shape_ops::squeeze(cx)?),
        "Unsqueeze" => one(shape_ops::unsqueeze(cx)?),
        "Transpose" => one(shape_ops::transpose(cx)?),
        "Concat" => one(shape_ops::concat(cx)?),
        "Split" => shape_ops::split(cx),
        "Slice" => one(shape_ops::slice(cx)?),
        "Expand" => one(shape_ops::expand(cx)?),
        "Tile" => one(shape_ops::tile(cx)?),
        "Pad" => one(shape_ops::pad(cx)?),
        "DepthToSpace" | "SpaceToDepth" => one(shape_ops::depth_space(cx)?),
        // indexing
        "Gather" => one(index_ops::gather(cx)?),
        "GatherElements" => one(index_ops::gather_elements(cx)?),
        "GatherND" => one(index_ops::gather_nd(cx)?),
        "ScatterND" => one(index_ops::scatter_nd(cx)?),
        "ScatterElements" | "Scatter" => one(index_ops::scatter_elements(cx)?),
        "Trilu" => one(index_ops::trilu(cx)?),
        "CumSum" | "CumProd" => one(index_ops::cumsum(cx)?),
        "ArgMax" | "ArgMin" => one(index_ops::arg_reduce(cx)?),
        "TopK" => index_ops::topk(cx),
        // reductions
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => {
            one(reduce::reduce(cx)?)
        }
        // linear algebra
        "MatMul" => one(linalg::matmul(cx)?),
        "Gemm" => one(linalg::gemm(cx)?),
        "Einsum" => one(linalg::einsum(cx)?),
        // networks
        "Conv" => one(nn::conv(cx)?),
        "ConvTranspose" => one(nn::conv_transpose(cx)?),
        "BatchNormalization" => nn::batch_norm(cx),
        "InstanceNormalization" => one(nn::instance_norm(cx)?),
        "LayerNormalization" => nn::layer_norm(cx),
        "Softmax" | "LogSoftmax" | "Hardmax" => one(nn::softmax(cx)?),
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "LpPool"
        | "GlobalLpPool" => pool::pool(cx),
        "QuantizeLinear" => one(quant::quantize(cx)?),
        "DequantizeLinear" => one(quant::dequantize(cx)?),
        "RMSNormalization" => one(extra::rms_norm(cx)?),
        "SwiGLU" => one(extra::swiglu(cx)?),
        "LpNormalization" => one(extra::lp_normalization(cx)?),
        "MeanVarianceNormalization" => one(extra::mvn(cx)?),
        "GroupNormalization" => one(extra::group_norm(cx)?),
        "LRN" => one(extra::lrn(cx)?),
        "Upsample" => one(extra::upsample(cx)?),
        "Compress" => one(extra::compress(cx)?),
        "NonZero" => one(extra::nonzero(cx)?),
        "ReverseSequence" => one(extra::reverse_sequence(cx)?),
        "Det" => one(extra::det(cx)?),
        "Resize" => one(resize::resize(cx)?),
        _ => Err(EvalError::UnsupportedOp {
            op: cx.op.to_string(),
            domain: String::new(),
            opset: cx.opset,
        }),
    }
}
