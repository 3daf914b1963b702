//! Shared helpers for graft's integration tests: the binary, the Python oracle, the corpus.
#![allow(dead_code)]

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
