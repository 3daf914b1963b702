//! Every matmul kernel variant (naive, tiled, vec4) on awkward shapes: sizes that are not
//! multiples of the 64x64 tile, broadcast batch dimensions, Gemm transposes with alpha and a
//! broadcast C, and fused bias/activation epilogues; each checked against the CPU evaluator.

mod common;

use graft::codegen::CompileOptions;
use graft::eval::TensorValue;

fn model(text: &str) -> graft::ir::Model {
    let proto = graft::text::parse_model(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    graft::onnx::model_from_proto(proto, std::path::Path::new("t.onnxtxt"), None).unwrap()
}

fn random(shape: &[usize], seed: u64) -> TensorValue {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let a = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    });
    TensorValue::F32(a)
}

fn dims(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

struct Case {
    name: &'static str,
    text: String,
    inputs: Vec<(&'static str, Vec<usize>)>,
}

fn cases() -> Vec<Case> {
    let h = "<\n ir_version: 8,\n opset_import: [\"\" : 18]\n>\n";
    let mm = |a: &[usize], b: &[usize], y: &[usize]| Case {
        name: "matmul",
        text: format!(
            "{h}g (float[{}] a, float[{}] b) => (float[{}] y) {{\n y = MatMul (a, b)\n}}\n",
            dims(a),
            dims(b),
            dims(y)
        ),
        inputs: vec![("a", a.to_vec()), ("b", b.to_vec())],
    };
    vec![
        mm(&[70, 36], &[36, 132], &[70, 132]),
        mm(&[3, 70, 36], &[36, 132], &[3, 70, 132]),
        mm(&[2, 1, 33, 20], &[3, 20, 68], &[2, 3, 33, 68]),
        mm(&[129, 7], &[7, 65], &[129, 65]),
        Case {
            name: "gemm transposes, alpha, broadcast C",
            text: format!(
                "{h}g (float[40,70] a, float[68,40] b, float[68] c) => (float[70,68] y) {{\n \
                 y = Gemm <transA: int = 1, transB: int = 1, alpha: float = 0.5> (a, b, c)\n}}\n"
            ),
            inputs: vec![("a", vec![40, 70]), ("b", vec![68, 40]), ("c", vec![68])],
        },
        Case {
            name: "matmul + bias + relu epilogue",
            text: format!(
                "{h}g (float[2,48,64] a, float[64,96] b, float[96] c) => (float[2,48,96] y) {{\n \
                 t = MatMul (a, b)\n u = Add (t, c)\n y = Relu (u)\n}}\n"
            ),
            inputs: vec![("a", vec![2, 48, 64]), ("b", vec![64, 96]), ("c", vec![96])],
        },
        Case {
            name: "gemm with constant transposed weights and gelu",
            text: format!(
                "{h}g (float[36,64] a) => (float[36,32] y) <float[32,64] w = {{{}}}, float[32] c = {{{}}}> {{\n \
                 t = Gemm <transB: int = 1> (a, w, c)\n y = Gelu (t)\n}}\n",
                (0..32 * 64)
                    .map(|i| format!("{}", ((i * 37) % 101) as f32 / 101.0 - 0.5))
                    .collect::<Vec<_>>()
                    .join(","),
                (0..32)
                    .map(|i| format!("{}", i as f32 / 32.0))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            inputs: vec![("a", vec![36, 64])],
        },
    ]
}

#[test]
fn every_matmul_variant_matches_the_cpu_evaluator() {
    let Some(gpu) = common::gpu("gpu matmul variants") else {
        return;
    };
    for (ci, case) in cases().iter().enumerate() {
        let m = model(&case.text);
        let inputs: Vec<(String, TensorValue)> = case
            .inputs
            .iter()
            .enumerate()
            .map(|(i, (n, s))| (n.to_string(), random(s, (ci * 10 + i) as u64 + 1)))
            .collect();
        let want = graft::verify::run(&m, &inputs).unwrap();
        for variant in ["naive", "tiled", "vec4"] {
            let opts = CompileOptions {
                matmul_variant: Some(variant.into()),
                ..Default::default()
            };
            let got = common::run_on_gpu(&gpu, &m, &inputs, opts)
                .unwrap_or_else(|e| panic!("{} ({variant}): {e}", case.name));
            let diffs = graft::verify::compare(&want, &got, Some(1e-5)).unwrap();
            for d in diffs {
                assert!(
                    d.ok,
                    "{} ({variant}): {} relative error {}",
                    case.name, d.name, d.rel_fro
                );
            }
        }
    }
}

#[test]
fn the_plan_records_the_variant_it_chose() {
    let case = &cases()[0];
    let m = model(&case.text);
    for (variant, kernel) in [
        ("naive", "matmul_naive"),
        ("tiled", "matmul_tiled"),
        ("vec4", "matmul_vec4"),
    ] {
        let mut opts = CompileOptions {
            matmul_variant: Some(variant.into()),
            ..Default::default()
        };
        for (n, s) in &case.inputs {
            opts.input_shapes.insert(n.to_string(), s.clone());
        }
        let c = graft::codegen::compile(&m, &opts).unwrap();
        assert_eq!(c.plan.kernels[c.plan.dispatches[0].kernel].name, kernel);
    }
    // vec4 needs K and N multiples of 4; otherwise the scalar tiled kernel is used
    let odd = &cases()[3];
    let m = model(&odd.text);
    let mut opts = CompileOptions {
        matmul_variant: Some("vec4".into()),
        ..Default::default()
    };
    for (n, s) in &odd.inputs {
        opts.input_shapes.insert(n.to_string(), s.clone());
    }
    let c = graft::codegen::compile(&m, &opts).unwrap();
    assert_eq!(
        c.plan.kernels[c.plan.dispatches[0].kernel].name,
        "matmul_tiled"
    );
}

#[test]
fn float16_weights_are_held_as_f16_with_shader_f16() {
    let Some(gpu) = common::gpu("gpu f16 weights") else {
        return;
    };
    let weights: Vec<f32> = (0..64 * 40)
        .map(|i| ((i * 29) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let bits = weights
        .iter()
        .map(|w| half::f16::from_f32(*w).to_bits().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let text = format!(
        "<\n ir_version: 8,\n opset_import: [\"\" : 18]\n>\ng (float16[70,64] x) => (float16[70,40] y) \
         <float16[64,40] w = {{{bits}}}> {{\n y = MatMul (x, w)\n}}\n"
    );
    let m = model(&text);
    let x = random(&[70, 64], 7).cast(10).unwrap();
    let inputs = vec![("x".to_string(), x)];
    let want = graft::verify::run(&m, &inputs).unwrap();
    let compile = |f16: bool| {
        let mut opts = CompileOptions {
            shader_f16: f16,
            ..Default::default()
        };
        opts.input_shapes.insert("x".into(), vec![70, 64]);
        graft::codegen::compile(&m, &opts).unwrap()
    };
    let (plain, half) = (compile(false), compile(true));
    assert!(!plain.plan.shader_f16);
    assert!(half.plan.shader_f16);
    assert!(
        half.plan
            .kernels
            .iter()
            .any(|k| k.name == "matmul_tiled_f16w")
    );
    // the weight takes half the bytes
    let weight_bytes = |c: &graft::codegen::Compiled| {
        c.plan
            .buffers
            .iter()
            .filter(|b| b.kind == graft::codegen::plan::BufferKind::Weight)
            .map(|b| b.size)
            .sum::<u64>()
    };
    assert_eq!(weight_bytes(&plain), 64 * 40 * 4);
    assert_eq!(weight_bytes(&half), 64 * 40 * 2);
    if !gpu.shader_f16 {
        eprintln!(
            "SKIPPED running the f16 plan: {} lacks shader-f16",
            gpu.describe()
        );
        return;
    }
    let opts = CompileOptions {
        shader_f16: true,
        ..Default::default()
    };
    let got = common::run_on_gpu(&gpu, &m, &inputs, opts).unwrap();
    let d = &graft::verify::compare(&want, &got, Some(1e-3)).unwrap()[0];
    assert!(d.ok, "relative error {}", d.rel_fro);
}
