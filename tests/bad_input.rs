//! Bad input gives one clear error line naming the file and the node or tensor, exit code 1 (2 for
//! a bad request), no panic and no output file. One test per class, including the external-data
//! bug classes the ONNX package itself shipped (read traversal, out-of-bounds read, symlink
//! escape, write traversal, huge allocation from declared dims).

mod common;
use common::*;

use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{
    GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TypeProto, ValueInfoProto, type_proto,
};

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut shape = onnx_protobuf::TensorShapeProto::new();
    for &d in dims {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d);
        shape.dim.push(dim);
    }
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(shape).into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn weight(name: &str) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: 1,
        dims: vec![4, 4],
        raw_data: vec![0u8; 64],
        ..Default::default()
    }
}

/// y = Relu(x @ w)
fn good_model() -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            version: 18,
            ..Default::default()
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: vec![
                node("MatMul", "mm", &["x", "w"], &["h"]),
                node("Relu", "act", &["h"], &["y"]),
            ],
            input: vec![vi("x", &[1, 4])],
            output: vec![vi("y", &[1, 4])],
            initializer: vec![weight("w")],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn external(t: &mut TensorProto, location: &str, offset: Option<u64>, length: Option<u64>) {
    t.raw_data.clear();
    t.data_location = DataLocation::EXTERNAL.into();
    let e = |k: &str, v: String| StringStringEntryProto {
        key: k.into(),
        value: v,
        ..Default::default()
    };
    t.external_data = vec![e("location", location.into())];
    if let Some(o) = offset {
        t.external_data.push(e("offset", o.to_string()));
    }
    if let Some(l) = length {
        t.external_data.push(e("length", l.to_string()));
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn write_model(dir: &Path, name: &str, m: &ModelProto) -> PathBuf {
    write(dir, name, &m.write_to_bytes().unwrap())
}

/// Runs `graft opt` on a bad model and checks the failure contract. Returns stderr.
fn expect_failure(model: &Path, must_mention: &[&str], code: i32) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.onnx");
    let o = run_graft(&[
        "opt",
        model.to_str().unwrap(),
        "--passes",
        "none",
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for m in must_mention {
        assert!(err.contains(m), "error should mention {m:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "output left behind: {left:?}");
    err
}

#[test]
fn truncated_file() {
    let d = tempfile::tempdir().unwrap();
    let bytes = good_model().write_to_bytes().unwrap();
    let p = write(d.path(), "trunc.onnx", &bytes[..bytes.len() / 2]);
    expect_failure(&p, &["trunc.onnx", "truncated"], 1);
}

#[test]
fn not_protobuf() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "text.onnx",
        b"this is not a protobuf file at all \xff\xff\xff\xff",
    );
    expect_failure(&p, &["text.onnx", "not a valid ONNX protobuf"], 1);
}

#[test]
fn protobuf_but_not_a_model() {
    let d = tempfile::tempdir().unwrap();
    // A well-formed protobuf message (field 2, a string) that is not a model.
    let p = write(d.path(), "message.onnx", b"\x12\x05hello");
    expect_failure(&p, &["message.onnx", "not an ONNX model"], 1);
    let p = write(d.path(), "empty.onnx", b"");
    expect_failure(&p, &["empty.onnx", "not an ONNX model"], 1);
}

#[test]
fn cyclic_graph() {
    let d = tempfile::tempdir().unwrap();
    let mut m = good_model();
    let g = m.graph.as_mut().unwrap();
    g.node = vec![
        node("Add", "a", &["x", "loop"], &["h"]),
        node("Relu", "b", &["h"], &["loop"]),
        node("Identity", "c", &["h"], &["y"]),
    ];
    let p = write_model(d.path(), "cycle.onnx", &m);
    expect_failure(&p, &["cycle.onnx", "cycle", "node 'a'"], 1);
}

#[test]
fn undefined_input_name() {
    let d = tempfile::tempdir().unwrap();
    let mut m = good_model();
    m.graph.as_mut().unwrap().node[1].input[0] = "nowhere".into();
    let p = write_model(d.path(), "undef.onnx", &m);
    expect_failure(&p, &["undef.onnx", "'nowhere'", "Relu node 'act'"], 1);
}

#[test]
fn duplicate_output_names() {
    let d = tempfile::tempdir().unwrap();
    let mut m = good_model();
    m.graph.as_mut().unwrap().node[1].output[0] = "h".into();
    let p = write_model(d.path(), "dup.onnx", &m);
    expect_failure(&p, &["dup.onnx", "'h'", "MatMul node 'mm'"], 1);
    let mut m = good_model();
    let g = m.graph.as_mut().unwrap();
    g.output.push(vi("y", &[1, 4]));
    let p = write_model(d.path(), "dupout.onnx", &m);
    expect_failure(&p, &["dupout.onnx", "'y'", "twice"], 1);
}

#[test]
fn missing_external_file() {
    let d = tempfile::tempdir().unwrap();
    let mut m = good_model();
    external(
        &mut m.graph.as_mut().unwrap().initializer[0],
        "weights.bin",
        None,
        None,
    );
    let p = write_model(d.path(), "missing.onnx", &m);
    expect_failure(
        &p,
        &[
            "missing.onnx",
            "tensor 'w'",
            "weights.bin",
            "does not exist",
        ],
        1,
    );
}

#[test]
fn read_traversal_absolute_and_dotdot() {
    // CVE-2022-25882 / CVE-2024-27318 class.
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("model");
    std::fs::create_dir(&d).unwrap();
    write(root.path(), "secret.bin", &[7u8; 64]);
    for loc in [
        root.path().join("secret.bin").to_string_lossy().to_string(),
        "../secret.bin".to_string(),
        "sub/../../secret.bin".to_string(),
    ] {
        let mut m = good_model();
        external(
            &mut m.graph.as_mut().unwrap().initializer[0],
            &loc,
            None,
            Some(64),
        );
        let p = write_model(&d, "trav.onnx", &m);
        let err = expect_failure(&p, &["trav.onnx", "tensor 'w'"], 1);
        assert!(err.contains("absolute") || err.contains("'..'"), "{err}");
    }
}

#[test]
fn symlink_leaving_the_folder() {
    // CVE-2026-27489 class.
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("model");
    std::fs::create_dir(&d).unwrap();
    write(root.path(), "secret.bin", &[7u8; 64]);
    std::os::unix::fs::symlink(root.path().join("secret.bin"), d.join("link.bin")).unwrap();
    std::os::unix::fs::symlink(root.path(), d.join("up")).unwrap();
    for loc in ["link.bin", "up/secret.bin"] {
        let mut m = good_model();
        external(
            &mut m.graph.as_mut().unwrap().initializer[0],
            loc,
            None,
            Some(64),
        );
        let p = write_model(&d, "sym.onnx", &m);
        expect_failure(
            &p,
            &["sym.onnx", "tensor 'w'", "outside the model's folder"],
            1,
        );
    }
}

#[test]
fn external_range_beyond_the_file() {
    // CVE-2024-27319 class: offsets/lengths past the end must not be read.
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "w.bin", &[0u8; 64]);
    for (off, len, what) in [
        (100, 64, "offset"),
        (32, 64, "beyond the end"),
        (u64::MAX - 8, 64, ""),
    ] {
        let mut m = good_model();
        external(
            &mut m.graph.as_mut().unwrap().initializer[0],
            "w.bin",
            Some(off),
            Some(len),
        );
        let p = write_model(d.path(), "oob.onnx", &m);
        expect_failure(&p, &["oob.onnx", "tensor 'w'", what], 1);
    }
}

#[test]
fn external_length_shape_mismatch() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "w.bin", &[0u8; 128]);
    let mut m = good_model();
    external(
        &mut m.graph.as_mut().unwrap().initializer[0],
        "w.bin",
        Some(0),
        Some(128),
    );
    let p = write_model(d.path(), "len.onnx", &m);
    expect_failure(
        &p,
        &["len.onnx", "tensor 'w'", "need 64 bytes", "length is 128"],
        1,
    );
}

#[test]
fn huge_declared_dims_fail_before_allocating() {
    // CVE-2026-34445 class: declared dims must be checked against the data before allocation.
    let d = tempfile::tempdir().unwrap();
    let mut m = good_model();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 40, 1 << 40];
    let p = write_model(d.path(), "huge.onnx", &m);
    expect_failure(&p, &["huge.onnx", "tensor 'w'"], 1);
    let mut m = good_model();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![i64::MAX, 4];
    let p = write_model(d.path(), "overflow.onnx", &m);
    expect_failure(&p, &["overflow.onnx", "tensor 'w'", "overflows"], 1);
    // External data with huge dims.
    write(d.path(), "w.bin", &[0u8; 64]);
    let mut m = good_model();
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.dims = vec![1 << 31, 1 << 31];
    external(t, "w.bin", None, None);
    let p = write_model(d.path(), "hugeext.onnx", &m);
    expect_failure(&p, &["hugeext.onnx", "tensor 'w'"], 1);
}

#[test]
fn write_traversal_is_refused() {
    // CVE-2025-51480 class: an external data location given for the output must stay inside
    // the output folder.
    let d = tempfile::tempdir().unwrap();
    let p = write_model(d.path(), "ok.onnx", &good_model());
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for loc in ["../evil.bin", "/tmp/graft-evil.bin", "a/../../evil.bin"] {
        let o = run_graft(&[
            "opt",
            p.to_str().unwrap(),
            "--passes",
            "none",
            "-o",
            out_dir.join("m.onnx").to_str().unwrap(),
            "--external-data",
            loc,
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{loc}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("--external-data"),
            "{err}"
        );
        assert!(
            std::fs::read_dir(&out_dir).unwrap().next().is_none(),
            "{loc}: output left"
        );
        assert!(!d.path().join("evil.bin").exists());
    }
}

#[test]
fn never_overwrites_the_input_without_in_place() {
    let d = tempfile::tempdir().unwrap();
    let p = write_model(d.path(), "m.onnx", &good_model());
    let before = std::fs::read(&p).unwrap();
    let o = run_graft(&[
        "opt",
        p.to_str().unwrap(),
        "--passes",
        "dce",
        "-o",
        p.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--in-place"));
    assert_eq!(std::fs::read(&p).unwrap(), before);
    let o = run_graft(&["opt", p.to_str().unwrap(), "--passes", "dce", "--in-place"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn input_that_is_a_folder_or_missing() {
    let d = tempfile::tempdir().unwrap();
    expect_failure(d.path(), &["folder"], 1);
    expect_failure(&d.path().join("nope.onnx"), &["nope.onnx"], 1);
}
