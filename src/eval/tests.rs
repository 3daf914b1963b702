//! Unit tests for tricky cases: broadcasting, negative axes, integer division, size limits,
//! malformed attributes (errors, not panics), dtype conversions, graph ordering.

use ndarray::{ArrayD, IxDyn};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, GraphProto, NodeProto, ValueInfoProto};

use super::*;

fn f32t(shape: &[usize], v: &[f32]) -> TensorValue {
    TensorValue::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}
fn i64t(shape: &[usize], v: &[i64]) -> TensorValue {
    TensorValue::I64(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}
fn i32t(shape: &[usize], v: &[i32]) -> TensorValue {
    TensorValue::I32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
}

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = ty.into();
    a
}
fn a_i(name: &str, v: i64) -> AttributeProto {
    let mut a = attr(name, AttributeType::INT);
    a.i = v;
    a
}
fn a_f(name: &str, v: f32) -> AttributeProto {
    let mut a = attr(name, AttributeType::FLOAT);
    a.f = v;
    a
}
fn a_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = attr(name, AttributeType::INTS);
    a.ints = v.to_vec();
    a
}
fn a_floats(name: &str, v: &[f32]) -> AttributeProto {
    let mut a = attr(name, AttributeType::FLOATS);
    a.floats = v.to_vec();
    a
}
fn a_s(name: &str, v: &str) -> AttributeProto {
    let mut a = attr(name, AttributeType::STRING);
    a.s = v.as_bytes().to_vec();
    a
}

fn run(
    op: &str,
    opset: i64,
    attrs: &[AttributeProto],
    ins: &[&TensorValue],
) -> Result<TensorValue> {
    let ins: Vec<Option<&TensorValue>> = ins.iter().map(|t| Some(*t)).collect();
    eval_node(op, "", opset, attrs, &ins, 1).map(|mut v| v.remove(0))
}

fn vals(t: &TensorValue) -> Vec<f64> {
    t.to_f64_vec()
}

fn op_err(r: Result<TensorValue>, op: &str) -> String {
    match r {
        Err(e) => {
            let s = e.to_string();
            assert!(s.contains(op), "error '{s}' should name {op}");
            s
        }
        Ok(v) => panic!("{op}: expected an error, got {v:?}"),
    }
}

#[test]
fn broadcasting() {
    let a = f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let b = f32t(&[3], &[10., 20., 30.]);
    let r = run("Add", 17, &[], &[&a, &b]).unwrap();
    assert_eq!(r.shape(), &[2, 3]);
    assert_eq!(vals(&r), vec![11., 22., 33., 14., 25., 36.]);
    let c = f32t(&[2, 1], &[1., 2.]);
    let d = f32t(&[1, 3], &[1., 2., 3.]);
    let r = run("Mul", 17, &[], &[&c, &d]).unwrap();
    assert_eq!(r.shape(), &[2, 3]);
    assert_eq!(vals(&r), vec![1., 2., 3., 2., 4., 6.]);
    let bad = f32t(&[2], &[1., 2.]);
    op_err(run("Add", 17, &[], &[&a, &bad]), "Add");
    // mixed dtypes are an error, not a panic
    let i = i64t(&[3], &[1, 2, 3]);
    op_err(run("Sub", 17, &[], &[&a, &i]), "Sub");
    // Where broadcasts three ways
    let cond =
        TensorValue::Bool(ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![true, false]).unwrap());
    let r = run("Where", 17, &[], &[&cond, &b, &f32t(&[], &[0.])]).unwrap();
    assert_eq!(vals(&r), vec![10., 20., 30., 0., 0., 0.]);
}

#[test]
fn integer_division_and_mod() {
    let a = i32t(&[4], &[-7, 7, -7, 7]);
    let b = i32t(&[4], &[2, 2, -2, -2]);
    let r = run("Div", 14, &[], &[&a, &b]).unwrap();
    assert_eq!(vals(&r), vec![-3., 3., 3., -3.]);
    let r = run("Mod", 13, &[], &[&a, &b]).unwrap();
    assert_eq!(vals(&r), vec![1., 1., -1., -1.]);
    let r = run("Mod", 13, &[a_i("fmod", 1)], &[&a, &b]).unwrap();
    assert_eq!(vals(&r), vec![-1., 1., -1., 1.]);
    let z = i32t(&[4], &[1, 0, 1, 1]);
    op_err(run("Div", 14, &[], &[&a, &z]), "Div");
    op_err(run("Mod", 13, &[], &[&a, &z]), "Mod");
    let m = i32t(&[1], &[i32::MIN]);
    let r = run("Div", 14, &[], &[&m, &i32t(&[1], &[-1])]).unwrap();
    assert_eq!(vals(&r), vec![i32::MIN as f64]);
}

#[test]
fn negative_axes() {
    let a = f32t(&[2, 2], &[1., 2., 3., 4.]);
    let r = run("Concat", 13, &[a_i("axis", -1)], &[&a, &a]).unwrap();
    assert_eq!(r.shape(), &[2, 4]);
    let idx = i64t(&[2], &[-1, 0]);
    let r = run("Gather", 13, &[a_i("axis", -1)], &[&a, &idx]).unwrap();
    assert_eq!(vals(&r), vec![2., 1., 4., 3.]);
    op_err(run("Gather", 13, &[], &[&a, &i64t(&[1], &[2])]), "Gather");
    op_err(run("Concat", 13, &[a_i("axis", 2)], &[&a, &a]), "Concat");
    let r = run(
        "ReduceSum",
        13,
        &[a_i("keepdims", 0)],
        &[&a, &i64t(&[1], &[-2])],
    )
    .unwrap();
    assert_eq!(vals(&r), vec![4., 6.]);
    let r = run("Unsqueeze", 13, &[], &[&a, &i64t(&[1], &[-1])]).unwrap();
    assert_eq!(r.shape(), &[2, 2, 1]);
    let r = run("Unsqueeze", 11, &[a_ints("axes", &[0])], &[&a]).unwrap();
    assert_eq!(r.shape(), &[1, 2, 2]);
    let r = run("Squeeze", 11, &[a_ints("axes", &[-3])], &[&r]).unwrap();
    assert_eq!(r.shape(), &[2, 2]);
}

#[test]
fn reshape_and_slice() {
    let a = f32t(&[2, 3, 4], &(0..24).map(|v| v as f32).collect::<Vec<_>>());
    let r = run("Reshape", 14, &[], &[&a, &i64t(&[2], &[0, -1])]).unwrap();
    assert_eq!(r.shape(), &[2, 12]);
    op_err(
        run("Reshape", 14, &[], &[&a, &i64t(&[2], &[-1, -1])]),
        "Reshape",
    );
    op_err(run("Reshape", 14, &[], &[&a, &i64t(&[1], &[5])]), "Reshape");
    let e = f32t(&[0, 3], &[]);
    let r = run(
        "Reshape",
        14,
        &[a_i("allowzero", 1)],
        &[&e, &i64t(&[2], &[3, 0])],
    )
    .unwrap();
    assert_eq!(r.shape(), &[3, 0]);
    // negative step with clamped start/end
    let v = f32t(&[5], &[0., 1., 2., 3., 4.]);
    let r = run(
        "Slice",
        13,
        &[],
        &[
            &v,
            &i64t(&[1], &[i64::MAX]),
            &i64t(&[1], &[i64::MIN]),
            &i64t(&[1], &[0]),
            &i64t(&[1], &[-2]),
        ],
    )
    .unwrap();
    assert_eq!(vals(&r), vec![4., 2., 0.]);
    let r = run(
        "Slice",
        13,
        &[],
        &[&v, &i64t(&[1], &[-3]), &i64t(&[1], &[100])],
    )
    .unwrap();
    assert_eq!(vals(&r), vec![2., 3., 4.]);
    op_err(
        run(
            "Slice",
            13,
            &[],
            &[
                &v,
                &i64t(&[1], &[0]),
                &i64t(&[1], &[3]),
                &i64t(&[1], &[0]),
                &i64t(&[1], &[0]),
            ],
        ),
        "Slice",
    );
}

#[test]
fn matmul_shapes() {
    let a = f32t(
        &[2, 1, 2, 3],
        &(0..12).map(|v| v as f32).collect::<Vec<_>>(),
    );
    let b = f32t(&[3, 3, 1], &(0..9).map(|v| v as f32).collect::<Vec<_>>());
    let r = run("MatMul", 13, &[], &[&a, &b]).unwrap();
    assert_eq!(r.shape(), &[2, 3, 2, 1]);
    let v = f32t(&[3], &[1., 1., 1.]);
    let r = run("MatMul", 13, &[], &[&a, &v]).unwrap();
    assert_eq!(r.shape(), &[2, 1, 2]);
    assert_eq!(vals(&r)[..2], [3., 12.]);
    let r = run("MatMul", 13, &[], &[&v, &b]).unwrap();
    assert_eq!(r.shape(), &[3, 1]);
    let r = run("MatMul", 13, &[], &[&v, &v]).unwrap();
    assert_eq!(r.shape(), &[] as &[usize]);
    assert_eq!(vals(&r), vec![3.]);
    op_err(run("MatMul", 13, &[], &[&a, &a]), "MatMul");
    // Gemm with transB and a broadcast C
    let x = f32t(&[1, 2], &[1., 2.]);
    let w = f32t(&[3, 2], &[1., 0., 0., 1., 1., 1.]);
    let c = f32t(&[3], &[1., 1., 1.]);
    let r = run(
        "Gemm",
        13,
        &[a_i("transB", 1), a_f("alpha", 2.0), a_f("beta", 0.5)],
        &[&x, &w, &c],
    )
    .unwrap();
    assert_eq!(vals(&r), vec![2.5, 4.5, 6.5]);
}

#[test]
fn size_limits() {
    let huge = i64t(&[2], &[1 << 40, 1 << 40]);
    let e = run("ConstantOfShape", 20, &[], &[&huge]).unwrap_err();
    assert!(matches!(e, EvalError::TooLarge { .. }), "{e}");
    let one = f32t(&[1], &[1.]);
    let e = run("Expand", 13, &[], &[&one, &huge]).unwrap_err();
    assert!(matches!(e, EvalError::TooLarge { .. }), "{e}");
    let e = run("Tile", 13, &[], &[&one, &i64t(&[1], &[i64::MAX])]).unwrap_err();
    assert!(matches!(e, EvalError::TooLarge { .. }), "{e}");
    let e = run(
        "Range",
        11,
        &[],
        &[
            &TensorValue::scalar_i64(0),
            &TensorValue::scalar_i64(i64::MAX),
            &TensorValue::scalar_i64(1),
        ],
    )
    .unwrap_err();
    assert!(matches!(e, EvalError::TooLarge { .. }), "{e}");
    let e = run(
        "Range",
        11,
        &[],
        &[
            &TensorValue::scalar_f32(0.0),
            &TensorValue::scalar_f32(1e30),
            &TensorValue::scalar_f32(1e-30),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(e, EvalError::TooLarge { .. } | EvalError::Op { .. }),
        "{e}"
    );
    // a configurable limit
    let small = EvalOptions {
        max_tensor_bytes: 64,
    };
    let shape = i64t(&[1], &[100]);
    let e = eval_node_with("ConstantOfShape", "", 20, &[], &[Some(&shape)], 1, &small).unwrap_err();
    assert!(matches!(e, EvalError::TooLarge { .. }), "{e}");
    // declared shapes of 1e18 elements never allocate
    assert!(TensorValue::from_raw(dtype::FLOAT, &[1_000_000_000, 1_000_000_000], &[0; 4]).is_err());
    assert!(TensorValue::from_raw(dtype::FLOAT, &[i64::MAX, i64::MAX], &[]).is_err());
    assert!(TensorValue::from_raw(dtype::FLOAT, &[-1], &[]).is_err());
    let big = i64t(&[2], &[1 << 31, 1 << 31]);
    let z = f32t(&[1, 1], &[0.]);
    let e = run(
        "Pad",
        13,
        &[],
        &[&z, &i64t(&[4], &[0, 0, 1 << 31, 1 << 31])],
    )
    .unwrap_err();
    assert!(matches!(e, EvalError::TooLarge { .. }), "{e}");
    let e = run(
        "Resize",
        13,
        &[],
        &[&z, &f32t(&[0], &[]), &f32t(&[0], &[]), &big],
    )
    .unwrap_err();
    assert!(
        matches!(e, EvalError::TooLarge { .. } | EvalError::Op { .. }),
        "{e}"
    );
}

#[test]
fn malformed_attributes_are_errors() {
    let a = f32t(&[2, 2], &[1., 2., 3., 4.]);
    // wrong attribute type
    let mut perm = a_floats("perm", &[1.0, 0.0]);
    perm.name = "perm".into();
    op_err(run("Transpose", 13, &[perm], &[&a]), "Transpose");
    op_err(
        run("Transpose", 13, &[a_ints("perm", &[0, 0])], &[&a]),
        "Transpose",
    );
    op_err(
        run("Transpose", 13, &[a_ints("perm", &[0, 5])], &[&a]),
        "Transpose",
    );
    op_err(run("Gemm", 13, &[a_i("alpha", 2)], &[&a, &a]), "Gemm");
    op_err(run("Constant", 13, &[], &[]), "Constant");
    op_err(
        run(
            "Constant",
            13,
            &[a_f("value_float", 1.0), a_i("value_int", 1)],
            &[],
        ),
        "Constant",
    );
    op_err(run("Softmax", 13, &[a_i("axis", 7)], &[&a]), "Softmax");
    op_err(
        run("Gelu", 20, &[a_s("approximate", "cubic")], &[&a]),
        "Gelu",
    );
    op_err(
        run(
            "Pad",
            13,
            &[a_s("mode", "mirror")],
            &[&a, &i64t(&[4], &[1, 1, 1, 1])],
        ),
        "Pad",
    );
    op_err(run("Cast", 13, &[a_i("to", 1234)], &[&a]), "Cast");
    op_err(run("Cast", 13, &[], &[&a]), "Cast");
    // Conv with mismatched channels, bad group, bad strides
    let x = f32t(&[1, 2, 3, 3], &[0.; 18]);
    let w = f32t(&[1, 3, 1, 1], &[0.; 3]);
    op_err(run("Conv", 11, &[], &[&x, &w]), "Conv");
    let w = f32t(&[1, 2, 1, 1], &[0.; 2]);
    op_err(run("Conv", 11, &[a_i("group", 0)], &[&x, &w]), "Conv");
    op_err(
        run("Conv", 11, &[a_ints("strides", &[0, 1])], &[&x, &w]),
        "Conv",
    );
    op_err(
        run("Conv", 11, &[a_ints("pads", &[1, 1])], &[&x, &w]),
        "Conv",
    );
    let w = f32t(&[1, 2, 5, 5], &[0.; 50]);
    op_err(run("Conv", 11, &[], &[&x, &w]), "Conv");
    op_err(run("MaxPool", 11, &[], &[&x]), "MaxPool");
    // missing inputs
    op_err(run("Add", 13, &[], &[&a]), "Add");
    // an attribute that refers to a function attribute
    let mut r = a_i("axis", 0);
    r.ref_attr_name = "outer_axis".into();
    op_err(run("Concat", 13, &[r], &[&a]), "Concat");
    // unsupported ops and domains
    assert!(matches!(
        run("NoSuchOp", 13, &[], &[&a]),
        Err(EvalError::UnsupportedOp { .. })
    ));
    assert!(!is_supported("Gelu", "com.microsoft"));
    assert!(is_supported("Gelu", "ai.onnx"));
}

#[test]
fn casts_and_raw_round_trip() {
    let a = f32t(&[4], &[1.7, -1.7, 0.0, f32::NAN]);
    let r = run("Cast", 13, &[a_i("to", dtype::INT32 as i64)], &[&a]).unwrap();
    assert_eq!(vals(&r), vec![1., -1., 0., 0.]);
    let r = run("Cast", 13, &[a_i("to", dtype::BOOL as i64)], &[&a]).unwrap();
    assert_eq!(vals(&r), vec![1., 1., 0., 1.]);
    let r = run("Cast", 13, &[a_i("to", dtype::FLOAT16 as i64)], &[&a]).unwrap();
    assert_eq!(r.data_type(), dtype::FLOAT16);
    let back = r.cast(dtype::FLOAT).unwrap();
    assert!((vals(&back)[0] - 1.7).abs() < 1e-3);
    let b = TensorValue::from_raw(dtype::BFLOAT16, &[2], &[0x80, 0x3f, 0x00, 0xc0]).unwrap();
    assert_eq!(vals(&b), vec![1.0, -2.0]);
    // int4: two per byte, low nibble first, sign-extended
    let q = TensorValue::from_raw(dtype::INT4, &[3], &[0xF7, 0x08]).unwrap();
    assert_eq!(vals(&q), vec![7., -1., -8.]);
    let u = TensorValue::from_raw(dtype::UINT4, &[2], &[0xF7]).unwrap();
    assert_eq!(vals(&u), vec![7., 15.]);
    // float8 e4m3fn: 0x38 = 1.0, 0x7f = NaN, 0xc0 = -2.0
    let f8 = TensorValue::from_raw(dtype::FLOAT8E4M3FN, &[3], &[0x38, 0x7f, 0xc0]).unwrap();
    let v = vals(&f8);
    assert_eq!(v[0], 1.0);
    assert!(v[1].is_nan());
    assert_eq!(v[2], -2.0);
    // raw round trip for every variant kind
    for t in [
        f32t(&[2, 2], &[1., 2., 3., 4.]),
        i64t(&[3], &[-1, 0, i64::MAX]),
        TensorValue::Bool(ArrayD::from_shape_vec(IxDyn(&[2]), vec![true, false]).unwrap()),
        a.cast(dtype::FLOAT16).unwrap(),
        a.cast(dtype::UINT16).unwrap(),
        a.cast(dtype::DOUBLE).unwrap(),
    ] {
        let p = t.to_proto("x");
        let back = TensorValue::from_proto(&p).unwrap();
        assert_eq!(back.data_type(), t.data_type());
        assert_eq!(back.to_raw_bytes(), t.to_raw_bytes());
    }
    let s = TensorValue::Str(
        ArrayD::from_shape_vec(IxDyn(&[2]), vec!["a".into(), "bc".into()]).unwrap(),
    );
    assert_eq!(TensorValue::from_proto(&s.to_proto("s")).unwrap(), s);
    // raw length mismatch and external data are errors
    assert!(TensorValue::from_raw(dtype::FLOAT, &[2], &[0; 7]).is_err());
    let mut p = f32t(&[1], &[1.]).to_proto("e");
    p.data_location = onnx_protobuf::tensor_proto::DataLocation::EXTERNAL.into();
    assert!(TensorValue::from_proto(&p).is_err());
    // Cast to a type without a variant is refused, not approximated
    op_err(
        run("Cast", 21, &[a_i("to", dtype::FLOAT8E4M3FN as i64)], &[&a]),
        "Cast",
    );
}

#[test]
fn constant_forms() {
    let r = run("Constant", 13, &[a_floats("value_floats", &[1., 2.])], &[]).unwrap();
    assert_eq!(r.shape(), &[2]);
    let r = run("Constant", 13, &[a_i("value_int", 7)], &[]).unwrap();
    assert_eq!(r.data_type(), dtype::INT64);
    assert_eq!(r.shape(), &[] as &[usize]);
    let mut t = attr("value", AttributeType::TENSOR);
    t.t = protobuf::MessageField::some(f32t(&[2], &[3., 4.]).to_proto(""));
    let r = run("Constant", 13, &[t], &[]).unwrap();
    assert_eq!(vals(&r), vec![3., 4.]);
    let r = run("Constant", 13, &[a_s("value_string", "hi")], &[]).unwrap();
    assert_eq!(r.data_type(), dtype::STRING);
}

#[test]
fn half_precision_ops() {
    let a = f32t(&[2, 2], &[1., 2., 3., 4.])
        .cast(dtype::FLOAT16)
        .unwrap();
    let r = run("MatMul", 13, &[], &[&a, &a]).unwrap();
    assert_eq!(r.data_type(), dtype::FLOAT16);
    assert_eq!(vals(&r), vec![7., 10., 15., 22.]);
    let b = a.cast(dtype::BFLOAT16).unwrap();
    let r = run("Sqrt", 13, &[], &[&b]).unwrap();
    assert_eq!(r.data_type(), dtype::BFLOAT16);
    let r = run("ReduceMean", 18, &[], &[&b]).unwrap();
    assert_eq!(vals(&r), vec![2.5]);
}

fn node(op: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.input = ins.iter().map(|s| s.to_string()).collect();
    n.output = outs.iter().map(|s| s.to_string()).collect();
    n
}

fn vi(name: &str) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v
}

#[test]
fn graph_order_and_errors() {
    let mut g = GraphProto::new();
    // stored out of order: y = relu(x + w); z = y * y
    g.node.push(node("Mul", &["y", "y"], &["z"]));
    g.node.push(node("Relu", &["s"], &["y"]));
    g.node.push(node("Add", &["x", "w"], &["s"]));
    g.initializer.push(f32t(&[2], &[1., -10.]).to_proto("w"));
    g.input.push(vi("x"));
    g.output.push(vi("z"));
    g.output.push(vi("s"));
    let out = run_graph(&g, 17, &[("x".into(), f32t(&[2], &[2., 3.]))]).unwrap();
    assert_eq!(out[0].0, "z");
    assert_eq!(vals(&out[0].1), vec![9., 0.]);
    assert_eq!(vals(&out[1].1), vec![3., -7.]);
    // missing input
    assert!(matches!(run_graph(&g, 17, &[]), Err(EvalError::Graph(_))));
    // cycle
    let mut c = g.clone();
    c.node.push(node("Identity", &["z"], &["x2"]));
    c.node[2].input[0] = "x2".into();
    assert!(run_graph(&c, 17, &[("x".into(), f32t(&[2], &[2., 3.]))]).is_err());
    // errors name the node
    let mut bad = g.clone();
    bad.node[2].name = "the_add".into();
    let e = run_graph(&bad, 17, &[("x".into(), f32t(&[3], &[2., 3., 4.]))]).unwrap_err();
    assert!(e.to_string().contains("the_add"), "{e}");
}

#[test]
fn layer_norm_and_softmax() {
    let x = f32t(&[2, 2], &[1., 3., 2., 4.]);
    let s = f32t(&[2], &[1., 1.]);
    let ins = [Some(&x), Some(&s)];
    let out = eval_node(
        "LayerNormalization",
        "",
        17,
        &[a_f("epsilon", 0.0)],
        &ins,
        3,
    )
    .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(vals(&out[0]), vec![-1., 1., -1., 1.]);
    assert_eq!(out[1].shape(), &[2, 1]);
    let r = run("Softmax", 13, &[], &[&x]).unwrap();
    let v = vals(&r);
    assert!((v[0] + v[1] - 1.0).abs() < 1e-6 && v[1] > v[0]);
    // opset < 13 flattens from axis 1 (default): whole row of a 2-D input
    let x3 = f32t(&[1, 2, 2], &[0., 0., 0., 0.]);
    let r = run("Softmax", 11, &[], &[&x3]).unwrap();
    assert_eq!(vals(&r), vec![0.25; 4]);
}

#[test]
fn erf_accuracy() {
    // values from a high-precision reference
    let cases = [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (-3.0, -0.999_977_909_503_001_4),
    ];
    for (x, want) in cases {
        let got = elementwise::erf(x);
        assert!((got - want).abs() < 1e-14, "erf({x}) = {got}, want {want}");
    }
}

/// Every supported op, fed combinations of odd inputs and attributes, returns a value or an
/// error but never panics.
#[test]
fn no_panics_on_garbage() {
    let pool: Vec<TensorValue> = vec![
        f32t(&[], &[1.5]),
        f32t(&[0], &[]),
        f32t(&[3], &[1., -2., 3.]),
        f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.]),
        f32t(
            &[1, 2, 3, 3],
            &(0..18).map(|v| v as f32).collect::<Vec<_>>(),
        ),
        f32t(&[1, 1, 2, 2, 2], &[1.; 8]),
        f32t(&[2, 0, 3], &[]),
        f32t(&[1, 2, 0, 1], &[]),
        f32t(&[2, 1, 1, 1], &[1., 2.]),
        i64t(&[], &[2]),
        i64t(&[1], &[-1]),
        i64t(&[2], &[0, -1]),
        i64t(&[4], &[1, 0, -1, 9]),
        i64t(&[3], &[i64::MAX, i64::MIN, 0]),
        i64t(&[2, 2], &[0, 1, 1, 0]),
        i32t(&[3], &[0, 1, -7]),
        TensorValue::Bool(ArrayD::from_shape_vec(IxDyn(&[3]), vec![true, false, true]).unwrap()),
        f32t(&[3], &[1., 2., 3.]).cast(dtype::FLOAT16).unwrap(),
        TensorValue::Str(ArrayD::from_shape_vec(IxDyn(&[1]), vec!["x".into()]).unwrap()),
        TensorValue::U8(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1, 255]).unwrap()),
    ];
    let attr_pool: Vec<AttributeProto> = vec![
        a_i("axis", -1),
        a_i("axis", 3),
        a_i("axis", -9),
        a_ints("axes", &[0, -1]),
        a_ints("axes", &[7]),
        a_ints("perm", &[1, 0]),
        a_ints("kernel_shape", &[2, 2]),
        a_ints("kernel_shape", &[0, 9]),
        a_ints("strides", &[2, 2]),
        a_ints("pads", &[1, 1, 1, 1]),
        a_ints("pads", &[-1, 0]),
        a_ints("dilations", &[2, 2]),
        a_i("group", 2),
        a_i("group", -1),
        a_s("auto_pad", "SAME_UPPER"),
        a_s("mode", "reflect"),
        a_s("mode", "linear"),
        a_i("keepdims", 0),
        a_i("transA", 1),
        a_i("ceil_mode", 1),
        a_i("to", 9),
        a_i("to", 99),
        a_ints("split", &[1, 2]),
        a_i("k", 5),
        a_i("batch_dims", 1),
        a_s("equation", "ij,jk->ik"),
        a_s("equation", "..."),
        a_i("blocksize", 2),
        a_ints("output_shape", &[4, 4]),
        a_ints("output_padding", &[1, 1]),
        a_f("alpha", f32::NAN),
        a_ints("shape", &[-1]),
        a_i("num_outputs", 2),
        a_s("reduction", "add"),
        a_i("start", -10),
        a_ints("strides", &[i64::MAX, 1]),
        a_ints("dilations", &[i64::MAX, 1]),
        a_ints("pads", &[i64::MAX, 0, 0, 0]),
        a_i("blocksize", i64::MAX),
        a_ints("output_shape", &[i64::MAX, 1]),
        a_i("k", i64::MIN),
        a_i("fmod", 1),
        a_s("direction", "LEFT"),
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n.max(1)
    };
    let mut panics = Vec::new();
    for op in supported_ops() {
        for _ in 0..1500 {
            let n_in = next(5);
            let ins: Vec<Option<&TensorValue>> = (0..n_in)
                .map(|_| {
                    if next(8) == 0 {
                        None
                    } else {
                        Some(&pool[next(pool.len())])
                    }
                })
                .collect();
            let n_at = next(4);
            let mut attrs: Vec<AttributeProto> = Vec::new();
            for _ in 0..n_at {
                let a = attr_pool[next(attr_pool.len())].clone();
                if !attrs.iter().any(|b| b.name == a.name) {
                    attrs.push(a);
                }
            }
            let opset = [7, 11, 13, 18, 21][next(5)];
            let nout = 1 + next(3);
            let r = std::panic::catch_unwind(|| {
                let small = EvalOptions {
                    max_tensor_bytes: 1 << 20,
                };
                let _ = eval_node_with(op, "", opset, &attrs, &ins, nout, &small);
            });
            if r.is_err() {
                let shapes: Vec<_> = ins
                    .iter()
                    .map(|t| t.map(|t| (t.data_type(), t.shape().to_vec())))
                    .collect();
                let names: Vec<_> = attrs.iter().map(|a| a.name.clone()).collect();
                panics.push(format!(
                    "{op} opset {opset} inputs {shapes:?} attrs {names:?}"
                ));
            }
        }
    }
    assert!(
        panics.is_empty(),
        "{} panics:\n{}",
        panics.len(),
        panics.join("\n")
    );
}
