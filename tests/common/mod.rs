//! Shared helpers for graft's integration tests: the binary, the Python oracle, the corpus.
#![allow(dead_code)]

pub mod node_tests;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The graft binary built for these tests.
pub fn graft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_graft"))
}

pub fn run_graft(args: &[&str]) -> Output {
    graft().args(args).output().expect("graft runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// True when running under CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The oracle venv's python (`GRAFT_PYTHON`, else `.venv/bin/python`). Under CI a missing venv is
/// a failure; otherwise the caller skips, loudly.
pub fn python(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("GRAFT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    if in_ci() {
        panic!(
            "{test}: the Python oracle venv is missing at {} (run scripts/test.sh, which creates it)",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: no Python oracle venv at {} (run scripts/test.sh to create it)",
        p.display()
    );
    None
}

/// Runs tests/oracle.py with arguments and parses its JSON answer.
pub fn oracle(py: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(py)
        .arg(repo().join("tests/oracle.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "oracle.py {args:?} failed:\n{}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oracle.py {args:?}: bad JSON ({e}):\n{}", stdout(&out)))
}

/// Every .onnx file under models/, sorted.
pub fn corpus_models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo().join("models")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "onnx") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Hand-made edge-case models (subgraphs, fp16, external data, IR 3, functions), generated once
/// per test binary by the oracle script.
pub fn edge_cases(py: &Path) -> &'static [PathBuf] {
    static CELL: OnceLock<Vec<PathBuf>> = OnceLock::new();
    CELL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("graft-edge-cases-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let v = oracle(py, &["edge-cases", dir.to_str().expect("utf8")]);
        v["made"]
            .as_array()
            .expect("list")
            .iter()
            .map(|m| dir.join(m.as_str().expect("str")))
            .collect()
    })
}

/// The inputs.npz beside a corpus model, for the names its exporter used.
pub fn inputs_for(model: &Path) -> Option<PathBuf> {
    let dir = model.parent()?;
    let stem = model.file_name()?.to_string_lossy().to_string();
    let exporter = if stem.contains(".dynamo.") {
        "dynamo"
    } else {
        "ts"
    };
    for cand in [format!("inputs.{exporter}.npz"), "inputs.npz".to_string()] {
        let p = dir.join(cand);
        if p.exists() {
            return Some(p);
        }
    }
    None
}

// ---- Helpers for tests/apply.rs and tests/extract.rs (PEFT folders, manifest, batched oracle) ----

/// The `cases` list of models/manifest.json.
pub fn manifest_cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo().join("models/manifest.json")).expect("manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    m["cases"].as_array().expect("cases").clone()
}

/// One manifest case by name.
pub fn manifest_case(name: &str) -> serde_json::Value {
    manifest_cases()
        .into_iter()
        .find(|c| c["case"] == name)
        .unwrap_or_else(|| panic!("manifest has no case {name}"))
}

/// A path the manifest gives relative to models/.
pub fn model_file(rel: &serde_json::Value) -> PathBuf {
    repo()
        .join("models")
        .join(rel.as_str().unwrap_or_else(|| panic!("not a path: {rel}")))
}

/// `graft inspect FILE --json`.
pub fn inspect_json(model: &Path) -> serde_json::Value {
    let o = run_graft(&["inspect", model.to_str().expect("utf8"), "--json"]);
    assert!(
        o.status.success(),
        "inspect {}: {}",
        model.display(),
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).expect("inspect --json is JSON")
}

/// Runs a batch oracle subcommand (`compare-many JOBS` or `compare-npz --many JOBS`) on `jobs`
/// and returns its answers, one per job.
pub fn oracle_batch(py: &Path, cmd: &[&str], jobs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jobs.json");
    std::fs::write(&file, serde_json::to_string(jobs).expect("jobs")).expect("write jobs");
    let mut args: Vec<&str> = cmd.to_vec();
    args.push(file.to_str().expect("utf8"));
    let v = oracle(py, &args);
    let list = v.as_array().expect("a list of answers").clone();
    assert_eq!(list.len(), jobs.len(), "oracle {cmd:?}: one answer per job");
    list
}

/// The sum over outputs of the relative Frobenius errors in an oracle answer.
pub fn total_rel_error(answer: &serde_json::Value) -> f64 {
    let outs = answer["outputs"]
        .as_object()
        .unwrap_or_else(|| panic!("no outputs in {answer}"));
    outs.values()
        .map(|o| {
            o["rel_fro"]
                .as_f64()
                .unwrap_or_else(|| panic!("no rel_fro in {answer}"))
        })
        .sum()
}

/// `graft ARGS -o OUT --report json=OUT.report.json`: the process output and the report (when
/// one was written; a stale one is removed first).
pub fn run_graft_with_report(args: &[String], out: &Path) -> (Output, Option<serde_json::Value>) {
    let report = out.with_extension("report.json");
    let _ = std::fs::remove_file(&report);
    let mut all: Vec<String> = args.to_vec();
    all.extend([
        "-o".into(),
        out.to_string_lossy().to_string(),
        "--report".into(),
        format!("json={}", report.display()),
    ]);
    let refs: Vec<&str> = all.iter().map(|x| x.as_str()).collect();
    let o = run_graft(&refs);
    let r = std::fs::read_to_string(&report)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("report is JSON"));
    (o, r)
}

/// A GPU for tests: `None` (after saying so loudly) when there is no adapter, except under CI,
/// where a missing adapter fails the test.
pub fn gpu(test: &str) -> Option<graft::runtime::Gpu> {
    // SAFETY-free environment tweak: wgpu's Vulkan loader warns without it
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // tests run single-process per binary; setting it before any thread reads it is fine
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    match graft::runtime::Gpu::new() {
        Ok(g) => Some(g),
        Err(e) if in_ci() => panic!("{test}: no GPU adapter under CI: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {test}: no GPU adapter ({e})");
            println!("SKIPPED {test}: no GPU adapter ({e})");
            None
        }
    }
}

/// Compiles a model for the given inputs (shapes and, where needed, values) and runs it.
pub fn run_on_gpu(
    gpu: &graft::runtime::Gpu,
    model: &graft::ir::Model,
    inputs: &[(String, graft::eval::TensorValue)],
    opts: graft::codegen::CompileOptions,
) -> graft::Result<Vec<(String, graft::eval::TensorValue)>> {
    let mut opts = opts;
    for (n, t) in inputs {
        opts.input_shapes.insert(n.clone(), t.shape().to_vec());
        opts.input_values.insert(n.clone(), t.clone());
    }
    let c = graft::codegen::compile(model, &opts)?;
    let shaders = c.shaders.clone();
    let exe = graft::runtime::Executable::new(gpu, &c.plan, &c.weights, &|name: &str| {
        shaders
            .get(name)
            .cloned()
            .ok_or_else(|| graft::Error::Gpu(format!("missing kernel {name}")))
    })?;
    exe.run(gpu, inputs)
}
