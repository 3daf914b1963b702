//! `graft verify A B`: run both models on the CPU evaluator with the same inputs and compare.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The reference model.
    pub a: PathBuf,
    /// The model to compare with it.
    pub b: PathBuf,
    /// Inputs from an .npz file (arrays named after the model's inputs); default: random.
    #[arg(long, value_name = "NPZ")]
    pub inputs: Option<PathBuf>,
    /// Shape of an input with symbolic dims, e.g. input_ids=1,128 (repeatable).
    #[arg(long, value_name = "NAME=D1,D2,...")]
    pub input_shape: Vec<String>,
    /// Relative Frobenius error allowed per output (default by dtype: f32 1e-4, f16 1e-2,
    /// bf16 3e-2).
    #[arg(long)]
    pub tolerance: Option<f64>,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let overrides = graft::verify::parse_input_shapes(&a.input_shape)?;
    let ma = super::textio::load_any(&a.a)?;
    let mb = super::textio::load_any(&a.b)?;
    let shapes = graft::verify::input_shapes(&ma, &overrides)?;
    let inputs = match &a.inputs {
        Some(p) => graft::verify::npz_inputs(p, &shapes)?,
        None => graft::verify::random_inputs(&shapes, 0)?,
    };
    let ya =
        graft::verify::run(&ma, &inputs).with_context(|| format!("running {}", a.a.display()))?;
    let yb =
        graft::verify::run(&mb, &inputs).with_context(|| format!("running {}", a.b.display()))?;
    let diffs = graft::verify::compare(&ya, &yb, a.tolerance)?;
    let mut o = String::new();
    for d in &diffs {
        outln!(
            o,
            "{}: relative error {:.3e}, max abs {:.3e} (tolerance {:.0e}) {}",
            d.name,
            d.rel_fro,
            d.max_abs,
            d.tolerance,
            if d.ok { "ok" } else { "FAILED" }
        );
    }
    super::emit(&o);
    if diffs.iter().all(|d| d.ok) {
        Ok(0)
    } else {
        eprintln!("error: outputs differ beyond the tolerance");
        Ok(1)
    }
}
