//! Conformance of the WGSL backend (`graft::codegen` + `graft::runtime` on wgpu) against the ONNX
//! backend node tests, for every op the backend claims (`graft::codegen::kernel_ops` and the
//! compile-time ops). Each data set is compiled for its inputs and run on the GPU; outputs must
//! meet ONNX's criterion. A claimed op in a form the backend refuses at compile time (an element
//! type without GPU storage, a mode without a kernel) counts as unsupported: it is an error
//! naming the op and node, never a wrong answer.
//!
//! - `GRAFT_CONFORMANCE_FILTER=<substring>`: run only tests whose name contains it.
//!
//! Prints passed/failed/unsupported counts. Tests listed in `KNOWN_GAPS` may fail (each with its
//! reason) and must still fail, so the list stays honest.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::node_tests::{data_dir, data_sets, read_tensor, test_names};
use graft::codegen::{COMPILE_TIME_OPS, CompileOptions, kernel_ops};
use graft::eval::TensorValue;

/// Tests that may fail, with the reason.
const KNOWN_GAPS: &[(&[&str], &str)] = &[];

enum Outcome {
    Pass,
    Fail(String),
    Unsupported(String),
}

/// ONNX's criterion with a tight absolute tolerance; float16/bfloat16 results are computed in
/// f32 and rounded once at the end.
fn close(name: &str, got: &TensorValue, want: &TensorValue) -> Result<(), String> {
    common::node_tests::compare(name, got, want, 1e-5, &|dtype| match dtype {
        16 => 1.0 / 64.0,
        10 => 2e-3,
        _ => 1e-3,
    })
}

fn run_case(gpu: &graft::runtime::Gpu, dir: &Path, claimed: &[&str]) -> Outcome {
    let model = match graft::onnx::load_model(&dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => return Outcome::Unsupported(format!("load: {e}")),
    };
    let g = &model.graph;
    for id in g.node_ids() {
        let n = g.node(id);
        if !(n.domain.is_empty() || n.domain == "ai.onnx") || !claimed.contains(&n.op_type.as_str())
        {
            return Outcome::Unsupported(format!("op {}", n.op_type));
        }
    }
    let sets = data_sets(dir);
    if sets.is_empty() {
        return Outcome::Unsupported("no test data".into());
    }
    let in_names: Vec<String> = g
        .inputs
        .iter()
        .filter(|p| g.value(p.value).initializer.is_none())
        .map(|p| g.value(p.value).name.clone())
        .collect();
    let out_names: Vec<String> = g
        .outputs
        .iter()
        .map(|p| g.value(p.value).name.clone())
        .collect();
    for set in sets {
        let mut inputs = Vec::new();
        for (j, name) in in_names.iter().enumerate() {
            let p = set.join(format!("input_{j}.pb"));
            if !p.exists() {
                continue;
            }
            match read_tensor(&p) {
                Ok(t) => inputs.push((name.clone(), t)),
                Err(e) => return Outcome::Fail(format!("input {j}: {e}")),
            }
        }
        let got = match common::run_on_gpu(gpu, &model, &inputs, CompileOptions::default()) {
            Ok(g) => g,
            Err(graft::Error::Compile(m))
                if m.contains("not supported by the WGSL backend")
                    || m.contains("no GPU storage") =>
            {
                return Outcome::Unsupported(m);
            }
            Err(e) => return Outcome::Fail(e.to_string()),
        };
        for (j, name) in out_names.iter().enumerate() {
            let p = set.join(format!("output_{j}.pb"));
            if !p.exists() {
                continue;
            }
            let want = match read_tensor(&p) {
                Ok(t) => t,
                Err(e) => return Outcome::Fail(format!("expected output {j}: {e}")),
            };
            let Some((_, have)) = got.iter().find(|(n, _)| n == name) else {
                return Outcome::Fail(format!("output '{name}' missing"));
            };
            if let Err(e) = close(name, have, &want) {
                return Outcome::Fail(e);
            }
        }
    }
    Outcome::Pass
}

#[test]
fn onnx_node_tests_on_wgpu() {
    let Some(gpu) = common::gpu("gpu conformance") else {
        return;
    };
    let dir = match data_dir() {
        Ok(d) => d,
        Err(why) => {
            if common::in_ci() {
                panic!("gpu conformance needs the ONNX node tests under CI: {why}");
            }
            eprintln!("SKIPPED gpu conformance: {why}");
            println!("SKIPPED gpu conformance: {why}");
            return;
        }
    };
    let filter = std::env::var("GRAFT_CONFORMANCE_FILTER").unwrap_or_default();
    let names = test_names(&dir, &filter);
    assert!(
        !names.is_empty(),
        "no node tests found in {}",
        dir.display()
    );
    let mut claimed = kernel_ops();
    claimed.extend(COMPILE_TIME_OPS);
    let gap_of = |name: &str| {
        KNOWN_GAPS
            .iter()
            .position(|(pats, _)| pats.iter().any(|p| name.contains(p)))
    };
    let (mut passed, mut unsupported) = (0, 0);
    let mut failures = Vec::new();
    let mut gap_hits = vec![0usize; KNOWN_GAPS.len()];
    let mut gap_passes = vec![0usize; KNOWN_GAPS.len()];
    let mut why_unsupported: BTreeMap<String, usize> = BTreeMap::new();
    for name in &names {
        let gap = gap_of(name);
        match run_case(&gpu, &dir.join(name), &claimed) {
            Outcome::Pass => {
                passed += 1;
                if let Some(g) = gap {
                    gap_passes[g] += 1;
                }
            }
            Outcome::Unsupported(why) => {
                unsupported += 1;
                // the op, or the reason without the node's name
                let key = match why.find("WGSL backend: ") {
                    Some(i) => why[i + 14..].to_string(),
                    None => why.split(':').next().unwrap_or(&why).to_string(),
                };
                *why_unsupported.entry(key).or_default() += 1;
            }
            Outcome::Fail(why) => match gap {
                Some(g) => gap_hits[g] += 1,
                None => failures.push(format!("{name}: {why}")),
            },
        }
    }
    let known: usize = gap_hits.iter().sum();
    println!(
        "gpu conformance: {passed} passed, {} failed, {known} known gaps, {unsupported} unsupported, \
         of {} node tests ({})",
        failures.len(),
        names.len(),
        gpu.describe()
    );
    let mut reasons: Vec<(&String, &usize)> = why_unsupported.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    for (why, n) in reasons.iter().take(20) {
        println!("  unsupported x{n}: {why}");
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    let stale: Vec<&str> = KNOWN_GAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| filter.is_empty() && gap_hits[*i] == 0 && gap_passes[*i] > 0)
        .map(|(_, (_, why))| *why)
        .collect();
    assert!(
        failures.is_empty(),
        "{} node tests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        stale.is_empty(),
        "KNOWN_GAPS entries whose tests all pass: {stale:?}"
    );
    if filter.is_empty() {
        assert!(
            passed >= 950,
            "only {passed} node tests passed (998 when written)"
        );
    }
}
