//! `graft inspect`, `graft print` and `graft opt --dump-graph` work on every corpus model, and
//! what they print agrees with the model (checked against the protobuf itself, not graft's IR).

mod common;
use common::*;

use onnx_protobuf::Message;

fn proto(p: &std::path::Path) -> onnx_protobuf::ModelProto {
    onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn inspect_reports_what_the_file_holds() {
    for m in corpus_models() {
        let o = run_graft(&["inspect", m.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}: {}", m.display(), stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let p = proto(&m);
        let g = p.graph.as_ref().unwrap();
        assert_eq!(
            j["nodes"].as_u64().unwrap() as usize,
            g.node.len(),
            "{}",
            m.display()
        );
        assert_eq!(
            j["initializers"].as_u64().unwrap() as usize,
            g.initializer.len()
        );
        let ops: u64 = j["ops"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(ops as usize, g.node.len());
        let outs: Vec<&str> = j["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outs, want, "{}", m.display());
        let text = run_graft(&["inspect", m.to_str().unwrap()]);
        assert!(text.status.success());
        assert!(stdout(&text).contains("op histogram:"));
    }
}

#[test]
fn print_and_dump_graph_work_on_every_model() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, m) in corpus_models().iter().enumerate() {
        let o = run_graft(&["print", m.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", m.display(), stderr(&o));
        let text = stdout(&o);
        let p = proto(m);
        for n in p.graph.as_ref().unwrap().node.iter().take(20) {
            assert!(
                text.contains(&n.op_type),
                "{}: print misses {}",
                m.display(),
                n.op_type
            );
        }
        let out = tmp.path().join(format!("o{i}.onnx"));
        let dir = tmp.path().join(format!("dump{i}"));
        let o = run_graft(&[
            "opt",
            m.to_str().unwrap(),
            "--passes",
            "cleanup",
            "-o",
            out.to_str().unwrap(),
            &format!("--dump-graph={}", dir.display()),
        ]);
        assert!(o.status.success(), "{}: {}", m.display(), stderr(&o));
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(!files.is_empty());
        assert!(dir.join("000-input.onnxtxt").exists(), "{}", m.display());
        let o = run_graft(&[
            "opt",
            m.to_str().unwrap(),
            "--passes",
            "dce",
            "-o",
            out.to_str().unwrap(),
            "--dump-graph",
        ]);
        assert!(o.status.success());
        assert!(stdout(&o).starts_with("# --- input:"), "{}", m.display());
    }
}

#[test]
fn printed_text_converts_back_to_an_equivalent_model() {
    let Some(py) = python("print/convert round trip") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (i, m) in corpus_models()
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
    {
        let txt = tmp.path().join(format!("m{i}.onnxtxt"));
        let o = run_graft(&[
            "print",
            m.to_str().unwrap(),
            "--weights",
            "full",
            "-o",
            txt.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let back = tmp.path().join(format!("m{i}.onnx"));
        let o = run_graft(&[
            "convert",
            txt.to_str().unwrap(),
            "-o",
            back.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}: {}", m.display(), stderr(&o));
        // Printing the converted model gives the same text.
        let again = run_graft(&["print", back.to_str().unwrap(), "--weights", "full"]);
        assert_eq!(
            stdout(&again),
            std::fs::read_to_string(&txt).unwrap(),
            "{}",
            m.display()
        );
        let mut args = vec![
            "compare".to_string(),
            m.to_string_lossy().into(),
            back.to_string_lossy().into(),
            "--exact".into(),
        ];
        if let Some(inp) = inputs_for(m) {
            args.push("--inputs".into());
            args.push(inp.to_string_lossy().into());
        }
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let cmp = oracle(&py, &refs);
        assert_eq!(cmp["ok"], true, "{}: {cmp}", m.display());
        // onnx's own parser reads graft's text.
        let parsed = oracle(&py, &["parse-text", txt.to_str().unwrap()]);
        assert_eq!(
            parsed[txt.to_str().unwrap()],
            "ok",
            "{}: {parsed}",
            m.display()
        );
    }
}

#[test]
fn summary_text_cannot_be_converted_to_onnx() {
    let m = corpus_models().into_iter().next().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let txt = tmp.path().join("s.onnxtxt");
    let o = run_graft(&["print", m.to_str().unwrap(), "-o", txt.to_str().unwrap()]);
    assert!(o.status.success());
    let out = tmp.path().join("s.onnx");
    let o = run_graft(&[
        "convert",
        txt.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("summary"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn inspect_finds_every_lora_branch() {
    // Each LoRA branch is one down/up MatMul pair that PyTorch's own merge removes, so the
    // reference merged export has exactly two linear ops fewer per branch.
    let linear_ops = |p: &std::path::Path| -> u64 {
        let o = run_graft(&["inspect", p.to_str().unwrap(), "--json"]);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        ["MatMul", "Gemm"]
            .iter()
            .map(|k| j["ops"][*k].as_u64().unwrap_or(0))
            .sum()
    };
    for case in [
        "bert_lora",
        "bert_rslora",
        "bert_multi_lora",
        "pissa",
        "vit_lora",
    ] {
        for exp in ["ts", "dynamo"] {
            let u = repo().join(format!("models/{case}/unmerged.{exp}.onnx"));
            let m = repo().join(format!("models/{case}/merged.{exp}.onnx"));
            let o = run_graft(&["inspect", u.to_str().unwrap(), "--json"]);
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let found = j["adapters"].as_array().unwrap().len() as u64;
            let want = (linear_ops(&u) - linear_ops(&m)) / 2;
            assert_eq!(found, want, "{case}.{exp}");
            assert!(found > 0);
        }
    }
}
