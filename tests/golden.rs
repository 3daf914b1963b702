//! The golden-file harness. Each case in tests/golden/<area>/<case>.onnxtxt states its pipeline
//! in leading comments:
//!
//! ```text
//! # pipeline: fixpoint(eliminate-identity,dce)
//! # args: --dump-graph-all            (optional extra graft opt arguments)
//! ```
//!
//! The harness runs `graft opt <case> --passes <pipeline> --dump-graph --weights full` and
//! compares standard output with `<case>.expected` next to it. `UPDATE_EXPECT=1 cargo test`
//! rewrites expected files; under `CI=true` nothing is rewritten, a missing expected file fails
//! and an expected file without a case fails.

mod common;
use common::*;

use std::path::{Path, PathBuf};

fn cases(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            cases(&p, out);
        } else {
            out.push(p);
        }
    }
}

struct Case {
    pipeline: String,
    args: Vec<String>,
}

fn directives(path: &Path) -> Result<Case, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut pipeline = None;
    let mut args = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            break;
        };
        let rest = rest.trim();
        if let Some(p) = rest.strip_prefix("pipeline:") {
            pipeline = Some(p.trim().to_string());
        } else if let Some(a) = rest.strip_prefix("args:") {
            args.extend(a.split_whitespace().map(String::from));
        }
    }
    Ok(Case {
        pipeline: pipeline.ok_or("no `# pipeline:` line at the top")?,
        args,
    })
}

fn run_case(path: &Path, case: &Case) -> Result<String, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = tmp.path().join("out.onnx");
    let mut cmd = graft();
    cmd.arg("opt")
        .arg(path)
        .args([
            "--passes",
            &case.pipeline,
            "--dump-graph",
            "--weights",
            "full",
            "-o",
        ])
        .arg(&out)
        .args(&case.args);
    let o = cmd.output().map_err(|e| e.to_string())?;
    let mut text = stdout(&o);
    if !o.status.success() {
        // Failures are part of what a golden can pin down.
        text.push_str(&format!(
            "# exit {}\n# {}",
            o.status.code().unwrap_or(-1),
            stderr(&o).trim_end().replace('\n', "\n# ")
        ));
        text.push('\n');
    }
    Ok(text)
}

#[test]
fn golden_files() {
    let root = repo().join("tests/golden");
    let mut files = Vec::new();
    cases(&root, &mut files);
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1") && !in_ci();
    let mut failures = Vec::new();
    let mut ran = 0;
    for f in &files {
        match f.extension().and_then(|e| e.to_str()) {
            Some("onnxtxt") => {}
            Some("expected") => {
                if !f.with_extension("onnxtxt").exists() {
                    failures.push(format!("{}: expected file without a case", f.display()));
                }
                continue;
            }
            _ => {
                failures.push(format!(
                    "{}: not a case (.onnxtxt) or .expected",
                    f.display()
                ));
                continue;
            }
        }
        ran += 1;
        let case = match directives(f) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let got = match run_case(f, &case) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let exp_path = f.with_extension("expected");
        let expected = std::fs::read_to_string(&exp_path).ok();
        if expected.as_deref() == Some(got.as_str()) {
            continue;
        }
        if update {
            std::fs::write(&exp_path, &got).unwrap();
            eprintln!("updated {}", exp_path.display());
            continue;
        }
        match expected {
            None => failures.push(format!(
                "{}: no expected file (run UPDATE_EXPECT=1 cargo test --test golden to create it)",
                f.display()
            )),
            Some(e) => failures.push(format!(
                "{}: output differs from {}\n{}",
                f.display(),
                exp_path.display(),
                first_difference(&e, &got)
            )),
        }
    }
    assert!(ran > 0, "no golden cases under {}", root.display());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("golden: {ran} cases match");
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  expected: {x}\n  got:      {y}", i + 1);
        }
    }
    format!(
        "lengths differ: expected {} lines, got {}",
        a.lines().count(),
        b.lines().count()
    )
}
