//! `graft apply`: apply PEFT adapters to an ONNX base model.

use std::path::PathBuf;

use anyhow::Context;
use graft::surgery::apply::{BaseWeights, WeightedAdapter, apply};

pub const AFTER_HELP: &str = "Examples:
  graft apply models/bert_base/unmerged.ts.onnx --peft models/bert_lora/adapter -o bert_lora.onnx
  graft apply base.onnx --peft a/ --peft b/ --weights 0.7,0.3 -o mixed.onnx
  graft apply base.onnx --peft adapter/ --no-fold -o branches.onnx
  graft apply base.dynamo.onnx --peft adapter/ --base-weights model.safetensors -o out.onnx

Reads adapter_config.json and adapter_model.safetensors (LoRA, rsLoRA, DoRA, IA3, LoRA on
embeddings and convolutions; r, lora_alpha, use_rslora, rank_pattern, alpha_pattern,
fan_in_fan_out, target_modules, feedforward_modules are honoured). Each adapted module is found
by its module path in the scope the exporter recorded (node names, dynamo metadata, weight
names) and confirmed by shape; with --base-weights, modules the export lost the names of are
found by comparing the checkpoint's weight with the node's. A module that matches no node or
several is an error; nothing is skipped.

By default the deltas are merged into the weights: only the adapted weights change (a weight
other nodes share, such as a tied embedding, is cloned first). With --no-fold the adapters
become branches, as `graft insert` builds them. Unless --no-verify, graft also builds the other
form and checks that both give the same outputs on the CPU evaluator.";

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX export of the base model (.onnx or .onnxtxt).
    pub model: PathBuf,
    /// A PEFT adapter folder (repeatable).
    #[arg(long, required = true, value_name = "DIR")]
    pub peft: Vec<PathBuf>,
    /// Weight of each adapter, in --peft order (default 1 each): ΔW = Σ wᵢ·ΔWᵢ.
    #[arg(long, value_delimiter = ',', value_name = "W1,W2,...")]
    pub weights: Vec<f64>,
    /// The base model's weights (safetensors), to find modules whose names the export lost.
    #[arg(long, value_name = "FILE")]
    pub base_weights: Option<PathBuf>,
    /// Insert the adapters as branches instead of merging them into the weights.
    #[arg(long)]
    pub no_fold: bool,
    /// Skip the check of merged against branch outputs.
    #[arg(long)]
    pub no_verify: bool,
    /// Shape of an input with symbolic dims for the check, e.g. input_ids=1,128 (repeatable).
    #[arg(long, value_name = "NAME=D1,D2,...")]
    pub input_shape: Vec<String>,
    /// Where to write the result.
    #[arg(short, long, required_unless_present = "in_place")]
    pub output: Option<PathBuf>,
    /// Write what was applied as JSON: `json` to standard output, or `json=FILE`.
    #[arg(long, value_name = "json[=FILE]")]
    pub report: Option<String>,
    #[command(flatten)]
    pub write: super::opt::WriteArgs,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if !a.weights.is_empty() && a.weights.len() != a.peft.len() {
        return Err(graft::Error::Usage(format!(
            "--weights has {} values for {} --peft folders",
            a.weights.len(),
            a.peft.len()
        ))
        .into());
    }
    if let Some(w) = a.weights.iter().find(|w| !w.is_finite()) {
        return Err(graft::Error::Usage(format!("--weights: {w} is not a finite number")).into());
    }
    let mut adapters = Vec::new();
    for (i, dir) in a.peft.iter().enumerate() {
        adapters.push(WeightedAdapter {
            adapter: graft::peft::read_adapter(dir)?,
            weight: a.weights.get(i).copied().unwrap_or(1.0),
        });
    }
    let base = a
        .base_weights
        .as_deref()
        .map(BaseWeights::read)
        .transpose()?;
    let original = super::textio::load_any(&a.model)?;
    let mut model = original.clone();
    let applied = apply(&mut model, &adapters, base.as_ref(), !a.no_fold)
        .with_context(|| format!("applying to {}", a.model.display()))?;
    graft::ir::verify(&model.graph).context("the graph after applying")?;

    let mut o = String::new();
    outln!(
        o,
        "{} module{} applied:",
        applied.len(),
        if applied.len() == 1 { "" } else { "s" }
    );
    for m in &applied {
        let w = if m.weight != 1.0 {
            format!(", weight {}", m.weight)
        } else {
            String::new()
        };
        outln!(
            o,
            "  {}  {} r={} s={:.4}{w} -> {} (by {})",
            m.module,
            m.kind,
            m.rank,
            m.scale,
            m.node,
            m.matched_by
        );
    }
    let mut code = 0;
    if !a.no_verify {
        let mut other = original.clone();
        if let Err(e) = apply(&mut other, &adapters, base.as_ref(), a.no_fold) {
            eprintln!("warning: check skipped: the other form cannot be built: {e}");
            return finish(a, model, &applied, o, adapters.len());
        }
        let overrides = graft::verify::parse_input_shapes(&a.input_shape)?;
        let shapes = graft::verify::input_shapes(&original, &overrides)?;
        let inputs = graft::verify::random_inputs(&shapes, 0)?;
        let ya = graft::verify::run(&model, &inputs).context("running the result")?;
        let yb = graft::verify::run(&other, &inputs).context("running the other form")?;
        let diffs = graft::verify::compare(&ya, &yb, None)?;
        outln!(
            o,
            "check: merged and branch forms on random inputs (CPU evaluator):"
        );
        for d in &diffs {
            outln!(
                o,
                "  {}: relative error {:.3e}, max abs {:.3e} (tolerance {:.0e}) {}",
                d.name,
                d.rel_fro,
                d.max_abs,
                d.tolerance,
                if d.ok { "ok" } else { "FAILED" }
            );
        }
        if !diffs.iter().all(|d| d.ok) {
            code = 1;
        }
    }
    super::opt::emit_human(&o, a.report.as_deref());
    if code != 0 {
        eprintln!("error: the merged and branch forms disagree; nothing written");
        return Ok(code);
    }
    finish(a, model, &applied, String::new(), adapters.len())
}

/// Prints `o`, writes the result and the report.
fn finish(
    a: Args,
    model: graft::ir::Model,
    applied: &[graft::surgery::apply::Applied],
    o: String,
    n_adapters: usize,
) -> anyhow::Result<i32> {
    super::opt::emit_human(&o, a.report.as_deref());
    let out = match (&a.output, a.write.in_place) {
        (Some(o), _) => o.clone(),
        (None, _) => a.model.clone(),
    };
    super::opt::save_any(model, &out, &a.model, &a.write)?;
    eprintln!(
        "graft apply: {} + {} adapter{} -> {} ({})",
        a.model.display(),
        n_adapters,
        if n_adapters == 1 { "" } else { "s" },
        out.display(),
        if a.no_fold { "branches" } else { "merged" }
    );
    if let Some(spec) = &a.report {
        super::opt::write_report(spec, &applied)?;
    }
    Ok(0)
}
