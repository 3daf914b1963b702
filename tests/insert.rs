//! `graft insert`, judged by oracles graft did not write (ONNX Runtime and onnx.checker through
//! tests/oracle.py) and by its inverse, `graft fold`:
//! - the inverse law on every corpus model and every foldable kind: a random adapter really
//!   changes the outputs, fold(insert(M)) computes what insert(M) computes, and it has the
//!   operators and parameters of fold(M) (a linear adapter on a target without a bias may leave
//!   that bias behind: one Add and d_out parameters);
//! - `--init zeros` leaves outputs unchanged bit for bit, PiSSA leaves them unchanged while the
//!   base weights change, `--as-inputs` computes the same as plain initializers, `--rslora`
//!   scales by alpha/sqrt(r);
//! - usage errors exit 2 with a useful message and write nothing; `--dry-run` writes nothing;
//! - every inserted golden case (tests/golden/insert) folds back.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// The foldable kinds, as `graft insert` arguments.
const KINDS: &[(&str, &[&str])] = &[
    ("lora", &["--adapter", "lora"]),
    ("dora", &["--adapter", "dora"]),
    ("ia3-output", &["--adapter", "ia3", "--side", "output"]),
    ("ia3-input", &["--adapter", "ia3", "--side", "input"]),
    (
        "linear-before",
        &["--adapter", "linear", "--position", "before"],
    ),
    (
        "linear-after",
        &["--adapter", "linear", "--position", "after"],
    ),
];

/// What graft says when a pattern selects nothing the adapter can attach to.
const NO_MATCH: &str = "no MatMul/Gemm/Conv/Gather node with a constant weight matches";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn graft_owned(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_graft(&refs)
}

/// Runs `f` on every item with two worker threads (the test machines have few cores); results
/// keep the items' order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else {
                        break;
                    };
                    let r = f(item);
                    done.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut v = done.into_inner().unwrap();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

fn inspect(model: &Path) -> Value {
    let o = run_graft(&["inspect", s(model), "--json"]);
    assert!(
        o.status.success(),
        "inspect {}: {}",
        model.display(),
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).expect("inspect JSON")
}

/// Operator histogram and parameter count, as `graft inspect --json` gives them.
#[derive(Clone, Debug, PartialEq)]
struct Counts {
    ops: BTreeMap<String, i64>,
    params: i64,
}

fn counts(model: &Path) -> Counts {
    let j = inspect(model);
    let ops = j["ops"]
        .as_object()
        .expect("ops")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().expect("count")))
        .collect();
    Counts {
        ops,
        params: j["parameters"].as_i64().expect("parameters"),
    }
}

/// fold(insert(M)) against fold(M): equal, except that a linear adapter on a target without a
/// bias folds into a new bias with the target's d_out entries (for either position), and one
/// Add where the target cannot hold a bias itself. Where the bias-less target is itself part of
/// something fold merges into a layer with a bias (the factors of a LoRA the model already
/// has), no new bias appears. So: at most one more Add per bias-less target, and the extra
/// parameters are the d_out of some of those targets.
fn law_counts(base: &Counts, got: &Counts, report: &Value, linear: bool) -> Result<(), String> {
    let mut bias_less = Vec::new();
    if linear {
        for p in report["placed"].as_array().expect("placed") {
            if p["has_bias"] == false {
                bias_less.push(p["d_out"].as_u64().expect("d_out") as usize);
            }
        }
    }
    // Which totals some subset of the bias-less targets' d_out can make.
    let total: usize = bias_less.iter().sum();
    let mut reachable = vec![false; total + 1];
    reachable[0] = true;
    for &d in &bias_less {
        for t in (d..=total).rev() {
            reachable[t] |= reachable[t - d];
        }
    }
    let mut why = Vec::new();
    let extra = got.params - base.params;
    if extra < 0 || extra as usize > total || !reachable[extra as usize] {
        why.push(format!(
            "parameters {} vs fold(M)'s {} (extra may only be new biases of the bias-less \
             targets, d_out {bias_less:?})",
            got.params, base.params
        ));
    }
    let names: BTreeSet<&String> = base.ops.keys().chain(got.ops.keys()).collect();
    for op in names {
        let (a, b) = (
            got.ops.get(op).copied().unwrap_or(0),
            base.ops.get(op).copied().unwrap_or(0),
        );
        let ok = if op == "Add" {
            (b..=b + bias_less.len() as i64).contains(&a)
        } else {
            a == b
        };
        if !ok {
            why.push(format!("{op}: {a} vs fold(M)'s {b}"));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join(", "))
    }
}

/// One exported corpus model.
struct Export {
    name: String,
    model: PathBuf,
    inputs: PathBuf,
    /// Whether graft folds every adapter the model itself has (manifest `foldable` true, or a
    /// base model); see the inverse-law test for why the operator law needs that.
    folds_fully: bool,
}

fn corpus_exports() -> Vec<Export> {
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let mut out = Vec::new();
    for case in m["cases"].as_array().expect("cases") {
        let name = case["case"].as_str().expect("case name");
        let files = &case["files"];
        let folds_fully = matches!(case["foldable"], Value::Bool(true) | Value::Null);
        for exp in ["ts", "dynamo"] {
            let Some(f) = files[format!("unmerged_{exp}")].as_str() else {
                continue;
            };
            out.push(Export {
                name: format!("{name}.{exp}"),
                model: repo().join("models").join(f),
                inputs: repo()
                    .join("models")
                    .join(files["inputs"].as_str().expect("inputs")),
                folds_fully,
            });
        }
    }
    out
}

fn export(name: &str) -> Export {
    corpus_exports()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no corpus export {name}"))
}

/// What one `graft insert` did.
enum Inserted {
    /// Written, with the JSON report.
    Done(Value),
    /// Exit 2 because nothing the pattern selects can take this adapter.
    NotApplicable,
    Failed(String),
}

fn insert(model: &Path, out: &Path, args: &[&str]) -> Inserted {
    let report = out.with_extension("insert.json");
    let mut a: Vec<String> = vec!["insert".into(), s(model).into()];
    a.extend(args.iter().map(|x| x.to_string()));
    a.extend([
        "-o".into(),
        s(out).into(),
        "--report".into(),
        format!("json={}", report.display()),
    ]);
    let o = graft_owned(&a);
    match o.status.code() {
        Some(0) => {
            if !out.exists() {
                return Inserted::Failed(format!("exit 0 but no {}", out.display()));
            }
            match std::fs::read_to_string(&report)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                Some(r) => Inserted::Done(r),
                None => Inserted::Failed("exit 0 but no JSON report".into()),
            }
        }
        Some(2) if stderr(&o).contains(NO_MATCH) => {
            if out.exists() {
                Inserted::Failed("not applicable, yet an output was written".into())
            } else {
                Inserted::NotApplicable
            }
        }
        c => Inserted::Failed(format!("insert exit {c:?}: {}", stderr(&o).trim())),
    }
}

fn insert_ok(model: &Path, out: &Path, args: &[&str]) -> Value {
    match insert(model, out, args) {
        Inserted::Done(r) => r,
        Inserted::NotApplicable => panic!("{}: {args:?}: nothing to attach to", model.display()),
        Inserted::Failed(e) => panic!("{}: {args:?}: {e}", model.display()),
    }
}

/// `graft fold MODEL -o OUT` (its own verification on); the error text when it fails.
fn fold(model: &Path, out: &Path, extra: &[&str]) -> Result<(), String> {
    let mut a = vec!["fold", s(model), "-o", s(out)];
    a.extend_from_slice(extra);
    let o = run_graft(&a);
    if o.status.success() && out.exists() {
        return Ok(());
    }
    let err = stderr(&o);
    let tail: Vec<&str> = err.lines().rev().take(4).collect();
    Err(format!(
        "fold exit {:?}: {}",
        o.status.code(),
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// Runs ONNX Runtime comparisons in one Python process (`oracle.py compare-many`).
fn compare_many(py: &Path, dir: &Path, jobs: &[Value]) -> Vec<Value> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let f = dir.join(format!("jobs-{}.json", jobs.len()));
    std::fs::write(&f, serde_json::to_string(jobs).unwrap()).unwrap();
    let v = oracle(py, &["compare-many", s(&f)]);
    let v = v.as_array().expect("a list of answers").clone();
    assert_eq!(
        v.len(),
        jobs.len(),
        "compare-many answered {} of {}",
        v.len(),
        jobs.len()
    );
    v
}

fn job(a: &Path, b: &Path, inputs: Option<&Path>, rtol: f64, exact: bool) -> Value {
    json!({"a": s(a), "b": s(b), "inputs": inputs.map(s), "rtol": rtol, "exact": exact})
}

/// The largest relative Frobenius error over a comparison's outputs (None when it has none).
fn max_rel(cmp: &Value) -> Option<f64> {
    cmp["outputs"]
        .as_object()?
        .values()
        .map(|o| o["rel_fro"].as_f64())
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::max)
}

/// onnx.checker (full check) on many files in one Python process; the failures.
fn checker_failures(py: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut bad = Vec::new();
    for chunk in files.chunks(200) {
        let args: Vec<&str> = std::iter::once("check")
            .chain(chunk.iter().map(|p| s(p)))
            .collect();
        let v = oracle(py, &args);
        for f in chunk {
            if v[s(f)] != "ok" {
                bad.push(format!("{}: {}", f.display(), v[s(f)]));
            }
        }
    }
    bad
}

fn file_stem(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. The inverse law.

enum PairOutcome {
    NotApplicable,
    Failed(String),
    Ran {
        ins: PathBuf,
        folded: PathBuf,
        report: Value,
        fold_counts: Counts,
    },
}

/// For each corpus export (TorchScript and dynamo) and each foldable kind, insert random
/// adapters at every target the kind can take (`re:.*`), fold, and check:
/// (a) fold(ins) has fold(M)'s operators and parameters (linear adapters on bias-less targets
///     excepted, see `law_counts`); only for models graft folds completely: where the model
///     keeps adapters fold cannot merge (Houlsby's GELU, reflect-padded conv LoRA, uncalibrated
///     ResLoRA shortcuts), new adapters also land on those adapters' factors, and what fold
///     then does with the mixture is its cost model's call, not the law's;
/// (b) ONNX Runtime: fold(ins) computes what ins computes (relative error <= 1e-4);
/// (c) ins computes something else than M (some output's relative error > 1e-6);
/// (d) onnx.checker accepts ins and fold(ins).
///
/// Insert and fold must succeed on every model.
#[test]
fn inverse_law_on_every_corpus_model() {
    let Some(py) = python("insert inverse law") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exports = corpus_exports();
    assert!(exports.len() >= 40, "only {} corpus exports", exports.len());

    let bases = par_map(&exports, |e| {
        let out = dir.join(format!("{}.base-fold.onnx", e.name));
        fold(&e.model, &out, &[]).map(|()| counts(&out))
    });

    let pairs: Vec<(usize, usize)> = (0..exports.len())
        .flat_map(|e| (0..KINDS.len()).map(move |k| (e, k)))
        .collect();
    let outcomes = par_map(&pairs, |&(ei, ki)| {
        let e = &exports[ei];
        let (kind, args) = KINDS[ki];
        let ins = dir.join(format!("{}.{kind}.onnx", e.name));
        let folded = dir.join(format!("{}.{kind}.fold.onnx", e.name));
        let mut a = args.to_vec();
        a.extend(["--target", "re:.*", "--init", "random:11"]);
        let report = match insert(&e.model, &ins, &a) {
            Inserted::Done(r) => r,
            Inserted::NotApplicable => return PairOutcome::NotApplicable,
            Inserted::Failed(why) => return PairOutcome::Failed(why),
        };
        if let Err(why) = fold(&ins, &folded, &[]) {
            return PairOutcome::Failed(why);
        }
        PairOutcome::Ran {
            fold_counts: counts(&folded),
            ins,
            folded,
            report,
        }
    });

    let mut failures = Vec::new();
    for (e, b) in exports.iter().zip(&bases) {
        if let Err(why) = b {
            failures.push(format!("{}: folding the model itself: {why}", e.name));
        }
    }
    let mut jobs = Vec::new();
    let mut job_owner = Vec::new();
    let mut to_check = Vec::new();
    let (mut ran, mut not_applicable) = (0, Vec::new());
    for (&(ei, ki), outcome) in pairs.iter().zip(&outcomes) {
        let e = &exports[ei];
        let kind = KINDS[ki].0;
        let label = format!("{} {kind}", e.name);
        match outcome {
            PairOutcome::NotApplicable => not_applicable.push(label),
            PairOutcome::Failed(why) => failures.push(format!("{label}: {why}")),
            PairOutcome::Ran {
                ins,
                folded,
                report,
                fold_counts,
            } => {
                ran += 1;
                if e.folds_fully
                    && let Ok(base) = &bases[ei]
                    && let Err(why) =
                        law_counts(base, fold_counts, report, kind.starts_with("linear"))
                {
                    failures.push(format!("{label}: fold(ins) vs fold(M): {why}"));
                }
                jobs.push(job(ins, folded, Some(&e.inputs), 1e-4, false));
                job_owner.push((label.clone(), "fold(ins) vs ins"));
                jobs.push(job(&e.model, ins, Some(&e.inputs), 0.0, false));
                job_owner.push((label, "ins vs M"));
                to_check.push(ins.clone());
                to_check.push(folded.clone());
            }
        }
    }
    let answers = compare_many(&py, dir, &jobs);
    for ((label, what), cmp) in job_owner.iter().zip(&answers) {
        match *what {
            "fold(ins) vs ins" if cmp["ok"] != true => failures.push(format!(
                "{label}: ONNX Runtime: fold(ins) differs from ins: {cmp}"
            )),
            "ins vs M" => match max_rel(cmp) {
                Some(r) if r > 1e-6 => {}
                _ => failures.push(format!(
                    "{label}: ONNX Runtime: the random adapter does not change the outputs: {cmp}"
                )),
            },
            _ => {}
        }
    }
    failures.extend(checker_failures(&py, &to_check));

    eprintln!(
        "insert inverse law: {ran} (model, kind) pairs ran over {} exports; {} not applicable: {}",
        exports.len(),
        not_applicable.len(),
        not_applicable.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ran >= 250, "only {ran} (model, kind) pairs ran");
}

// ---------------------------------------------------------------------------------------------
// 2. Zero init is the identity.

/// `--init zeros` (the default) leaves every output unchanged bit for bit: LoRA adds x·A·0,
/// IA3 multiplies by 1, linear and bottleneck adapters add 0 (ONNX Runtime, `--exact`). DoRA's
/// factor c = m/‖M + s·A·0‖ is computed in the graph: m was computed in f64 and stored in f32,
/// the norm is computed in f32 at run time, so c is 1 only up to f32 rounding: within 1e-6.
/// The graph's inputs and outputs (names and types) stay as they were.
#[test]
fn zero_init_leaves_outputs_unchanged() {
    let Some(py) = python("insert zero init") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut kinds: Vec<(&str, Vec<&str>)> = KINDS.iter().map(|(k, a)| (*k, a.to_vec())).collect();
    kinds.push(("bottleneck", vec!["--adapter", "bottleneck"]));
    let models = [
        "bert_base.ts",
        "bert_base.dynamo",
        "gpt2_base.ts",
        "cnn_base.ts",
    ];
    let mut items = Vec::new();
    for m in models {
        for (k, a) in &kinds {
            items.push((export(m), *k, a.clone()));
        }
    }
    let results = par_map(&items, |(e, kind, args)| {
        let ins = tmp.path().join(format!("{}.{kind}.zeros.onnx", e.name));
        let mut a = args.clone();
        a.extend(["--target", "re:.*", "--init", "zeros"]);
        (insert(&e.model, &ins, &a), ins)
    });
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let mut owners = Vec::new();
    let mut applicable: BTreeMap<String, usize> = BTreeMap::new();
    for ((e, kind, _), (r, ins)) in items.iter().zip(&results) {
        let label = format!("{} {kind}", e.name);
        match r {
            Inserted::Done(_) => {
                *applicable.entry(e.name.clone()).or_default() += 1;
                let (before, after) = (inspect(&e.model), inspect(ins));
                for side in ["inputs", "outputs"] {
                    if before[side] != after[side] {
                        failures.push(format!(
                            "{label}: graph {side} changed: {} -> {}",
                            before[side], after[side]
                        ));
                    }
                }
                let dora = *kind == "dora";
                jobs.push(job(&e.model, ins, Some(&e.inputs), 1e-6, !dora));
                owners.push(label);
            }
            Inserted::NotApplicable => {}
            Inserted::Failed(why) => failures.push(format!("{label}: {why}")),
        }
    }
    for (label, cmp) in owners.iter().zip(compare_many(&py, tmp.path(), &jobs)) {
        if cmp["ok"] != true {
            failures.push(format!("{label}: zero init changed the outputs: {cmp}"));
        }
    }
    for m in models {
        let n = applicable.get(m).copied().unwrap_or(0);
        if n < 6 {
            failures.push(format!("{m}: only {n} kinds applied"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("zero init: {} inserts checked", jobs.len());
}

// ---------------------------------------------------------------------------------------------
// 3. PiSSA.

/// The initializers of a model as `graft print --weights summary` shows them (name -> the rest
/// of the line: type, shape and content hash, or the values for small tensors).
fn initializer_lines(model: &Path) -> BTreeMap<String, String> {
    let o = run_graft(&["print", s(model), "--weights", "summary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    // The graph's initializer block opens on the line after its signature (`g (...) => (...)`).
    lines.by_ref().find(|l| l.contains("=>"));
    for line in lines.skip_while(|l| l.trim() != "<").skip(1) {
        let t = line.trim();
        if t == ">" {
            break;
        }
        let Some((decl, value)) = t.trim_end_matches(',').split_once(" = ") else {
            continue;
        };
        let name = decl
            .split_once(' ')
            .map_or(decl, |(_, n)| n)
            .trim_matches('"');
        out.insert(name.to_string(), format!("{decl} = {value}"));
    }
    assert!(
        !out.is_empty(),
        "no initializers read from {}",
        model.display()
    );
    out
}

/// `--init pissa` moves the top singular triplets of each weight into A and B and stores the
/// residual as the base weight: the outputs stay those of the base (ONNX Runtime, 1e-5), the
/// base weights really change, and fold gives back the base's operators and parameters.
#[test]
fn pissa_keeps_outputs_and_replaces_base_weights() {
    let Some(py) = python("insert pissa") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let items: Vec<Export> = [
        "bert_base.ts",
        "bert_base.dynamo",
        "vit_base.ts",
        "vit_base.dynamo",
    ]
    .into_iter()
    .map(export)
    .collect();
    let done = par_map(&items, |e| {
        let ins = tmp.path().join(format!("{}.pissa.onnx", e.name));
        let report = insert_ok(
            &e.model,
            &ins,
            &[
                "--adapter",
                "lora",
                "--target",
                "re:.*",
                "--init",
                "pissa",
                "--rank",
                "4",
            ],
        );
        let folded = tmp.path().join(format!("{}.pissa.fold.onnx", e.name));
        let base = tmp.path().join(format!("{}.base.fold.onnx", e.name));
        let f = fold(&ins, &folded, &[]).map(|()| counts(&folded));
        let b = fold(&e.model, &base, &[]).map(|()| counts(&base));
        (ins, folded, report, f, b)
    });
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    for (e, (ins, folded, report, f, b)) in items.iter().zip(&done) {
        let placed = report["placed"].as_array().unwrap().len();
        assert!(placed >= 5, "{}: only {placed} targets", e.name);
        // Each target's weight is replaced by its residual: same name with other contents, or
        // (when other nodes read the weight) a new <scope>.base_residual.
        let (before, after) = (initializer_lines(&e.model), initializer_lines(ins));
        let changed = before
            .iter()
            .filter(|(k, v)| after.get(*k).is_some_and(|w| w != *v))
            .count();
        let residuals = after
            .keys()
            .filter(|k| k.ends_with(".base_residual"))
            .count();
        if changed + residuals < placed {
            failures.push(format!(
                "{}: {placed} targets but only {changed} weights changed and {residuals} \
                 residuals added",
                e.name
            ));
        }
        match (f, b) {
            (Ok(f), Ok(b)) if f == b => {}
            (Ok(f), Ok(b)) => {
                failures.push(format!("{}: fold(pissa) {f:?} vs fold(M) {b:?}", e.name))
            }
            (f, b) => failures.push(format!("{}: fold failed: {f:?} / {b:?}", e.name)),
        }
        jobs.push(job(&e.model, ins, Some(&e.inputs), 1e-5, false));
        if f.is_ok() {
            jobs.push(job(ins, folded, Some(&e.inputs), 1e-4, false));
        }
    }
    // A weight the LM head may share (gpt2's wte): the head's logits must not move.
    let mut tied = Vec::new();
    for name in ["gpt2_base.ts", "gpt2_base.dynamo"] {
        let e = export(name);
        let ins = tmp.path().join(format!("{name}.wte-pissa.onnx"));
        insert_ok(
            &e.model,
            &ins,
            &["--adapter", "lora", "--target", "wte", "--init", "pissa"],
        );
        jobs.push(job(&e.model, &ins, Some(&e.inputs), 1e-5, false));
        tied.push(ins);
    }
    for cmp in compare_many(&py, tmp.path(), &jobs) {
        if cmp["ok"] != true {
            failures.push(format!("ONNX Runtime: outputs moved: {cmp}"));
        }
    }
    let mut files: Vec<PathBuf> = done.iter().map(|d| d.0.clone()).collect();
    files.extend(tied);
    failures.extend(checker_failures(&py, &files));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. Adapter weights as graph inputs.

/// Lists a model's overridable initializers (graph inputs with a default) as ONNX Runtime sees
/// them, and runs it with inputs.npz plus, optionally, zeros fed for some of them.
const ORT_OVERRIDES: &str = r#"
import json, sys
import numpy as np
import onnxruntime as ort
model, inputs, zero = sys.argv[1], sys.argv[2], sys.argv[3:]
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
so.log_severity_level = 3
s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
over = {o.name: o for o in s.get_overridable_initializers()}
data = np.load(inputs)
feeds = {i.name: data[i.name] for i in s.get_inputs()}
for z in zero:
    o = over[z]
    feeds[z] = np.zeros(o.shape, dtype=np.float32)
outs = s.run(None, feeds)
hexes = [np.asarray(x).tobytes().hex() for x in outs]
print(json.dumps({"overridable": sorted(over), "outputs": hexes}))
"#;

fn ort_overrides(py: &Path, model: &Path, inputs: &Path, zero: &[String]) -> Value {
    let o = Command::new(py)
        .arg("-c")
        .arg(ORT_OVERRIDES)
        .arg(model)
        .arg(inputs)
        .args(zero)
        .output()
        .expect("python runs");
    assert!(o.status.success(), "ORT script: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

/// `--as-inputs` makes exactly the adapter weights graph inputs with their values as defaults:
/// ONNX Runtime lists them as overridable initializers, the model computes bit for bit what the
/// same insert with plain initializers computes, onnx.checker accepts it, and feeding zeros for
/// every lora_B turns the LoRA off (the base model's outputs, bit for bit).
#[test]
fn as_inputs_keeps_defaults_and_can_be_swapped() {
    let Some(py) = python("insert --as-inputs") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let e = export("bert_base.ts");
    let mut jobs = Vec::new();
    let mut files = Vec::new();
    for (kind, args) in [
        ("lora", &["--adapter", "lora"][..]),
        ("dora", &["--adapter", "dora"][..]),
        ("ia3", &["--adapter", "ia3"][..]),
    ] {
        let plain = tmp.path().join(format!("{kind}.plain.onnx"));
        let swap = tmp.path().join(format!("{kind}.inputs.onnx"));
        let mut a = args.to_vec();
        a.extend(["--target", "query,value", "--init", "random:5"]);
        let r_plain = insert_ok(&e.model, &plain, &a);
        a.push("--as-inputs");
        let r_swap = insert_ok(&e.model, &swap, &a);
        assert_eq!(r_plain["placed"], r_swap["placed"], "{kind}");
        let tensors: BTreeSet<String> = r_swap["placed"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["tensors"].as_array().unwrap().iter())
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert!(tensors.len() >= 4, "{kind}: {tensors:?}");
        let seen = ort_overrides(&py, &swap, &e.inputs, &[]);
        let over: BTreeSet<String> = seen["overridable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(over, tensors, "{kind}: graph inputs with defaults");
        let listed: BTreeSet<String> = inspect(&swap)["inputs_with_defaults"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            listed, tensors,
            "{kind}: graft inspect lists the swappable weights"
        );
        let plain_seen = ort_overrides(&py, &plain, &e.inputs, &[]);
        assert_eq!(plain_seen["overridable"], json!([]), "{kind}");
        if kind == "lora" {
            let zero: Vec<String> = tensors
                .iter()
                .filter(|t| t.ends_with(".lora_B"))
                .cloned()
                .collect();
            assert_eq!(zero.len(), 4);
            let off = ort_overrides(&py, &swap, &e.inputs, &zero);
            let base = ort_overrides(&py, &e.model, &e.inputs, &[]);
            assert_eq!(
                off["outputs"], base["outputs"],
                "zero lora_B fed at run time must give the base model's outputs"
            );
            assert_ne!(
                seen["outputs"], base["outputs"],
                "the default adapter must change the outputs"
            );
        }
        jobs.push(job(&plain, &swap, Some(&e.inputs), 0.0, true));
        files.push(swap);
    }
    for cmp in compare_many(&py, tmp.path(), &jobs) {
        assert_eq!(
            cmp["ok"], true,
            "--as-inputs computes something else: {cmp}"
        );
    }
    let bad = checker_failures(&py, &files);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 5. Errors.

/// Runs an insert that must fail with `code`; checks that nothing was written.
fn insert_fails(args: &[&str], code: i32) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let report = tmp.path().join("report.json");
    let mut a: Vec<String> = vec!["insert".into()];
    a.extend(args.iter().map(|x| x.to_string()));
    a.extend([
        "-o".into(),
        s(&out).into(),
        "--report".into(),
        format!("json={}", report.display()),
    ]);
    let o = graft_owned(&a);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| file_stem(&e.path()))
        .collect();
    assert!(left.is_empty(), "{args:?} failed but wrote {left:?}");
    err
}

#[test]
fn usage_errors_exit_2_with_a_reason_and_write_nothing() {
    let bert = repo().join("models/bert_base/unmerged.ts.onnx");
    let cnn = repo().join("models/cnn_base/unmerged.ts.onnx");
    let (bert, cnn) = (s(&bert), s(&cnn));

    // A scale that is not a number would make every output NaN.
    let e = insert_fails(
        &[
            bert,
            "--adapter",
            "lora",
            "--target",
            "query",
            "--alpha",
            "nan",
        ],
        2,
    );
    assert!(e.contains("--alpha"), "{e}");

    // A LoRA rank beyond both of the target's dimensions is refused, not allocated.
    let e = insert_fails(
        &[
            bert,
            "--adapter",
            "lora",
            "--target",
            "query",
            "--rank",
            "100000000",
        ],
        2,
    );
    assert!(e.contains("--rank 100000000"), "{e}");

    // A typo: the message names the closest candidates.
    let e = insert_fails(&[bert, "--adapter", "lora", "--target", "qurey"], 2);
    assert!(e.contains(NO_MATCH) && e.contains("qurey"), "{e}");
    assert!(
        e.contains("attention.self.query"),
        "no candidate suggested for 'qurey': {e}"
    );

    // A suffix naming a target this adapter cannot take: the reason, not a silent skip.
    let e = insert_fails(&[cnn, "--adapter", "dora", "--target", "conv1"], 2);
    assert!(e.contains("conv1") && e.contains("DoRA"), "{e}");
    assert!(e.contains("not Conv"), "{e}");
    let e = insert_fails(
        &[
            bert,
            "--adapter",
            "ia3",
            "--side",
            "input",
            "--target",
            "word_embeddings",
        ],
        2,
    );
    assert!(e.contains("word_embeddings") && e.contains("ids"), "{e}");
    let e = insert_fails(&[cnn, "--adapter", "linear", "--target", "conv2"], 2);
    assert!(e.contains("conv2") && e.contains("MatMul and Gemm"), "{e}");
    // ...and when a re: pattern selects only such targets, nothing is left to do.
    let e = insert_fails(&[cnn, "--adapter", "dora", "--target", "re:conv.*"], 2);
    assert!(e.contains(NO_MATCH) && e.contains("unsupported"), "{e}");

    // Bad values.
    let e = insert_fails(
        &[
            bert,
            "--adapter",
            "lora",
            "--target",
            "query",
            "--init",
            "random:x",
        ],
        2,
    );
    assert!(e.contains("random:x") && e.contains("random:SEED"), "{e}");
    let e = insert_fails(
        &[
            bert,
            "--adapter",
            "lora",
            "--target",
            "query",
            "--rank",
            "0",
        ],
        2,
    );
    assert!(e.contains("--rank"), "{e}");
    let e = insert_fails(
        &[
            bert,
            "--adapter",
            "ia3",
            "--target",
            "query",
            "--init",
            "pissa",
        ],
        2,
    );
    assert!(e.contains("pissa"), "{e}");
    let e = insert_fails(&[bert, "--adapter", "lora", "--target", "re:("], 2);
    assert!(e.contains("regular expression"), "{e}");
    let e = insert_fails(&[bert, "--adapter", "lora", "--target", " , "], 2);
    assert!(e.contains("--target"), "{e}");

    // A missing model: exit 1, naming the file.
    let missing = repo().join("models/no_such_model/unmerged.onnx");
    let e = insert_fails(&[s(&missing), "--adapter", "lora", "--target", "q"], 1);
    assert!(e.contains("no_such_model"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// 6. Dry runs.

#[test]
fn dry_run_lists_the_targets_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bert = repo().join("models/bert_base/unmerged.ts.onnx");
    let out = tmp.path().join("out.onnx");
    let report = tmp.path().join("r.json");
    let o = run_graft(&[
        "insert",
        s(&bert),
        "--adapter",
        "lora",
        "--target",
        "query,value",
        "--dry-run",
        "-o",
        s(&out),
        "--report",
        &format!("json={}", report.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    assert!(!out.exists() && !report.exists(), "a dry run wrote a file");
    assert!(listed.starts_with("4 targets for lora:"), "{listed}");
    // The real run places exactly what the dry run listed.
    let real = insert_ok(
        &bert,
        &out,
        &["--adapter", "lora", "--target", "query,value"],
    );
    let placed = real["placed"].as_array().unwrap();
    assert_eq!(placed.len(), 4);
    for p in placed {
        let line = format!(
            "  {}  ({}, {} -> {})",
            p["target"].as_str().unwrap(),
            p["node"].as_str().unwrap(),
            p["d_in"],
            p["d_out"]
        );
        assert!(listed.contains(&line), "dry run lacks {line:?}:\n{listed}");
    }
    // Without -o a dry run is fine too (and still writes nothing next to the model).
    let o = run_graft(&[
        "insert",
        s(&bert),
        "--adapter",
        "lora",
        "--target",
        "query",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// 7. rsLoRA.

/// The value of the scalar initializer `name`, read from `graft print --weights full`.
fn scalar(model: &Path, name: &str) -> f64 {
    let o = run_graft(&["print", s(model), "--weights", "full"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let key = format!("\"{name}\" = {{");
    let line = text
        .lines()
        .find(|l| l.contains(&key))
        .unwrap_or_else(|| panic!("no initializer {name} in {}", model.display()));
    let v = line.split_once(&key).unwrap().1;
    v.split('}').next().unwrap().trim().parse().unwrap()
}

/// `--rslora` scales by alpha/sqrt(r) instead of alpha/r: with r = 4 and alpha = 8 the scale
/// initializer is 4 (not 2), and the model equals, bit for bit, a plain LoRA with alpha = 16
/// (alpha/r = 4) from the same seed.
#[test]
fn rslora_scales_by_alpha_over_sqrt_rank() {
    let Some(py) = python("insert --rslora") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let e = export("bert_base.ts");
    let scale_name = "m.encoder.layer.0.attention.self.query.lora_scale";
    let common = ["--adapter", "lora", "--target", "query", "--rank", "4"];
    let run = |file: &str, extra: &[&str]| {
        let out = tmp.path().join(file);
        let mut a = common.to_vec();
        a.extend(["--init", "random:3"]);
        a.extend_from_slice(extra);
        insert_ok(&e.model, &out, &a);
        out
    };
    let rs = run("rs.onnx", &["--alpha", "8", "--rslora"]);
    let plain8 = run("plain8.onnx", &["--alpha", "8"]);
    let plain16 = run("plain16.onnx", &["--alpha", "16"]);
    assert_eq!(scalar(&rs, scale_name), 4.0);
    assert_eq!(scalar(&plain8, scale_name), 2.0);
    assert_eq!(scalar(&plain16, scale_name), 4.0);
    let cmp = compare_many(
        &py,
        tmp.path(),
        &[
            job(&rs, &plain16, Some(&e.inputs), 0.0, true),
            job(&rs, &plain8, Some(&e.inputs), 0.0, false),
        ],
    );
    assert_eq!(
        cmp[0]["ok"], true,
        "rsLoRA != LoRA with alpha·sqrt(r): {}",
        cmp[0]
    );
    assert!(
        max_rel(&cmp[1]).is_some_and(|r| r > 1e-6),
        "the scale should matter: {}",
        cmp[1]
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Golden cases fold back.

/// Every case in tests/golden/insert whose command inserts adapters: the inserted model folds
/// back to the original's operators and parameters (as in the inverse law), fold(ins) computes
/// what ins computes (ONNX Runtime), and onnx.checker accepts both. A case may say
/// `# folds-back: no` (fold --strict must refuse, exit 3) or `# folds-back: outputs` (only the
/// outputs are compared, e.g. a tied table PiSSA cloned). PiSSA cases must also compute what
/// the original computes.
#[test]
fn golden_inserts_fold_back() {
    let Some(py) = python("golden inserts fold back") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = repo().join("tests/golden/insert");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnxtxt"))
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let mut files = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let name = file_stem(case);
        let text = std::fs::read_to_string(case).unwrap();
        let directive = |key: &str| {
            text.lines()
                .take_while(|l| l.starts_with('#'))
                .find_map(|l| l.trim_start_matches('#').trim().strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let Some(command) = directive("command:") else {
            continue;
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        if words.first() != Some(&"insert") || words.contains(&"--dry-run") {
            continue;
        }
        let mode = directive("folds-back:").unwrap_or_else(|| "counts".into());
        let ins = tmp.path().join(format!("{name}.ins.onnx"));
        let report = tmp.path().join(format!("{name}.json"));
        let mut a: Vec<String> = words[1..].iter().map(|w| w.to_string()).collect();
        a.insert(0, s(case).to_string());
        a.insert(0, "insert".into());
        a.extend([
            "-o".into(),
            s(&ins).into(),
            "--report".into(),
            format!("json={}", report.display()),
        ]);
        let o = graft_owned(&a);
        if !o.status.success() {
            // Error cases pin their message in the golden; nothing to fold.
            let expected =
                std::fs::read_to_string(case.with_extension("expected")).unwrap_or_default();
            if !expected.contains("# exit ") {
                failures.push(format!("{name}: insert failed: {}", stderr(&o)));
            }
            continue;
        }
        checked += 1;
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let folded = tmp.path().join(format!("{name}.fold.onnx"));
        if mode.starts_with("no") {
            let o = run_graft(&["fold", s(&ins), "-o", s(&folded), "--strict"]);
            if o.status.code() != Some(3) {
                failures.push(format!(
                    "{name}: fold --strict should refuse (exit 3), got {:?}",
                    o.status.code()
                ));
            }
            files.push(ins);
            continue;
        }
        if let Err(why) = fold(&ins, &folded, &[]) {
            failures.push(format!("{name}: {why}"));
            continue;
        }
        if mode.starts_with("counts") {
            let base = tmp.path().join(format!("{name}.base.onnx"));
            match fold(case, &base, &[]) {
                Ok(()) => {
                    let linear = command.contains("--adapter linear");
                    if let Err(why) = law_counts(&counts(&base), &counts(&folded), &report, linear)
                    {
                        failures.push(format!("{name}: fold(ins) vs fold(M): {why}"));
                    }
                }
                Err(why) => failures.push(format!("{name}: folding the case itself: {why}")),
            }
        }
        jobs.push(job(&ins, &folded, None, 1e-4, false));
        if command.contains("pissa") {
            let original = tmp.path().join(format!("{name}.orig.onnx"));
            let o = run_graft(&["convert", s(case), "-o", s(&original)]);
            assert!(o.status.success(), "{}", stderr(&o));
            jobs.push(job(&original, &ins, None, 1e-5, false));
        }
        files.push(ins);
        files.push(folded);
    }
    for cmp in compare_many(&py, tmp.path(), &jobs) {
        if cmp["ok"] != true {
            failures.push(format!("ONNX Runtime: {cmp}"));
        }
    }
    failures.extend(checker_failures(&py, &files));
    assert!(checked >= 12, "only {checked} golden inserts ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Small reproductions of what the inverse law found (each a fold that fails on an insert).

/// An IA3 vector on GPT-2's attention output projection (dynamo export: Gemm on 2-D rows,
/// Reshape back, residual Add): fold must still produce a runnable model.
#[test]
fn fold_after_ia3_on_gpt2_dynamo_attention_projection() {
    let tmp = tempfile::tempdir().unwrap();
    let e = export("gpt2_base.dynamo");
    let ins = tmp.path().join("ins.onnx");
    insert_ok(
        &e.model,
        &ins,
        &["--adapter", "ia3", "--target", "h.0.attn.c_proj"],
    );
    let r = fold(&ins, &tmp.path().join("f.onnx"), &[]);
    assert!(r.is_ok(), "{r:?}");
}

/// A random LoRA on the classifier head after nn.MultiheadAttention (mha_lora, TorchScript).
#[test]
fn fold_after_lora_on_the_head_of_mha_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let e = export("mha_lora.ts");
    let ins = tmp.path().join("ins.onnx");
    insert_ok(
        &e.model,
        &ins,
        &[
            "--adapter",
            "lora",
            "--target",
            "head",
            "--init",
            "random:3",
        ],
    );
    let r = fold(&ins, &tmp.path().join("f.onnx"), &[]);
    assert!(r.is_ok(), "{r:?}");
}

/// Linear adapters after ResLoRA's fc_in of block 1 and after its input-shortcut LoRA B
/// (/MatMul_5): both feed one Add.
#[test]
fn fold_after_linear_adapters_on_a_reslora_shortcut() {
    let tmp = tempfile::tempdir().unwrap();
    let e = export("reslora_is.ts");
    let ins = tmp.path().join("ins.onnx");
    insert_ok(
        &e.model,
        &ins,
        &[
            "--adapter",
            "linear",
            "--target",
            "re:fc_in_1|/MatMul_5",
            "--init",
            "random:3",
        ],
    );
    let r = fold(&ins, &tmp.path().join("f.onnx"), &[]);
    assert!(r.is_ok(), "{r:?}");
}

/// A LoRA on the A factor of conv_lora_reflect's own (reflect-padded, so unfoldable) conv LoRA
/// (dynamo export): fold merges the factors into one kernel stored under lora_A's name with
/// another shape; the file must still pass onnx.checker (its declared types must follow).
#[test]
fn fold_after_lora_on_a_conv_lora_factor_passes_the_checker() {
    let Some(py) = python("conv LoRA factor fold") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let e = export("conv_lora_reflect.dynamo");
    let ins = tmp.path().join("ins.onnx");
    let folded = tmp.path().join("f.onnx");
    insert_ok(
        &e.model,
        &ins,
        &[
            "--adapter",
            "lora",
            "--target",
            r"re:.*conv1\.lora_A.*",
            "--init",
            "random:11",
        ],
    );
    fold(&ins, &folded, &[]).unwrap();
    let bad = checker_failures(&py, &[ins, folded]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
