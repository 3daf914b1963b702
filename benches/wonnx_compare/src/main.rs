//! wonnx_compare: run one ONNX model under wonnx (WebGPU/wgpu) and print one JSON line.
//!
//! Usage:
//!   wonnx_compare --model PATH.onnx --input name=file.npy [--input ...] [--runs N]
//!                 [--expected name=file.npy ...] [--atol F]
//!
//! Output (stdout, one line):
//!   {"model":..., "status":"ok"|"error", "error":msg|null, "median_ms":f|null,
//!    "runs":N, "adapter":name, ...extra fields}
//! Exit status is 0 whenever a JSON line was printed (also when wonnx fails on the model);
//! non-zero only for bad command-line usage.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;
use serde_json::{json, Map, Value};
use wonnx::utils::{InputTensor, OutputTensor};

struct Args {
    model: String,
    inputs: Vec<(String, String)>,
    expected: Vec<(String, String)>,
    runs: usize,
    atol: f32,
}

fn usage() -> ! {
    eprintln!(
        "usage: wonnx_compare --model PATH.onnx --input name=file.npy [--input ...] [--runs N] \
         [--expected name=file.npy ...] [--atol F]"
    );
    std::process::exit(2);
}

fn parse_kv(s: &str) -> (String, String) {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => (k.to_string(), v.to_string()),
        _ => {
            eprintln!("expected name=file.npy, got {s:?}");
            usage()
        }
    }
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut model = None;
    let mut inputs = Vec::new();
    let mut expected = Vec::new();
    let mut runs = 10usize;
    let mut atol = 1e-3f32;
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--model" => model = Some(val()),
            "--input" => inputs.push(parse_kv(&val())),
            "--expected" => expected.push(parse_kv(&val())),
            "--runs" => runs = val().parse().unwrap_or_else(|_| usage()),
            "--atol" => atol = val().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other:?}");
                usage()
            }
        }
    }
    let model = model.unwrap_or_else(|| usage());
    if runs == 0 {
        usage();
    }
    Args { model, inputs, expected, runs, atol }
}

/// A loaded .npy input. wonnx takes flat slices; shapes come from the model itself.
enum Loaded {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
}

impl Loaded {
    fn shape(&self) -> Vec<usize> {
        match self {
            Loaded::F32(a) => a.shape().to_vec(),
            Loaded::I64(a) => a.shape().to_vec(),
            Loaded::I32(a) => a.shape().to_vec(),
        }
    }
    fn dtype(&self) -> &'static str {
        match self {
            Loaded::F32(_) => "float32",
            Loaded::I64(_) => "int64",
            Loaded::I32(_) => "int32",
        }
    }
    /// wonnx accepts I64 input tensors and narrows them to i32 on upload (WGSL has no i64),
    /// so int64 ids/masks are passed as-is.
    fn tensor(&self) -> InputTensor<'_> {
        match self {
            Loaded::F32(a) => InputTensor::F32(Cow::Owned(a.iter().copied().collect())),
            Loaded::I64(a) => InputTensor::I64(Cow::Owned(a.iter().copied().collect())),
            Loaded::I32(a) => InputTensor::I32(Cow::Owned(a.iter().copied().collect())),
        }
    }
}

fn load_npy(path: &str) -> Result<Loaded, String> {
    let open = || File::open(path).map_err(|e| format!("{path}: {e}"));
    if let Ok(a) = ArrayD::<f32>::read_npy(open()?) {
        return Ok(Loaded::F32(a));
    }
    if let Ok(a) = ArrayD::<i64>::read_npy(open()?) {
        return Ok(Loaded::I64(a));
    }
    match ArrayD::<i32>::read_npy(open()?) {
        Ok(a) => Ok(Loaded::I32(a)),
        Err(e) => Err(format!("{path}: not a float32/int64/int32 .npy ({e})")),
    }
}

/// Same adapter selection as wonnx 0.5.1 `resource::request_device_queue`
/// (WGPU_BACKEND / WGPU_ADAPTER_NAME honoured, else wgpu's default), only to report it.
fn adapter_name() -> String {
    let backends = wgpu::util::backend_bits_from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        dx12_shader_compiler: wgpu::Dx12Compiler::Fxc,
    });
    match pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
        &instance, backends, None,
    )) {
        Some(a) => {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        }
        None => "none".to_string(),
    }
}

fn panic_msg(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic (non-string payload)".to_string()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn output_as_f32(t: &OutputTensor) -> Vec<f32> {
    match t {
        OutputTensor::F32(v) => v.clone(),
        OutputTensor::I32(v) => v.iter().map(|&x| x as f32).collect(),
        OutputTensor::I64(v) => v.iter().map(|&x| x as f32).collect(),
        OutputTensor::U8(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

fn run(args: &Args, out: &mut Map<String, Value>) -> Result<(), String> {
    // Inputs.
    let mut loaded = Vec::new();
    for (name, path) in &args.inputs {
        let l = load_npy(path)?;
        out.entry("inputs")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap()
            .insert(name.clone(), json!({"dtype": l.dtype(), "shape": l.shape()}));
        loaded.push((name.clone(), l));
    }
    let inputs: HashMap<String, InputTensor<'_>> =
        loaded.iter().map(|(n, l)| (n.clone(), l.tensor())).collect();

    // Load + compile (shader generation, constant folding, buffer upload).
    let t0 = Instant::now();
    let session = pollster::block_on(wonnx::Session::from_path(&args.model))
        .map_err(|e| format!("load: {e}"))?;
    out.insert("load_ms".into(), json!(t0.elapsed().as_secs_f64() * 1e3));

    // Warm-up (also used for the optional correctness check).
    let t0 = Instant::now();
    let first = pollster::block_on(session.run(&inputs)).map_err(|e| format!("run: {e}"))?;
    out.insert("warmup_ms".into(), json!(t0.elapsed().as_secs_f64() * 1e3));

    let mut outs = Map::new();
    let mut names: Vec<_> = first.keys().cloned().collect();
    names.sort();
    for n in names {
        outs.insert(n.clone(), json!(output_as_f32(&first[&n]).len()));
    }
    out.insert("outputs_numel".into(), Value::Object(outs));

    if !args.expected.is_empty() {
        let mut diffs = Map::new();
        let mut all_ok = true;
        for (name, path) in &args.expected {
            let exp = match load_npy(path)? {
                Loaded::F32(a) => a.iter().copied().collect::<Vec<f32>>(),
                Loaded::I64(a) => a.iter().map(|&x| x as f32).collect(),
                Loaded::I32(a) => a.iter().map(|&x| x as f32).collect(),
            };
            let got = match first.get(name) {
                Some(t) => output_as_f32(t),
                None => return Err(format!("expected output {name:?} not produced by wonnx")),
            };
            let d = if got.len() != exp.len() {
                all_ok = false;
                json!(format!("numel mismatch: wonnx {} vs expected {}", got.len(), exp.len()))
            } else {
                let m = got
                    .iter()
                    .zip(&exp)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, |m, x| if x.is_nan() || m.is_nan() { f32::NAN } else { m.max(x) });
                if !(m <= args.atol) {
                    all_ok = false;
                }
                json!(m)
            };
            diffs.insert(name.clone(), d);
        }
        out.insert("max_abs_diff".into(), Value::Object(diffs));
        out.insert("matches_expected".into(), json!(all_ok));
    }

    // Timed runs: wall time of Session::run (encode + submit + wait + read back all outputs).
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let r = pollster::block_on(session.run(&inputs)).map_err(|e| format!("run: {e}"))?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(r);
    }
    out.insert("min_ms".into(), json!(times.iter().cloned().fold(f64::INFINITY, f64::min)));
    out.insert("median_ms".into(), json!(median(times)));
    Ok(())
}

fn main() {
    let args = parse_args();
    let mut out = Map::new();
    out.insert("model".into(), json!(args.model));
    out.insert("status".into(), json!("error"));
    out.insert("error".into(), Value::Null);
    out.insert("median_ms".into(), Value::Null);
    out.insert("runs".into(), json!(args.runs));

    // wonnx/wgpu report several failures by panicking (no adapter, wgpu validation errors);
    // turn those into status "error" too. The default hook still prints the panic to stderr.
    let adapter = panic::catch_unwind(adapter_name).unwrap_or_else(panic_msg);
    out.insert("adapter".into(), json!(adapter));

    let res = panic::catch_unwind(AssertUnwindSafe(|| run(&args, &mut out)))
        .unwrap_or_else(|p| Err(panic_msg(p)));
    match res {
        Ok(()) => {
            out.insert("status".into(), json!("ok"));
        }
        Err(e) => {
            out.insert("error".into(), json!(e));
        }
    }
    println!("{}", Value::Object(out));
}
