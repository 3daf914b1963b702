//! `graft run`: run a model or a compiled plan on wgpu (or the CPU evaluator), write outputs as
//! .npy, compare with the CPU evaluator or with stored expected outputs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use graft::codegen::{Compiled, plan::Specialisation};
use graft::eval::TensorValue;
use graft::runtime::{Executable, Gpu};

pub const AFTER_HELP: &str = "Examples:
  graft run models/bert_base/unmerged.ts.onnx --inputs models/bert_base/inputs.npz --compare cpu
  graft run out/bert --input input_ids=ids.npy --input attention_mask=mask.npy --output-dir out/y
  graft run model.onnx --inputs x.npz --backend cpu --output-dir y_cpu
  graft run onnx/backend/test/data/node/test_add           # ONNX backend test layout

TARGET is an ONNX model, a plan folder from `graft compile --emit-wgsl`, or a folder in the
ONNX backend test layout (model.onnx and test_data_set_N/input_*.pb, output_*.pb); for the last,
every data set runs and is compared with its stored outputs (|got - want| <= 1e-7 + 1e-3 |want|,
ONNX's own criterion), and the exit code is 1 if any differs.

Plans are specialised for shapes (and for the values of inputs that decide shapes). Running a
model compiles it for the given inputs and caches the plan (--cache-dir, default
$XDG_CACHE_HOME/graft or ~/.cache/graft); a cached plan is reused only when its specialisation
matches. A plan folder run with other shapes is recompiled from the model it records, if that
file is unchanged; otherwise it is an error. Outputs are written as OUT/<output name>.npy, with
characters a file name cannot hold replaced by '_'.";

#[derive(clap::Args)]
pub struct Args {
    /// An ONNX model, a plan folder or an ONNX backend test folder.
    pub target: PathBuf,
    /// An input as NAME=FILE.npy (repeatable).
    #[arg(long, value_name = "NAME=FILE.npy")]
    pub input: Vec<String>,
    /// Inputs from an .npz file (arrays named after the model's inputs).
    #[arg(long, value_name = "NPZ")]
    pub inputs: Option<PathBuf>,
    /// Write each output to DIR/<output name>.npy.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_name = "gpu|cpu", default_value = "gpu")]
    pub backend: String,
    /// Also run on the CPU evaluator and print each output's max abs and relative error.
    #[arg(long, value_name = "cpu")]
    pub compare: Option<String>,
    /// Relative (Frobenius) error allowed by --compare (default 1e-4 for f32).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Also time N runs after a warm-up (GPU: dispatches only, inputs already uploaded; CPU:
    /// the evaluator) and print the median latency as one JSON line.
    #[arg(long, value_name = "N")]
    pub time: Option<usize>,
    /// Plan cache folder.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile afresh and do not store the plan.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub lowering: super::compile::LoweringArgs,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.backend != "gpu" && a.backend != "cpu" {
        return Err(
            graft::Error::Usage(format!("--backend {}: choose gpu or cpu", a.backend)).into(),
        );
    }
    if let Some(c) = &a.compare
        && c != "cpu"
    {
        return Err(graft::Error::Usage(format!("--compare {c}: the only choice is cpu")).into());
    }
    if a.target.join("model.onnx").is_file() && has_data_sets(&a.target) {
        return run_backend_test(&a);
    }
    // a plan folder (with its weights) is read once
    let plan = if a.target.join("plan.json").is_file() {
        Some(graft::codegen::read_dir(&a.target)?)
    } else {
        None
    };
    let model_path = match &plan {
        Some(c) => PathBuf::from(&c.plan.source.path),
        None => a.target.clone(),
    };
    let inputs = if let Some(c) = &plan {
        let mut names: Vec<(String, i32)> = c
            .plan
            .inputs
            .iter()
            .map(|p| (p.name.clone(), graft::runtime::dtype_code(&p.dtype)))
            .collect();
        // inputs whose values the plan is specialised on are given too
        for name in c.plan.specialised_for.input_values.keys() {
            if !names.iter().any(|(n, _)| n == name) {
                names.push((name.clone(), graft::ir::dtype::code::INT64));
            }
        }
        gather_inputs(&a, &names)?
    } else {
        let model = super::compile::load(&a.target, false)?;
        gather_inputs(&a, &model_inputs(&model))?
    };
    let outputs = if a.backend == "cpu" {
        let model = super::compile::load(&model_path, a.lowering.fold)?;
        let out = graft::verify::run(&model, &inputs)?;
        if let Some(n) = a.time {
            let mut t = Vec::new();
            for _ in 0..n {
                let start = std::time::Instant::now();
                graft::verify::run(&model, &inputs)?;
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
            print_timing("cpu-evaluator", &t);
        }
        out
    } else {
        let compiled = if let Some(c) = plan {
            match mismatch(&c.plan.specialised_for, &inputs) {
                None => c,
                Some(why) => {
                    let src = &c.plan.source;
                    let meta = std::fs::metadata(&src.path).ok();
                    let unchanged = meta.as_ref().is_some_and(|m| {
                        m.len() == src.bytes
                            && m.modified()
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map(|d| d.as_secs())
                                == Some(src.modified_unix_s)
                    });
                    if !unchanged {
                        return Err(graft::Error::Usage(format!(
                            "{}: the plan does not fit these inputs ({why}) and its model {} \
                             is missing or changed; compile it again",
                            a.target.display(),
                            src.path
                        ))
                        .into());
                    }
                    eprintln!(
                        "note: the plan does not fit these inputs ({why}); recompiling {}",
                        src.path
                    );
                    compile_cached(&a, Path::new(&src.path), &inputs)?
                }
            }
        } else {
            compile_cached(&a, &a.target, &inputs)?
        };
        run_gpu_timed(&compiled, &inputs, a.time)?
    };
    let mut code = 0;
    if a.compare.is_some() {
        let model = super::compile::load(&model_path, a.lowering.fold)?;
        let reference =
            graft::verify::run(&model, &inputs).context("running on the CPU evaluator")?;
        let diffs = graft::verify::compare(&reference, &outputs, a.tolerance)?;
        let mut o = String::new();
        for d in &diffs {
            outln!(
                o,
                "{}: max abs error {:.3e}, relative error {:.3e} (tolerance {:.0e}) {}",
                d.name,
                d.max_abs,
                d.rel_fro,
                d.tolerance,
                if d.ok { "ok" } else { "FAILED" }
            );
        }
        super::emit(&o);
        if diffs.iter().any(|d| !d.ok) {
            eprintln!(
                "error: {} differs from the CPU evaluator beyond the tolerance",
                a.backend
            );
            code = 1;
        }
    } else {
        let mut o = String::new();
        for (name, t) in &outputs {
            outln!(
                o,
                "{name}: {} {:?}",
                graft::runtime::dtype_plan_name(t.data_type()),
                t.shape()
            );
        }
        super::emit(&o);
    }
    if let Some(dir) = &a.output_dir {
        write_outputs(dir, &outputs)?;
    }
    Ok(code)
}

fn model_inputs(model: &graft::ir::Model) -> Vec<(String, i32)> {
    let g = &model.graph;
    g.inputs
        .iter()
        .filter(|p| g.value(p.value).initializer.is_none())
        .map(|p| {
            let dt = p
                .info
                .type_
                .as_ref()
                .and_then(|t| match &t.value {
                    Some(onnx_protobuf::type_proto::Value::TensorType(tt)) => Some(tt.elem_type),
                    _ => None,
                })
                .unwrap_or(0);
            (g.value(p.value).name.clone(), dt)
        })
        .collect()
}

/// Inputs from --input and --inputs; every required input must be given.
fn gather_inputs(a: &Args, names: &[(String, i32)]) -> anyhow::Result<Vec<(String, TensorValue)>> {
    let mut out: Vec<(String, TensorValue)> = Vec::new();
    if let Some(p) = &a.inputs {
        let shapes: Vec<(String, i32, Vec<i64>)> =
            names.iter().map(|(n, d)| (n.clone(), *d, vec![])).collect();
        out = graft::verify::npz_inputs(p, &shapes)?;
    }
    for spec in &a.input {
        let (name, file) = spec.split_once('=').ok_or_else(|| {
            graft::Error::Usage(format!("--input {spec}: expected NAME=FILE.npy"))
        })?;
        if !names.iter().any(|(n, _)| n == name) {
            return Err(graft::Error::Usage(format!(
                "--input {name}: the model has no input of that name (it takes {})",
                names
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        let t = read_npy(Path::new(file))?;
        out.retain(|(n, _)| n != name);
        out.push((name.to_string(), t));
    }
    for (n, _) in names {
        if !out.iter().any(|(m, _)| m == n) {
            return Err(graft::Error::Usage(format!(
                "input '{n}' was not given (use --input {n}=FILE.npy or --inputs FILE.npz)"
            ))
            .into());
        }
    }
    Ok(out)
}

/// Reads a .npy file of any type `graft` handles.
pub fn read_npy(path: &Path) -> anyhow::Result<TensorValue> {
    use ndarray::ArrayD;
    use ndarray_npy::read_npy;
    let head = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| graft::Error::io(path, e))?;
        let mut buf = vec![0u8; 256];
        let n = f.read(&mut buf).map_err(|e| graft::Error::io(path, e))?;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let descr = head
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.split('\'').nth(1))
        .ok_or_else(|| graft::Error::bad_model(path, "not a .npy file"))?
        .to_string();
    let bad = |e: ndarray_npy::ReadNpyError| graft::Error::bad_model(path, e.to_string());
    Ok(match descr.as_str() {
        "<f4" => TensorValue::F32(read_npy::<_, ArrayD<f32>>(path).map_err(bad)?),
        "<f8" => TensorValue::F64(read_npy::<_, ArrayD<f64>>(path).map_err(bad)?),
        "<i8" => TensorValue::I64(read_npy::<_, ArrayD<i64>>(path).map_err(bad)?),
        "<i4" => TensorValue::I32(read_npy::<_, ArrayD<i32>>(path).map_err(bad)?),
        "<i2" => TensorValue::I16(read_npy::<_, ArrayD<i16>>(path).map_err(bad)?),
        "|i1" => TensorValue::I8(read_npy::<_, ArrayD<i8>>(path).map_err(bad)?),
        "|u1" => TensorValue::U8(read_npy::<_, ArrayD<u8>>(path).map_err(bad)?),
        "<u2" => TensorValue::U16(read_npy::<_, ArrayD<u16>>(path).map_err(bad)?),
        "<u4" => TensorValue::U32(read_npy::<_, ArrayD<u32>>(path).map_err(bad)?),
        "<u8" => TensorValue::U64(read_npy::<_, ArrayD<u64>>(path).map_err(bad)?),
        "|b1" => TensorValue::Bool(read_npy::<_, ArrayD<bool>>(path).map_err(bad)?),
        other => {
            return Err(graft::Error::bad_model(
                path,
                format!("arrays of dtype '{other}' are not supported"),
            )
            .into());
        }
    })
}

/// Writes outputs as .npy files (float16/bfloat16 widened to float32).
pub fn write_outputs(dir: &Path, outputs: &[(String, TensorValue)]) -> anyhow::Result<()> {
    use ndarray_npy::write_npy;
    std::fs::create_dir_all(dir).map_err(|e| graft::Error::io(dir, e))?;
    for (name, t) in outputs {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{file}.npy"));
        let err = |e: ndarray_npy::WriteNpyError| graft::Error::io(&path, std::io::Error::other(e));
        match t {
            TensorValue::F32(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::F64(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::I64(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::I32(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::I16(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::I8(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::U8(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::U16(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::U32(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::U64(x) => write_npy(&path, x).map_err(err)?,
            TensorValue::Bool(x) => write_npy(&path, x).map_err(err)?,
            other => {
                let f = other.to_f32_array().ok_or_else(|| {
                    graft::Error::Usage(format!("output '{name}' cannot be written as .npy"))
                })?;
                write_npy(&path, &f).map_err(err)?
            }
        }
    }
    Ok(())
}

/// Why a plan's specialisation does not fit these inputs, if it does not.
fn mismatch(spec: &Specialisation, inputs: &[(String, TensorValue)]) -> Option<String> {
    for (name, shape) in &spec.input_shapes {
        match inputs.iter().find(|(n, _)| n == name) {
            None => return Some(format!("input '{name}' is not given")),
            Some((_, t)) if t.shape() != shape.as_slice() => {
                return Some(format!(
                    "input '{name}' has shape {:?}, the plan {:?}",
                    t.shape(),
                    shape
                ));
            }
            _ => {}
        }
    }
    for (name, values) in &spec.input_values {
        match inputs.iter().find(|(n, _)| n == name) {
            Some((_, t)) if t.to_i64_vec().as_ref() == Some(values) => {}
            _ => return Some(format!("input '{name}' has other values than the plan's")),
        }
    }
    None
}

fn cache_root(a: &Args) -> Option<PathBuf> {
    if a.no_cache {
        return None;
    }
    if let Some(d) = &a.cache_dir {
        return Some(d.clone());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("graft"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("graft"))
}

/// Compiles for these inputs, reusing a cached plan only when its specialisation matches.
fn compile_cached(
    a: &Args,
    model_path: &Path,
    inputs: &[(String, TensorValue)],
) -> anyhow::Result<Compiled> {
    use sha2::Digest;
    let mut opts = a.lowering.options(model_path)?;
    for (n, t) in inputs {
        opts.input_shapes.insert(n.clone(), t.shape().to_vec());
        opts.input_values.insert(n.clone(), t.clone());
    }
    let key = {
        let meta = std::fs::metadata(model_path).map_err(|e| graft::Error::io(model_path, e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut shapes: Vec<String> = inputs
            .iter()
            .map(|(n, t)| format!("{n}={:?}", t.shape()))
            .collect();
        shapes.sort();
        let canon = std::fs::canonicalize(model_path).unwrap_or_else(|_| model_path.to_path_buf());
        let text = format!(
            "{}|{}|{}|{}|{}|{:?}|{}|{}|{}|{}",
            env!("CARGO_PKG_VERSION"),
            canon.display(),
            meta.len(),
            mtime,
            a.lowering.fold,
            a.lowering.matmul,
            a.lowering.no_fusion,
            a.lowering.shader_f16,
            a.lowering.specialise,
            shapes.join(";")
        );
        let h = sha2::Sha256::digest(text.as_bytes());
        h.iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dir = cache_root(a).map(|r| r.join(key));
    if let Some(d) = &dir
        && d.join("plan.json").is_file()
        && let Ok(c) = graft::codegen::read_dir(d)
        && mismatch(&c.plan.specialised_for, inputs).is_none()
    {
        eprintln!("note: using the cached plan {}", d.display());
        return Ok(c);
    }
    let model = super::compile::load(model_path, a.lowering.fold)?;
    let compiled = graft::codegen::compile(&model, &opts)
        .with_context(|| format!("compiling {}", model_path.display()))?;
    if let Some(d) = &dir
        && let Err(e) = graft::codegen::write_dir(&compiled, d)
    {
        eprintln!("warning: could not cache the plan in {}: {e}", d.display());
    }
    Ok(compiled)
}

fn print_timing(backend: &str, ms: &[f64]) {
    let mut v = ms.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    };
    println!(
        "{}",
        serde_json::json!({"backend": backend, "runs": v.len(), "median_ms": median,
                           "min_ms": v.first(), "max_ms": v.last()})
    );
}

fn run_gpu(
    c: &Compiled,
    inputs: &[(String, TensorValue)],
) -> anyhow::Result<Vec<(String, TensorValue)>> {
    run_gpu_timed(c, inputs, None)
}

fn run_gpu_timed(
    c: &Compiled,
    inputs: &[(String, TensorValue)],
    time: Option<usize>,
) -> anyhow::Result<Vec<(String, TensorValue)>> {
    let gpu = Gpu::new()?;
    let shaders = &c.shaders;
    let exe = Executable::new(&gpu, &c.plan, &c.weights, &|name: &str| {
        shaders.get(name).cloned().ok_or_else(|| {
            graft::Error::Gpu(format!(
                "the plan names kernel file {name}, which is missing"
            ))
        })
    })?;
    let out = exe.run(&gpu, inputs)?;
    if let Some(n) = time {
        let mut t = Vec::new();
        for _ in 0..n {
            let start = std::time::Instant::now();
            exe.dispatch(&gpu)?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
        print_timing(&format!("gpu: {}", gpu.describe()), &t);
    }
    Ok(out)
}

fn has_data_sets(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("test_data_set_")
            })
        })
        .unwrap_or(false)
}

fn read_pb(path: &Path) -> anyhow::Result<(String, TensorValue)> {
    use protobuf::Message;
    let bytes = std::fs::read(path).map_err(|e| graft::Error::io(path, e))?;
    let t = onnx_protobuf::TensorProto::parse_from_bytes(&bytes)
        .map_err(|e| graft::Error::bad_model(path, e.to_string()))?;
    let v =
        TensorValue::from_proto(&t).map_err(|e| graft::Error::bad_model(path, e.to_string()))?;
    Ok((t.name.clone(), v))
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let n = name
                        .strip_prefix(prefix)?
                        .strip_suffix(".pb")?
                        .parse()
                        .ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Runs every data set of an ONNX backend test folder and compares with its stored outputs.
fn run_backend_test(a: &Args) -> anyhow::Result<i32> {
    let model_path = a.target.join("model.onnx");
    let model = super::compile::load(&model_path, a.lowering.fold)?;
    let in_names = model_inputs(&model);
    let out_names: Vec<String> = model
        .graph
        .outputs
        .iter()
        .map(|p| model.graph.value(p.value).name.clone())
        .collect();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&a.target)
        .map_err(|e| graft::Error::io(&a.target, e))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("test_data_set_")
        })
        .map(|e| e.path())
        .collect();
    sets.sort();
    let mut failed = 0;
    let mut o = String::new();
    for set in &sets {
        let mut inputs = Vec::new();
        for (i, p) in numbered(set, "input_").iter().enumerate() {
            let (name, t) = read_pb(p)?;
            let name = if name.is_empty() {
                in_names.get(i).map(|(n, _)| n.clone()).unwrap_or_default()
            } else {
                name
            };
            inputs.push((name, t));
        }
        let got = if a.backend == "cpu" {
            graft::verify::run(&model, &inputs)?
        } else {
            let c = compile_cached(a, &model_path, &inputs)?;
            run_gpu(&c, &inputs)?
        };
        for (i, p) in numbered(set, "output_").iter().enumerate() {
            let (_, want) = read_pb(p)?;
            let name = out_names.get(i).cloned().unwrap_or_default();
            let Some((_, have)) = got.iter().find(|(n, _)| *n == name) else {
                outln!(o, "{}: output '{name}' missing FAILED", set.display());
                failed += 1;
                continue;
            };
            let (ok, max_abs) = close(have, &want);
            outln!(
                o,
                "{} {name}: max abs error {max_abs:.3e} {}",
                set.file_name().unwrap_or_default().to_string_lossy(),
                if ok { "ok" } else { "FAILED" }
            );
            if !ok {
                failed += 1;
            }
        }
    }
    super::emit(&o);
    if failed > 0 {
        eprintln!("error: {failed} output(s) differ from the stored results");
        return Ok(1);
    }
    Ok(0)
}

/// ONNX's backend-test criterion: |got - want| <= 1e-7 + 1e-3 |want| everywhere, same shape
/// and type; NaNs must match.
pub fn close(got: &TensorValue, want: &TensorValue) -> (bool, f64) {
    if got.shape() != want.shape() || got.data_type() != want.data_type() {
        return (false, f64::INFINITY);
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let mut ok = true;
    let mut max_abs = 0.0f64;
    for (x, y) in g.iter().zip(&w) {
        if x.is_nan() || y.is_nan() {
            ok &= x.is_nan() && y.is_nan();
            continue;
        }
        if x == y {
            continue;
        }
        let d = (x - y).abs();
        max_abs = max_abs.max(d);
        ok &= d <= 1e-7 + 1e-3 * y.abs();
    }
    (ok, max_abs)
}
