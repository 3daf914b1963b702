//! `graft apply` on the PEFT adapter folders of the corpus, judged by oracles graft did not write:
//! - ONNX Runtime runs every result and matches PEFT's own outputs (`expected.npz`, computed by
//!   PyTorch on the unmerged PEFT model) and PEFT's `merge_and_unload` export (`merged.*.onnx`);
//! - onnx.checker (full check) accepts every result;
//! - merged results have exactly the base's nodes, operators and parameters, `--no-fold` results
//!   carry the adapter nodes and `graft fold` takes them back to the folded base;
//! - weights, error paths and `--base-weights` behave as documented.
//!
//! Everything is driven by models/manifest.json (`peft_adapter`, `peft_adapters`, `extract`).
//! Checks that need the Python oracle are skipped loudly outside CI when its venv is missing;
//! the structural checks always run.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const PEFT_PREFIX: &str = "base_model.model.";
const PARAM_SUFFIXES: &[&str] = &[
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_B.bias",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector",
    ".ia3_l",
];

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Module paths of a manifest `tensors` map (`base_model.model.<path>.<param>` keys).
fn peft_modules(tensors: &Value) -> BTreeSet<String> {
    tensors
        .as_object()
        .expect("tensors map")
        .keys()
        .map(|k| {
            let rest = k.strip_prefix(PEFT_PREFIX).unwrap_or(k);
            PARAM_SUFFIXES
                .iter()
                .find_map(|p| rest.strip_suffix(p))
                .unwrap_or_else(|| panic!("manifest key {k} has no known parameter suffix"))
                .to_string()
        })
        .collect()
}

/// `"float32 [4, 32]"` → `[4, 32]`.
fn shape_of(desc: &Value) -> Vec<u64> {
    let d = desc.as_str().expect("tensor description");
    let (_, dims) = d.split_once(' ').expect("dtype [dims]");
    serde_json::from_str(dims).expect("dims list")
}

/// Total element count of a manifest `tensors` map.
fn tensor_elems(tensors: &Value) -> u64 {
    tensors
        .as_object()
        .expect("tensors map")
        .values()
        .map(|d| shape_of(d).iter().product::<u64>())
        .sum()
}

/// `graft apply BASE --peft DIR... EXTRA -o OUT --report json=OUT.report.json`: the process
/// output and the report (when one was written).
fn apply(base: &Path, peft: &[&Path], extra: &[&str], out: &Path) -> (Output, Option<Value>) {
    let mut args: Vec<String> = vec!["apply".into(), s(base).into()];
    for p in peft {
        args.push("--peft".into());
        args.push(s(p).into());
    }
    args.extend(extra.iter().map(|x| x.to_string()));
    run_graft_with_report(&args, out)
}

/// `graft fold IN -o OUT`, which must succeed.
fn fold(model: &Path, out: &Path) {
    let o = run_graft(&["fold", s(model), "-o", s(out)]);
    assert!(
        o.status.success(),
        "graft fold {}: {}",
        model.display(),
        stderr(&o)
    );
}

/// The counts that say whether two models are the same shape of graph.
fn counts(info: &Value) -> Value {
    json!({
        "nodes": info["nodes"],
        "ops": info["ops"],
        "initializers": info["initializers"],
        "parameters": info["parameters"],
    })
}

/// (module, matched_by) pairs of an apply report.
fn applied_modules(report: &Value) -> Vec<(String, String)> {
    report
        .as_array()
        .unwrap_or_else(|| panic!("report is not a list: {report}"))
        .iter()
        .map(|a| {
            (
                a["module"].as_str().expect("module").to_string(),
                a["matched_by"].as_str().expect("matched_by").to_string(),
            )
        })
        .collect()
}

/// Writes `code` to DIR/NAME and runs it with the oracle venv's python; returns its stdout.
fn run_script(py: &Path, dir: &Path, name: &str, code: &str, args: &[&str]) -> String {
    let file = dir.join(name);
    std::fs::write(&file, code).expect("write script");
    let o = Command::new(py)
        .arg(&file)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "{name} {args:?} failed:\n{}",
        stderr(&o)
    );
    stdout(&o)
}

/// One ONNX Runtime job against an expected.npz, with what it must give.
struct NpzJob {
    label: String,
    job: Value,
    must_match: bool,
}

fn npz_job(model: &Path, inputs: &Path, expected: &Path, rtol: f64) -> Value {
    json!({"model": s(model), "inputs": s(inputs), "expected": s(expected), "rtol": rtol})
}

/// Runs the ONNX Runtime jobs and the checker; failures are appended to `failures`.
fn run_oracles(
    py: &Path,
    npz_jobs: &[NpzJob],
    ref_jobs: &[(String, Value)],
    to_check: &[PathBuf],
    failures: &mut Vec<String>,
) {
    if !npz_jobs.is_empty() {
        let jobs: Vec<Value> = npz_jobs.iter().map(|j| j.job.clone()).collect();
        let answers = oracle_batch(py, &["compare-npz", "--many"], &jobs);
        for (j, a) in npz_jobs.iter().zip(&answers) {
            let ok = a["ok"] == true;
            if ok != j.must_match {
                failures.push(format!(
                    "{}: ONNX Runtime against expected.npz {} but should {}: {a}",
                    j.label,
                    if ok { "matches" } else { "differs" },
                    if j.must_match { "match" } else { "differ" }
                ));
            }
        }
    }
    if !ref_jobs.is_empty() {
        let jobs: Vec<Value> = ref_jobs.iter().map(|(_, j)| j.clone()).collect();
        let answers = oracle_batch(py, &["compare-many"], &jobs);
        for ((label, _), a) in ref_jobs.iter().zip(&answers) {
            if a["ok"] != true {
                failures.push(format!(
                    "{label}: ONNX Runtime outputs differ from the reference merge: {a}"
                ));
            }
        }
    }
    if !to_check.is_empty() {
        let mut args = vec!["check"];
        args.extend(to_check.iter().map(|p| s(p)));
        let check = oracle(py, &args);
        for p in to_check {
            if check[s(p)] != "ok" {
                failures.push(format!("{}: onnx.checker: {}", p.display(), check[s(p)]));
            }
        }
    }
}

#[test]
fn every_peft_folder_applies_merged_and_as_branches_and_matches_peft() {
    let py = python("apply: PEFT round trip");
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut npz_jobs = Vec::new();
    let mut ref_jobs = Vec::new();
    let mut to_check = Vec::new();
    let mut folded_bases: HashMap<PathBuf, Value> = HashMap::new();
    let cases: Vec<Value> = manifest_cases()
        .into_iter()
        .filter(|c| c["peft_adapter"].is_object())
        .collect();
    assert!(
        cases.len() >= 7,
        "the manifest lists only {} PEFT folders",
        cases.len()
    );
    let mut applied = 0;
    for case in &cases {
        let name = case["case"].as_str().unwrap();
        let pa = &case["peft_adapter"];
        let adapter = model_file(&pa["dir"]);
        let modules = peft_modules(&pa["tensors"]);
        let adapter_elems = tensor_elems(&pa["tensors"]);
        let files = &case["files"];
        let inputs = model_file(&files["inputs"]);
        let expected = model_file(&files["expected"]);
        for exp in ["ts", "dynamo"] {
            let label = format!("{name}.{exp}");
            let base = model_file(&pa["base_files"][exp]);
            let base_info = inspect_json(&base);

            // Merged (the default).
            let out = tmp.path().join(format!("{label}.merged.onnx"));
            let (o, report) = apply(&base, &[&adapter], &[], &out);
            if !o.status.success() || !out.exists() {
                failures.push(format!(
                    "{label}: apply exited {:?}: {}",
                    o.status.code(),
                    stderr(&o)
                ));
                continue;
            }
            let report = report.unwrap_or_else(|| panic!("{label}: no report"));
            let got: Vec<(String, String)> = applied_modules(&report);
            let got_modules: BTreeSet<String> = got.iter().map(|(m, _)| m.clone()).collect();
            if got.len() != modules.len() || got_modules != modules {
                failures.push(format!(
                    "{label}: applied {got_modules:?}, the folder has {modules:?}"
                ));
            }
            if let Some((m, by)) = got.iter().find(|(_, by)| by != "scope") {
                failures.push(format!("{label}: {m} matched by {by}, expected by scope"));
            }
            // Nothing added: the deltas live in the existing weights. (gpt2_lora's exports do
            // not share the tied embedding: lm_head reads a transposed copy, so nothing needs
            // cloning there; `a_tied_embedding_is_cloned_before_the_merge` covers the clone.)
            let info = inspect_json(&out);
            if counts(&info) != counts(&base_info) {
                failures.push(format!(
                    "{label}: merged result {} differs from the base {}",
                    counts(&info),
                    counts(&base_info)
                ));
            }
            npz_jobs.push(NpzJob {
                label: format!("{label} merged"),
                job: npz_job(&out, &inputs, &expected, 1e-4),
                must_match: true,
            });
            // The adapter must matter: the bare base does not give PEFT's outputs.
            npz_jobs.push(NpzJob {
                label: format!("{label} bare base"),
                job: npz_job(&base, &inputs, &expected, 1e-4),
                must_match: false,
            });
            if let Some(m) = files[format!("merged_{exp}")].as_str() {
                let reference = repo().join("models").join(m);
                ref_jobs.push((
                    format!("{label} merged vs {m}"),
                    json!({"a": s(&reference), "b": s(&out), "inputs": s(&inputs), "rtol": 1e-4}),
                ));
            } else {
                failures.push(format!(
                    "{label}: the manifest has no merged_{exp} reference"
                ));
            }
            to_check.push(out.clone());

            // Branches (--no-fold), then folded back.
            let nf = tmp.path().join(format!("{label}.branches.onnx"));
            let (o, report) = apply(&base, &[&adapter], &["--no-fold"], &nf);
            if !o.status.success() || !nf.exists() {
                failures.push(format!(
                    "{label} --no-fold: apply exited {:?}: {}",
                    o.status.code(),
                    stderr(&o)
                ));
                continue;
            }
            let nf_modules: BTreeSet<String> = applied_modules(&report.expect("report"))
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            if nf_modules != modules {
                failures.push(format!(
                    "{label} --no-fold: applied {nf_modules:?}, the folder has {modules:?}"
                ));
            }
            let nf_info = inspect_json(&nf);
            let (bn, bp) = (
                base_info["nodes"].as_u64().unwrap(),
                base_info["parameters"].as_u64().unwrap(),
            );
            let (nn, np_) = (
                nf_info["nodes"].as_u64().unwrap(),
                nf_info["parameters"].as_u64().unwrap(),
            );
            if nn <= bn || np_ < bp + adapter_elems {
                failures.push(format!(
                    "{label} --no-fold: {nn} nodes / {np_} parameters; the base has {bn} / {bp} \
                     and the adapter {adapter_elems} parameters: the branches are missing"
                ));
            }
            let nf_folded = tmp.path().join(format!("{label}.branches.folded.onnx"));
            fold(&nf, &nf_folded);
            let folded_base = folded_bases.entry(base.clone()).or_insert_with(|| {
                let f = tmp
                    .path()
                    .join(format!("{}.folded.onnx", base.display()).replace('/', "_"));
                fold(&base, &f);
                counts(&inspect_json(&f))
            });
            let back = counts(&inspect_json(&nf_folded));
            if &back != folded_base {
                failures.push(format!(
                    "{label}: --no-fold result folded back to {back}, the folded base is \
                     {folded_base}"
                ));
            }
            for (what, m) in [("branches", &nf), ("branches folded", &nf_folded)] {
                npz_jobs.push(NpzJob {
                    label: format!("{label} {what}"),
                    job: npz_job(m, &inputs, &expected, 1e-4),
                    must_match: true,
                });
                to_check.push(m.clone());
            }
            applied += 1;
        }
    }
    assert!(applied >= 14, "only {applied} exports applied");
    if let Some(py) = &py {
        run_oracles(py, &npz_jobs, &ref_jobs, &to_check, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const TIE_SCRIPT: &str = r#"
# Makes a GPT-2 export whose lm_head reads the token embedding itself (through a Transpose)
# instead of the transposed copy the exporters write: the tied weight is then shared.
import json, sys
import numpy as np
import onnx
from onnx import helper, numpy_helper

src, dst, vocab, dim = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = onnx.load(src)
g = m.graph
inits = {i.name: i for i in g.initializer}
tables = [n.input[0] for n in g.node
          if n.op_type == "Gather" and n.input[0] in inits and list(inits[n.input[0]].dims) == [vocab, dim]]
assert len(tables) == 1, tables
table = tables[0]
e = numpy_helper.to_array(inits[table])
copies = [k for k, i in inits.items()
          if list(i.dims) == [dim, vocab] and np.array_equal(numpy_helper.to_array(i), e.T)]
assert len(copies) == 1, copies
copy = copies[0]
readers = 0
for n in g.node:
    for k, x in enumerate(n.input):
        if x == copy:
            n.input[k] = "tied_table_T"
            readers += 1
assert readers >= 1
keep = [i for i in g.initializer if i.name != copy]
del g.initializer[:]
g.initializer.extend(keep)
g.node.insert(0, helper.make_node("Transpose", [table], ["tied_table_T"], perm=[1, 0],
                                  name="tied_transpose"))
onnx.checker.check_model(m, full_check=True)
onnx.save(m, dst)
print(json.dumps({"table": table, "copy": copy, "readers": readers}))
"#;

#[test]
fn a_tied_embedding_is_cloned_before_the_merge() {
    // PEFT's reference merge of gpt2_lora unties lm_head first: wte gets E + s·(BA)ᵀ, lm_head
    // keeps E. When the ONNX graph really shares E between the lookup and lm_head, graft must
    // clone it: exactly one more initializer of vocab×dim parameters, and PEFT's outputs.
    let Some(py) = python("apply: tied embedding") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let case = manifest_case("gpt2_lora");
    let pa = &case["peft_adapter"];
    let tensors = pa["tensors"].as_object().unwrap();
    let find = |suffix: &str| -> Vec<u64> {
        let (_, d) = tensors
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .unwrap_or_else(|| panic!("gpt2_lora has no {suffix}"));
        shape_of(d)
    };
    let (vocab, dim) = (find(".lora_embedding_A")[1], find(".lora_embedding_B")[0]);
    let adapter = model_file(&pa["dir"]);
    let inputs = model_file(&case["files"]["inputs"]);
    let expected = model_file(&case["files"]["expected"]);
    let mut failures = Vec::new();
    let mut npz_jobs = Vec::new();
    let mut to_check = Vec::new();
    for exp in ["ts", "dynamo"] {
        let base = model_file(&pa["base_files"][exp]);
        let tied = tmp.path().join(format!("tied.{exp}.onnx"));
        run_script(
            &py,
            tmp.path(),
            "tie.py",
            TIE_SCRIPT,
            &[s(&base), s(&tied), &vocab.to_string(), &dim.to_string()],
        );
        let out = tmp.path().join(format!("tied.{exp}.applied.onnx"));
        let (o, _) = apply(&tied, &[&adapter], &[], &out);
        assert!(o.status.success(), "{exp}: {}", stderr(&o));
        let (a, b) = (inspect_json(&tied), inspect_json(&out));
        let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
        if n(&b, "initializers") != n(&a, "initializers") + 1
            || n(&b, "parameters") != n(&a, "parameters") + vocab * dim
            || b["ops"] != a["ops"]
        {
            failures.push(format!(
                "{exp}: tied base {} -> {}; expected one more initializer of {vocab}x{dim} \
                 parameters and the same operators",
                counts(&a),
                counts(&b)
            ));
        }
        npz_jobs.push(NpzJob {
            label: format!("tied {exp}"),
            job: npz_job(&out, &inputs, &expected, 1e-4),
            must_match: true,
        });
        to_check.push(out);
    }
    run_oracles(&py, &npz_jobs, &[], &to_check, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn weighted_adapters_match_the_reference_and_the_weights_matter() {
    let py = python("apply: weighted adapters");
    let tmp = tempfile::tempdir().unwrap();
    let case = manifest_case("bert_multi_peft");
    let list = case["peft_adapters"].as_array().expect("peft_adapters");
    assert_eq!(list.len(), 2);
    let dirs: Vec<PathBuf> = list.iter().map(|a| model_file(&a["dir"])).collect();
    let dir_refs: Vec<&Path> = dirs.iter().map(|p| p.as_path()).collect();
    let weights: Vec<f64> = list.iter().map(|a| a["weight"].as_f64().unwrap()).collect();
    assert_ne!(
        weights[0], weights[1],
        "swapping the weights must change something"
    );
    let csv = |w: &[f64]| {
        w.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut swapped = weights.clone();
    swapped.reverse();
    let inputs = model_file(&case["files"]["inputs"]);
    let expected = model_file(&case["files"]["expected"]);
    let mut npz_jobs = Vec::new();
    let mut ref_jobs = Vec::new();
    let mut to_check = Vec::new();
    for exp in ["ts", "dynamo"] {
        let base = model_file(&list[0]["base_files"][exp]);
        assert!(
            list.iter()
                .all(|a| model_file(&a["base_files"][exp]) == base),
            "both folders have the same base"
        );
        let out = tmp.path().join(format!("multi.{exp}.onnx"));
        let (o, report) = apply(&base, &dir_refs, &["--weights", &csv(&weights)], &out);
        assert!(o.status.success(), "{exp}: {}", stderr(&o));
        // Every module of every folder is applied once, with its folder's weight.
        let report = report.expect("report");
        let mut want: Vec<(String, f64)> = Vec::new();
        for (a, w) in list.iter().zip(&weights) {
            want.extend(peft_modules(&a["tensors"]).into_iter().map(|m| (m, *w)));
        }
        let mut got: Vec<(String, f64)> = report
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["module"].as_str().unwrap().to_string(),
                    a["weight"].as_f64().unwrap(),
                )
            })
            .collect();
        want.sort_by(|a, b| a.partial_cmp(b).unwrap());
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(got, want, "{exp}: applied modules and weights");
        assert_eq!(
            counts(&inspect_json(&out)),
            counts(&inspect_json(&base)),
            "{exp}: the merge adds nothing"
        );

        let wrong = tmp.path().join(format!("multi.{exp}.swapped.onnx"));
        let (o, _) = apply(&base, &dir_refs, &["--weights", &csv(&swapped)], &wrong);
        assert!(o.status.success(), "{exp} swapped: {}", stderr(&o));
        let branches = tmp.path().join(format!("multi.{exp}.branches.onnx"));
        let (o, _) = apply(
            &base,
            &dir_refs,
            &["--weights", &csv(&weights), "--no-fold"],
            &branches,
        );
        assert!(o.status.success(), "{exp} --no-fold: {}", stderr(&o));

        for (what, m, must) in [
            ("weighted", &out, true),
            ("weighted branches", &branches, true),
            ("swapped weights", &wrong, false),
        ] {
            npz_jobs.push(NpzJob {
                label: format!("{exp} {what}"),
                job: npz_job(m, &inputs, &expected, 1e-4),
                must_match: must,
            });
        }
        let reference = model_file(&case["files"][format!("merged_{exp}")]);
        ref_jobs.push((
            format!("{exp} weighted vs {}", reference.display()),
            json!({"a": s(&reference), "b": s(&out), "inputs": s(&inputs), "rtol": 1e-4}),
        ));
        to_check.extend([out, branches]);
    }

    // One weight for two folders is a usage error, and nothing is written.
    let base = model_file(&list[0]["base_files"]["ts"]);
    let out = tmp.path().join("one_weight.onnx");
    let (o, _) = apply(&base, &dir_refs, &["--weights", "1"], &out);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--weights"), "{}", stderr(&o));
    assert!(!out.exists());

    // Linearity: one folder twice at half weight is the folder once, and weight -1 on top of
    // weight 1 gives the base back.
    let lora = manifest_case("bert_lora");
    let lora_dir = model_file(&lora["peft_adapter"]["dir"]);
    let lora_base = model_file(&lora["peft_adapter"]["base_files"]["ts"]);
    let lora_inputs = model_file(&lora["files"]["inputs"]);
    let halves = tmp.path().join("halves.onnx");
    let (o, _) = apply(
        &lora_base,
        &[&lora_dir, &lora_dir],
        &["--weights", "0.5,0.5"],
        &halves,
    );
    assert!(o.status.success(), "halves: {}", stderr(&o));
    npz_jobs.push(NpzJob {
        label: "bert_lora twice at 0.5".into(),
        job: npz_job(
            &halves,
            &lora_inputs,
            &model_file(&lora["files"]["expected"]),
            1e-4,
        ),
        must_match: true,
    });
    let minus = tmp.path().join("minus.onnx");
    let (o, _) = apply(&lora_base, &[&lora_dir], &["--weights=-1"], &minus);
    assert!(o.status.success(), "weight -1: {}", stderr(&o));
    let undone = tmp.path().join("undone.onnx");
    let (o, _) = apply(&minus, &[&lora_dir], &[], &undone);
    assert!(o.status.success(), "weight 1 after -1: {}", stderr(&o));
    ref_jobs.push((
        "bert_lora at -1 then 1 vs the base".into(),
        json!({"a": s(&lora_base), "b": s(&undone), "inputs": s(&lora_inputs), "rtol": 1e-5}),
    ));

    if let Some(py) = &py {
        let mut failures = Vec::new();
        run_oracles(py, &npz_jobs, &ref_jobs, &to_check, &mut failures);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// Copies a PEFT folder to `dst` and adds a tensor under `key` to its safetensors file.
fn copy_with_extra_key(src: &Path, dst: &Path, key: &str) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let first = tensors[0].1.clone();
    tensors.push((key.to_string(), first));
    let data = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(dst.join("adapter_model.safetensors"), data).unwrap();
}

#[test]
fn errors_name_the_problem_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bert_lora = manifest_case("bert_lora");
    let bert_base = model_file(&bert_lora["peft_adapter"]["base_files"]["ts"]);
    let lora = model_file(&bert_lora["peft_adapter"]["dir"]);
    let gpt2 = manifest_case("gpt2_lora");
    let gpt2_adapter = model_file(&gpt2["peft_adapter"]["dir"]);
    let gpt2_modules = peft_modules(&gpt2["peft_adapter"]["tensors"]);
    let dora = model_file(&manifest_case("bert_dora")["peft_adapter"]["dir"]);
    let ia3 = model_file(&manifest_case("bert_ia3")["peft_adapter"]["dir"]);
    let missing = tmp.path().join("no_such_adapter");
    let bad_key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.wieght";
    let typo = tmp.path().join("typo_adapter");
    copy_with_extra_key(&lora, &typo, bad_key);
    // The copy is a valid adapter but for that key.
    {
        let ok_copy = tmp.path().join("clean_copy");
        std::fs::create_dir_all(&ok_copy).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(lora.join(f), ok_copy.join(f)).unwrap();
        }
        let (o, _) = apply(
            &bert_base,
            &[&ok_copy],
            &["--no-verify"],
            &tmp.path().join("ok.onnx"),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }

    let gpt2_must: Vec<&str> = gpt2_modules.iter().map(|m| m.as_str()).collect();
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<&Path>, Vec<&str>, &[i32], Vec<&str>)> = vec![
        (
            "GPT-2 folder on the BERT base",
            vec![&gpt2_adapter],
            vec![],
            &[2],
            gpt2_must.clone(),
        ),
        (
            "missing folder",
            vec![&missing],
            vec![],
            &[1, 2],
            vec![s(&missing)],
        ),
        (
            "unknown safetensors key",
            vec![&typo],
            vec![],
            &[1, 2],
            vec![bad_key],
        ),
        (
            "DoRA with a weight",
            vec![&dora],
            vec!["--weights", "0.5"],
            &[2],
            vec!["DoRA"],
        ),
        (
            "IA3 with a weight",
            vec![&ia3],
            vec!["--weights", "0.5"],
            &[2],
            vec!["IA3"],
        ),
        (
            "two weights for one folder",
            vec![&lora],
            vec!["--weights", "0.5,0.5"],
            &[2],
            vec!["--weights"],
        ),
        (
            "a weight that is not a number",
            vec![&lora],
            vec!["--weights", "nan"],
            &[2],
            vec!["--weights"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, peft, extra, codes, must)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("err{i}.onnx"));
        let (o, report) = apply(&bert_base, peft, extra, &out);
        let code = o.status.code().unwrap_or(-1);
        let err = stderr(&o);
        if !codes.contains(&code) {
            failures.push(format!("{what}: exit {code}, expected {codes:?}: {err}"));
        }
        for m in must {
            if !err.contains(m) {
                failures.push(format!("{what}: the message does not name {m}: {err}"));
            }
        }
        if out.exists() || report.is_some() {
            failures.push(format!("{what}: something was written"));
        }
        if err.contains("panicked") {
            failures.push(format!("{what}: panic: {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const STRIP_SCRIPT: &str = r#"
# Writes the Linear weights of an export in PyTorch layout ([out, in]) to an npz, keyed by the
# parameter names the manifest gives for its initializers; then (unless DST is "-") a copy of the
# export with every scope gone: nodes renamed n0, n1, ..., node metadata_props cleared,
# initializers renamed w0, w1, ... and intermediate values v0, v1, ...
import json, sys
import numpy as np
import onnx
from onnx import numpy_helper

src, dst, mapping_file, npz = sys.argv[1:5]
with open(mapping_file) as f:
    mapping = json.load(f)  # initializer name -> "param" or "param (transposed)"
m = onnx.load(src)
g = m.graph
weights = {}
for i in g.initializer:
    if i.name in mapping:
        a = numpy_helper.to_array(i)
        p = mapping[i.name]
        if p.endswith(" (transposed)"):
            a = a.T
            p = p[: -len(" (transposed)")]
        weights[p] = np.ascontiguousarray(a, dtype=np.float32)
assert len(weights) == len(mapping), (sorted(weights), sorted(mapping))
np.savez(npz, **weights)
if dst != "-":
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    rename = {i.name: f"w{k}" for k, i in enumerate(g.initializer)}
    k = 0
    for n in g.node:
        for o in n.output:
            if o and o not in keep and o not in rename:
                rename[o] = f"v{k}"
                k += 1
    for i in g.initializer:
        i.name = rename[i.name]
    for k, n in enumerate(g.node):
        n.name = f"n{k}"
        del n.metadata_props[:]
        for j, x in enumerate(n.input):
            if x in rename:
                n.input[j] = rename[x]
        for j, x in enumerate(n.output):
            if x in rename:
                n.output[j] = rename[x]
    for v in g.value_info:
        if v.name in rename:
            v.name = rename[v.name]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, dst)
print(json.dumps(sorted(weights)))
"#;

/// Converts an npz of float32 arrays to a safetensors checkpoint, each key prefixed.
fn npz_to_safetensors(npz: &Path, st: &Path, prefix: &str) {
    let mut r = ndarray_npy::NpzReader::new(std::fs::File::open(npz).unwrap()).unwrap();
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for name in r.names().unwrap() {
        let a: ndarray::ArrayD<f32> = r.by_name(&name).unwrap();
        let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(format!("{prefix}{name}"), (a.shape().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, (shape, b))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(st, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn base_weights_find_modules_the_export_lost_the_names_of() {
    // The scope-less export and the base checkpoint are made with the oracle venv's onnx (it has
    // neither torch nor safetensors): the script anonymises the graph and dumps the Linear
    // weights in PyTorch layout to an npz, using the manifest's own initializer → parameter map
    // (bert_full_ft's `graph_vs_base`, which lists every Linear weight of bert_base's exports);
    // Rust turns the npz into safetensors with the `safetensors` crate.
    let Some(py) = python("apply: --base-weights") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let lora = manifest_case("bert_lora");
    let pa = &lora["peft_adapter"];
    let adapter = model_file(&pa["dir"]);
    let modules = peft_modules(&pa["tensors"]);
    let inputs = model_file(&lora["files"]["inputs"]);
    let expected = model_file(&lora["files"]["expected"]);
    let ft = manifest_case("bert_full_ft");
    let mut failures = Vec::new();
    let mut npz_jobs = Vec::new();
    let mut ref_jobs = Vec::new();
    let mut to_check = Vec::new();
    for (exp, prefix) in [("ts", ""), ("dynamo", "bert.")] {
        let base = model_file(&pa["base_files"][exp]);
        let gvb = &ft["extract"]["graph_vs_base"][format!("unmerged_{exp}")];
        assert_eq!(
            model_file(&gvb["base_file"]),
            base,
            "the map is for this base"
        );
        let mapping = tmp.path().join(format!("map.{exp}.json"));
        std::fs::write(&mapping, gvb["changed_initializers"].to_string()).unwrap();
        let stripped = tmp.path().join(format!("stripped.{exp}.onnx"));
        let npz = tmp.path().join(format!("base.{exp}.npz"));
        run_script(
            &py,
            tmp.path(),
            "strip.py",
            STRIP_SCRIPT,
            &[s(&base), s(&stripped), s(&mapping), s(&npz)],
        );
        let ckpt = tmp.path().join(format!("base.{exp}.safetensors"));
        npz_to_safetensors(&npz, &ckpt, prefix);
        // The fine-tuned model's weights: a checkpoint of other weights matches nothing.
        let other_npz = tmp.path().join(format!("tuned.{exp}.npz"));
        run_script(
            &py,
            tmp.path(),
            "strip.py",
            STRIP_SCRIPT,
            &[
                s(&model_file(&ft["files"][format!("unmerged_{exp}")])),
                "-",
                s(&mapping),
                s(&other_npz),
            ],
        );
        let other = tmp.path().join(format!("tuned.{exp}.safetensors"));
        npz_to_safetensors(&other_npz, &other, prefix);

        // Without --base-weights: refused, naming the modules and the option.
        let out = tmp.path().join(format!("no_names.{exp}.onnx"));
        let (o, _) = apply(&stripped, &[&adapter], &[], &out);
        let err = stderr(&o);
        if o.status.code() != Some(2) || !err.contains("--base-weights") || out.exists() {
            failures.push(format!(
                "{exp}: without --base-weights: exit {:?}, wrote {}: {err}",
                o.status.code(),
                out.exists()
            ));
        }
        for m in &modules {
            if !err.contains(m.as_str()) {
                failures.push(format!("{exp}: the message does not name {m}: {err}"));
            }
        }
        // With the wrong checkpoint: still refused.
        let (o, _) = apply(&stripped, &[&adapter], &["--base-weights", s(&other)], &out);
        if o.status.success() || out.exists() {
            failures.push(format!(
                "{exp}: another model's weights were accepted as the base: {}",
                stderr(&o)
            ));
        }
        // With the base checkpoint: every module is found by value.
        let (o, report) = apply(&stripped, &[&adapter], &["--base-weights", s(&ckpt)], &out);
        if !o.status.success() {
            failures.push(format!("{exp}: with --base-weights: {}", stderr(&o)));
            continue;
        }
        let got = applied_modules(&report.expect("report"));
        let got_modules: BTreeSet<String> = got.iter().map(|(m, _)| m.clone()).collect();
        if got_modules != modules || got.iter().any(|(_, by)| by != "base-weights") {
            failures.push(format!(
                "{exp}: applied {got:?}, expected {modules:?} by base-weights"
            ));
        }
        if counts(&inspect_json(&out)) != counts(&inspect_json(&stripped)) {
            failures.push(format!("{exp}: the merge changed the graph's counts"));
        }
        npz_jobs.push(NpzJob {
            label: format!("{exp} by base weights"),
            job: npz_job(&out, &inputs, &expected, 1e-4),
            must_match: true,
        });
        let reference = model_file(&lora["files"][format!("merged_{exp}")]);
        ref_jobs.push((
            format!("{exp} by base weights vs {}", reference.display()),
            json!({"a": s(&reference), "b": s(&out), "inputs": s(&inputs), "rtol": 1e-4}),
        ));
        // The anonymised base still computes the base.
        ref_jobs.push((
            format!("{exp} anonymised base"),
            json!({"a": s(&base), "b": s(&stripped), "inputs": s(&inputs), "exact": true}),
        ));
        to_check.push(out);
    }
    run_oracles(&py, &npz_jobs, &ref_jobs, &to_check, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn report_json_on_standard_output_is_only_json() {
    // `--report json` (no file) writes the report to standard output (`--help`: "`json` to
    // standard output, or `json=FILE`"), as `graft fold` does: standard output must then be that
    // JSON alone, the same as the file `--report json=FILE` gets, so that it can be piped.
    let tmp = tempfile::tempdir().unwrap();
    let lora = manifest_case("bert_lora");
    let base = model_file(&lora["peft_adapter"]["base_files"]["ts"]);
    let adapter = model_file(&lora["peft_adapter"]["dir"]);
    let out = tmp.path().join("out.onnx");
    let (o, file_report) = apply(&base, &[&adapter], &[], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let file_report = file_report.expect("report file");
    let o = run_graft(&[
        "apply",
        s(&base),
        "--peft",
        s(&adapter),
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
            "`graft apply --report json`: standard output is not JSON ({e}):\n{}",
            stdout(&o)
        ),
    }
}
