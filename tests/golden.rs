//! The golden-file harness. Each case in tests/golden/<area>/<case>.onnxtxt states its pipeline
//! in leading comments:
//!
//! ```text
//! # pipeline: fixpoint(eliminate-identity,dce)
//! # args: --dump-graph-all            (optional extra graft opt arguments)
//! ```
//!
//! The harness runs `graft opt <case> --passes <pipeline> --dump-graph --weights full` and
//! compares standard output with `<case>.expected` next to it.
//!
//! A case can instead name a whole graft command (words split on whitespace, no shell quoting):
//!
//! ```text
//! # command: insert --adapter lora --target q --init random:1
//! ```
//!
//! The harness then runs `graft <command words> <case file> -o <tmp>/out.onnxtxt` in the case's
//! folder, and the golden is the command's standard output, then (only when it fails) its exit
//! code and standard error, then the text of `out.onnxtxt` as graft's text writer left it
//! (weights in full), or a line saying no file was written. The temporary folder's path reads
//! `<tmp>`.
//!
//! `UPDATE_EXPECT=1 cargo test` rewrites expected files; under `CI=true` nothing is rewritten,
//! a missing expected file fails and an expected file without a case fails.

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

/// What a case asks the harness to run.
enum Case {
    /// `graft opt --passes <pipeline> ... <args>`.
    Pipeline { pipeline: String, args: Vec<String> },
    /// `graft <words> <case> -o <tmp>/out.onnxtxt`.
    Command(Vec<String>),
}

fn directives(path: &Path) -> Result<Case, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut pipeline = None;
    let mut command = None;
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
        } else if let Some(c) = rest.strip_prefix("command:") {
            let words: Vec<String> = c.split_whitespace().map(String::from).collect();
            if words.is_empty() {
                return Err("`# command:` names no command".into());
            }
            command = Some(words);
        }
    }
    match (pipeline, command) {
        (Some(_), Some(_)) => Err("both `# pipeline:` and `# command:`; give one".into()),
        (Some(pipeline), None) => Ok(Case::Pipeline { pipeline, args }),
        (None, Some(words)) if args.is_empty() => Ok(Case::Command(words)),
        (None, Some(_)) => {
            Err("`# args:` goes with `# pipeline:`; put the words in `# command:`".into())
        }
        (None, None) => Err("no `# pipeline:` or `# command:` line at the top".into()),
    }
}

fn run_case(path: &Path, case: &Case) -> Result<String, String> {
    match case {
        Case::Pipeline { pipeline, args } => run_pipeline(path, pipeline, args),
        Case::Command(words) => run_command(path, words),
    }
}

fn run_pipeline(path: &Path, pipeline: &str, args: &[String]) -> Result<String, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = tmp.path().join("out.onnx");
    let mut cmd = graft();
    cmd.arg("opt")
        .arg(path)
        .args([
            "--passes",
            pipeline,
            "--dump-graph",
            "--weights",
            "full",
            "-o",
        ])
        .arg(&out)
        .args(args);
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

/// Runs `graft <words> <case file name> -o <tmp>/out.onnxtxt` in the case's folder (so messages
/// name the file as the case does, whatever the checkout's path).
fn run_command(path: &Path, words: &[String]) -> Result<String, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = tmp.path().join("out.onnxtxt");
    let dir = path.parent().ok_or("case without a folder")?;
    let file = path.file_name().ok_or("case without a file name")?;
    let o = graft()
        .current_dir(dir)
        .args(words)
        .arg(file)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| e.to_string())?;
    let mut text = stdout(&o);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if !o.status.success() {
        text.push_str(&format!(
            "# exit {}\n# {}\n",
            o.status.code().unwrap_or(-1),
            stderr(&o).trim_end().replace('\n', "\n# ")
        ));
    }
    match std::fs::read_to_string(&out) {
        Ok(written) => {
            text.push_str("# --- out.onnxtxt ---\n");
            text.push_str(&written);
            if !written.ends_with('\n') {
                text.push('\n');
            }
        }
        Err(_) => text.push_str("# --- no out.onnxtxt written ---\n"),
    }
    let tmp_text = tmp.path().to_string_lossy().to_string();
    Ok(text.replace(&tmp_text, "<tmp>"))
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
