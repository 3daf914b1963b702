//! `graft insert`: put adapters into a graph.

use std::path::PathBuf;

use anyhow::Context;
use graft::surgery::emit::EmitOptions;
use graft::surgery::params::{Init, Kind, Position, Side, Spec};

pub const AFTER_HELP: &str = "Examples:
  graft insert model.onnx --adapter lora --target query,value -o lora.onnx
  graft insert model.onnx --adapter lora --target query,value --dry-run
  graft insert model.onnx --adapter dora --target 're:.*layer\\.1\\..*' --rank 4 --init random:7 -o dora.onnx
  graft insert model.onnx --adapter ia3 --target key,value --side output -o ia3.onnx
  graft insert model.onnx --adapter linear --target qkv --position before --rank 8 -o zeroi2v.onnx
  graft insert model.onnx --adapter lora --target c_attn --init pissa -o pissa.onnx
  graft insert model.onnx --adapter lora --target query --as-inputs -o swappable.onnx

Targets are MatMul and Gemm nodes with a constant weight, Conv nodes and embedding lookups
(Gather on a constant table). --target takes module-name suffixes, matched the way PEFT's
target_modules is: against the module scope exporters write into node names
(/encoder/layer.0/attention/self/query/MatMul) or node metadata (dynamo), and against weight
names; or re:REGEX, matched against the whole scope or weight name.

Weights are named after their target: <scope>.lora_A [d_in, r] and <scope>.lora_B [r, d_out]
(the MatMul operands, i.e. PEFT's A and B transposed; Conv: PEFT's layout), <scope>.lora_scale,
<scope>.lora_magnitude_vector (DoRA), <scope>.ia3_l, <scope>.adapter_down / adapter_up (+ _bias).

--init zeros (the default) makes every adapter the identity, so outputs are unchanged:
LoRA/DoRA B = 0 with A Kaiming-uniform (embeddings: A = 0, B normal, as PEFT does), IA3 = 1,
linear and bottleneck up-projections = 0.
random:SEED draws every weight (deterministic). pissa (lora, dora) takes A and B from the top
singular vectors of the base weight and stores the residual as the base weight.

Every kind but bottleneck folds back: `graft fold` on the result gives the base's operators.";

#[derive(clap::Args)]
pub struct Args {
    /// The model to add adapters to (.onnx or .onnxtxt).
    pub model: PathBuf,
    /// The adapter kind.
    #[arg(long, value_enum)]
    pub adapter: Kind,
    /// Which nodes get one: module-name suffixes (query,value) or re:REGEX.
    #[arg(long, value_name = "PATTERN")]
    pub target: String,
    /// Rank of LoRA/DoRA, bottleneck width of linear and bottleneck adapters (a linear adapter
    /// at least as wide as its features is one dense matrix).
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA alpha: the scale is alpha/rank (alpha/sqrt(rank) with --rslora).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// rsLoRA scaling, alpha/sqrt(rank).
    #[arg(long)]
    pub rslora: bool,
    /// zeros, random:SEED or pissa.
    #[arg(long, default_value = "zeros", value_name = "zeros|random:SEED|pissa")]
    pub init: String,
    /// IA3: scale the target's output features or its input features.
    #[arg(long, value_enum, default_value_t = Side::Output)]
    pub side: Side,
    /// Linear adapters: before the target (on its input) or after it (on its output).
    #[arg(long, value_enum, default_value_t = Position::After)]
    pub position: Position,
    /// Make the adapter weights graph inputs (with their values as defaults) so a runtime can
    /// swap adapters.
    #[arg(long)]
    pub as_inputs: bool,
    /// Only print the nodes the pattern selects.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to write the result.
    #[arg(short, long, required_unless_present_any = ["dry_run", "in_place"])]
    pub output: Option<PathBuf>,
    /// Write what was inserted as JSON: `json` to standard output, or `json=FILE`.
    #[arg(long, value_name = "json[=FILE]")]
    pub report: Option<String>,
    #[command(flatten)]
    pub write: super::opt::WriteArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let spec = Spec {
        kind: a.adapter,
        rank: a.rank,
        alpha: a.alpha,
        rslora: a.rslora,
        init: Init::parse(&a.init)?,
        side: a.side,
        position: a.position,
    };
    if spec.rank == 0 {
        return Err(graft::Error::Usage("--rank must be at least 1".into()).into());
    }
    if !spec.alpha.is_finite() {
        return Err(
            graft::Error::Usage(format!("--alpha {}: give a finite number", a.alpha)).into(),
        );
    }
    let mut model = super::textio::load_any(&a.model)?;
    let opts = EmitOptions {
        as_inputs: a.as_inputs,
    };
    let report = graft::surgery::insert::insert(&mut model, &a.target, &spec, opts, a.dry_run)
        .with_context(|| format!("{}", a.model.display()))?;
    let placed = &report.placed;
    let mut o = String::new();
    outln!(
        o,
        "{} target{} for {}:",
        placed.len(),
        if placed.len() == 1 { "" } else { "s" },
        spec.kind.name()
    );
    for p in placed {
        outln!(o, "  {}  ({}, {} -> {})", p.target, p.node, p.d_in, p.d_out);
    }
    for s in &report.skipped {
        outln!(o, "  skipped {}  ({}): {}", s.target, s.node, s.reason);
    }
    if a.dry_run {
        super::opt::emit_human(&o, a.report.as_deref());
        return Ok(());
    }
    graft::ir::verify(&model.graph).context("the graph after insertion")?;
    let out = match (&a.output, a.write.in_place) {
        (Some(o), _) => o.clone(),
        (None, _) => a.model.clone(),
    };
    super::opt::save_any(model, &out, &a.model, &a.write)?;
    super::opt::emit_human(&o, a.report.as_deref());
    let tensors: usize = placed.iter().map(|p| p.tensors.len()).sum();
    let nodes: usize = placed.iter().map(|p| p.nodes_added).sum();
    eprintln!(
        "graft insert: {} -> {}: {} adapter{} ({} nodes, {} weights added)",
        a.model.display(),
        out.display(),
        placed.len(),
        if placed.len() == 1 { "" } else { "s" },
        nodes,
        tensors
    );
    if let Some(spec) = &a.report {
        super::opt::write_report(spec, &report)?;
    }
    Ok(())
}
