//! `graft fold` on every corpus case, judged by oracles graft did not write:
//! - foldable cases: ONNX Runtime runs the folded file and matches the unmerged model (relative
//!   Frobenius error <= 1e-4 per output), onnx.checker (full check) accepts it, and it has the
//!   same MatMul/Gemm/Conv count and parameter count as the reference merged export (PyTorch's
//!   own merge) after the same fold pipeline;
//! - cases that must not fold (Houlsby with GELU, conv LoRA next to reflect padding):
//!   `--strict` exits 3 and the report names the reason.

mod common;
use common::*;

use std::path::Path;

fn fold(model: &Path, out: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let report = out.with_extension("json");
    let mut args = vec![
        "fold".to_string(),
        model.to_string_lossy().into(),
        "-o".into(),
        out.to_string_lossy().into(),
        "--report".into(),
        format!("json={}", report.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = run_graft(&refs);
    let code = o.status.code().unwrap_or(-1);
    let r = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("{}: no report; stderr: {}", model.display(), stderr(&o)));
    (code, r)
}

fn counts(model: &Path) -> (u64, u64) {
    let o = run_graft(&["inspect", model.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ops = &j["ops"];
    let n = ["MatMul", "Gemm", "Conv", "ConvTranspose"]
        .iter()
        .map(|k| ops[*k].as_u64().unwrap_or(0))
        .sum();
    (n, j["parameters"].as_u64().unwrap())
}

fn manifest() -> Vec<serde_json::Value> {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/manifest.json")).unwrap(),
    )
    .unwrap();
    m["cases"].as_array().unwrap().clone()
}

#[test]
fn foldable_cases_fold_exactly_and_match_the_reference_merge() {
    let Some(py) = python("fold corpus") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in manifest() {
        if case["foldable"] != true {
            continue;
        }
        let name = case["case"].as_str().unwrap();
        let files = &case["files"];
        let inputs = repo()
            .join("models")
            .join(files["inputs"].as_str().unwrap());
        for exp in ["ts", "dynamo"] {
            let Some(u) = files[format!("unmerged_{exp}")].as_str() else {
                continue;
            };
            let unmerged = repo().join("models").join(u);
            let out = tmp.path().join(format!("{name}.{exp}.onnx"));
            let (code, report) = fold(&unmerged, &out, &["--strict", "--verify-each"]);
            if code != 0 {
                failures.push(format!(
                    "{name}.{exp}: exit {code}: left in place {}",
                    report["left_in_place"]
                ));
                continue;
            }
            if report["folded"].as_array().is_none_or(|f| f.is_empty()) {
                failures.push(format!("{name}.{exp}: nothing folded"));
            }
            let check = oracle(&py, &["check", out.to_str().unwrap()]);
            if check[out.to_str().unwrap()] != "ok" {
                failures.push(format!("{name}.{exp}: checker: {check}"));
            }
            let cmp = oracle(
                &py,
                &[
                    "compare",
                    unmerged.to_str().unwrap(),
                    out.to_str().unwrap(),
                    "--inputs",
                    inputs.to_str().unwrap(),
                    "--rtol",
                    "1e-4",
                ],
            );
            if cmp["ok"] != true {
                failures.push(format!("{name}.{exp}: ONNX Runtime outputs differ: {cmp}"));
            }
            if let Some(mg) = files[format!("merged_{exp}")].as_str() {
                let merged = repo().join("models").join(mg);
                let ref_out = tmp.path().join(format!("{name}.{exp}.ref.onnx"));
                let (rc, _) = fold(&merged, &ref_out, &[]);
                assert_eq!(rc, 0, "{name}.{exp}: folding the reference failed");
                let (a, b) = (counts(&out), counts(&ref_out));
                if a != b {
                    failures.push(format!(
                        "{name}.{exp}: folded has (linear ops, parameters) {a:?}, reference merge {b:?}"
                    ));
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} foldable exports checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("fold corpus: {checked} exports folded exactly");
}

#[test]
fn nonlinear_and_mispadded_adapters_are_refused_with_a_reason() {
    // Every case the manifest marks as not foldable; where the reason must name something
    // specific, what.
    let must_mention = |case: &str| match case {
        "houlsby" => Some("Erf"),
        "conv_lora_reflect" => Some("reflect"),
        "tinytl" => Some("lite residual"),
        "laurel_lr" => Some("weight"),
        _ => None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for case in manifest() {
        if case["foldable"] != false {
            continue;
        }
        let name = case["case"].as_str().unwrap().to_string();
        for exp in ["ts", "dynamo"] {
            let Some(file) = case["files"][format!("unmerged_{exp}")].as_str() else {
                continue;
            };
            let m = repo().join("models").join(file);
            let out = tmp.path().join(format!("{name}.{exp}.onnx"));
            let (code, report) = fold(&m, &out, &["--strict"]);
            assert_eq!(code, 3, "{name}.{exp}: --strict should exit 3: {report}");
            let left = report["left_in_place"].as_array().unwrap();
            assert!(!left.is_empty(), "{name}.{exp}");
            for l in left {
                let reason = l["reason"].as_str().unwrap();
                assert!(!reason.is_empty(), "{name}.{exp}: no reason");
                if let Some(must) = must_mention(&name) {
                    assert!(
                        reason.contains(must),
                        "{name}.{exp}: reason {reason:?} should mention {must}"
                    );
                }
            }
            // Outputs are unchanged by what did fold (checked by the built-in verification).
            assert_eq!(report["verification"]["passed"], true, "{name}.{exp}");
            checked.push(format!("{name}.{exp}"));
        }
    }
    for must in [
        "houlsby.ts",
        "conv_lora_reflect.ts",
        "tinytl.ts",
        "laurel_lr.ts",
    ] {
        assert!(
            checked.iter().any(|c| c == must),
            "{must} was not checked: {checked:?}"
        );
    }
}

#[test]
fn verification_failure_writes_nothing() {
    // A tolerance of zero cannot be met by a real fold (merges round differently): the fold
    // must fail with exit 1 and leave no file.
    let tmp = tempfile::tempdir().unwrap();
    let m = repo().join("models/bert_lora/unmerged.dynamo.onnx");
    let out = tmp.path().join("o.onnx");
    let o = run_graft(&[
        "fold",
        m.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--tolerance",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was written"));
    assert!(!out.exists());
}

#[test]
fn the_rewrite_checker_catches_a_wrong_rewrite() {
    // Old: y = Relu(x); new: y = Neg(x). The per-rewrite check must report the difference.
    use graft::ir::{Graph, Node};
    let mut before = Graph::default();
    let x = before.add_value("x").unwrap();
    let y = before.add_value("y").unwrap();
    before.value_mut(x).is_input = true;
    let mut onnx_shape = onnx_protobuf::TensorShapeProto::new();
    for d in [2, 3] {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d);
        onnx_shape.dim.push(dim);
    }
    before.value_mut(x).ty = Some(onnx_protobuf::TypeProto {
        value: Some(onnx_protobuf::type_proto::Value::TensorType(
            onnx_protobuf::type_proto::Tensor {
                elem_type: 1,
                shape: Some(onnx_shape).into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    let mut after = before.clone();
    let mut relu = Node::new("Relu");
    relu.inputs = vec![Some(x)];
    relu.outputs = vec![Some(y)];
    let old = before.add_node(relu).unwrap();
    let mut neg = Node::new("Neg");
    neg.inputs = vec![Some(x)];
    neg.outputs = vec![Some(y)];
    let new = after.add_node(neg).unwrap();
    let diffs = graft::verify::check_rewrite(
        &before,
        &[old],
        &after,
        &[new],
        &[(x, None)],
        &[y],
        18,
        1e-5,
    )
    .unwrap();
    assert!(!diffs[0].ok && diffs[0].rel_fro > 0.5, "{diffs:?}");
    // And the same nodes agree with themselves.
    let same = graft::verify::check_rewrite(
        &before,
        &[old],
        &before,
        &[old],
        &[(x, None)],
        &[y],
        18,
        1e-5,
    )
    .unwrap();
    assert!(same[0].ok && same[0].rel_fro == 0.0);
}

#[test]
fn reslora_shortcuts_fold_approximately_only_with_calibration() {
    // ResLoRA's input and middle shortcuts read earlier blocks' activations: without
    // calibration they stay (and --strict says so); with --calibrate graft measures the
    // activation norms and matches PyTorch's official approximate merge (merge_flag 4 for is,
    // 3 for ms), built independently by models/generate.py.
    let Some(py) = python("reslora calibration") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for case in ["reslora_is", "reslora_ms"] {
        for exp in ["ts", "dynamo"] {
            let dir = repo().join("models").join(case);
            let u = dir.join(format!("unmerged.{exp}.onnx"));
            let out = tmp.path().join(format!("{case}.{exp}.onnx"));
            let (code, _) = fold(&u, &out, &["--strict"]);
            assert_eq!(
                code, 3,
                "{case}.{exp}: without calibration the shortcuts must stay"
            );
            let cal = dir.join("calibration.npz");
            let (code, report) = fold(&u, &out, &["--calibrate", cal.to_str().unwrap()]);
            assert_eq!(code, 0, "{case}.{exp}: {report}");
            let approx = report["folded"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["method"].as_str().unwrap().contains("approximate"))
                .count();
            assert!(approx > 0, "{case}.{exp}: {report}");
            assert!(
                report["verification"]["mode"]
                    .as_str()
                    .unwrap()
                    .contains("calibration")
            );
            let merged = dir.join(format!("merged.{exp}.onnx"));
            let inputs = dir.join("inputs.npz");
            let cmp = oracle(
                &py,
                &[
                    "compare",
                    merged.to_str().unwrap(),
                    out.to_str().unwrap(),
                    "--inputs",
                    inputs.to_str().unwrap(),
                    "--rtol",
                    "1e-4",
                ],
            );
            assert_eq!(
                cmp["ok"], true,
                "{case}.{exp}: graft's approximate merge differs from the reference: {cmp}"
            );
        }
    }
}

#[test]
fn weights_in_external_data_are_merged_while_streaming() {
    // With external data, merged weights are rows computed while saving (in parallel blocks,
    // in f32 for float32 weights) instead of matrices in memory: the same result is expected.
    let Some(py) = python("streamed fold") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for exp in ["ts", "dynamo"] {
        let src = repo().join(format!("models/bert_lora/unmerged.{exp}.onnx"));
        let ext = tmp.path().join(format!("ext.{exp}.onnx"));
        let o = run_graft(&[
            "convert",
            src.to_str().unwrap(),
            "-o",
            ext.to_str().unwrap(),
            "--external-data",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = tmp.path().join(format!("folded.{exp}.onnx"));
        let (code, report) = fold(&ext, &out, &["--strict"]);
        assert_eq!(code, 0, "{exp}: {report}");
        assert!(
            report["folded"].as_array().is_some_and(|f| f.len() >= 3),
            "{exp}: {report}"
        );
        assert!(
            std::fs::read_dir(tmp.path()).unwrap().flatten().any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("folded.{exp}.onnx."))),
            "{exp}: the folded model should keep its weights in external data"
        );
        let inputs = repo().join("models/bert_lora/inputs.npz");
        let cmp = oracle(
            &py,
            &[
                "compare",
                src.to_str().unwrap(),
                out.to_str().unwrap(),
                "--inputs",
                inputs.to_str().unwrap(),
                "--rtol",
                "1e-5",
            ],
        );
        assert_eq!(cmp["ok"], true, "{exp}: {cmp}");
        let chk = oracle(&py, &["check", out.to_str().unwrap()]);
        assert_eq!(chk[out.to_str().unwrap()], "ok", "{exp}: {chk}");
    }
}

/// A pass that breaks the model: it negates the first float matrix initializer it finds.
struct Breaks;

impl graft::driver::Pass for Breaks {
    fn name(&self) -> &'static str {
        "breaks-things"
    }
    fn summary(&self) -> &'static str {
        "negates a weight (a test of the per-pass check)"
    }
    fn run(
        &self,
        model: &mut graft::ir::Model,
        _cx: &mut graft::driver::PassContext,
    ) -> graft::Result<usize> {
        let g = &mut model.graph;
        let (v, t) = g
            .initializers()
            .find(|(_, t)| t.dtype == 1 && t.dims.len() == 2)
            .map(|(v, t)| (v, t.clone()))
            .expect("a float matrix");
        let a = graft::rewrite::consts::to_f64(&t, "w")?;
        let neg = a.mapv(|x| -x);
        g.set_initializer(v, graft::rewrite::consts::from_f64(&neg, t.dtype))?;
        Ok(1)
    }
}

static BREAKS: Breaks = Breaks;

#[test]
fn the_per_pass_check_names_a_pass_that_changes_outputs() {
    let path = repo().join("models/bert_base/unmerged.ts.onnx");
    let mut model = graft::onnx::load_model(&path).unwrap();
    let before = graft::driver::Sizes::of(&model);
    let shapes = graft::verify::input_shapes(&model, &Default::default()).unwrap();
    let inputs = graft::verify::random_inputs(&shapes, 0).unwrap();
    let reference = graft::verify::run(&model, &inputs).unwrap();
    let lookup = |name: &str| -> Option<&'static dyn graft::driver::Pass> {
        (name == "breaks-things").then_some(&BREAKS as &dyn graft::driver::Pass)
    };
    let mut driver = graft::driver::Driver::new(&lookup);
    driver.check_inputs = Some(inputs.clone());
    let steps = vec![graft::driver::pipeline::Step::Pass("breaks-things".into())];
    let err = driver.run(&mut model, &steps).unwrap_err().to_string();
    assert!(
        err.contains("breaks-things") && err.contains("changed output"),
        "{err}"
    );
    // The pass was undone.
    assert_eq!(
        graft::driver::Sizes::of(&model).parameters,
        before.parameters
    );
    let again = graft::verify::run(&model, &inputs).unwrap();
    let diffs = graft::verify::compare(&reference, &again, Some(0.0)).unwrap();
    assert!(diffs.iter().all(|d| d.rel_fro == 0.0), "{diffs:?}");
}
