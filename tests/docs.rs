//! Generated documentation stays in sync: docs/passes.md is built from each pass's doc comment
//! (the leading `//!` block of its file in passes/) and the registry's summaries.
//! `UPDATE_EXPECT=1 cargo test --test docs` regenerates it (never under CI).

mod common;
use common::*;

fn passes_md() -> String {
    let mut out = String::from(
        "# Passes\n\nGenerated from the doc comments in `passes/` by `UPDATE_EXPECT=1 cargo test --test docs`;\na test keeps this file in sync. `graft passes` prints the one-line summaries.\n\n",
    );
    let listing = stdout(&run_graft(&["passes"]));
    out.push_str("```text\n");
    out.push_str(&listing);
    out.push_str("```\n");
    let mut files: Vec<_> = std::fs::read_dir(repo().join("passes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with("mod.rs"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let doc: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect();
        assert!(!doc.is_empty(), "{} has no //! doc comment", f.display());
        let mut lines = doc.into_iter();
        let title = lines.next().unwrap();
        out.push_str(&format!("\n## {title}\n\n"));
        out.push_str(&format!(
            "Source: `passes/{}`\n\n",
            f.file_name().unwrap().to_string_lossy()
        ));
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn passes_md_is_in_sync() {
    let want = passes_md();
    let path = repo().join("docs/passes.md");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return;
    }
    if std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1") && !in_ci() {
        std::fs::write(&path, want).unwrap();
        return;
    }
    panic!("docs/passes.md is out of date: run UPDATE_EXPECT=1 cargo test --test docs");
}

#[test]
fn ops_md_is_in_sync() {
    let want = graft::codegen::ops_markdown();
    let path = repo().join("docs/ops.md");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return;
    }
    if std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1") && !in_ci() {
        std::fs::write(&path, want).unwrap();
        return;
    }
    panic!("docs/ops.md is out of date: run UPDATE_EXPECT=1 cargo test --test docs");
}

#[test]
fn plan_format_doc_names_every_field_of_a_real_plan() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("plan");
    let model = repo().join("models/cnn_base/unmerged.ts.onnx");
    let o = common::run_graft(&[
        "compile",
        model.to_str().unwrap(),
        "--emit-wgsl",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("plan.json")).unwrap()).unwrap();
    let doc = std::fs::read_to_string(repo().join("docs/plan-format.md")).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    fn walk(v: &serde_json::Value, keys: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    keys.insert(k.clone());
                    walk(x, keys);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, keys)),
            _ => {}
        }
    }
    walk(&plan, &mut keys);
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/plan-format.md does not name {missing:?}"
    );
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in [
        "inspect", "print", "convert", "opt", "fold", "verify", "insert", "apply", "extract",
    ] {
        let o = run_graft(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help failed");
        let text = stdout(&o);
        assert!(
            text.contains("Example"),
            "{sub} --help has no example:\n{text}"
        );
    }
    let o = run_graft(&["--help"]);
    assert!(stdout(&o).contains("Examples"));
    let o = run_graft(&["passes"]);
    for p in [
        "dce",
        "cse",
        "eliminate-identity",
        "constant-fold",
        "cleanup",
    ] {
        assert!(stdout(&o).contains(p), "graft passes misses {p}");
    }
}

#[test]
fn usage_errors_exit_with_2() {
    let o = run_graft(&["opt"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run_graft(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run_graft(&["opt", "x.onnx", "-o", "y.onnx", "--passes", "fixpoint(dce"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--passes"));
}
