//! `graft compile M.onnx --emit-wgsl DIR`: lower a model to WGSL kernels, a plan and weights.

use std::path::{Path, PathBuf};

use anyhow::Context;
use graft::codegen::{CompileOptions, Compiled};
use graft::ir::Model;

pub const AFTER_HELP: &str = "Examples:
  graft compile models/bert_base/unmerged.ts.onnx --emit-wgsl out/bert --input-shape input_ids=1,8 \\
      --input-shape attention_mask=1,8
  graft compile models/bert_lora/unmerged.ts.onnx --fold --emit-wgsl out/bert_lora \\
      --input-shape input_ids=1,8 --input-shape attention_mask=1,8
  graft run out/bert --inputs models/bert_base/inputs.npz

DIR receives plan.json (buffers, kernels, bindings, dispatches, inputs and outputs; see
docs/plan-format.md), one .wgsl file per kernel and weights.bin. Every symbolic dimension must be
bound with --input-shape; the plan is specialised for those shapes. Shape arithmetic (Shape,
Gather on shapes, Concat of shapes, ...) is evaluated while compiling. An op without a kernel is
an error naming the node (docs/ops.md lists what is supported).";

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// Folder for plan.json, the kernels and weights.bin (created; existing files replaced).
    #[arg(long, value_name = "DIR")]
    pub emit_wgsl: PathBuf,
    /// Shape of an input, e.g. input_ids=1,128 (repeatable; required for symbolic dims).
    #[arg(long, value_name = "NAME=D1,D2,...")]
    pub input_shape: Vec<String>,
    #[command(flatten)]
    pub lowering: LoweringArgs,
}

/// Options shared by `compile` and `run`.
#[derive(clap::Args, Clone, Default)]
pub struct LoweringArgs {
    /// Fold adapters into the base weights first (the `fold` pipeline, each rewrite checked).
    #[arg(long)]
    pub fold: bool,
    /// Matmul kernel: vec4 (64x64 tiles in workgroup memory, vectorised loads and stores),
    /// tiled (the same with scalar loads, for any layout) or naive (one output per invocation);
    /// default: vec4 where the layout allows and both M and N are at least 32, else tiled, and
    /// naive for smaller products.
    #[arg(long, value_name = "vec4|tiled|naive")]
    pub matmul: Option<String>,
    /// Do not fuse epilogues or elementwise chains (one dispatch per node).
    #[arg(long)]
    pub no_fusion: bool,
    /// Compile each elementwise program into its own pipeline (its opcodes as override
    /// constants) instead of interpreting it: several times faster dispatches, one pipeline
    /// compile per distinct program (seconds each on a software rasteriser).
    #[arg(long)]
    pub specialise: bool,
    /// Hold float16 MatMul/Gemm weights as f16 on the GPU (half the memory); the plan then
    /// needs an adapter with shader-f16. Without it, float16 tensors are held and computed as
    /// f32.
    #[arg(long)]
    pub shader_f16: bool,
}

impl LoweringArgs {
    pub fn options(&self, source: &Path) -> anyhow::Result<CompileOptions> {
        if let Some(m) = &self.matmul
            && !matches!(m.as_str(), "vec4" | "tiled" | "naive")
        {
            return Err(
                graft::Error::Usage(format!("--matmul {m}: choose vec4, tiled or naive")).into(),
            );
        }
        Ok(CompileOptions {
            matmul_variant: self.matmul.clone(),
            no_fusion: self.no_fusion,
            shader_f16: self.shader_f16,
            specialise: self.specialise,
            source: Some(source.to_path_buf()),
            ..Default::default()
        })
    }
}

/// Loads a model and folds it when asked.
pub fn load(path: &Path, fold: bool) -> anyhow::Result<Model> {
    let mut model = super::textio::load_any(path)?;
    if fold {
        let steps = graft::passes::parse_pipeline("fold")?;
        let lookup = graft::passes::lookup;
        let mut driver = graft::driver::Driver::new(&lookup);
        driver.verify_rewrites = true;
        driver
            .run(&mut model, &steps)
            .with_context(|| format!("folding {}", path.display()))?;
    }
    Ok(model)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let model = load(&a.model, a.lowering.fold)?;
    let mut opts = a.lowering.options(&a.model)?;
    for (name, dims) in graft::verify::parse_input_shapes(&a.input_shape)? {
        if !model
            .graph
            .inputs
            .iter()
            .any(|p| model.graph.value(p.value).name == name)
        {
            return Err(graft::Error::Usage(format!(
                "--input-shape: the model has no input named '{name}'"
            ))
            .into());
        }
        if dims.iter().any(|&d| d < 0) {
            return Err(graft::Error::Usage(format!(
                "--input-shape {name}: dimensions must be non-negative"
            ))
            .into());
        }
        opts.input_shapes
            .insert(name, dims.iter().map(|&d| d as usize).collect());
    }
    let compiled = graft::codegen::compile(&model, &opts)
        .with_context(|| format!("compiling {}", a.model.display()))?;
    graft::codegen::write_dir(&compiled, &a.emit_wgsl)?;
    super::emit(&summary(&compiled, &a.emit_wgsl));
    Ok(())
}

/// A short description of a plan.
pub fn summary(c: &Compiled, dir: &Path) -> String {
    let p = &c.plan;
    let nodes: usize = p.dispatches.iter().map(|d| d.nodes.len()).sum();
    let fused = p.dispatches.iter().filter(|d| d.nodes.len() > 1).count();
    let act: u64 = p
        .buffers
        .iter()
        .filter(|b| b.kind == graft::codegen::plan::BufferKind::Activation)
        .map(|b| b.size)
        .sum();
    let mut o = String::new();
    outln!(o, "wrote {}", dir.display());
    outln!(
        o,
        "  {} dispatches covering {nodes} nodes ({fused} fused), {} kernels: {}",
        p.dispatches.len(),
        p.kernels.len(),
        p.kernels
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    outln!(
        o,
        "  {} buffers: weights {} bytes, activations {} bytes (after reuse)",
        p.buffers.len(),
        p.weights.bytes,
        act
    );
    for port in &p.inputs {
        outln!(o, "  input  {} {} {:?}", port.name, port.dtype, port.shape);
    }
    for port in &p.outputs {
        outln!(o, "  output {} {} {:?}", port.name, port.dtype, port.shape);
    }
    o
}
