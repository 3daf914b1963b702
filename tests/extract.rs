//! `graft extract` on the extraction fixtures, judged by what graft did not compute:
//! - `bert_lowrank_ft` holds an exactly rank-4 delta (`true_delta.npz`, the manifest's singular
//!   values): the extracted factors must reproduce it, and the adapter applied back must give
//!   the tuned model's PyTorch outputs under ONNX Runtime;
//! - `bert_full_ft` is a full-rank fine-tune: the report must be Eckart–Young consistent, the
//!   written PEFT config must say the ranks the report gives (resolved the way PEFT resolves
//!   `rank_pattern`), and the output error must shrink as the rank grows;
//! - usage errors write nothing.
//!
//! Everything is driven by models/manifest.json (`extract`). Checks that need the Python oracle
//! are skipped loudly outside CI when its venv is missing; the others always run.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use ndarray::Array2;
use serde_json::{Value, json};

const PEFT_PREFIX: &str = "base_model.model.";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// `graft extract BASE TUNED ARGS -o OUT --report json=OUT.json`: the process output and the
/// report (when one was written).
fn extract(base: &Path, tuned: &Path, args: &[&str], out: &Path) -> (Output, Option<Value>) {
    let mut a: Vec<String> = vec!["extract".into(), s(base).into(), s(tuned).into()];
    a.extend(args.iter().map(|x| x.to_string()));
    run_graft_with_report(&a, out)
}

/// The fixture: base and tuned exports, the base case, the changed module paths.
struct Fixture {
    case: Value,
    base_case: Value,
    changed: BTreeSet<String>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let case = manifest_case(name);
        let ex = &case["extract"];
        let base_case = manifest_case(ex["base_case"].as_str().expect("base_case"));
        let changed = ex["changed_parameters"]
            .as_array()
            .expect("changed_parameters")
            .iter()
            .map(|p| {
                p.as_str()
                    .unwrap()
                    .strip_suffix(".weight")
                    .expect("a weight")
                    .to_string()
            })
            .collect();
        Fixture {
            case,
            base_case,
            changed,
        }
    }
    fn base(&self, exp: &str) -> PathBuf {
        model_file(&self.base_case["files"][format!("unmerged_{exp}")])
    }
    fn tuned(&self, exp: &str) -> PathBuf {
        model_file(&self.case["files"][format!("unmerged_{exp}")])
    }
    fn file(&self, key: &str) -> PathBuf {
        model_file(&self.case["files"][key])
    }
}

/// The layers of a report by module path.
fn layers(report: &Value) -> BTreeMap<String, Value> {
    report["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no layers in {report}"))
        .iter()
        .map(|l| (l["module"].as_str().unwrap().to_string(), l.clone()))
        .collect()
}

/// `(A, B)` of every module of a LoRA folder, read with the `safetensors` crate and flattened to
/// matrices: A `[r, in·k…]` (`lora_A.weight`, `lora_embedding_A`), B `[out, r]`
/// (`lora_B.weight`, `lora_embedding_B`), so that B·A is the delta in PyTorch layout.
fn lora_factors(dir: &Path) -> BTreeMap<String, (Array2<f64>, Array2<f64>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).expect("weights file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut a: BTreeMap<String, Array2<f64>> = BTreeMap::new();
    let mut b: BTreeMap<String, Array2<f64>> = BTreeMap::new();
    for (key, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{key}");
        let vals: Vec<f64> = view
            .data()
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let shape = view.shape();
        let rows = shape[0];
        let arr = Array2::from_shape_vec((rows, vals.len() / rows), vals).unwrap();
        let rest = key
            .strip_prefix(PEFT_PREFIX)
            .unwrap_or_else(|| panic!("key {key} lacks {PEFT_PREFIX}"));
        if let Some(m) = rest
            .strip_suffix(".lora_A.weight")
            .or_else(|| rest.strip_suffix(".lora_embedding_A"))
        {
            a.insert(m.to_string(), arr);
        } else if let Some(m) = rest
            .strip_suffix(".lora_B.weight")
            .or_else(|| rest.strip_suffix(".lora_embedding_B"))
        {
            b.insert(m.to_string(), arr);
        } else {
            panic!("unexpected key {key} in {}", dir.display());
        }
    }
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "A and B for the same modules in {}",
        dir.display()
    );
    a.into_iter()
        .map(|(m, am)| {
            let bm = b.remove(&m).unwrap();
            (m, (am, bm))
        })
        .collect()
}

fn adapter_config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
        .expect("adapter_config.json is JSON")
}

/// The value PEFT gives `module` from a `*_pattern` map (else `default`): a key equal to the
/// module, or a regex matching it as `(.*\.)?(KEY)$` (peft.utils.other.get_pattern_key). More
/// than one matching key is an inconsistent config.
fn peft_pattern_value(pattern: &Value, module: &str, default: u64) -> u64 {
    let map = pattern.as_object().expect("pattern is a map");
    if let Some(v) = map.get(module) {
        return v.as_u64().expect("integer");
    }
    let hits: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| {
            regex::Regex::new(&format!("^(.*\\.)?({k})$"))
                .unwrap_or_else(|e| panic!("pattern key {k}: {e}"))
                .is_match(module)
        })
        .collect();
    match hits.as_slice() {
        [] => default,
        [(_, v)] => v.as_u64().expect("integer"),
        many => panic!("{module} matches several pattern keys: {many:?}"),
    }
}

fn fro(a: &Array2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Column norms of B, largest first: the kept singular values (B = U_r·Σ_r).
fn singular_values(b: &Array2<f64>) -> Vec<f64> {
    let mut s: Vec<f64> = b
        .columns()
        .into_iter()
        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    s.sort_by(|x, y| y.partial_cmp(x).unwrap());
    s
}

#[test]
fn an_exact_low_rank_delta_is_recovered_and_applies_back() {
    let py = python("extract: exact low rank");
    let fx = Fixture::new("bert_lowrank_ft");
    let ex = &fx.case["extract"];
    let rank = ex["rank"].as_u64().expect("rank") as usize;
    let tmp = tempfile::tempdir().unwrap();

    // The fixture's own description agrees with itself.
    let mut npz = ndarray_npy::NpzReader::new(std::fs::File::open(fx.file("true_delta")).unwrap())
        .expect("true_delta.npz");
    let delta_keys: BTreeSet<String> = npz.names().unwrap().into_iter().collect();
    assert_eq!(
        delta_keys, fx.changed,
        "true_delta.npz keys vs the manifest"
    );
    let svs = ex["delta_singular_values"]
        .as_object()
        .expect("singular values");

    let inputs = fx.file("inputs");
    let expected = fx.file("expected");
    let mut npz_jobs = Vec::new();
    let mut ref_jobs = Vec::new();
    let mut to_check = Vec::new();
    for exp in ["ts", "dynamo"] {
        let (base, tuned) = (fx.base(exp), fx.tuned(exp));
        let out = tmp.path().join(format!("adapter.{exp}"));
        let (o, report) = extract(
            &base,
            &tuned,
            &["--rank", &rank.to_string(), "--strip-prefix", "m."],
            &out,
        );
        assert!(o.status.success(), "{exp}: {}", stderr(&o));
        let report = report.expect("report");
        let ls = layers(&report);
        assert_eq!(
            ls.keys().cloned().collect::<BTreeSet<_>>(),
            fx.changed,
            "{exp}: the extracted layers are the changed modules"
        );
        for (m, l) in &ls {
            assert_eq!(l["rank"], rank, "{exp} {m}");
            let err = l["delta_rel_error"].as_f64().unwrap();
            assert!(err < 1e-5, "{exp} {m}: delta_rel_error {err}");
            let e = l["energy_kept"].as_f64().unwrap();
            assert!((e - 1.0).abs() < 1e-9, "{exp} {m}: energy_kept {e}");
        }
        assert_eq!(
            report["not_carried"],
            json!([]),
            "{exp}: only Linear weights changed"
        );

        // The folder, read independently: a PEFT LoRA config of rank r and scale 1 on exactly
        // these modules, whose B·A is the true delta.
        let cfg = adapter_config(&out);
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["r"], rank);
        assert_eq!(cfg["lora_alpha"], rank);
        assert_eq!(cfg["rank_pattern"], json!({}));
        let targets: BTreeSet<String> = cfg["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(targets, fx.changed, "{exp}: target_modules");
        let factors = lora_factors(&out);
        assert_eq!(factors.keys().cloned().collect::<BTreeSet<_>>(), fx.changed);
        for (m, (a, b)) in &factors {
            let truth: Array2<f32> = npz.by_name(m).unwrap();
            let truth = truth.mapv(f64::from);
            assert_eq!(a.nrows(), rank, "{exp} {m}: A {:?}", a.dim());
            assert_eq!(b.ncols(), rank, "{exp} {m}: B {:?}", b.dim());
            let rel = fro(&(b.dot(a) - &truth)) / fro(&truth);
            assert!(rel < 1e-5, "{exp} {m}: |BA - true delta| / |delta| = {rel}");
            // A = V_rᵀ has orthonormal rows.
            let gram = a.dot(&a.t()) - Array2::<f64>::eye(rank);
            assert!(fro(&gram) < 1e-5, "{exp} {m}: A's rows are not orthonormal");
            // B's column norms are the delta's singular values (the manifest's, 4 digits).
            let want: Vec<f64> = svs[m].as_array().unwrap()[..rank]
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (got, want) in singular_values(b).iter().zip(&want) {
                assert!(
                    (got - want).abs() <= 1e-3 * want,
                    "{exp} {m}: singular value {got} vs {want}"
                );
            }
        }

        // Applied back to the base, the adapter gives the tuned model.
        let applied = tmp.path().join(format!("applied.{exp}.onnx"));
        let o = run_graft(&["apply", s(&base), "--peft", s(&out), "-o", s(&applied)]);
        assert!(o.status.success(), "{exp} apply: {}", stderr(&o));
        npz_jobs.push(json!({"model": s(&applied), "inputs": s(&inputs),
                             "expected": s(&expected), "rtol": 1e-5}));
        ref_jobs.push(
            json!({"a": s(&tuned), "b": s(&applied), "inputs": s(&inputs),
                             "rtol": 1e-5}),
        );
        to_check.push(applied);
    }
    let Some(py) = py else {
        return;
    };
    // The bare base is far from the tuned model (the fixture is not trivial).
    npz_jobs.push(json!({"model": s(&fx.base("ts")), "inputs": s(&inputs),
                         "expected": s(&expected), "rtol": 1e-3}));
    let answers = oracle_batch(&py, &["compare-npz", "--many"], &npz_jobs);
    let (bare, applied) = answers.split_last().unwrap();
    for a in applied {
        assert_eq!(
            a["ok"], true,
            "base + extracted adapter vs tuned expected.npz: {a}"
        );
    }
    assert_eq!(
        bare["ok"], false,
        "the bare base matches the tuned model: {bare}"
    );
    for a in oracle_batch(&py, &["compare-many"], &ref_jobs) {
        assert_eq!(
            a["ok"], true,
            "base + extracted adapter vs tuned export: {a}"
        );
    }
    let mut args = vec!["check"];
    args.extend(to_check.iter().map(|p| s(p)));
    let check = oracle(&py, &args);
    for p in &to_check {
        assert_eq!(check[s(p)], "ok", "onnx.checker on {}", p.display());
    }
}

#[test]
fn a_full_rank_fine_tune_is_truncated_consistently() {
    let py = python("extract: full fine-tune");
    let fx = Fixture::new("bert_full_ft");
    let tmp = tempfile::tempdir().unwrap();
    let inputs = fx.file("inputs");
    let expected = fx.file("expected");
    let energy = 0.9;
    // (label, arguments): the ranks grow along the list, ending with the full delta.
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("rank 4", vec!["--rank".into(), "4".into()]),
        ("rank 8", vec!["--rank".into(), "8".into()]),
        ("rank 16", vec!["--rank".into(), "16".into()]),
        ("energy", vec!["--energy".into(), energy.to_string()]),
        ("full", vec!["--rank".into(), "100000".into()]),
    ];
    let mut jobs = Vec::new();
    let mut labels = Vec::new();
    for exp in ["ts", "dynamo"] {
        let (base, tuned) = (fx.base(exp), fx.tuned(exp));
        let mut reports: BTreeMap<&str, Value> = BTreeMap::new();
        let mut factors = BTreeMap::new();
        for (label, args) in &runs {
            let out = tmp
                .path()
                .join(format!("{exp}.{}", label.replace(' ', "_")));
            let mut a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
            a.extend(["--strip-prefix", "m."]);
            let (o, report) = extract(&base, &tuned, &a, &out);
            assert!(o.status.success(), "{exp} {label}: {}", stderr(&o));
            let report = report.expect("report");
            let ls = layers(&report);
            assert_eq!(
                ls.keys().cloned().collect::<BTreeSet<_>>(),
                fx.changed,
                "{exp} {label}: the extracted layers are the changed modules"
            );
            assert_eq!(
                report["not_carried"],
                json!([]),
                "{exp} {label}: only Linear weights changed"
            );
            let f = lora_factors(&out);
            let cfg = adapter_config(&out);
            let r = cfg["r"].as_u64().unwrap();
            assert_eq!(cfg["lora_alpha"], r, "{exp} {label}: scale 1");
            for (m, l) in &ls {
                // Eckart–Young: the residual of the best rank-r approximation holds exactly
                // the energy that was dropped.
                let e = l["energy_kept"].as_f64().unwrap();
                let err = l["delta_rel_error"].as_f64().unwrap();
                assert!(
                    (err - (1.0 - e).max(0.0).sqrt()).abs() <= 1e-6,
                    "{exp} {label} {m}: delta_rel_error {err} vs sqrt(1 - {e})"
                );
                let k = l["rank"].as_u64().unwrap();
                let shape: Vec<u64> = l["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect();
                let min_dim = shape[0].min(shape[1]);
                if let Some(fixed) = args[0]
                    .eq("--rank")
                    .then(|| args[1].parse::<u64>().unwrap())
                {
                    assert_eq!(k, fixed.min(min_dim), "{exp} {label} {m}: rank");
                } else {
                    assert!(e >= energy, "{exp} {label} {m}: energy {e} < {energy}");
                }
                // The config gives PEFT this rank and alpha = rank (scale 1), and the tensors
                // have it.
                let (a, b) = &f[m];
                assert_eq!(
                    peft_pattern_value(&cfg["rank_pattern"], m, r),
                    k,
                    "{exp} {label} {m}: rank PEFT reads from {cfg}"
                );
                assert_eq!(
                    peft_pattern_value(&cfg["alpha_pattern"], m, r),
                    k,
                    "{exp} {label} {m}: alpha PEFT reads"
                );
                assert_eq!((a.nrows() as u64, b.ncols() as u64), (k, k), "{exp} {m}");
                assert_eq!(
                    [b.nrows() as u64, a.ncols() as u64],
                    [shape[0], shape[1]],
                    "{exp} {m}"
                );
            }
            reports.insert(label, report);
            factors.insert(*label, f);

            let applied = tmp
                .path()
                .join(format!("{exp}.{}.onnx", label.replace(' ', "_")));
            let o = run_graft(&["apply", s(&base), "--peft", s(&out), "-o", s(&applied)]);
            assert!(o.status.success(), "{exp} {label} apply: {}", stderr(&o));
            labels.push(format!("{exp} {label}"));
            jobs.push(json!({"model": s(&applied), "inputs": s(&inputs),
                             "expected": s(&expected), "rtol": 1e-5}));
        }
        // --energy keeps the fewest singular values reaching the threshold: recompute that
        // rank from the full extraction's singular values (B's column norms).
        let full = &factors["full"];
        let er = layers(&reports["energy"]);
        for (m, (_, b)) in full {
            let sv = singular_values(b);
            let total: f64 = sv.iter().map(|x| x * x).sum();
            let mut acc = 0.0;
            let mut fewest = sv.len();
            for (i, x) in sv.iter().enumerate() {
                acc += x * x;
                if acc >= energy * total {
                    fewest = i + 1;
                    break;
                }
            }
            let k = er[m]["rank"].as_u64().unwrap() as usize;
            // Accept a neighbour only when the threshold sits within rounding of the cut.
            let cum = |n: usize| sv[..n].iter().map(|x| x * x).sum::<f64>() / total;
            let borderline = (cum(fewest) - energy).abs() < 1e-6
                || (fewest > 1 && (cum(fewest - 1) - energy).abs() < 1e-6);
            assert!(
                k == fewest || (borderline && k.abs_diff(fewest) == 1),
                "{exp} {m}: --energy {energy} kept {k}, the fewest reaching it is {fewest}"
            );
        }
        labels.push(format!("{exp} bare base"));
        jobs.push(json!({"model": s(&base), "inputs": s(&inputs),
                         "expected": s(&expected), "rtol": 1e-5}));
    }
    let Some(py) = py else {
        return;
    };
    let answers = oracle_batch(&py, &["compare-npz", "--many"], &jobs);
    let err: BTreeMap<&str, f64> = labels
        .iter()
        .zip(&answers)
        .map(|(l, a)| (l.as_str(), total_rel_error(a)))
        .collect();
    eprintln!("output errors (sum of relative errors over outputs): {err:?}");
    let mut failures = Vec::new();
    for exp in ["ts", "dynamo"] {
        let e = |l: &str| err[format!("{exp} {l}").as_str()];
        let order = [
            ("bare base", "rank 4"),
            ("rank 4", "rank 16"),
            ("bare base", "energy"),
            ("rank 16", "full"),
        ];
        for (worse, better) in order {
            if e(better) >= e(worse) {
                failures.push(format!(
                    "{exp}: output error with {better} ({:.3e}) is not below {worse} ({:.3e})",
                    e(better),
                    e(worse)
                ));
            }
        }
        let full = labels
            .iter()
            .position(|l| *l == format!("{exp} full"))
            .unwrap();
        if answers[full]["ok"] != true {
            failures.push(format!(
                "{exp}: the full-rank adapter does not reproduce the tuned model: {}",
                answers[full]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nerrors: {err:?}",
        failures.join("\n")
    );
}

#[test]
fn usage_errors_write_nothing() {
    let fx = Fixture::new("bert_full_ft");
    let other_arch = manifest_case("gpt2_base");
    let gpt2 = model_file(&other_arch["files"]["unmerged_ts"]);
    let (base, tuned) = (fx.base("ts"), fx.tuned("ts"));
    let tuned_dynamo = fx.tuned("dynamo");
    let tmp = tempfile::tempdir().unwrap();
    let r = ["--rank", "4"];
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &Path, &Path, Vec<&str>, &str)> = vec![
        (
            "another architecture",
            &base,
            &gpt2,
            r.to_vec(),
            "differ beyond weight values",
        ),
        (
            "another exporter",
            &base,
            &tuned_dynamo,
            r.to_vec(),
            "differ beyond weight values",
        ),
        (
            "the base itself",
            &base,
            &base,
            r.to_vec(),
            "nothing to extract",
        ),
        ("rank 0", &base, &tuned, vec!["--rank", "0"], "--rank"),
        (
            "energy 1.5",
            &base,
            &tuned,
            vec!["--energy", "1.5"],
            "--energy",
        ),
        ("energy 0", &base, &tuned, vec!["--energy", "0"], "--energy"),
        ("neither rule", &base, &tuned, vec![], "--rank"),
        (
            "both rules",
            &base,
            &tuned,
            vec!["--rank", "4", "--energy", "0.9"],
            "--energy",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, b, t, args, must)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let (o, report) = extract(b, t, args, &out);
        let err = stderr(&o);
        if o.status.code() != Some(2) {
            failures.push(format!("{what}: exit {:?}: {err}", o.status.code()));
        }
        if !err.contains(must) {
            failures.push(format!("{what}: the message lacks {must:?}: {err}"));
        }
        if out.exists() || report.is_some() {
            failures.push(format!("{what}: something was written"));
        }
    }

    // An output path that is an existing file: an error, and the file and folder are untouched.
    let dir = tmp.path().join("occupied");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("adapter");
    std::fs::write(&file, "not a folder").unwrap();
    let (o, report) = extract(&base, &tuned, &r, &file);
    let err = stderr(&o);
    if o.status.success() || o.status.code() == Some(101) {
        failures.push(format!(
            "output over a file: exit {:?}: {err}",
            o.status.code()
        ));
    }
    if !err.contains(s(&file)) {
        failures.push(format!(
            "output over a file: the message lacks the path: {err}"
        ));
    }
    if std::fs::read_to_string(&file).unwrap() != "not a folder" || report.is_some() {
        failures.push("output over a file: something was written".into());
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if left.len() != 1 {
        failures.push(format!("output over a file: the folder now holds {left:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn extracting_a_peft_merge_gives_back_the_peft_adapter() {
    // PEFT's merge_and_unload export (`merged.*.onnx`) has the base export's graph and differs
    // from it by s·B·A in each adapted module. Extracting at the adapter's rank must find exactly
    // the folder's modules, under the module paths PEFT uses, and reproduce s·B·A as computed
    // from the folder itself (scales from the manifest). `--strip-prefix m.` removes the HF
    // wrapper's prefix (models/README.md); the timm/CNN scopes do not carry it and are left
    // alone. DoRA and IA3 merges are not low-rank deltas: only folders of plain LoRA tensors.
    let py = python("extract: PEFT merges");
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let mut labels = Vec::new();
    let mut checked = 0;
    for case in manifest_cases() {
        let pa = &case["peft_adapter"];
        let (Some(tensors), Some(scalings)) =
            (pa["tensors"].as_object(), case["scalings"].as_object())
        else {
            continue;
        };
        let plain_lora = tensors.keys().all(|k| {
            [
                ".lora_A.weight",
                ".lora_B.weight",
                ".lora_embedding_A",
                ".lora_embedding_B",
            ]
            .iter()
            .any(|p| k.ends_with(p))
        });
        if !plain_lora {
            continue;
        }
        let name = case["case"].as_str().unwrap();
        let adapter = model_file(&pa["dir"]);
        let truth = lora_factors(&adapter);
        let modules: BTreeSet<String> = truth.keys().cloned().collect();
        let rank = truth.values().map(|(a, _)| a.nrows()).max().unwrap();
        for exp in ["ts", "dynamo"] {
            let label = format!("{name}.{exp}");
            let base = model_file(&pa["base_files"][exp]);
            let Some(merged) = case["files"][format!("merged_{exp}")].as_str() else {
                failures.push(format!("{label}: no merged_{exp} in the manifest"));
                continue;
            };
            let merged = repo().join("models").join(merged);
            let out = tmp.path().join(format!("{label}.adapter"));
            let (o, report) = extract(
                &base,
                &merged,
                &["--rank", &rank.to_string(), "--strip-prefix", "m."],
                &out,
            );
            if !o.status.success() {
                failures.push(format!("{label}: extract failed: {}", stderr(&o)));
                continue;
            }
            for (m, l) in layers(&report.expect("report")) {
                let err = l["delta_rel_error"].as_f64().unwrap();
                if err >= 1e-5 {
                    failures.push(format!("{label} {m}: delta_rel_error {err}"));
                }
            }
            let got = lora_factors(&out);
            let got_modules: BTreeSet<String> = got.keys().cloned().collect();
            if got_modules != modules {
                failures.push(format!(
                    "{label}: extracted modules {got_modules:?}, the PEFT folder has {modules:?}"
                ));
            }
            for (m, (a, b)) in &got {
                let Some((ta, tb)) = truth.get(m) else {
                    continue;
                };
                let sc = scalings[&format!("{PEFT_PREFIX}{m}")].as_f64().unwrap();
                let want = tb.dot(ta) * sc;
                let have = b.dot(a);
                if have.dim() != want.dim() {
                    failures.push(format!(
                        "{label} {m}: delta {:?}, PEFT's {:?}",
                        have.dim(),
                        want.dim()
                    ));
                    continue;
                }
                let rel = fro(&(&have - &want)) / fro(&want);
                if rel >= 1e-5 {
                    failures.push(format!("{label} {m}: |BA - s·B·A| / |s·B·A| = {rel}"));
                }
            }
            let applied = tmp.path().join(format!("{label}.applied.onnx"));
            let o = run_graft(&["apply", s(&base), "--peft", s(&out), "-o", s(&applied)]);
            if !o.status.success() {
                failures.push(format!("{label}: applying the extraction: {}", stderr(&o)));
                continue;
            }
            labels.push(label);
            jobs.push(
                json!({"model": s(&applied), "inputs": s(&model_file(&case["files"]["inputs"])),
                             "expected": s(&model_file(&case["files"]["expected"])), "rtol": 1e-4}),
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} PEFT merges extracted");
    if let Some(py) = &py {
        for (l, a) in labels
            .iter()
            .zip(oracle_batch(py, &["compare-npz", "--many"], &jobs))
        {
            if a["ok"] != true {
                failures.push(format!("{l}: base + extraction vs PEFT's outputs: {a}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn report_json_on_standard_output_is_only_json() {
    // `--report json` (no file) writes the report to standard output (`--help`: "`json` to
    // standard output, or `json=FILE`"), as `graft fold` does: standard output must then be that
    // JSON alone, the same as the file `--report json=FILE` gets, so that it can be piped.
    let fx = Fixture::new("bert_lowrank_ft");
    let tmp = tempfile::tempdir().unwrap();
    let (base, tuned) = (fx.base("ts"), fx.tuned("ts"));
    let out = tmp.path().join("adapter");
    let (o, file_report) = extract(&base, &tuned, &["--rank", "4"], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let file_report = file_report.expect("report file");
    let o = run_graft(&[
        "extract",
        s(&base),
        s(&tuned),
        "--rank",
        "4",
        "-o",
        s(&out),
        "--report",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let parsed: Result<Value, _> = serde_json::from_slice(&o.stdout);
    match parsed {
        Ok(v) => assert_eq!(v, file_report, "stdout report vs file report"),
        Err(e) => panic!(
            "`graft extract --report json`: standard output is not JSON ({e}):\n{}",
            stdout(&o)
        ),
    }
}
