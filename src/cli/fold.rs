//! `graft fold`: fold every linear adapter back into the base weights, verify, report.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use graft::driver::{Driver, Refusal, Rewrite, Sizes};
use graft::ir::Model;
use graft::rewrite::adapters::{Leftover, leftovers};
use graft::verify::OutputDiff;
use serde::Serialize;

pub const AFTER_HELP: &str = "Examples:
  graft fold models/bert_lora/unmerged.dynamo.onnx -o bert.onnx
  graft fold model.onnx -o out.onnx --dump-graph=dumps/ --report json=fold.json
  graft fold model.onnx -o out.onnx --strict          # exit 3 if any adapter-like branch stays
  graft fold model.onnx -o out.onnx --input-shape input_ids=1,128

The fold pipeline is `shape-infer,cleanup,fixpoint(fold-linear,fold-conv,cleanup)`. After folding,
graft runs the original and the folded model on the CPU evaluator with the same deterministic
random inputs and compares every output (relative Frobenius error; tolerance f32 1e-4, f16 1e-2,
bf16 3e-2 unless --tolerance is given). If an output differs by more, nothing is written and the
exit code is 1.";

#[derive(clap::Args)]
pub struct Args {
    /// The model to fold (.onnx or .onnxtxt).
    pub model: PathBuf,
    /// Where to write the folded model.
    #[arg(short, long, required_unless_present = "in_place")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub dump: super::opt::DumpArgs,
    /// Write the fold report as JSON: `json` to standard output, or `json=FILE`.
    #[arg(long, value_name = "json[=FILE]")]
    pub report: Option<String>,
    /// Exit with 3 if any adapter-like branch is left in the graph.
    #[arg(long)]
    pub strict: bool,
    /// Skip the numerical check of the folded model against the original.
    #[arg(long)]
    pub no_verify: bool,
    /// Also check every rewrite on its own (its old nodes against its new ones on random
    /// inputs) and every pass whole (the model before and after it), and fail naming the pass
    /// and the node or output that broke equivalence. Models with over 1 GiB of weights are
    /// always checked rewrite by rewrite instead of whole.
    #[arg(long, conflicts_with = "no_verify")]
    pub verify_each: bool,
    /// Shape of an input with symbolic dims for the check, e.g. input_ids=1,128 (repeatable).
    #[arg(long, value_name = "NAME=D1,D2,...")]
    pub input_shape: Vec<String>,
    /// Inputs for the check from an .npz file (arrays named after the model's inputs).
    #[arg(long, value_name = "NPZ")]
    pub inputs: Option<PathBuf>,
    /// Calibration inputs (.npz; arrays named after the model's inputs, several batches stacked
    /// on a new first axis allowed). Lets graft fold approximate merges such as ResLoRA's input
    /// and middle shortcuts, which need activation norms; the output error on these inputs is
    /// reported (not judged against the tolerance).
    #[arg(long, value_name = "NPZ")]
    pub calibrate: Option<PathBuf>,
    /// Store every merged weight in the type it had (the default).
    #[arg(long, conflicts_with = "merge_dtype")]
    pub keep_dtype: bool,
    /// Store merged float16/bfloat16 weights in this type instead (only `f32`), running those
    /// linears in float32 between two Casts: the adapter's delta is not rounded away when it
    /// is small next to the weight (see the delta fidelity in the report).
    #[arg(long, value_name = "f32")]
    pub merge_dtype: Option<String>,
    /// Relative Frobenius error allowed per output (default by dtype: f32 1e-4, f16 1e-2,
    /// bf16 3e-2).
    #[arg(long)]
    pub tolerance: Option<f64>,
    #[command(flatten)]
    pub write: super::opt::WriteArgs,
}

/// Models with more weight bytes than this are checked rewrite by rewrite, not whole.
const WHOLE_MODEL_LIMIT: u64 = 1 << 30;

#[derive(Serialize)]
struct Totals {
    nodes: usize,
    initializers: usize,
    parameters: u64,
    bytes: u64,
    /// Estimated multiply-adds for one run on the verification inputs, divided by the number
    /// of tokens (or images) in them.
    macs_per_sample: Option<f64>,
}

#[derive(Serialize)]
struct Verification {
    mode: String,
    inputs: String,
    outputs: Vec<OutputDiff>,
    passed: bool,
}

#[derive(Serialize)]
struct FoldReport {
    input: String,
    output: String,
    pipeline: String,
    folded: Vec<Rewrite>,
    left_in_place: Vec<Leftover>,
    refusals: Vec<Refusal>,
    before: Totals,
    after: Totals,
    verification: Option<Verification>,
    warnings: Vec<String>,
}

fn totals(model: &Model, shapes: &[(String, i32, Vec<i64>)]) -> Totals {
    let s = Sizes::of(model);
    Totals {
        nodes: s.nodes,
        initializers: s.initializers,
        parameters: s.parameters,
        bytes: s.bytes,
        macs_per_sample: graft::rewrite::cost::macs(model).map(|m| {
            let samples = shapes
                .first()
                .map(|(_, dt, d)| {
                    // Token inputs [batch, seq]: per token; images [N, C, H, W]: per image.
                    if matches!(*dt, 6 | 7) {
                        d.iter().product::<i64>()
                    } else {
                        d.first().copied().unwrap_or(1)
                    }
                })
                .unwrap_or(1)
                .max(1);
            m as f64 / samples as f64
        }),
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let out = match (&a.output, a.write.in_place) {
        (Some(o), _) => o.clone(),
        (None, _) => a.model.clone(),
    };
    let overrides = graft::verify::parse_input_shapes(&a.input_shape)?;
    let original = super::textio::load_any(&a.model)?;
    for name in overrides.keys() {
        if !original
            .graph
            .inputs
            .iter()
            .any(|p| &original.graph.value(p.value).name == name)
        {
            return Err(graft::Error::Usage(format!(
                "--input-shape: the model has no input named '{name}'"
            ))
            .into());
        }
    }
    let shapes = graft::verify::input_shapes(&original, &overrides)?;
    let mut model = original.clone();
    let steps = graft::passes::parse_pipeline("fold")?;
    let lookup = graft::passes::lookup;
    let mut driver = Driver::new(&lookup);
    let weight_bytes = Sizes::of(&original).bytes;
    let too_big = weight_bytes > WHOLE_MODEL_LIMIT;
    driver.verify_rewrites = !a.no_verify && (a.verify_each || too_big);
    driver.merge_dtype = match a.merge_dtype.as_deref() {
        None => None,
        Some("f32" | "float32" | "float") => Some(graft::ir::dtype::code::FLOAT),
        Some(other) => {
            return Err(graft::Error::Usage(format!(
                "--merge-dtype {other}: the only choice is f32"
            ))
            .into());
        }
    };
    let calibration = match &a.calibrate {
        Some(p) => {
            let batches = graft::verify::calibration_batches(p, &shapes)?;
            let norms = graft::verify::activation_norms(&original, &batches)
                .context("measuring activation norms on the calibration inputs")?;
            driver.calibration = Some(std::sync::Arc::new(norms));
            Some(batches)
        }
        None => None,
    };
    if a.verify_each && !too_big {
        // Every pass is also checked whole, on the inputs the final check uses.
        driver.check_inputs = Some(match &a.inputs {
            Some(p) => graft::verify::npz_inputs(p, &shapes)?,
            None => graft::verify::random_inputs(&shapes, 0)?,
        });
    }
    a.dump.install(&mut driver)?;
    let run = driver.run(&mut model, &steps)?;
    drop(driver);

    // What was folded, what stayed and why.
    let mut folded = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    for s in &run.steps {
        folded.extend(s.details.iter().cloned());
        for r in &s.refusals {
            if s.pass.starts_with("fold") && !refusals.contains(r) {
                refusals.push(r.clone());
            }
        }
    }
    let reasons: HashMap<String, String> = refusals
        .iter()
        .map(|r| (r.node.clone(), r.reason.clone()))
        .collect();
    let left = leftovers(&model.graph, &reasons);

    // Numerical check.
    let mut verification = None;
    let mut failed = false;
    let folded_ref = &folded;
    let _ = folded_ref;
    let approximate = folded.iter().any(|f| f.method.contains("approximate"));
    if let (true, Some(batches)) = (approximate, &calibration) {
        // Approximate merges are judged on the calibration data: report the error there.
        let mut worst: Vec<OutputDiff> = Vec::new();
        for batch in batches {
            let ya = graft::verify::run(&original, batch).context("running the original model")?;
            let yb = graft::verify::run(&model, batch).context("running the folded model")?;
            for d in graft::verify::compare(&ya, &yb, Some(f64::INFINITY))? {
                match worst.iter_mut().find(|w| w.name == d.name) {
                    Some(w) if w.rel_fro >= d.rel_fro => {}
                    Some(w) => *w = d,
                    None => worst.push(d),
                }
            }
        }
        for w in worst.iter_mut() {
            if let Some(t) = a.tolerance {
                w.tolerance = t;
                w.ok = w.rel_fro <= t;
            }
        }
        failed = worst.iter().any(|d| !d.ok);
        verification = Some(Verification {
            mode: "calibration inputs (approximate merges: worst error over the batches, reported; judged only with --tolerance)".into(),
            inputs: format!("{} batches from {}", batches.len(), a.calibrate.as_ref().expect("set").display()),
            outputs: worst,
            passed: !failed,
        });
    } else if !a.no_verify {
        if too_big {
            verification = Some(Verification {
                mode: "rewrite by rewrite".into(),
                inputs: format!(
                    "random inputs per rewrite (the model has {weight_bytes} bytes of weights; whole-model checks run up to 1 GiB)"
                ),
                outputs: vec![],
                passed: true,
            });
        } else {
            let (inputs, desc) = match &a.inputs {
                Some(p) => (
                    graft::verify::npz_inputs(p, &shapes)?,
                    format!("{}", p.display()),
                ),
                None => (
                    graft::verify::random_inputs(&shapes, 0)?,
                    format!(
                        "random, seed 0, shapes {}",
                        shapes
                            .iter()
                            .map(|(n, _, d)| format!("{n}={d:?}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                ),
            };
            let ya =
                graft::verify::run(&original, &inputs).context("running the original model")?;
            let yb = graft::verify::run(&model, &inputs).context("running the folded model")?;
            let diffs = graft::verify::compare(&ya, &yb, a.tolerance)?;
            failed = diffs.iter().any(|d| !d.ok);
            verification = Some(Verification {
                mode: if a.verify_each {
                    "whole model, and rewrite by rewrite".into()
                } else {
                    "whole model".into()
                },
                inputs: desc,
                outputs: diffs,
                passed: !failed,
            });
        }
    }

    let report = FoldReport {
        input: a.model.display().to_string(),
        output: out.display().to_string(),
        pipeline: run.pipeline.clone(),
        before: totals(&original, &shapes),
        after: totals(&model, &shapes),
        folded,
        left_in_place: left,
        refusals,
        verification,
        warnings: run.warnings.clone(),
    };
    print_human(&report);
    if let Some(spec) = &a.report {
        super::opt::write_report(spec, &report)?;
    }
    if failed {
        anyhow::bail!(
            "the folded model's outputs differ from the original's beyond the tolerance; nothing was written"
        );
    }
    super::opt::save_any(model, &out, &a.model, &a.write)?;
    if a.strict && !report.left_in_place.is_empty() {
        eprintln!(
            "error: --strict: {} adapter-like branch(es) left in place (the folded model was written)",
            report.left_in_place.len()
        );
        return Ok(3);
    }
    Ok(0)
}

fn print_human(r: &FoldReport) {
    let mut o = String::new();
    outln!(o, "graft fold: {} -> {}", r.input, r.output);
    if r.folded.is_empty() {
        outln!(o, "folded: nothing");
    } else {
        outln!(o, "folded ({}):", r.folded.len());
        for f in &r.folded {
            let rank = f.rank.map(|r| format!(", rank {r}")).unwrap_or_default();
            let fid = f
                .delta_fidelity
                .map(|d| format!(", delta fidelity {d:.1e} after rounding to the stored type"))
                .unwrap_or_default();
            outln!(
                o,
                "  {} into {}{rank}: {} parameters removed, {} -> {} multiply-adds per row{fid}",
                f.method,
                f.target,
                f.parameters_removed,
                f.macs_before,
                f.macs_after
            );
        }
    }
    if !r.left_in_place.is_empty() {
        outln!(o, "left in place ({}):", r.left_in_place.len());
        for l in &r.left_in_place {
            outln!(
                o,
                "  rank-{} branch {} -> {}: {}",
                l.rank,
                l.down,
                l.up,
                l.reason
            );
        }
    }
    let fmt_macs = |t: &Totals| {
        t.macs_per_sample
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "?".into())
    };
    outln!(
        o,
        "totals: nodes {} -> {}, parameters {} -> {}, bytes {} -> {}, multiply-adds per token/image {} -> {}",
        r.before.nodes,
        r.after.nodes,
        r.before.parameters,
        r.after.parameters,
        r.before.bytes,
        r.after.bytes,
        fmt_macs(&r.before),
        fmt_macs(&r.after)
    );
    if let Some(v) = &r.verification {
        outln!(o, "verification ({}; inputs: {}):", v.mode, v.inputs);
        for d in &v.outputs {
            outln!(
                o,
                "  {}: relative error {:.2e}, max abs {:.2e} (tolerance {:.0e}) {}",
                d.name,
                d.rel_fro,
                d.max_abs,
                d.tolerance,
                if d.ok { "ok" } else { "FAILED" }
            );
        }
    }
    for w in &r.warnings {
        outln!(o, "warning: {w}");
    }
    eprint!("{o}");
}
