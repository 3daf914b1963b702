//! The ONNX backend node tests (`onnx/backend/test/data/node/*`) as test data: found in the
//! installed `onnx` package or written out by it once.
//!
//! - `GRAFT_ONNX_NODE_TESTS=<dir>`: use this directory of `<test>/model.onnx` + `test_data_set_*`.
//! - `GRAFT_PYTHON=<python>`: the interpreter with `onnx` (default `<crate>/.venv/bin/python`).

use std::path::{Path, PathBuf};
use std::process::Command;

use graft::eval::TensorValue;
use onnx_protobuf::TensorProto;
use protobuf::Message;

/// Writes the node test cases of the installed `onnx` package to argv[1].
const GEN_SCRIPT: &str = r#"
import os, sys, warnings
warnings.filterwarnings("ignore")
import onnx
from onnx import numpy_helper, TensorProto
from onnx.backend.test.loader import load_node_model_tests
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
n = 0
for case in load_node_model_tests():
    d = os.path.join(out, case.name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(case.model.SerializeToString())
    for i, (inputs, outputs) in enumerate(case.data_sets or []):
        ds = os.path.join(d, f"test_data_set_{i}")
        os.makedirs(ds, exist_ok=True)
        for kind, vals, infos in (("input", inputs, case.model.graph.input), ("output", outputs, case.model.graph.output)):
            for j, v in enumerate(vals):
                if isinstance(v, TensorProto):
                    data = v.SerializeToString()
                elif j < len(infos) and infos[j].type.HasField("tensor_type"):
                    data = numpy_helper.from_array(v, infos[j].name).SerializeToString()
                else:
                    continue
                with open(os.path.join(ds, f"{kind}_{j}.pb"), "wb") as f:
                    f.write(data)
    n += 1
with open(os.path.join(out, "STAMP"), "w") as f:
    f.write(f"{onnx.__version__} {n}\n")
print(n)
"#;

pub fn python() -> PathBuf {
    match std::env::var_os("GRAFT_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    }
}

fn py(python: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(python)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Finds (or generates) the node test directory; `Err` when no Python/onnx is available.
pub fn data_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("GRAFT_ONNX_NODE_TESTS") {
        let d = PathBuf::from(d);
        if !d.is_dir() {
            return Err(format!(
                "GRAFT_ONNX_NODE_TESTS={} is not a directory",
                d.display()
            ));
        }
        return Ok(d);
    }
    let python = python();
    if !python.exists() {
        return Err(format!("no python at {}", python.display()));
    }
    let info = py(
        &python,
        &[
            "-c",
            "import onnx,os;d=os.path.join(os.path.dirname(onnx.__file__),'backend','test','data','node');\
             print(onnx.__version__);print(d if os.path.isdir(d) and os.listdir(d) else '')",
        ],
    )?;
    let mut lines = info.lines();
    let version = lines.next().unwrap_or("unknown").trim().to_string();
    if let Some(shipped) = lines.next().map(str::trim).filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(shipped));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("onnx_node_tests_{version}"));
    if !dir.join("STAMP").exists() {
        let tmp = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        py(
            &python,
            &["-c", GEN_SCRIPT, tmp.to_str().ok_or("non-UTF-8 path")?],
        )?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| format!("rename: {e}"))?;
    }
    Ok(dir)
}

pub fn read_tensor(p: &Path) -> Result<TensorValue, String> {
    let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let t = TensorProto::parse_from_bytes(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
    TensorValue::from_proto(&t).map_err(|e| format!("{}: {e}", p.display()))
}

/// The `test_data_set_*` folders of a test, sorted.
pub fn data_sets(dir: &Path) -> Vec<PathBuf> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("test_data_set_"))
                })
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    sets
}

/// The names of the node tests in `dir` containing `filter`, sorted.
pub fn test_names(dir: &Path, filter: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().join("model.onnx").exists())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.contains(filter))
        .collect();
    names.sort();
    names
}

/// Element-wise closeness as the ONNX backend tests judge it: same type and shape, NaNs where
/// expected, integers and infinities exact, floats within `atol + rtol(dtype) * |want|`.
pub fn compare(
    name: &str,
    got: &TensorValue,
    want: &TensorValue,
    atol: f64,
    rtol: &dyn Fn(i32) -> f64,
) -> Result<(), String> {
    if got.data_type() != want.data_type() {
        return Err(format!(
            "output '{name}': type {} vs expected {}",
            got.data_type(),
            want.data_type()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "output '{name}': shape {:?} vs expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    if let (TensorValue::Str(a), TensorValue::Str(b)) = (got, want) {
        return if a == b {
            Ok(())
        } else {
            Err(format!("output '{name}': strings differ"))
        };
    }
    let exact = !got.is_float();
    let rtol = rtol(got.data_type());
    let (a, b) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let ok = if x.is_nan() || y.is_nan() {
            x.is_nan() && y.is_nan()
        } else if exact || x.is_infinite() || y.is_infinite() {
            x == y
        } else {
            (x - y).abs() <= atol + rtol * y.abs()
        };
        if !ok {
            return Err(format!(
                "output '{name}': element {i}: got {x}, expected {y}"
            ));
        }
    }
    Ok(())
}
