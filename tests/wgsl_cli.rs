//! `graft compile` and `graft run` from the command line: errors for what the backend cannot do,
//! specialisation and recompilation, the plan cache, the ONNX backend test layout, fusion.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const HEADER: &str = "<\n   ir_version: 8,\n   opset_import: [\"\" : 18]\n>\n";

fn graft_env(args: &[&str]) -> std::process::Output {
    graft()
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("graft runs")
}

fn npy_f32(path: &Path, shape: &[usize], data: Vec<f32>) {
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), data).unwrap();
    ndarray_npy::write_npy(path, &a).unwrap();
}

fn read_f32(path: &Path) -> ndarray::ArrayD<f32> {
    ndarray_npy::read_npy(path).unwrap()
}

#[test]
fn an_op_without_a_kernel_is_an_error_naming_the_op_and_node_with_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write(
        tmp.path(),
        "nz.onnxtxt",
        &format!("{HEADER}g (float[2,3] x) => (int64[2, N] y) {{\n   y = NonZero (x)\n}}\n"),
    );
    let out = tmp.path().join("plan");
    let o = graft_env(&[
        "compile",
        m.to_str().unwrap(),
        "--emit-wgsl",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("NonZero") && e.contains("not supported by the WGSL backend"),
        "{e}"
    );
    assert!(e.contains("docs/ops.md"), "{e}");
    assert!(!out.exists(), "no partial plan is written");
}

#[test]
fn a_symbolic_dimension_without_a_shape_is_an_error_naming_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write(
        tmp.path(),
        "sym.onnxtxt",
        &format!("{HEADER}g (float[batch,3] x) => (float[batch,3] y) {{\n   y = Relu (x)\n}}\n"),
    );
    let out = tmp.path().join("plan");
    let o = graft_env(&[
        "compile",
        m.to_str().unwrap(),
        "--emit-wgsl",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("'x'") && e.contains("'batch'") && e.contains("--input-shape"),
        "{e}"
    );
    assert!(!out.exists());
    // with the shape it compiles, and the plan records it
    let o = graft_env(&[
        "compile",
        m.to_str().unwrap(),
        "--emit-wgsl",
        out.to_str().unwrap(),
        "--input-shape",
        "x=4,3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("plan.json")).unwrap()).unwrap();
    assert_eq!(
        plan["specialised_for"]["input_shapes"]["x"],
        serde_json::json!([4, 3])
    );
    assert!(out.join("elementwise.wgsl").exists());
    assert!(out.join("weights.bin").exists());
}

#[test]
fn plans_are_specialised_recompiled_for_other_shapes_and_cached_only_when_they_match() {
    if gpu("wgsl cli: specialisation").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // y = x * 2 + 1 over a symbolic batch
    let m = write(
        tmp.path(),
        "affine.onnxtxt",
        &format!(
            "{HEADER}g (float[n,2] x) => (float[n,2] y) {{\n   two = Constant <value = float {{2.0}}> ()\n   \
             one = Constant <value = float {{1.0}}> ()\n   t = Mul (x, two)\n   y = Add (t, one)\n}}\n"
        ),
    );
    let x3 = tmp.path().join("x3.npy");
    npy_f32(&x3, &[3, 2], vec![0., 1., 2., 3., 4., 5.]);
    let x1 = tmp.path().join("x1.npy");
    npy_f32(&x1, &[1, 2], vec![-1., 0.5]);
    let cache = tmp.path().join("cache");
    let run = |x: &Path, out: &Path| {
        graft_env(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            &format!("x={}", x.display()),
            "--output-dir",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
    };
    let o = run(&x3, &tmp.path().join("y3"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_f32(&tmp.path().join("y3/y.npy"))
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![1., 3., 5., 7., 9., 11.]
    );
    let o = run(&x1, &tmp.path().join("y1"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_f32(&tmp.path().join("y1/y.npy"))
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![-1., 2.]
    );
    // one cached plan per shape
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 2, "a plan per specialisation");
    // again with the first shape: the cached plan fits and is reused
    let o = run(&x3, &tmp.path().join("y3b"));
    assert!(o.status.success());
    assert!(stderr(&o).contains("cached plan"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);

    // a compiled plan folder run with another shape is recompiled from its model, with a note
    let plan = tmp.path().join("plan");
    let o = graft_env(&[
        "compile",
        m.to_str().unwrap(),
        "--emit-wgsl",
        plan.to_str().unwrap(),
        "--input-shape",
        "x=3,2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = graft_env(&[
        "run",
        plan.to_str().unwrap(),
        "--input",
        &format!("x={}", x1.display()),
        "--output-dir",
        tmp.path().join("y1p").to_str().unwrap(),
        "--no-cache",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("recompiling"), "{}", stderr(&o));
    assert_eq!(read_f32(&tmp.path().join("y1p/y.npy")).shape(), &[1, 2]);
    // ... and refused when the model is gone
    std::fs::remove_file(&m).unwrap();
    let o = graft_env(&[
        "run",
        plan.to_str().unwrap(),
        "--input",
        &format!("x={}", x1.display()),
        "--no-cache",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not fit these inputs"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_and_unknown_inputs_are_usage_errors() {
    let model = repo().join("models/cnn_base/unmerged.ts.onnx");
    let o = graft_env(&["run", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("input 'pixel_values' was not given"),
        "{}",
        stderr(&o)
    );
    let o = graft_env(&["run", model.to_str().unwrap(), "--input", "nope=x.npy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no input of that name"),
        "{}",
        stderr(&o)
    );
    let o = graft_env(&["run", model.to_str().unwrap(), "--backend", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn gpu_and_cpu_backends_agree_and_compare_reports_errors() {
    if gpu("wgsl cli: backends").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = repo().join("models/bert_lora/unmerged.ts.onnx");
    let inputs = repo().join("models/bert_lora/inputs.npz");
    let run = |backend: &str, out: &Path| {
        graft_env(&[
            "run",
            model.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--backend",
            backend,
            "--output-dir",
            out.to_str().unwrap(),
            "--no-cache",
        ])
    };
    let (g, c) = (tmp.path().join("gpu"), tmp.path().join("cpu"));
    assert!(run("gpu", &g).status.success());
    assert!(run("cpu", &c).status.success());
    let (a, b) = (
        read_f32(&g.join("last_hidden_state.npy")),
        read_f32(&c.join("last_hidden_state.npy")),
    );
    assert_eq!(a.shape(), b.shape());
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "max abs difference {err}");
    let o = graft_env(&[
        "run",
        model.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--compare",
        "cpu",
        "--no-cache",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("last_hidden_state: max abs error") && out.contains("ok"),
        "{out}"
    );
}

#[test]
fn the_onnx_backend_test_layout_is_run_and_checked() {
    if gpu("wgsl cli: backend test layout").is_none() {
        return;
    }
    let Ok(dir) = common::node_tests::data_dir() else {
        if in_ci() {
            panic!("the ONNX node tests are needed under CI");
        }
        eprintln!("SKIPPED backend test layout: no ONNX node tests");
        return;
    };
    let case = dir.join("test_add_bcast");
    let o = graft_env(&["run", case.to_str().unwrap(), "--no-cache"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("test_data_set_0 sum: max abs error"),
        "{}",
        stdout(&o)
    );
    // a copy whose stored output is wrong fails, naming the output
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("test_add_bcast");
    let set = bad.join("test_data_set_0");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::copy(case.join("model.onnx"), bad.join("model.onnx")).unwrap();
    for f in ["input_0.pb", "input_1.pb"] {
        std::fs::copy(case.join("test_data_set_0").join(f), set.join(f)).unwrap();
    }
    let want = common::node_tests::read_tensor(&case.join("test_data_set_0/output_0.pb")).unwrap();
    let shifted = graft::eval::TensorValue::F32(want.to_f32_array().unwrap().mapv(|v| v + 1.0));
    use protobuf::Message;
    std::fs::write(
        set.join("output_0.pb"),
        shifted.to_proto("sum").write_to_bytes().unwrap(),
    )
    .unwrap();
    let o = graft_env(&["run", bad.to_str().unwrap(), "--no-cache"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("FAILED"), "{}", stdout(&o));
}

#[test]
fn fusion_folds_bias_and_activation_into_kernels_and_changes_no_output() {
    if gpu("wgsl cli: fusion").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = repo().join("models/bert_base/unmerged.ts.onnx");
    let inputs = repo().join("models/bert_base/inputs.npz");
    let compile = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "compile",
            model.to_str().unwrap(),
            "--emit-wgsl",
            dir.to_str().unwrap(),
            "--input-shape",
            "input_ids=2,8",
            "--input-shape",
            "attention_mask=2,8",
        ];
        args.extend(extra);
        let o = graft_env(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let plan: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("plan.json")).unwrap()).unwrap();
        plan
    };
    let fused = compile(&tmp.path().join("fused"), &[]);
    let plain = compile(&tmp.path().join("plain"), &["--no-fusion"]);
    let kernel = |plan: &serde_json::Value, d: &serde_json::Value| {
        plan["kernels"][d["kernel"].as_u64().unwrap() as usize]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let dispatches = |p: &serde_json::Value| p["dispatches"].as_array().unwrap().clone();
    assert!(dispatches(&fused).len() < dispatches(&plain).len());
    // a matmul that also adds its bias (two nodes, one matmul dispatch)
    assert!(
        dispatches(&fused)
            .iter()
            .any(|d| kernel(&fused, d).starts_with("matmul")
                && d["nodes"].as_array().unwrap().len() >= 2),
        "no matmul epilogue fusion"
    );
    // an elementwise chain (the erf GELU: Div, Erf, Add, Mul, Mul) in one kernel
    assert!(
        dispatches(&fused).iter().any(
            |d| kernel(&fused, d) == "elementwise" && d["nodes"].as_array().unwrap().len() >= 4
        ),
        "no elementwise chain fusion"
    );
    assert!(
        dispatches(&fused)
            .iter()
            .any(|d| kernel(&fused, d) == "layernorm")
    );
    // every node is covered exactly once either way
    let covered = |p: &serde_json::Value| {
        let mut v: Vec<String> = dispatches(p)
            .iter()
            .flat_map(|d| {
                d["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(covered(&fused), covered(&plain));
    // same outputs
    for (name, dir) in [("fused", "fused"), ("plain", "plain")] {
        let o = graft_env(&[
            "run",
            tmp.path().join(dir).to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--output-dir",
            tmp.path().join(format!("{name}_out")).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let a = read_f32(&tmp.path().join("fused_out/last_hidden_state.npy"));
    let b = read_f32(&tmp.path().join("plain_out/last_hidden_state.npy"));
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-5, "fusion changed outputs by {err}");
}
