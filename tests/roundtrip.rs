//! `graft opt M --passes none` keeps every model intact: onnx.checker (full check) accepts the
//! output and ONNX Runtime gives bit-identical outputs. Also: the same input and options give a
//! byte-identical file; untouched external tensors are copied byte for byte.

mod common;
use common::*;

use std::path::{Path, PathBuf};

fn roundtrip_one(py: &Path, model: &Path, out_dir: &Path) -> Result<(), String> {
    let name = model
        .strip_prefix(repo())
        .unwrap_or(model)
        .to_string_lossy()
        .replace(['/', '\\'], "__");
    let out = out_dir.join(&name);
    let o = run_graft(&[
        "opt",
        model.to_str().unwrap(),
        "--passes",
        "none",
        "-o",
        out.to_str().unwrap(),
    ]);
    if !o.status.success() {
        return Err(format!("{}: graft failed: {}", model.display(), stderr(&o)));
    }
    let check = oracle(py, &["check", out.to_str().unwrap()]);
    if check[out.to_str().unwrap()] != "ok" {
        return Err(format!("{}: checker: {}", model.display(), check));
    }
    let mut args = vec![
        "compare".to_string(),
        model.to_string_lossy().to_string(),
        out.to_string_lossy().to_string(),
        "--exact".to_string(),
    ];
    if let Some(inp) = inputs_for(model) {
        args.push("--inputs".into());
        args.push(inp.to_string_lossy().to_string());
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let cmp = oracle(py, &refs);
    if cmp["ok"] != true {
        return Err(format!("{}: outputs differ: {cmp}", model.display()));
    }
    Ok(())
}

#[test]
fn passes_none_round_trips_every_corpus_model_bit_identically() {
    let Some(py) = python("roundtrip corpus") else {
        return;
    };
    let models = corpus_models();
    assert!(!models.is_empty(), "models/ has no .onnx files");
    let tmp = tempfile::tempdir().unwrap();
    let failures: Vec<String> = models
        .iter()
        .filter_map(|m| roundtrip_one(&py, m, tmp.path()).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("round trip: {} corpus models bit-identical", models.len());
}

#[test]
fn passes_none_round_trips_edge_cases() {
    let Some(py) = python("roundtrip edge cases") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cases = edge_cases(&py);
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|m| roundtrip_one(&py, m, tmp.path()).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn read_model(p: &Path) -> onnx_protobuf::ModelProto {
    use onnx_protobuf::Message;
    onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn round_trip_keeps_metadata_functions_subgraphs_and_doc_strings() {
    let Some(py) = python("roundtrip fields") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for m in edge_cases(&py) {
        let out = tmp.path().join("o.onnx");
        let o = run_graft(&[
            "opt",
            m.to_str().unwrap(),
            "--passes",
            "none",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (a, b) = (read_model(m), read_model(&out));
        if m.to_string_lossy().contains("external") {
            // Locations change (the data file follows the output); everything else must not.
            let strip = |mut p: onnx_protobuf::ModelProto| {
                for t in &mut p.graph.as_mut().unwrap().initializer {
                    t.external_data.clear();
                }
                p
            };
            assert_eq!(strip(a), strip(b), "{}", m.display());
        } else {
            assert_eq!(a, b, "{}: the proto changed", m.display());
        }
    }
}

#[test]
fn external_tensors_are_copied_byte_for_byte() {
    let Some(py) = python("external bytes") else {
        return;
    };
    let model = edge_cases(&py)
        .iter()
        .find(|p| p.to_string_lossy().contains("external"))
        .unwrap()
        .clone();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy.onnx");
    let o = run_graft(&[
        "opt",
        model.to_str().unwrap(),
        "--passes",
        "none",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = std::fs::read(tmp.path().join("copy.onnx.data")).unwrap();
    let src_data = std::fs::read(model.parent().unwrap().join("weights.bin")).unwrap();
    let (a, b) = (read_model(&model), read_model(&out));
    let slice = |p: &onnx_protobuf::ModelProto, name: &str, bytes: &[u8]| -> Vec<u8> {
        let t = p.graph.initializer.iter().find(|t| t.name == name).unwrap();
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.parse::<usize>().unwrap())
        };
        let off = get("offset").unwrap_or(0);
        let len = get("length").unwrap();
        bytes[off..off + len].to_vec()
    };
    for name in ["w1", "w2"] {
        assert_eq!(slice(&a, name, &src_data), slice(&b, name, &data), "{name}");
    }
}

#[test]
fn same_input_and_options_give_a_byte_identical_file() {
    let models: Vec<PathBuf> = corpus_models().into_iter().take(6).collect();
    assert!(!models.is_empty());
    let tmp = tempfile::tempdir().unwrap();
    for m in &models {
        let mut outs = Vec::new();
        for i in 0..2 {
            let out = tmp.path().join(format!("d{i}.onnx"));
            let o = run_graft(&[
                "opt",
                m.to_str().unwrap(),
                "--passes",
                "cleanup",
                "-o",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{}: {}", m.display(), stderr(&o));
            outs.push(std::fs::read(&out).unwrap());
        }
        assert!(outs[0] == outs[1], "{}: two runs differ", m.display());
    }
}

#[test]
fn external_data_on_request_and_back() {
    let Some(py) = python("external on request") else {
        return;
    };
    let model = corpus_models().into_iter().next().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ext.onnx");
    let o = run_graft(&[
        "opt",
        model.to_str().unwrap(),
        "--passes",
        "none",
        "-o",
        out.to_str().unwrap(),
        "--external-data",
        "w.bin",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmp.path().join("w.bin").exists());
    let p = read_model(&out);
    assert!(
        p.graph
            .initializer
            .iter()
            .any(|t| !t.external_data.is_empty())
    );
    let cmp = oracle(
        &py,
        &[
            "compare",
            model.to_str().unwrap(),
            out.to_str().unwrap(),
            "--exact",
        ],
    );
    assert_eq!(cmp["ok"], true, "{cmp}");
    // And back into one file.
    let back = tmp.path().join("sub");
    std::fs::create_dir(&back).unwrap();
    let out2 = back.join("embedded.onnx");
    let o = run_graft(&[
        "convert",
        out.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--embed-data",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cmp = oracle(
        &py,
        &[
            "compare",
            model.to_str().unwrap(),
            out2.to_str().unwrap(),
            "--exact",
        ],
    );
    assert_eq!(cmp["ok"], true, "{cmp}");
    assert!(!back.join("embedded.onnx.data").exists());
    assert!(
        read_model(&out2)
            .graph
            .initializer
            .iter()
            .all(|t| t.external_data.is_empty())
    );
}
