//! The pass manager: a registry of passes, pipelines with fixed-point groups, per-pass statistics,
//! dump instrumentation (`--dump-graph`) and the IR verifier after every pass.

pub mod pipeline;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ir::Model;
pub use pipeline::Step;

/// A graph rewrite. Each pass's doc comment says what it rewrites, when it refuses and why it is
/// sound; `summary` is the one line `graft passes` shows.
pub trait Pass: Send + Sync {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// Rewrites the model; returns how many rewrites it applied (0 means nothing changed).
    /// On error the driver restores the model as it was before the pass.
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<usize>;
}

/// Something a pass chose not to rewrite, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Refusal {
    pub pass: String,
    pub node: String,
    pub reason: String,
}

/// One rewrite a pass applied, described for reports (the fold report lists these).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rewrite {
    pub pass: String,
    /// What was recognised, e.g. "low-rank branch + feature scale".
    pub method: String,
    /// The node whose weights absorbed the rewrite.
    pub target: String,
    pub rank: Option<usize>,
    pub parameters_removed: i64,
    /// Multiply-adds per row (or per output pixel) before and after.
    pub macs_before: u64,
    pub macs_after: u64,
    pub nodes_removed: usize,
    /// For float16/bfloat16 weights: how much of the weight change survived rounding to the
    /// stored type, as ‖(W'ᵣ − W) − ΔW‖ / ‖ΔW‖ (0 is perfect).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_fidelity: Option<f64>,
}

/// What passes can read and report while they run.
#[derive(Default)]
pub struct PassContext {
    pass: String,
    pub refusals: Vec<Refusal>,
    pub rewrites: Vec<Rewrite>,
    /// Check every rewrite numerically (its old nodes against its new ones on random inputs);
    /// passes that rewrite regions do this and fail naming the region when it does not hold.
    pub verify_rewrites: bool,
    /// Mean Frobenius norms of the model's values on calibration inputs (`--calibrate`), by
    /// value name; lets folds approximate one input of a region by a scaled other one.
    pub calibration: Option<std::sync::Arc<std::collections::HashMap<String, f64>>>,
    /// Element type merged float16/bfloat16 weights are stored in (`--merge-dtype f32`);
    /// `None` keeps each weight's type.
    pub merge_dtype: Option<i32>,
}

impl PassContext {
    /// Checks a rewrite when `verify_rewrites` is on: `old` nodes of `before` against `new`
    /// nodes of `after`. Fails naming `what` when an output differs beyond single-layer
    /// tolerance (f32 1e-5, f16 2e-3, bf16 1e-2 relative Frobenius error).
    #[allow(clippy::too_many_arguments)]
    pub fn check_rewrite(
        &self,
        what: &str,
        before: &crate::ir::Graph,
        old: &[crate::ir::NodeId],
        after: &crate::ir::Graph,
        new: &[crate::ir::NodeId],
        sources: &[(crate::ir::ValueId, Option<u64>)],
        outputs: &[crate::ir::ValueId],
        opset: i64,
    ) -> Result<()> {
        if !self.verify_rewrites {
            return Ok(());
        }
        let dtype = outputs
            .first()
            .and_then(|&o| crate::rewrite::types::elem_type(before, o))
            .unwrap_or(crate::ir::dtype::code::FLOAT);
        let tol = match dtype {
            crate::ir::dtype::code::FLOAT16 => 2e-3,
            crate::ir::dtype::code::BFLOAT16 => 1e-2,
            _ => 1e-5,
        };
        let diffs =
            crate::verify::check_rewrite(before, old, after, new, sources, outputs, opset, tol)
                .map_err(|e| Error::Pass {
                    pass: self.pass.clone(),
                    msg: format!("cannot check the rewrite of {what}: {e}"),
                })?;
        if let Some(d) = diffs.iter().find(|d| !d.ok) {
            return Err(Error::Pass {
                pass: self.pass.clone(),
                msg: format!(
                    "the rewrite of {what} broke equivalence: output '{}' differs by {:.2e} (relative; tolerance {:.0e})",
                    d.name, d.rel_fro, d.tolerance
                ),
            });
        }
        Ok(())
    }

    /// Records a rewrite for the report (the pass name is filled in).
    pub fn rewrote(&mut self, mut r: Rewrite) {
        r.pass = self.pass.clone();
        self.rewrites.push(r);
    }

    /// Records that `node` was left alone for `reason` (shown in dumps and reports).
    pub fn refuse(&mut self, node: impl Into<String>, reason: impl Into<String>) {
        let r = Refusal {
            pass: self.pass.clone(),
            node: node.into(),
            reason: reason.into(),
        };
        if !self.refusals.contains(&r) {
            self.refusals.push(r);
        }
    }
}

/// Graph size figures.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Sizes {
    pub nodes: usize,
    pub initializers: usize,
    pub parameters: u64,
    pub bytes: u64,
}

impl Sizes {
    pub fn of(model: &Model) -> Sizes {
        let (parameters, bytes) = model.graph.parameter_stats();
        Sizes {
            nodes: model.graph.node_count(),
            initializers: model.graph.initializers().count(),
            parameters,
            bytes,
        }
    }
}

/// Statistics of one pass run.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub pass: String,
    /// Iteration within its fixpoint group (1-based), if any.
    pub iteration: Option<usize>,
    pub rewrites: usize,
    pub before: Sizes,
    pub after: Sizes,
    pub refusals: Vec<Refusal>,
    /// The rewrites it described (passes that fold adapters describe each one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Rewrite>,
}

/// Statistics of a whole pipeline run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    pub steps: Vec<StepReport>,
    pub warnings: Vec<String>,
    pub before: Sizes,
    pub after: Sizes,
}

/// A point at which the driver shows the graph.
pub enum DumpPoint<'a> {
    Input,
    After(&'a StepReport),
}

pub type DumpFn<'a> = dyn FnMut(usize, &DumpPoint, &Model) -> Result<()> + 'a;

/// Runs pipelines over a model.
pub struct Driver<'a> {
    lookup: &'a dyn Fn(&str) -> Option<&'static dyn Pass>,
    /// Called before the first pass and after each pass that changed something or refused
    /// something (or every pass with `dump_all`). The first argument counts dumps from 0.
    pub dump: Option<Box<DumpFn<'a>>>,
    pub dump_all: bool,
    /// Run the IR verifier after every pass (always on in debug builds).
    pub verify_ir: bool,
    /// Ask passes to check each rewrite numerically (`--verify-each`).
    pub verify_rewrites: bool,
    /// Calibration norms handed to passes.
    pub calibration: Option<std::sync::Arc<std::collections::HashMap<String, f64>>>,
    /// Handed to passes as `PassContext::merge_dtype`.
    pub merge_dtype: Option<i32>,
    /// With inputs, every pass that rewrote something is checked whole: the model before and
    /// after it run on these inputs, and a pass that changes an output beyond the tolerance
    /// for its type fails (and is undone), naming the output (`--verify-each` on models small
    /// enough to run; passes that rewrite regions also check each rewrite on its own).
    pub check_inputs: Option<Vec<(String, crate::eval::TensorValue)>>,
    dumps: usize,
}

impl<'a> Driver<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<&'static dyn Pass>) -> Self {
        Driver {
            lookup,
            dump: None,
            dump_all: false,
            verify_ir: cfg!(debug_assertions),
            verify_rewrites: false,
            calibration: None,
            merge_dtype: None,
            check_inputs: None,
            dumps: 0,
        }
    }

    pub fn run(&mut self, model: &mut Model, steps: &[Step]) -> Result<RunReport> {
        let mut report = RunReport {
            pipeline: pipeline::display(steps),
            before: Sizes::of(model),
            ..Default::default()
        };
        self.emit(&DumpPoint::Input, model)?;
        self.run_steps(model, steps, None, &mut report)?;
        report.after = Sizes::of(model);
        Ok(report)
    }

    fn emit(&mut self, point: &DumpPoint, model: &Model) -> Result<()> {
        if let Some(d) = self.dump.as_mut() {
            d(self.dumps, point, model)?;
            self.dumps += 1;
        }
        Ok(())
    }

    /// Runs steps once; returns total rewrites.
    fn run_steps(
        &mut self,
        model: &mut Model,
        steps: &[Step],
        iteration: Option<usize>,
        report: &mut RunReport,
    ) -> Result<usize> {
        let mut total = 0;
        for step in steps {
            match step {
                Step::Pass(name) => {
                    let pass = (self.lookup)(name)
                        .ok_or_else(|| Error::Usage(format!("unknown pass '{name}'")))?;
                    let r = self.run_pass(model, pass, iteration)?;
                    total += r.rewrites;
                    let show = r.rewrites > 0 || !r.refusals.is_empty() || self.dump_all;
                    report.steps.push(r);
                    if show {
                        let last = report.steps.last().expect("pushed").clone();
                        self.emit(&DumpPoint::After(&last), model)?;
                    }
                }
                Step::Fixpoint {
                    steps,
                    max_iterations,
                } => {
                    let mut converged = false;
                    for it in 1..=*max_iterations {
                        let n = self.run_steps(model, steps, Some(it), report)?;
                        total += n;
                        if n == 0 {
                            converged = true;
                            break;
                        }
                    }
                    if !converged {
                        report.warnings.push(format!(
                            "{} did not converge after {max_iterations} iterations; the result is valid but may not be fully simplified",
                            pipeline::display(std::slice::from_ref(step))
                        ));
                    }
                }
            }
        }
        Ok(total)
    }

    fn run_pass(
        &mut self,
        model: &mut Model,
        pass: &dyn Pass,
        iteration: Option<usize>,
    ) -> Result<StepReport> {
        let before = Sizes::of(model);
        let backup = model.clone();
        let mut cx = PassContext {
            pass: pass.name().to_string(),
            verify_rewrites: self.verify_rewrites,
            calibration: self.calibration.clone(),
            merge_dtype: self.merge_dtype,
            ..Default::default()
        };
        let outcome = pass.run(model, &mut cx).and_then(|n| {
            if self.verify_ir {
                crate::ir::verify(&model.graph).map_err(|e| Error::Pass {
                    pass: pass.name().into(),
                    msg: format!("left an invalid graph: {e}"),
                })?;
            }
            Ok(n)
        });
        let outcome = outcome.and_then(|n| {
            if n > 0
                && let Some(inputs) = &self.check_inputs
            {
                check_pass(&backup, model, inputs).map_err(|msg| Error::Pass {
                    pass: pass.name().into(),
                    msg,
                })?;
            }
            Ok(n)
        });
        let rewrites = match outcome {
            Ok(n) => n,
            Err(e) => {
                *model = backup;
                return Err(match e {
                    Error::Pass { .. } => e,
                    other => Error::Pass {
                        pass: pass.name().into(),
                        msg: other.to_string(),
                    },
                });
            }
        };
        Ok(StepReport {
            pass: pass.name().into(),
            iteration,
            rewrites,
            before,
            after: Sizes::of(model),
            refusals: cx.refusals,
            details: cx.rewrites,
        })
    }
}

/// Runs `before` and `after` on `inputs` and says which output a pass changed beyond the
/// whole-network tolerance for its type.
fn check_pass(
    before: &Model,
    after: &Model,
    inputs: &[(String, crate::eval::TensorValue)],
) -> std::result::Result<(), String> {
    let run = |m: &Model, which: &str| {
        crate::verify::run(m, inputs).map_err(|e| format!("running the model {which} it: {e}"))
    };
    let (ya, yb) = (run(before, "before")?, run(after, "after")?);
    let diffs = crate::verify::compare(&ya, &yb, None).map_err(|e| e.to_string())?;
    match diffs.iter().find(|d| !d.ok) {
        None => Ok(()),
        Some(d) => Err(format!(
            "changed output '{}' by {:.2e} (relative Frobenius error; tolerance {:.0e}) on the \
             check inputs",
            d.name, d.rel_fro, d.tolerance
        )),
    }
}
