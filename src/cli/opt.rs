//! `graft opt`: run a pipeline of passes and write the result.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use graft::driver::{Driver, DumpPoint, RunReport};
use graft::ir::Model;
use graft::onnx::{ExternalMode, SaveOptions};

use super::textio::{self, Weights};

pub const AFTER_HELP: &str = "Examples:
  graft opt model.onnx --passes dce,cse -o out.onnx
  graft opt model.onnx --passes 'fixpoint(eliminate-identity,cse,dce)' -o out.onnx --dump-graph
  graft opt model.onnx --passes cleanup -o out.onnx --dump-graph=dumps/ --report json=report.json
  graft opt big.onnx --passes dce -o out/big.onnx --external-data big.weights

Pipelines: comma-separated pass names; fixpoint(a,b) repeats until nothing changes (capped at 32
rounds, fixpoint<N>(...) to change it); `none` runs nothing. `graft passes` lists them all.";

#[derive(clap::Args)]
pub struct Args {
    /// The input model (.onnx or .onnxtxt).
    pub model: PathBuf,
    /// Where to write the result (.onnx, or .onnxtxt for text).
    #[arg(short, long, required_unless_present = "in_place")]
    pub output: Option<PathBuf>,
    /// The pipeline to run.
    #[arg(long, default_value = "cleanup")]
    pub passes: String,
    #[command(flatten)]
    pub dump: DumpArgs,
    /// Write per-pass statistics: `json` to standard output, or `json=FILE`.
    #[arg(long, value_name = "json[=FILE]")]
    pub report: Option<String>,
    #[command(flatten)]
    pub write: WriteArgs,
    /// Run the IR verifier after every pass (always on in debug builds).
    #[arg(long)]
    pub verify_ir: bool,
}

/// `--dump-graph` and friends (shared by `opt` and `fold`).
#[derive(clap::Args)]
pub struct DumpArgs {
    /// Print the graph before the first pass and after every pass that changed or refused
    /// something; with =DIR, write one numbered file per step into DIR instead.
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    pub dump_graph: Option<String>,
    /// With --dump-graph, also dump after passes that changed nothing.
    #[arg(long)]
    pub dump_graph_all: bool,
    /// How dumps show initializers.
    #[arg(long, value_enum, default_value_t = Weights::Summary)]
    pub weights: Weights,
}

impl DumpArgs {
    /// Points the driver's dumps where the options say.
    pub fn install<'a>(&'a self, driver: &mut Driver<'a>) -> anyhow::Result<()> {
        driver.dump_all = self.dump_graph_all;
        if let Some(target) = self.dump_graph.as_deref() {
            driver.dump = Some(dump_fn(target, self.weights)?);
        }
        Ok(())
    }
}

/// How the output is written (shared by `opt`, `fold` and `convert`).
#[derive(clap::Args)]
pub struct WriteArgs {
    /// Store tensors of 1 KiB or more in an external data file (default name: <output>.data),
    /// relative to the output's folder.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    pub external_data: Option<String>,
    /// Embed every tensor in the output file (no external data file).
    #[arg(long, conflicts_with = "external_data")]
    pub embed_data: bool,
    /// Allow writing over the input model (and its data file); without -o, write in place.
    #[arg(long)]
    pub in_place: bool,
}

fn header_line(point: &DumpPoint, model: &Model) -> String {
    match point {
        DumpPoint::Input => {
            let s = graft::driver::Sizes::of(model);
            format!(
                "# --- input: {} nodes, {} initializers, {} parameters ---\n",
                s.nodes, s.initializers, s.parameters
            )
        }
        DumpPoint::After(r) => {
            let it = r
                .iteration
                .map(|i| format!(" [fixpoint iteration {i}]"))
                .unwrap_or_default();
            let mut h = format!(
                "# --- after {}{it} ({} rewrite{}): nodes {} -> {}, initializers {} -> {}, parameters {} -> {} ---\n",
                r.pass,
                r.rewrites,
                if r.rewrites == 1 { "" } else { "s" },
                r.before.nodes,
                r.after.nodes,
                r.before.initializers,
                r.after.initializers,
                r.before.parameters,
                r.after.parameters
            );
            for f in &r.refusals {
                h.push_str(&format!("# refused: {}: {}\n", f.node, f.reason));
            }
            h
        }
    }
}

fn step_name(point: &DumpPoint) -> String {
    match point {
        DumpPoint::Input => "input".into(),
        DumpPoint::After(r) => match r.iteration {
            Some(i) => format!("{}-iter{i}", r.pass),
            None => r.pass.clone(),
        },
    }
}

/// Builds the dump callback for `--dump-graph[=DIR]`.
pub fn dump_fn<'a>(
    target: &'a str,
    weights: Weights,
) -> anyhow::Result<Box<graft::driver::DumpFn<'a>>> {
    if target != "-" {
        std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    }
    Ok(Box::new(move |i, point, model| {
        let text = format!(
            "{}{}",
            header_line(point, model),
            textio::model_text(model, weights)?
        );
        if target == "-" {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
        } else {
            let path = Path::new(target).join(format!("{i:03}-{}.onnxtxt", step_name(point)));
            std::fs::write(&path, text).map_err(|e| graft::Error::io(&path, e))?;
        }
        Ok(())
    }))
}

/// Writes a run report where `--report` says.
/// Whether `--report` sends JSON to standard output (then human output goes to standard error).
pub fn report_on_stdout(spec: Option<&str>) -> bool {
    matches!(spec, Some("json") | Some("json=-"))
}

/// Prints human output: to standard output, or to standard error when JSON goes there.
pub fn emit_human(text: &str, report: Option<&str>) {
    if report_on_stdout(report) {
        eprint!("{text}");
    } else {
        super::emit(text);
    }
}

pub fn write_report(spec: &str, report: &impl serde::Serialize) -> anyhow::Result<()> {
    let (fmt, file) = match spec.split_once('=') {
        Some((f, p)) => (f, Some(p)),
        None => (spec, None),
    };
    if fmt != "json" {
        return Err(graft::Error::Usage(format!(
            "--report {spec}: the only format is json (json or json=FILE)"
        ))
        .into());
    }
    let text = serde_json::to_string_pretty(report)? + "\n";
    match file {
        None | Some("-") => super::emit(&text),
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {p}"))?,
    }
    Ok(())
}

/// Input model file and its external data files: what `--in-place` guards.
pub fn protected_paths(input: &Path, model: &Model) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = input.canonicalize().into_iter().collect();
    for (_, t) in model.graph.initializers() {
        if let graft::ir::TensorData::External {
            file, spill: None, ..
        } = &t.data
            && !v.contains(&file.path)
        {
            v.push(file.path.clone());
        }
    }
    v
}

/// Saves a model as .onnx or (by extension) as text.
pub fn save_any(model: Model, out: &Path, input: &Path, w: &WriteArgs) -> anyhow::Result<()> {
    let (in_place, external, embed) = (w.in_place, w.external_data.as_deref(), w.embed_data);
    let protected = if in_place {
        Vec::new()
    } else {
        protected_paths(input, &model)
    };
    if textio::is_text_path(out) {
        if !in_place
            && protected
                .iter()
                .any(|p| Some(p) == out.canonicalize().ok().as_ref())
        {
            return Err(graft::Error::Usage(format!(
                "refusing to overwrite the input {} (use --in-place to allow it)",
                out.display()
            ))
            .into());
        }
        return textio::write_text_atomic(&model, out);
    }
    let opts = SaveOptions {
        external: match external {
            None if embed => ExternalMode::Embed,
            None => ExternalMode::Auto,
            Some("") => ExternalMode::File(format!(
                "{}.data",
                out.file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default()
            )),
            Some(f) => ExternalMode::File(f.to_string()),
        },
        protected,
        ..Default::default()
    };
    graft::onnx::save_model(model, out, &opts)?;
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let steps = graft::passes::parse_pipeline(&a.passes)?;
    let out = match (&a.output, a.write.in_place) {
        (Some(o), _) => o.clone(),
        (None, true) => a.model.clone(),
        (None, false) => unreachable!("clap requires -o without --in-place"),
    };
    let mut model = textio::load_any(&a.model)?;
    let lookup = graft::passes::lookup;
    let mut driver = Driver::new(&lookup);
    driver.verify_ir |= a.verify_ir;
    a.dump.install(&mut driver)?;
    let report: RunReport = driver.run(&mut model, &steps)?;
    drop(driver);
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    save_any(model, &out, &a.model, &a.write)?;
    eprintln!(
        "graft opt: {} -> {}: nodes {} -> {}, initializers {} -> {}, parameters {} -> {}",
        a.model.display(),
        out.display(),
        report.before.nodes,
        report.after.nodes,
        report.before.initializers,
        report.after.initializers,
        report.before.parameters,
        report.after.parameters
    );
    if let Some(spec) = &a.report {
        write_report(spec, &report)?;
    }
    Ok(())
}
