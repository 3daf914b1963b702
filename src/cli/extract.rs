//! `graft extract`: pull a LoRA adapter out of a fine-tuned model.

use std::path::PathBuf;

use anyhow::Context;
use graft::lowrank::RankRule;
use graft::surgery::apply::{WeightedAdapter, apply};
use graft::surgery::extract::extract;

pub const AFTER_HELP: &str = "Examples:
  graft extract base.onnx tuned.onnx --rank 16 -o adapter/
  graft extract base.onnx tuned.onnx --energy 0.99 -o adapter/ --report json=extract.json
  graft extract models/bert_base/unmerged.ts.onnx models/bert_full_ft/unmerged.ts.onnx \\
      --rank 8 --strip-prefix m. -o adapter/

Both models must be the same export of the same architecture: same operators, attributes and
wiring; only constant values may differ. For every MatMul/Gemm weight, Conv kernel and
embedding table that changed, the delta is truncated by SVD (exact for small matrices, a
randomized range finder for large ones) and written as a PEFT LoRA folder with scale 1
(lora_alpha = r; rank_pattern/alpha_pattern where --energy picks different ranks). Other
changed constants (biases, norms) cannot be carried by LoRA and are listed.

Reported per layer: rank, energy kept (sum of kept squared singular values over the total),
relative Frobenius error of the delta, and how large the delta is relative to the weight. Then
the adapter is applied back to the base (as `graft apply` does) and compared with the tuned
model on random inputs on the CPU evaluator.

Module paths are the scopes the exporter recorded; --strip-prefix removes an export wrapper's
prefix (such as `m.`) so the paths match the PyTorch model PEFT will load the adapter into.";

#[derive(clap::Args)]
pub struct Args {
    /// The base model.
    pub base: PathBuf,
    /// The fine-tuned model (same export of the same architecture).
    pub tuned: PathBuf,
    /// Keep this many singular values per layer.
    #[arg(long, conflicts_with = "energy", required_unless_present = "energy")]
    pub rank: Option<usize>,
    /// Keep, per layer, the fewest singular values whose squared sum reaches this fraction of
    /// the delta's squared Frobenius norm (0 < E <= 1).
    #[arg(long)]
    pub energy: Option<f64>,
    /// Remove this prefix from module scopes to get PEFT module paths.
    #[arg(long, default_value = "", value_name = "PREFIX")]
    pub strip_prefix: String,
    /// Skip the end-to-end check of base + adapter against the tuned model.
    #[arg(long)]
    pub no_verify: bool,
    /// Shape of an input with symbolic dims for the check, e.g. input_ids=1,128 (repeatable).
    #[arg(long, value_name = "NAME=D1,D2,...")]
    pub input_shape: Vec<String>,
    /// The adapter folder to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Write the per-layer report as JSON: `json` to standard output, or `json=FILE`.
    #[arg(long, value_name = "json[=FILE]")]
    pub report: Option<String>,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    extraction: &'a graft::surgery::extract::Extraction,
    outputs: Vec<graft::verify::OutputDiff>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let rule = match (a.rank, a.energy) {
        (Some(0), _) => {
            return Err(graft::Error::Usage("--rank must be at least 1".into()).into());
        }
        (Some(r), _) => RankRule::Fixed(r),
        (None, Some(e)) if e > 0.0 && e <= 1.0 => RankRule::Energy(e),
        (None, Some(e)) => {
            return Err(
                graft::Error::Usage(format!("--energy {e}: give a fraction in (0, 1]")).into(),
            );
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let base = super::textio::load_any(&a.base)?;
    let tuned = super::textio::load_any(&a.tuned)?;
    let x = extract(&base, &tuned, rule, &a.strip_prefix)
        .with_context(|| format!("{} against {}", a.tuned.display(), a.base.display()))?;
    let mut o = String::new();
    outln!(
        o,
        "{:<48} {:>12} {:>5} {:>10} {:>11} {:>10}",
        "module",
        "shape",
        "rank",
        "energy",
        "delta err",
        "|dW|/|W|"
    );
    for l in &x.layers {
        outln!(
            o,
            "{:<48} {:>12} {:>5} {:>10.6} {:>11.3e} {:>10.3e}",
            l.module,
            format!("{}x{}", l.shape[0], l.shape[1]),
            l.rank,
            l.energy_kept,
            l.delta_rel_error,
            l.delta_rel_size
        );
    }
    if x.unchanged > 0 {
        outln!(o, "{} target weights did not change", x.unchanged);
    }
    for n in &x.not_carried {
        outln!(
            o,
            "not carried: {} changed by {:.3e} (relative): {}",
            n.tensor,
            n.rel_change,
            n.why
        );
    }
    graft::peft::write_lora_adapter(&a.output, &x.modules, None)?;
    let mut outputs = Vec::new();
    if !a.no_verify {
        let adapter = graft::peft::read_adapter(&a.output)?;
        let mut applied = base.clone();
        apply(
            &mut applied,
            &[WeightedAdapter {
                adapter,
                weight: 1.0,
            }],
            None,
            true,
        )
        .context("applying the extracted adapter to the base")?;
        let overrides = graft::verify::parse_input_shapes(&a.input_shape)?;
        let shapes = graft::verify::input_shapes(&tuned, &overrides)?;
        let inputs = graft::verify::random_inputs(&shapes, 0)?;
        let ya = graft::verify::run(&tuned, &inputs).context("running the tuned model")?;
        let yb = graft::verify::run(&applied, &inputs).context("running base + adapter")?;
        outputs = graft::verify::compare(&ya, &yb, Some(f64::INFINITY))?;
        outln!(
            o,
            "base + adapter against the tuned model (random inputs, CPU evaluator):"
        );
        for d in &outputs {
            outln!(
                o,
                "  {}: relative error {:.3e}, max abs {:.3e}",
                d.name,
                d.rel_fro,
                d.max_abs
            );
        }
    }
    super::opt::emit_human(&o, a.report.as_deref());
    eprintln!(
        "graft extract: {} layer{} -> {}",
        x.layers.len(),
        if x.layers.len() == 1 { "" } else { "s" },
        a.output.display()
    );
    if let Some(spec) = &a.report {
        super::opt::write_report(
            spec,
            &Report {
                extraction: &x,
                outputs,
            },
        )?;
    }
    Ok(())
}
