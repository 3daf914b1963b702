//! Regressions found by review: narrow integer types wrap after arithmetic, NaN casts to true and
//! keeps its sign, Resize-10's coordinate mapping, and malformed plans are errors, not panics.

mod common;

use common::*;
use graft::codegen::CompileOptions;
use graft::eval::TensorValue;

fn model(text: &str) -> graft::ir::Model {
    let proto = graft::text::parse_model(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    graft::onnx::model_from_proto(proto, std::path::Path::new("t.onnxtxt"), None).unwrap()
}

fn header(opset: i64) -> String {
    format!("<\n ir_version: 8,\n opset_import: [\"\" : {opset}]\n>\n")
}

fn arr<T: Clone>(v: &[T]) -> ndarray::ArrayD<T> {
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v.to_vec()).unwrap()
}

fn f32s(t: &TensorValue) -> Vec<f32> {
    t.to_f32_array().unwrap().iter().copied().collect()
}

/// A model's text, its inputs and the expected first output.
type Case = (String, Vec<(String, TensorValue)>, Vec<f32>);

/// A named edit of plan.json and the words the error must contain.
type Edit = (
    &'static str,
    Box<dyn Fn(&mut serde_json::Value)>,
    &'static str,
);

#[test]
fn narrow_integers_wrap_nan_casts_to_true_and_sign_keeps_nan() {
    let Some(gpu) = gpu("gpu edge cases") else {
        return;
    };
    let h = header(17);
    let cases: Vec<Case> = vec![
        (
            format!(
                "{h}g (uint8[4] a) => (float[4] y) {{\n s = Add (a, a)\n y = Cast <to: int = 1> (s)\n}}\n"
            ),
            vec![("a".into(), TensorValue::U8(arr(&[100, 200, 50, 255])))],
            // numpy uint8 arithmetic wraps modulo 256
            vec![200.0, 144.0, 100.0, 254.0],
        ),
        (
            format!(
                "{h}g (int8[4] a) => (float[4] y) {{\n s = Mul (a, a)\n y = Cast <to: int = 1> (s)\n}}\n"
            ),
            vec![("a".into(), TensorValue::I8(arr(&[100, -12, 50, 11])))],
            // 10000 mod 256 = 16; 144 - 256 = -112; 2500 mod 256 = 196 - 256 = -60; 121
            vec![16.0, -112.0, -60.0, 121.0],
        ),
        (
            format!(
                "{h}g (uint16[1] a, uint16[1] b) => (float[1] y) {{\n s = Sub (a, b)\n y = Cast <to: int = 1> (s)\n}}\n"
            ),
            vec![
                ("a".into(), TensorValue::U16(arr(&[1]))),
                ("b".into(), TensorValue::U16(arr(&[3]))),
            ],
            vec![65534.0],
        ),
        (
            format!(
                "{h}g (float[4] x) => (float[4] y) {{\n b = Cast <to: int = 9> (x)\n y = Cast <to: int = 1> (b)\n}}\n"
            ),
            vec![(
                "x".into(),
                TensorValue::F32(arr(&[-1.5, 0.0, 0.1, f32::NAN])),
            )],
            // any non-zero value, NaN included, is true
            vec![1.0, 0.0, 1.0, 1.0],
        ),
    ];
    for (text, inputs, want) in cases {
        let m = model(&text);
        let got = run_on_gpu(&gpu, &m, &inputs, CompileOptions::default())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(f32s(&got[0].1), want, "{text}");
    }
    let m = model(&format!(
        "{h}g (float[3] x) => (float[3] y) {{\n y = Sign (x)\n}}\n"
    ));
    let inputs = vec![(
        "x".to_string(),
        TensorValue::F32(arr(&[-2.0, 0.0, f32::NAN])),
    )];
    let got = f32s(&run_on_gpu(&gpu, &m, &inputs, CompileOptions::default()).unwrap()[0].1);
    assert_eq!(&got[..2], &[-1.0, 0.0]);
    assert!(got[2].is_nan(), "Sign(NaN) is NaN, got {}", got[2]);
}

#[test]
fn resize_10_maps_coordinates_as_the_cpu_evaluator_does() {
    let Some(gpu) = gpu("gpu resize-10") else {
        return;
    };
    for mode in ["nearest", "linear"] {
        let text = format!(
            "{}g (float[1,2,4,5] x) => (float[1,2,6,3] y) <float[4] sc = {{1.0, 1.0, 1.7, 0.6}}> {{\n \
             y = Resize <mode: string = \"{mode}\"> (x, sc)\n}}\n",
            header(10)
        );
        let m = model(&text);
        let x: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 4, 5]), x).unwrap();
        let inputs = vec![("x".to_string(), TensorValue::F32(x))];
        let want = graft::verify::run(&m, &inputs).unwrap();
        let got = run_on_gpu(&gpu, &m, &inputs, CompileOptions::default()).unwrap();
        let d = &graft::verify::compare(&want, &got, Some(1e-6)).unwrap()[0];
        assert!(d.ok, "Resize-10 {mode}: relative error {}", d.rel_fro);
    }
}

#[test]
fn malformed_plans_are_errors_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = tmp.path().join("plan");
    let model = repo().join("models/cnn_base/unmerged.ts.onnx");
    let o = run_graft(&[
        "compile",
        model.to_str().unwrap(),
        "--emit-wgsl",
        plan.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(plan.join("plan.json")).unwrap();
    let good: serde_json::Value = serde_json::from_str(&text).unwrap();
    let edits: Vec<Edit> = vec![
        (
            "input buffer",
            Box::new(|p| p["inputs"][0]["buffer"] = 99.into()),
            "names buffer 99",
        ),
        (
            "output buffer",
            Box::new(|p| p["outputs"][0]["buffer"] = 99.into()),
            "names buffer 99",
        ),
        (
            "no bindings",
            Box::new(|p| p["kernels"][0]["bindings"] = serde_json::json!([])),
            "no bindings",
        ),
        (
            "huge buffer",
            Box::new(|p| p["buffers"][0]["size"] = u64::MAX.into()),
            "claims",
        ),
        (
            "weights beyond the file",
            Box::new(|p| p["buffers"][0]["weights_offset"] = u64::MAX.into()),
            "beyond",
        ),
        (
            "huge output",
            Box::new(|p| p["outputs"][0]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40])),
            "does not fit",
        ),
        (
            "dispatch kernel",
            Box::new(|p| p["dispatches"][0]["kernel"] = 99.into()),
            "names kernel 99",
        ),
    ];
    for (what, edit, want) in edits {
        let mut p = good.clone();
        edit(&mut p);
        std::fs::write(plan.join("plan.json"), serde_json::to_vec(&p).unwrap()).unwrap();
        let o = run_graft(&[
            "run",
            plan.to_str().unwrap(),
            "--inputs",
            repo().join("models/cnn_base/inputs.npz").to_str().unwrap(),
            "--no-cache",
        ]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("plan.json") && e.contains(want), "{what}: {e}");
    }
}
