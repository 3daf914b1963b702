//! clap front end: subcommands, --dump-graph, --passes, reports.

/// `writeln!` into a String (cannot fail).
macro_rules! outln {
    ($o:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($t)*);
    }};
}

mod apply;
mod compile;
mod extract;
mod fold;
mod insert;
mod inspect;
mod opt;
mod run;
mod textio;
mod verify;

use clap::{Parser, Subcommand};

use graft::Error;

#[derive(Parser)]
#[command(
    name = "graft",
    version,
    about = "Compiler-style ONNX graph rewriter for model surgery",
    long_about = "graft loads an ONNX model, runs rewrite passes over it and writes the result.\n\n\
Examples:\n  graft inspect model.onnx\n  graft print model.onnx --weights summary\n  \
graft opt model.onnx --passes cleanup -o out.onnx --dump-graph\n  graft passes",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, opsets, operator histogram, parameters and data files.
    #[command(
        after_help = "Example:\n  graft inspect models/bert_base/unmerged.ts.onnx\n  graft inspect model.onnx --json"
    )]
    Inspect(inspect::Args),
    /// Print a model in ONNX's textual syntax.
    #[command(after_help = "Example:\n  graft print model.onnx --weights summary > model.onnxtxt")]
    Print(textio::PrintArgs),
    /// Convert between binary ONNX (.onnx) and ONNX text (.onnxtxt); the direction follows the
    /// output's extension.
    #[command(
        after_help = "Examples:\n  graft convert tiny.onnxtxt -o tiny.onnx\n  graft convert tiny.onnx -o tiny.onnxtxt"
    )]
    Convert(textio::ConvertArgs),
    /// Run a pipeline of passes over a model and write the result.
    #[command(after_help = opt::AFTER_HELP)]
    Opt(opt::Args),
    /// Fold every linear adapter (LoRA, DoRA, IA3, linear adapters, BatchNorm, RepVGG
    /// branches, ...) back into the base weights, check the result numerically and report.
    #[command(after_help = fold::AFTER_HELP)]
    Fold(fold::Args),
    /// Put adapters (LoRA, DoRA, IA3, linear, bottleneck) into a graph at the nodes a pattern
    /// selects.
    #[command(after_help = insert::AFTER_HELP)]
    Insert(insert::Args),
    /// Apply PEFT adapter folders (LoRA, DoRA, IA3) to an ONNX export of the base model,
    /// merged into the weights or as branches, without PyTorch.
    #[command(after_help = apply::AFTER_HELP)]
    Apply(apply::Args),
    /// Extract a LoRA adapter (PEFT folder) from a fine-tuned model by truncated SVD of each
    /// weight's change.
    #[command(after_help = extract::AFTER_HELP)]
    Extract(extract::Args),
    /// Compare two models' outputs on the CPU evaluator with the same inputs.
    #[command(
        after_help = "Example:\n  graft verify model.onnx folded.onnx\n  graft verify a.onnx b.onnx --inputs inputs.npz --tolerance 1e-5"
    )]
    Verify(verify::Args),
    /// Lower a model to WGSL compute shaders, an execution plan and a weights file that any
    /// WebGPU host can run.
    #[command(after_help = compile::AFTER_HELP)]
    Compile(compile::Args),
    /// Run a model or a compiled plan on the GPU (wgpu) or the CPU evaluator; write outputs as
    /// .npy; compare with the CPU evaluator or stored outputs.
    #[command(after_help = run::AFTER_HELP)]
    Run(run::Args),
    /// List every pass and named pipeline with its one-line summary.
    Passes,
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Print(a) => textio::print(a),
        Command::Convert(a) => textio::convert(a),
        Command::Opt(a) => opt::run(a),
        Command::Fold(a) => match fold::run(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Insert(a) => insert::run(a),
        Command::Extract(a) => extract::run(a),
        Command::Apply(a) => match apply::run(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Verify(a) => match verify::run(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Compile(a) => compile::run(a),
        Command::Run(a) => match run::run(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Passes => {
            list_passes();
            Ok(())
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Error>() {
                Some(Error::Usage(_)) => 2,
                _ => 1,
            }
        }
    }
}

/// Writes to standard output, ignoring a closed pipe (`graft print m.onnx | head`).
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn list_passes() {
    let mut o = String::new();
    outln!(o, "Passes:");
    for p in graft::passes::all() {
        outln!(o, "  {:<22} {}", p.name(), p.summary());
    }
    outln!(o, "\nNamed pipelines:");
    for (name, body, what) in graft::passes::NAMED_PIPELINES {
        outln!(o, "  {name:<22} {what}\n  {:<22} = {body}", "");
    }
    outln!(
        o,
        "\nPipeline syntax (--passes): comma-separated names; fixpoint(a,b) repeats a and b until\n\
         neither changes anything (at most {} rounds; fixpoint<N>(...) sets the cap); none runs nothing.",
        graft::driver::pipeline::DEFAULT_FIXPOINT_CAP
    );
    emit(&o);
}
