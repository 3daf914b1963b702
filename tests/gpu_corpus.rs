//! Every corpus model, as exported and folded, runs on wgpu through `graft run` and matches ONNX
//! Runtime on the original model with the same inputs (relative Frobenius error at most 1e-4
//! per output). Plans are also written with `graft compile` and every kernel file in them is
//! validated with naga.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn cases() -> Vec<(PathBuf, PathBuf)> {
    corpus_models()
        .into_iter()
        .filter_map(|m| inputs_for(&m).map(|i| (m, i)))
        .collect()
}

fn id_of(model: &Path) -> String {
    let rel = model.strip_prefix(repo().join("models")).unwrap_or(model);
    rel.to_string_lossy().replace(['/', '.'], "_")
}

/// Runs `graft run` for each case on two threads; returns (model, output dir) per success and
/// the failures.
/// (model, inputs, output folder) per successful run.
type Runs = Vec<(PathBuf, PathBuf, PathBuf)>;

fn run_all(cases: &[(PathBuf, PathBuf)], out: &Path, extra: &[&str]) -> (Runs, Vec<String>) {
    let jobs: Vec<_> = cases.to_vec();
    let chunks: Vec<Vec<(PathBuf, PathBuf)>> = jobs
        .chunks(jobs.len().div_ceil(2).max(1))
        .map(|c| c.to_vec())
        .collect();
    let results: Vec<(Runs, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let out = out.to_path_buf();
                let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
                s.spawn(move || {
                    let mut ok = Vec::new();
                    let mut bad = Vec::new();
                    for (model, inputs) in chunk {
                        let dir = out.join(id_of(&model));
                        let mut args: Vec<String> = vec![
                            "run".into(),
                            model.display().to_string(),
                            "--inputs".into(),
                            inputs.display().to_string(),
                            "--output-dir".into(),
                            dir.display().to_string(),
                            "--no-cache".into(),
                        ];
                        args.extend(extra.iter().cloned());
                        let o = graft()
                            .args(&args)
                            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
                            .output()
                            .expect("graft runs");
                        if o.status.success() {
                            ok.push((model, inputs, dir));
                        } else {
                            bad.push(format!("{} {extra:?}: {}", model.display(), stderr(&o)));
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (o, b) in results {
        ok.extend(o);
        bad.extend(b);
    }
    (ok, bad)
}

fn check_against_ort(py: &Path, runs: &[(PathBuf, PathBuf, PathBuf)], label: &str) -> Vec<String> {
    let jobs: Vec<serde_json::Value> = runs
        .iter()
        .map(|(m, i, d)| serde_json::json!({"model": m, "inputs": i, "expected": d, "rtol": 1e-4}))
        .collect();
    let answers = oracle_batch(py, &["compare-npz", "--many"], &jobs);
    runs.iter()
        .zip(&answers)
        .filter(|(_, a)| a["ok"] != true)
        .map(|((m, _, _), a)| format!("{label} {}: {a}", m.display()))
        .collect()
}

#[test]
fn corpus_on_wgpu_matches_onnx_runtime() {
    if gpu("gpu corpus").is_none() {
        return;
    }
    let Some(py) = python("gpu corpus") else {
        return;
    };
    let cases = cases();
    assert!(
        cases.len() >= 50,
        "only {} corpus models with inputs",
        cases.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    let (plain, mut failures) = run_all(&cases, &tmp.path().join("plain"), &[]);
    let unmerged: Vec<(PathBuf, PathBuf)> = cases
        .iter()
        .filter(|(m, _)| {
            m.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("unmerged"))
        })
        .cloned()
        .collect();
    assert!(!unmerged.is_empty());
    let (folded, bad) = run_all(&unmerged, &tmp.path().join("folded"), &["--fold"]);
    failures.extend(bad);
    // elementwise programs compiled into their own pipelines, on the TorchScript exports
    let ts: Vec<(PathBuf, PathBuf)> = unmerged
        .iter()
        .filter(|(m, _)| m.to_string_lossy().ends_with(".ts.onnx"))
        .cloned()
        .collect();
    let (specialised, bad) = run_all(&ts, &tmp.path().join("specialised"), &["--specialise"]);
    failures.extend(bad);
    failures.extend(check_against_ort(&py, &plain, "as exported"));
    failures.extend(check_against_ort(&py, &folded, "folded"));
    failures.extend(check_against_ort(&py, &specialised, "specialised"));
    println!(
        "gpu corpus: {} models as exported, {} folded, {} with specialised elementwise kernels, \
         {} failures",
        plain.len(),
        folded.len(),
        specialised.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_emitted_kernel_validates_with_naga() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kernels = 0;
    for (model, inputs) in cases() {
        // bound to the shapes of the example inputs
        let shapes = npz_shapes(&inputs);
        let dir = tmp.path().join(id_of(&model));
        let mut args = vec![
            "compile".to_string(),
            model.display().to_string(),
            "--emit-wgsl".into(),
            dir.display().to_string(),
        ];
        for (n, s) in &shapes {
            args.push("--input-shape".into());
            args.push(format!(
                "{n}={}",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        let o = graft().args(&args).output().unwrap();
        assert!(o.status.success(), "{}: {}", model.display(), stderr(&o));
        let plan: graft::codegen::plan::Plan =
            serde_json::from_slice(&std::fs::read(dir.join("plan.json")).unwrap()).unwrap();
        for k in &plan.kernels {
            let src = std::fs::read_to_string(dir.join(&k.shader)).unwrap();
            let module = graft::codegen::shaders::validate(&k.shader, &src)
                .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
            let reflected = graft::codegen::shaders::bindings(&module);
            assert_eq!(reflected.len(), k.bindings.len(), "{}", k.shader);
            kernels += 1;
        }
        for (i, d) in plan.dispatches.iter().enumerate() {
            let k = &plan.kernels[d.kernel];
            assert_eq!(
                d.buffers.len() + 1,
                k.bindings.len(),
                "dispatch {i} of {}",
                model.display()
            );
            assert!(d.info.len() <= plan.info_words as usize);
            assert!(d.workgroups.iter().all(|&w| w <= 65535));
        }
    }
    assert!(kernels > 0);
}

/// Array names and shapes in an .npz, read with the library's npz reader.
fn npz_shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    let f = std::fs::File::open(path).unwrap();
    let mut npz = ndarray_npy::NpzReader::new(f).unwrap();
    let names = npz.names().unwrap();
    let mut out = Vec::new();
    for n in names {
        let key = n.trim_end_matches(".npy").to_string();
        let shape = if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::IxDyn>(&n) {
            a.shape().to_vec()
        } else if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<i64>, ndarray::IxDyn>(&n) {
            a.shape().to_vec()
        } else if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<bool>, ndarray::IxDyn>(&n) {
            a.shape().to_vec()
        } else {
            panic!("{}: array {n} has an unexpected type", path.display());
        };
        out.push((key, shape));
    }
    out
}
