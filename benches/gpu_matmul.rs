//! MatMul throughput of the WGSL backend (plain `harness = false` bench; no criterion).
//!
//! Run with `cargo bench --bench gpu_matmul` (`export XDG_RUNTIME_DIR=/tmp` first where the
//! Vulkan loader wants it). For square products of 256, 1024 and 2048 and a transformer FFN shape
//! ([B*S, d] x [d, 4d], B*S = 128, d = 768), with both operands graph inputs (f32, N(0, 1)), it
//! times on the same adapter:
//!
//! * graft's tiled kernel (`matmul_variant = "tiled"`, shaders/matmul_tiled.wgsl),
//! * the naive one-output-per-invocation kernel (`"naive"`, shaders/matmul_naive.wgsl), the
//!   baseline,
//! * the vectorised tiled kernel (`"vec4"`, shaders/matmul_vec4.wgsl; the compiler's default for
//!   these layouts), reported as skipped where the build has no such variant,
//! * the CPU evaluator (`graft::verify::run`).
//!
//! GPU timings cover `Executable::dispatch` only (encode, submit, wait; inputs uploaded once).
//! Each contender runs once as a warm-up; then the contenders run in turns (round robin), so a
//! disturbance of the machine hits them alike. Each runs at least `MIN_RUNS` times; the number is
//! set from its first timed run to fill about `GPU_MATMUL_BUDGET_S` seconds (default 2, at most
//! `MAX_RUNS` runs), and one whose warm-up took over `SLOW_S` seconds runs `MIN_RUNS` times. The
//! CPU evaluator is skipped (saying why) when its warm-up run takes over `CPU_SKIP_S` seconds.
//! Reported: median milliseconds and GFLOP/s = 2·M·N·K / median seconds.
//!
//! Correctness is checked once per case: every GPU output (from its warm-up) against the CPU
//! evaluator's, relative Frobenius error below 1e-4; the process exits 1 if any check fails.
//! Without a GPU adapter it prints why and "skipped", and exits 0.
//!
//! `GPU_MATMUL_CASES=square_256,ffn_128x768x3072` runs only the cases named.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use graft::codegen::{CompileOptions, compile};
use graft::eval::TensorValue;
use graft::ir::Model;
use graft::runtime::{Executable, Gpu};
use ndarray::ArrayD;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::{Value, json};

const MIN_RUNS: usize = 3;
const MAX_RUNS: usize = 50;
const SLOW_S: f64 = 1.0;
const CPU_SKIP_S: f64 = 20.0;
const TOLERANCE: f64 = 1e-4;
/// The GPU variants timed. The first `REQUIRED` must compile to their own kernel; the others are
/// reported as skipped where this build of graft lowers them to another kernel.
const VARIANTS: &[&str] = &["tiled", "naive", "vec4"];
const REQUIRED: usize = 2;
const NAIVE: usize = 1;
const UNAVAILABLE: &str = "variant not available";

struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    /// Run only when named in GPU_MATMUL_CASES (sizes meant for real GPUs).
    on_request: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "square_256",
        m: 256,
        k: 256,
        n: 256,
        on_request: false,
    },
    Case {
        name: "square_1024",
        m: 1024,
        k: 1024,
        n: 1024,
        on_request: false,
    },
    Case {
        name: "square_2048",
        m: 2048,
        k: 2048,
        n: 2048,
        on_request: false,
    },
    Case {
        name: "ffn_128x768x3072",
        m: 128,
        k: 768,
        n: 3072,
        on_request: false,
    },
    Case {
        name: "square_4096",
        m: 4096,
        k: 4096,
        n: 4096,
        on_request: true,
    },
];

/// Timings of one contender: every timed run in seconds (sorted), or why it was not timed.
enum Timing {
    Ran { secs: Vec<f64>, warmup_s: f64 },
    Skipped(String),
}

impl Timing {
    fn median(&self) -> Option<f64> {
        match self {
            Timing::Ran { secs, .. } => Some(secs[secs.len() / 2]),
            Timing::Skipped(_) => None,
        }
    }

    fn json(&self, flops: f64) -> Value {
        match self {
            Timing::Ran { secs, warmup_s } => {
                let med = secs[secs.len() / 2];
                json!({
                    "median_ms": med * 1e3,
                    "min_ms": secs[0] * 1e3,
                    "max_ms": secs[secs.len() - 1] * 1e3,
                    "runs": secs.len(),
                    "warmup_ms": warmup_s * 1e3,
                    "gflops": flops / med / 1e9,
                })
            }
            Timing::Skipped(why) => json!({ "skipped": why }),
        }
    }
}

/// Something to time, warmed up already.
struct Contender<'a> {
    run: Box<dyn FnMut() -> Result<(), String> + 'a>,
    warmup_s: f64,
    target: usize,
    secs: Vec<f64>,
    error: Option<String>,
}

impl<'a> Contender<'a> {
    fn new(warmup_s: f64, run: Box<dyn FnMut() -> Result<(), String> + 'a>) -> Self {
        Contender {
            run,
            warmup_s,
            target: MIN_RUNS,
            secs: Vec::new(),
            error: None,
        }
    }

    fn timing(self) -> Timing {
        if let Some(e) = self.error {
            return Timing::Skipped(e);
        }
        let mut secs = self.secs;
        secs.sort_by(|a, b| a.total_cmp(b));
        Timing::Ran {
            secs,
            warmup_s: self.warmup_s,
        }
    }
}

/// Runs the contenders in turns until each has its number of runs.
fn time_round_robin(contenders: &mut [Option<Contender>], budget_s: f64) {
    loop {
        let mut ran = false;
        for c in contenders.iter_mut().flatten() {
            if c.error.is_some() || c.secs.len() >= c.target {
                continue;
            }
            ran = true;
            let t = Instant::now();
            if let Err(e) = (c.run)() {
                c.error = Some(e);
                continue;
            }
            let s = t.elapsed().as_secs_f64();
            c.secs.push(s);
            if c.secs.len() == 1 && c.warmup_s <= SLOW_S {
                c.target = ((budget_s / s.max(1e-6)).ceil() as usize).clamp(MIN_RUNS, MAX_RUNS);
            }
        }
        if !ran {
            break;
        }
    }
}

fn matmul_model(c: &Case) -> Model {
    let text = format!(
        "<ir_version: 8, opset_import: [\"\": 18]>\n\
         gpu_matmul (float[{m},{k}] A, float[{k},{n}] B) => (float[{m},{n}] C) {{\n\
         \x20 C = MatMul(A, B)\n\
         }}\n",
        m = c.m,
        k = c.k,
        n = c.n
    );
    let proto = graft::text::parse_model(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    graft::onnx::model_from_proto(proto, Path::new("gpu_matmul.onnx"), None)
        .expect("building the MatMul model")
}

fn random(shape: &[usize], seed: u64) -> TensorValue {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    TensorValue::F32(ArrayD::from_shape_vec(shape.to_vec(), v).unwrap())
}

fn as_f32(t: &TensorValue) -> &ArrayD<f32> {
    match t {
        TensorValue::F32(a) => a,
        _ => panic!("expected an f32 output"),
    }
}

/// ‖got − want‖_F / ‖want‖_F in f64; NaN (which fails the check) for an all-zero reference or
/// a non-finite value.
fn rel_fro(got: &TensorValue, want: &TensorValue) -> f64 {
    let (g, w) = (as_f32(got), as_f32(want));
    assert_eq!(g.shape(), w.shape(), "output shapes differ");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in g.iter().zip(w.iter()) {
        let d = x as f64 - y as f64;
        num += d * d;
        den += (y as f64) * (y as f64);
    }
    if den == 0.0 || !num.is_finite() || !den.is_finite() {
        return f64::NAN;
    }
    (num / den).sqrt()
}

/// Compiles with the given matmul variant, uploads the inputs once and runs it once (the
/// warm-up): the executable, the warm-up's seconds and its output.
fn prepare_variant(
    gpu: &Gpu,
    model: &Model,
    c: &Case,
    inputs: &[(String, TensorValue)],
    variant: &str,
) -> Result<(Executable, f64, TensorValue), String> {
    let opts = CompileOptions {
        input_shapes: HashMap::from([
            ("A".to_string(), vec![c.m, c.k]),
            ("B".to_string(), vec![c.k, c.n]),
        ]),
        matmul_variant: Some(variant.to_string()),
        ..Default::default()
    };
    let compiled = compile(model, &opts).map_err(|e| format!("compile ({variant}): {e}"))?;
    let kernel = format!("matmul_{variant}");
    if !compiled.plan.kernels.iter().any(|k| k.name == kernel) {
        let names: Vec<&str> = compiled
            .plan
            .kernels
            .iter()
            .map(|k| k.name.as_str())
            .collect();
        return Err(format!(
            "{UNAVAILABLE}: the plan for {variant:?} uses kernels {names:?}, not {kernel}"
        ));
    }
    let shaders = &compiled.shaders;
    let exe = Executable::new(gpu, &compiled.plan, &compiled.weights, &|name: &str| {
        shaders
            .get(name)
            .cloned()
            .ok_or_else(|| graft::Error::Gpu(format!("missing shader {name}")))
    })
    .map_err(|e| format!("building the executable ({variant}): {e}"))?;
    exe.write_inputs(gpu, inputs)
        .map_err(|e| format!("uploading inputs ({variant}): {e}"))?;
    let t = Instant::now();
    exe.dispatch(gpu)
        .map_err(|e| format!("warm-up ({variant}): {e}"))?;
    let warmup_s = t.elapsed().as_secs_f64();
    let out = exe
        .read_outputs(gpu)
        .map_err(|e| format!("reading the output ({variant}): {e}"))?;
    let out = out.into_iter().next().ok_or("no output")?.1;
    Ok((exe, warmup_s, out))
}

fn fmt_ms(t: &Timing) -> String {
    t.median()
        .map(|s| format!("{:.3}", s * 1e3))
        .unwrap_or_else(|| "skipped".into())
}

fn fmt_gflops(t: &Timing, flops: f64) -> String {
    t.median()
        .map(|s| format!("{:.2}", flops / s / 1e9))
        .unwrap_or_else(|| "-".into())
}

/// Throughput ratio x/y = y's median time / x's.
fn ratio(x: &Timing, y: &Timing) -> Option<f64> {
    Some(y.median()? / x.median()?)
}

fn main() {
    let budget_s: f64 = std::env::var("GPU_MATMUL_BUDGET_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let gpu = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            println!("gpu_matmul: no GPU adapter: {e}");
            println!("skipped");
            println!(
                "{}",
                json!({"bench": "gpu_matmul", "skipped": e.to_string()})
            );
            return;
        }
    };
    let adapter = gpu.describe();
    println!("gpu_matmul: adapter {adapter}");
    println!(
        "dispatch-only GPU timings (inputs uploaded once); 1 warm-up each, then the contenders \
         in turns, median of >= {MIN_RUNS} runs (~{budget_s} s each); GFLOP/s = 2*M*N*K / median"
    );
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    let mut failed = false;
    let only: Option<Vec<String>> = std::env::var("GPU_MATMUL_CASES")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    for (ci, c) in CASES.iter().enumerate() {
        let named = only.as_ref().map(|o| o.iter().any(|x| x == c.name));
        if named == Some(false) || (c.on_request && named != Some(true)) {
            continue;
        }
        let model = matmul_model(c);
        let inputs = vec![
            ("A".to_string(), random(&[c.m, c.k], 2 * ci as u64 + 1)),
            ("B".to_string(), random(&[c.k, c.n], 2 * ci as u64 + 2)),
        ];
        let flops = 2.0 * (c.m * c.n * c.k) as f64;
        eprintln!("{}: warm-up: CPU evaluator", c.name);
        // The CPU evaluator's warm-up run is also the reference output.
        let t = Instant::now();
        let reference = graft::verify::run(&model, &inputs).expect("CPU evaluator failed");
        let cpu_warm = t.elapsed().as_secs_f64();
        let reference = reference.into_iter().next().expect("no CPU output").1;
        let mut prepared = Vec::new();
        let mut errs: Vec<Option<f64>> = Vec::new();
        for (vi, variant) in VARIANTS.iter().enumerate() {
            eprintln!("{}: warm-up: {variant}", c.name);
            match prepare_variant(&gpu, &model, c, &inputs, variant) {
                Ok((exe, warm, out)) => {
                    let e = rel_fro(&out, &reference);
                    if e.is_nan() || e >= TOLERANCE {
                        eprintln!(
                            "FAIL {}: {variant} vs CPU evaluator: relative Frobenius error \
                             {e:.3e} >= {TOLERANCE:.0e}",
                            c.name
                        );
                        failed = true;
                    }
                    errs.push(Some(e));
                    prepared.push(Ok((exe, warm)));
                }
                Err(why) => {
                    if vi < REQUIRED || !why.starts_with(UNAVAILABLE) {
                        eprintln!("FAIL {}: {why}", c.name);
                        failed = true;
                    } else {
                        eprintln!("{}: {variant} skipped: {why}", c.name);
                    }
                    errs.push(None);
                    prepared.push(Err(why));
                }
            }
        }
        // Contenders: the GPU variants in VARIANTS order, then the CPU evaluator.
        let mut contenders: Vec<Option<Contender>> = Vec::new();
        for p in &prepared {
            contenders.push(p.as_ref().ok().map(|(exe, warm)| {
                let gpu = &gpu;
                Contender::new(
                    *warm,
                    Box::new(move || exe.dispatch(gpu).map_err(|e| e.to_string())),
                )
            }));
        }
        let cpu_skipped = (cpu_warm > CPU_SKIP_S)
            .then(|| format!("one run took {cpu_warm:.1} s (> {CPU_SKIP_S} s); not timed"));
        contenders.push(cpu_skipped.is_none().then(|| {
            let (model, inputs) = (&model, &inputs);
            Contender::new(
                cpu_warm,
                Box::new(move || {
                    graft::verify::run(model, inputs)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }),
            )
        }));
        eprintln!("{}: timing", c.name);
        time_round_robin(&mut contenders, budget_s);
        let mut timings: Vec<Timing> = Vec::new();
        for (i, ct) in contenders.into_iter().enumerate() {
            timings.push(match ct {
                Some(ct) => {
                    let t = ct.timing();
                    if let Timing::Skipped(e) = &t {
                        eprintln!("FAIL {}: timed run: {e}", c.name);
                        failed = true;
                    }
                    t
                }
                None if i < VARIANTS.len() => {
                    Timing::Skipped(prepared[i].as_ref().err().cloned().unwrap_or_default())
                }
                None => Timing::Skipped(cpu_skipped.clone().unwrap_or_default()),
            });
        }
        let cpu = timings.pop().expect("CPU timing");
        let gpu_t = timings;
        let naive = &gpu_t[NAIVE];
        let mut line = json!({
            "bench": "gpu_matmul",
            "case": c.name,
            "m": c.m, "k": c.k, "n": c.n,
            "flop": flops,
            "adapter": adapter,
            "cpu_evaluator": cpu.json(flops),
            "tolerance": TOLERANCE,
        });
        // GPU_PEAK_TFLOPS: the adapter's FP32 peak, to report each kernel as a share of it
        let peak: Option<f64> = std::env::var("GPU_PEAK_TFLOPS")
            .ok()
            .and_then(|s| s.parse().ok());
        for (i, v) in VARIANTS.iter().enumerate() {
            line[*v] = gpu_t[i].json(flops);
            if let (Some(p), Some(t)) = (peak, gpu_t[i].median()) {
                let pct = flops / t / 1e12 / p * 100.0;
                line[format!("percent_of_peak_{v}")] = json!(pct);
                println!("{}: {v}: {pct:.1} % of the {p} TFLOP/s FP32 peak", c.name);
            }
            line[format!("rel_fro_{v}")] = json!(errs[i]);
            if i != NAIVE {
                line[format!("ratio_{v}_over_naive")] = json!(ratio(&gpu_t[i], naive));
            }
            line[format!("ratio_{v}_over_cpu")] = json!(ratio(&gpu_t[i], &cpu));
        }
        lines.push(line);
        let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let mut row = format!("| {} | {}x{}x{} |", c.name, c.m, c.k, c.n);
        for t in gpu_t.iter().chain([&cpu]) {
            row += &format!(" {} | {} |", fmt_ms(t), fmt_gflops(t, flops));
        }
        for (i, t) in gpu_t.iter().enumerate() {
            if i != NAIVE {
                row += &format!(" {} |", f(ratio(t, naive)));
            }
        }
        for t in &gpu_t {
            row += &format!(" {} |", f(ratio(t, &cpu)));
        }
        let worst = errs.iter().flatten().copied().reduce(f64::max);
        let worst = worst.map(|e| format!("{e:.1e}"));
        row += &format!(" {} |", worst.unwrap_or_else(|| "-".into()));
        rows.push(row);
    }
    println!();
    println!("adapter: {adapter}");
    let mut hdr = "| case | MxKxN |".to_string();
    for v in VARIANTS.iter().chain(&["CPU eval"]) {
        hdr += &format!(" {v} ms | {v} GFLOP/s |");
    }
    for (i, v) in VARIANTS.iter().enumerate() {
        if i != NAIVE {
            hdr += &format!(" {v}/naive |");
        }
    }
    for v in VARIANTS {
        hdr += &format!(" {v}/CPU |");
    }
    hdr += " max rel err |";
    println!("{hdr}");
    println!("|{}", "---|".repeat(hdr.matches('|').count() - 1));
    for r in &rows {
        println!("{r}");
    }
    println!(
        "(X/Y: throughput ratio = Y's median time / X's, > 1 means X is faster; max rel err: the \
         largest relative Frobenius error of a GPU output against the CPU evaluator's)"
    );
    println!();
    for l in &lines {
        println!("{l}");
    }
    if failed {
        eprintln!("gpu_matmul: a check failed (see the FAIL lines above)");
        std::process::exit(1);
    }
}
