//! docs/ops.md, generated from the lists the compiler itself uses.

use super::{COMPILE_TIME_OPS, kernel_ops, ops_ew};

/// How an op is lowered, and its limits.
fn support(op: &str) -> (&'static str, &'static str) {
    if ops_ew::OPS.contains(&op) {
        let limits = match op {
            "Cast" | "CastLike" => {
                "to and from every type with GPU storage; float16/bfloat16 results are rounded to their precision; int64 results beyond the i32 range saturate"
            }
            "Pow" => "integer bases with float exponents are computed in f32 and truncated",
            "BitShift" => "shift amounts outside [0, 32) give 0 (left) or the sign fill (right)",
            "Mod" => "fmod=0 follows Python (sign of the divisor), fmod=1 follows C",
            "Max" | "Min" | "Sum" | "Mean" => {
                "at most four tensor inputs per node (scalars do not count)"
            }
            "Erf" | "Gelu" => "erf by Abramowitz-Stegun 7.1.26 (absolute error below 1.5e-7)",
            _ => "",
        };
        return ("elementwise (fused into chains and epilogues)", limits);
    }
    if COMPILE_TIME_OPS.contains(&op) {
        return (
            "evaluated while compiling",
            "Shape and Size need only shapes; ConstantOfShape and Range need their inputs known \
             (constants, or graph inputs whose values `graft run` binds)",
        );
    }
    match op {
        "MatMul" => (
            "matmul_tiled / matmul_naive",
            "float only; batch dimensions broadcast; 1-D operands promoted",
        ),
        "Gemm" => (
            "matmul_tiled / matmul_naive",
            "beta other than 1 needs a constant C",
        ),
        "Conv" => ("conv2d", "1-D and 2-D; float only"),
        "ConvTranspose" => ("conv_transpose2d", "1-D and 2-D; float only"),
        "BatchNormalization" => ("elementwise", "inference only (one output)"),
        "LayerNormalization" => (
            "layernorm",
            "the Mean and InvStdDev outputs are not produced",
        ),
        "Softmax" | "LogSoftmax" => ("softmax", "float only"),
        "ArgMax" | "ArgMin" => ("reduce", ""),
        "MaxPool" => ("pool2d", "1-D and 2-D; the Indices output is not produced"),
        "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => ("pool2d", "1-D and 2-D"),
        "Resize" => (
            "resize",
            "nearest and linear (any rank); cubic, antialias, tf_crop_and_resize and keep_aspect_ratio_policy other than stretch are refused",
        ),
        "CumSum" => ("cumsum", "the axis must be known at compile time"),
        "Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => (
            "view (no dispatch)",
            "shape inputs must be known at compile time",
        ),
        "Dropout" => (
            "view (no dispatch)",
            "inference only; training mode is refused",
        ),
        "Transpose" | "Concat" | "Split" | "DepthToSpace" | "SpaceToDepth" => ("copy", ""),
        "Slice" | "Expand" | "Tile" | "Pad" => (
            "copy",
            "starts/ends/shape/repeats/pads must be known at compile time; Pad modes constant, edge, reflect, wrap",
        ),
        "Gather" => (
            "gather",
            "constant indices out of range are refused; run-time ones are clamped (ONNX leaves them undefined)",
        ),
        "GatherElements" => ("gather_elements", "out-of-range indices are clamped"),
        "GatherND" => ("gather_nd", "out-of-range indices are clamped"),
        "ScatterND" => (
            "copy + scatter_nd",
            "reduction none only; duplicate indices leave one of the updates",
        ),
        "Trilu" => (
            "elementwise (select against a constant mask)",
            "k must be known at compile time",
        ),
        "EyeLike" => ("evaluated while compiling", ""),
        o if o.starts_with("Reduce") => {
            ("reduce", "float input; axes must be known at compile time")
        }
        _ => ("", ""),
    }
}

/// The text of docs/ops.md.
pub fn ops_markdown() -> String {
    let mut ops = kernel_ops();
    ops.extend(COMPILE_TIME_OPS);
    ops.sort();
    ops.dedup();
    let mut s = String::from(
        "# Ops on the WGSL backend\n\n\
         Generated from `src/codegen` by `UPDATE_EXPECT=1 cargo test --test docs`; a test keeps this\n\
         file in sync. `tests/gpu_conformance.rs` runs the ONNX backend node tests of every op listed\n\
         here on wgpu and prints passed/failed/unsupported counts.\n\n\
         Every tensor lives on the GPU as 32-bit words: f32 for float32/float16/bfloat16 (computed in\n\
         f32), i32 for int64/int32/int16/int8/uint8/uint16/uint32/bool (int64 values outside the i32\n\
         range are refused when uploaded). float64 and strings have no GPU storage. Only the default\n\
         ONNX domain is supported. Any other op, or a form listed as refused below, is a compile-time\n\
         error naming the op and the node; it is never run wrongly.\n\n\
         Whatever can be computed while compiling is: every node whose inputs are all constants\n\
         (after shapes are bound) is evaluated on the CPU and becomes a constant of the plan.\n\n\
         | Op | Lowered to | Limits |\n|---|---|---|\n",
    );
    for op in ops {
        let (how, limits) = support(op);
        s.push_str(&format!("| {op} | {how} | {limits} |\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_claimed_op_says_how_it_is_lowered() {
        let mut ops = super::kernel_ops();
        ops.extend(super::COMPILE_TIME_OPS);
        for op in ops {
            assert!(
                !super::support(op).0.is_empty(),
                "{op} has no entry in ops_doc::support"
            );
        }
    }
}
