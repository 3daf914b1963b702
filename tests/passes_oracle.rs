//! Every pass is checked against ONNX Runtime on every corpus model: after the `cleanup`
//! pipeline the model still passes onnx.checker (full check), gives the same outputs (relative
//! Frobenius error <= 1e-5 per output), and has no more nodes or parameters than before.

mod common;
use common::*;

#[test]
fn cleanup_keeps_every_corpus_model_equivalent() {
    let Some(py) = python("passes oracle") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let models = corpus_models();
    for (i, m) in models.iter().enumerate() {
        let out = tmp.path().join(format!("m{i}.onnx"));
        let report = tmp.path().join(format!("m{i}.json"));
        let o = run_graft(&[
            "opt",
            m.to_str().unwrap(),
            "--passes",
            "cleanup",
            "-o",
            out.to_str().unwrap(),
            "--report",
            &format!("json={}", report.display()),
        ]);
        if !o.status.success() {
            failures.push(format!("{}: {}", m.display(), stderr(&o)));
            continue;
        }
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        // The model never grows: no more nodes, no larger file, and parameters grow at most by
        // a few shape constants that replace shape arithmetic on statically known shapes.
        let (size_in, size_out) = (
            std::fs::metadata(m).unwrap().len(),
            std::fs::metadata(&out).unwrap().len(),
        );
        if size_out > size_in {
            failures.push(format!(
                "{}: file grew: {size_in} -> {size_out} bytes",
                m.display()
            ));
        }
        if r["after"]["parameters"].as_u64().unwrap()
            > r["before"]["parameters"].as_u64().unwrap() + 64
        {
            failures.push(format!(
                "{}: parameters grew: {} -> {}",
                m.display(),
                r["before"]["parameters"],
                r["after"]["parameters"]
            ));
        }
        for key in ["nodes"] {
            if r["after"][key].as_u64() > r["before"][key].as_u64() {
                failures.push(format!(
                    "{}: {key} grew: {} -> {}",
                    m.display(),
                    r["before"][key],
                    r["after"][key]
                ));
            }
        }
        let check = oracle(&py, &["check", out.to_str().unwrap()]);
        if check[out.to_str().unwrap()] != "ok" {
            failures.push(format!("{}: checker: {check}", m.display()));
            continue;
        }
        let mut args = vec![
            "compare".to_string(),
            m.to_string_lossy().to_string(),
            out.to_string_lossy().to_string(),
            "--rtol".into(),
            "1e-5".into(),
        ];
        if let Some(inp) = inputs_for(m) {
            args.push("--inputs".into());
            args.push(inp.to_string_lossy().to_string());
        }
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let cmp = oracle(&py, &refs);
        if cmp["ok"] != true {
            failures.push(format!("{}: outputs differ: {cmp}", m.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "cleanup: {} corpus models equivalent under ONNX Runtime",
        models.len()
    );
}
