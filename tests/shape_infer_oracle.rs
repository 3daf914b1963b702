//! Oracle test for the `shape-infer` pass: on every model under models/, graft's inferred types
//! must agree with ONNX's own shape inference (`onnx.shape_inference.infer_shapes(strict_mode=False,
//! data_prop=True)`, run by tests/shape_oracle.py). Both sides start from the model with its
//! value_info dropped. Wherever both give a full static shape the types must be identical; wherever
//! both give an element type, a rank or a particular dim (fixed or symbolic), those must agree.
//! A second run does the same on copies of the models whose graph inputs have symbolic batch/seq
//! dims, so that symbolic propagation is checked against ONNX too. A third compares with the actual
//! shapes ONNX Runtime produces when it runs each model: every dim graft states as fixed must be
//! the real one (this checks the dims graft knows and ONNX's inference does not).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use graft::driver::{Driver, Step};
use graft::passes::shape_infer::{Dim, ty_from_proto};

/// value name -> (elem type, dims).
type Types = BTreeMap<String, (i32, Option<Vec<Dim>>)>;

/// Runs shape-infer on a model stripped of value_info; returns what it recorded and its rewrites.
fn graft_types(path: &Path) -> (Types, usize) {
    let mut model = graft::onnx::load_model(path)
        .unwrap_or_else(|e| panic!("{}: does not load: {e}", path.display()));
    let g = &mut model.graph;
    g.value_info_order.clear();
    let keep: Vec<bool> = g
        .value_ids()
        .map(|v| {
            let val = g.value(v);
            val.is_input || val.initializer.is_some() || val.sparse || g.is_output(v)
        })
        .collect();
    for (i, keep) in keep.into_iter().enumerate() {
        if !keep {
            let val = &mut g.values[i];
            val.info = None;
            val.ty = None;
        }
    }
    let lookup = |n: &str| graft::passes::lookup(n);
    let mut driver = Driver::new(&lookup);
    let steps = [Step::Pass("shape-infer".into())];
    let report = driver
        .run(&mut model, &steps)
        .unwrap_or_else(|e| panic!("{}: shape-infer failed: {e}", path.display()));
    let step = &report.steps[0];
    assert!(
        step.refusals.is_empty(),
        "{}: refusals on a model stripped of value_info: {:?}",
        path.display(),
        step.refusals
    );
    let again = driver.run(&mut model, &steps).expect("second run");
    assert_eq!(
        again.steps[0].rewrites,
        0,
        "{}: a second shape-infer run still rewrote something",
        path.display()
    );
    let g = &model.graph;
    let mut out = Types::new();
    for &v in &g.value_info_order {
        let val = g.value(v);
        if let Some(t) = val.ty.as_ref().and_then(ty_from_proto) {
            out.insert(val.name.clone(), (t.elem, t.shape));
        }
    }
    (out, step.rewrites)
}

fn onnx_types(v: &serde_json::Value) -> Types {
    let mut out = Types::new();
    for (name, t) in v.as_object().expect("object") {
        if name.starts_with("__") {
            continue;
        }
        let elem = t[0].as_i64().unwrap_or(0) as i32;
        let dims = t[1].as_array().map(|a| {
            a.iter()
                .map(|d| match (d.as_i64(), d.as_str()) {
                    (Some(x), _) => Dim::Fixed(x),
                    (_, Some(s)) => Dim::Sym(s.to_string()),
                    _ => Dim::Unknown,
                })
                .collect::<Vec<_>>()
        });
        out.insert(name.clone(), (elem, dims));
    }
    out
}

fn is_static(d: &Option<Vec<Dim>>) -> bool {
    d.as_ref()
        .is_some_and(|v| v.iter().all(|x| matches!(x, Dim::Fixed(_))))
}

fn known_dims(d: &Option<Vec<Dim>>) -> usize {
    d.as_ref()
        .map_or(0, |v| v.iter().filter(|x| **x != Dim::Unknown).count())
}

#[derive(Default)]
struct Tally {
    models: usize,
    graft_typed: usize,
    onnx_typed: usize,
    graft_static: usize,
    onnx_static: usize,
    both_static: usize,
    onnx_only_static: usize,
    graft_only_static: usize,
    graft_dims: usize,
    onnx_dims: usize,
    rewrites: usize,
    /// Dims (same value, same position) that one side knows and the other leaves unknown.
    onnx_only_dims: usize,
    graft_only_dims: usize,
    failures: Vec<String>,
}

fn compare(short: &str, ours: &Types, theirs: &Types, t: &mut Tally) {
    t.models += 1;
    t.graft_typed += ours.len();
    t.onnx_typed += theirs.len();
    t.graft_static += ours.values().filter(|x| is_static(&x.1)).count();
    t.onnx_static += theirs.values().filter(|x| is_static(&x.1)).count();
    t.graft_dims += ours.values().map(|x| known_dims(&x.1)).sum::<usize>();
    t.onnx_dims += theirs.values().map(|x| known_dims(&x.1)).sum::<usize>();
    for (name, (te, td)) in theirs {
        if !ours.contains_key(name) && is_static(td) {
            t.onnx_only_static += 1;
            let _ = te;
        }
    }
    for (name, (oe, od)) in ours {
        let Some((te, td)) = theirs.get(name) else {
            if is_static(od) {
                t.graft_only_static += 1;
            }
            continue;
        };
        let show = |e: &i32, d: &Option<Vec<Dim>>| match d {
            None => format!("{e}"),
            Some(d) => format!(
                "{e}[{}]",
                d.iter()
                    .map(|x| match x {
                        Dim::Fixed(v) => v.to_string(),
                        Dim::Sym(s) => s.clone(),
                        Dim::Unknown => "?".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let mut bad = *oe != 0 && *te != 0 && oe != te;
        if let (Some(a), Some(b)) = (od, td) {
            if a.len() != b.len() {
                bad = true;
            } else {
                for (x, y) in a.iter().zip(b) {
                    match (x, y) {
                        (Dim::Unknown, Dim::Unknown) => {}
                        (Dim::Unknown, _) => t.onnx_only_dims += 1,
                        (_, Dim::Unknown) => t.graft_only_dims += 1,
                        (x, y) if x != y => bad = true,
                        _ => {}
                    }
                }
            }
        }
        match (is_static(od), is_static(td)) {
            (true, true) => {
                t.both_static += 1;
                if od != td || oe != te {
                    bad = true;
                }
            }
            (false, true) => t.onnx_only_static += 1,
            (true, false) => t.graft_only_static += 1,
            _ => {}
        }
        if bad {
            t.failures.push(format!(
                "{short}: '{name}': graft {}, onnx {}",
                show(oe, od),
                show(te, td)
            ));
        }
    }
}

fn run_oracle(symbolic: bool) {
    let test = if symbolic {
        "shape_infer_agrees_with_onnx_on_symbolic_corpus"
    } else {
        "shape_infer_agrees_with_onnx_on_corpus"
    };
    let Some(py) = common::python(test) else {
        return;
    };
    let models = common::corpus_models();
    assert!(!models.is_empty(), "no models under models/");
    let paths: Vec<String> = models
        .iter()
        .map(|p| p.to_str().expect("utf8 path").to_string())
        .collect();
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(&py);
    cmd.arg(common::repo().join("tests/shape_oracle.py"));
    if symbolic {
        cmd.arg("--symbolic").arg(tmp.path());
    }
    let out = cmd.args(&paths).output().expect("python runs");
    assert!(
        out.status.success(),
        "shape_oracle.py failed:\n{}",
        common::stderr(&out)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("oracle JSON");
    let mut tally = Tally::default();
    for (path, p) in models.iter().zip(&paths) {
        let entry = &all[p.as_str()];
        if let Some(e) = entry.get("__error__") {
            panic!("onnx shape inference failed on {p}: {e}");
        }
        let file = match entry.get("__file__").and_then(|f| f.as_str()) {
            Some(f) => PathBuf::from(f),
            None => path.clone(),
        };
        let (ours, rewrites) = graft_types(&file);
        tally.rewrites += rewrites;
        let short = path.strip_prefix(common::repo()).unwrap_or(path);
        compare(
            &short.display().to_string(),
            &ours,
            &onnx_types(entry),
            &mut tally,
        );
    }
    let t = &tally;
    eprintln!(
        "{test}: {} models; graft typed {} values ({} fully static, {} known dims, {} rewrites); onnx typed {} ({} fully static, {} known dims); both static {}; static only in onnx {}; static only in graft {}; dims known only to onnx {}, only to graft {}; disagreements {}",
        t.models,
        t.graft_typed,
        t.graft_static,
        t.graft_dims,
        t.rewrites,
        t.onnx_typed,
        t.onnx_static,
        t.onnx_dims,
        t.both_static,
        t.onnx_only_static,
        t.graft_only_static,
        t.onnx_only_dims,
        t.graft_only_dims,
        t.failures.len()
    );
    assert!(
        t.failures.is_empty(),
        "{} disagreements with onnx shape inference:\n{}",
        t.failures.len(),
        t.failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn shape_infer_agrees_with_onnx_on_corpus() {
    run_oracle(false);
}

#[test]
fn shape_infer_agrees_with_onnx_on_symbolic_corpus() {
    run_oracle(true);
}

/// The sizes shape_oracle.py's `--symbolic` mode replaced by "batch" and "seq" in a model's
/// graph inputs (`None` for a name bound to two different sizes).
fn symbol_bindings(path: &Path) -> BTreeMap<String, Option<i64>> {
    let model = graft::onnx::load_model(path).expect("loads");
    let g = &model.graph;
    let mut out: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let mut bind = |name: &str, d: &Dim| {
        if let Dim::Fixed(v) = d {
            let e = out.entry(name.to_string()).or_insert(Some(*v));
            if *e != Some(*v) {
                *e = None;
            }
        }
    };
    for port in &g.inputs {
        let val = g.value(port.value);
        if val.initializer.is_some() {
            continue;
        }
        let Some(t) = port.info.type_.as_ref().and_then(ty_from_proto) else {
            continue;
        };
        let Some(dims) = t.shape else { continue };
        if let Some(d) = dims.first() {
            bind("batch", d);
        }
        if dims.len() == 3 || (dims.len() == 2 && (t.elem == 6 || t.elem == 7)) {
            bind("seq", &dims[1]);
        }
    }
    out
}

#[test]
fn shape_infer_matches_runtime_shapes() {
    let test = "shape_infer_matches_runtime_shapes";
    let Some(py) = common::python(test) else {
        return;
    };
    let models = common::corpus_models();
    let paths: Vec<String> = models
        .iter()
        .map(|p| p.to_str().expect("utf8 path").to_string())
        .collect();
    let oracle = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(&py)
            .arg(common::repo().join("tests/shape_oracle.py"))
            .args(args)
            .args(&paths)
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "shape_oracle.py {args:?} failed:\n{}",
            common::stderr(&out)
        );
        serde_json::from_slice(&out.stdout).expect("oracle JSON")
    };
    let all = oracle(&["--runtime"]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let sym = oracle(&["--symbolic", tmp.path().to_str().expect("utf8")]);
    let (mut checked, mut fixed_dims, mut sym_dims, mut runs) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for (path, p) in models.iter().zip(&paths) {
        let entry = &all[p.as_str()];
        if let Some(e) = entry.get("__error__") {
            // A model ONNX Runtime cannot run says nothing about shapes; say so loudly.
            eprintln!("note: onnxruntime could not run {p}: {e}");
            continue;
        }
        runs += 1;
        let actual = onnx_types(entry);
        let short = path.strip_prefix(common::repo()).unwrap_or(path).display();
        // The model as it is, then its symbolic copy with batch/seq bound to the real sizes.
        let mut variants = vec![(graft_types(path).0, BTreeMap::new())];
        if let Some(f) = sym[p.as_str()].get("__file__").and_then(|f| f.as_str()) {
            variants.push((graft_types(Path::new(f)).0, symbol_bindings(path)));
        }
        for (ours, binding) in &variants {
            for (name, (oe, od)) in ours {
                let Some((ae, Some(ad))) = actual.get(name) else {
                    continue;
                };
                checked += 1;
                let mut bad = *oe != 0 && oe != ae;
                if let Some(d) = od {
                    if d.len() != ad.len() {
                        bad = true;
                    } else {
                        for (x, y) in d.iter().zip(ad) {
                            match x {
                                Dim::Fixed(_) => {
                                    fixed_dims += 1;
                                    bad |= x != y;
                                }
                                Dim::Sym(s) => {
                                    if let Some(Some(v)) = binding.get(s) {
                                        sym_dims += 1;
                                        bad |= *y != Dim::Fixed(*v);
                                    }
                                }
                                Dim::Unknown => {}
                            }
                        }
                    }
                }
                if bad {
                    failures.push(format!(
                        "{short}{}: '{name}': graft {oe}{od:?}, actual {ae}{ad:?}",
                        if binding.is_empty() {
                            ""
                        } else {
                            " (symbolic)"
                        }
                    ));
                }
            }
        }
    }
    eprintln!(
        "{test}: {runs} of {} models run; {checked} values typed by graft checked ({fixed_dims} fixed dims, {sym_dims} symbolic dims); mismatches {}",
        models.len(),
        failures.len()
    );
    assert!(runs > 0, "onnxruntime ran no model");
    assert!(
        failures.is_empty(),
        "{} mismatches with actual shapes:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
