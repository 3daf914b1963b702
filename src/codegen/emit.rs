//! From lowered steps to a [`Plan`]: buffer allocation by lifetime, kernel selection, info
//! encoding and dispatch sizes; and writing a plan folder.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::BufId;
use super::lower::{BufKind, Data, Lowerer, StepKind, Val, flat_groups, storage_of};
use super::plan::{self, Binding, Buffer, BufferKind, Dispatch, Kernel, Plan, Port};
use super::program::INFO_WORDS;
use super::{CompileOptions, shaders};
use crate::{Error, Result};

/// A compiled model: the plan, the weights it refers to and the kernel sources it uses.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub plan: Plan,
    pub weights: Vec<u8>,
    /// WGSL file name → source.
    pub shaders: BTreeMap<String, String>,
}

const WEIGHT_ALIGN: usize = 256;

pub fn emit(
    mut lw: Lowerer,
    inputs: Vec<(String, Val)>,
    outputs: Vec<(String, Val)>,
    spec: plan::Specialisation,
    opts: &CompileOptions,
) -> Result<Compiled> {
    // constant outputs need buffers too
    let mut out_bufs = Vec::new();
    for (name, v) in &outputs {
        let b = lw
            .buf(v)
            .map_err(|_| Error::Compile(format!("output '{name}' has no GPU storage")))?;
        out_bufs.push(b);
    }
    let nsteps = lw.steps.len();
    // lifetimes of activation buffers
    let mut first = vec![usize::MAX; lw.bufs.len()];
    let mut last = vec![0usize; lw.bufs.len()];
    for (s, step) in lw.steps.iter().enumerate() {
        let mut touched = step.reads();
        touched.push(step.out());
        for b in touched {
            first[b.0] = first[b.0].min(s);
            last[b.0] = last[b.0].max(s);
        }
    }
    for b in &out_bufs {
        last[b.0] = usize::MAX;
    }
    // physical buffers
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut weights: Vec<u8> = Vec::new();
    let mut phys: Vec<Option<usize>> = vec![None; lw.bufs.len()];
    for (i, lb) in lw.bufs.iter().enumerate() {
        match &lb.kind {
            BufKind::Weight(bytes) => {
                if first[i] == usize::MAX && !out_bufs.contains(&BufId(i)) {
                    continue; // uploaded but fused away
                }
                while !weights.len().is_multiple_of(WEIGHT_ALIGN) {
                    weights.push(0);
                }
                let offset = weights.len() as u64;
                weights.extend_from_slice(bytes);
                if bytes.is_empty() {
                    weights.extend([0u8; 4]);
                }
                phys[i] = Some(buffers.len());
                buffers.push(Buffer {
                    kind: BufferKind::Weight,
                    size: lb.bytes.max(4),
                    weights_offset: Some(offset),
                    lifetime: None,
                    values: lb.names.clone(),
                });
            }
            BufKind::Input => {
                phys[i] = Some(buffers.len());
                buffers.push(Buffer {
                    kind: BufferKind::Input,
                    size: lb.bytes.max(4),
                    weights_offset: None,
                    lifetime: None,
                    values: lb.names.clone(),
                });
            }
            BufKind::Activation => {}
        }
    }
    // activations: greedy reuse in step order
    let mut starts: Vec<Vec<usize>> = vec![Vec::new(); nsteps + 1];
    let mut ends: Vec<Vec<usize>> = vec![Vec::new(); nsteps + 1];
    for (i, lb) in lw.bufs.iter().enumerate() {
        if !matches!(lb.kind, BufKind::Activation) {
            continue;
        }
        if first[i] == usize::MAX {
            // never written or read by a dispatch: fused away (no buffer), or an empty output
            if out_bufs.contains(&BufId(i)) {
                starts[nsteps].push(i);
            }
            continue;
        }
        starts[first[i]].push(i);
        if last[i] != usize::MAX {
            ends[last[i]].push(i);
        }
    }
    let mut free: Vec<usize> = Vec::new();
    for s in 0..=nsteps {
        for &i in &starts[s] {
            let need = lw.bufs[i].bytes.max(4);
            let pick = free
                .iter()
                .enumerate()
                .filter(|(_, p)| buffers[**p].size >= need)
                .min_by_key(|(_, p)| buffers[**p].size)
                .map(|(k, _)| k)
                .or_else(|| {
                    free.iter()
                        .enumerate()
                        .max_by_key(|(_, p)| buffers[**p].size)
                        .map(|(k, _)| k)
                });
            let p = match pick {
                Some(k) => free.swap_remove(k),
                None => {
                    buffers.push(Buffer {
                        kind: BufferKind::Activation,
                        size: 0,
                        weights_offset: None,
                        lifetime: Some([s, s]),
                        values: Vec::new(),
                    });
                    buffers.len() - 1
                }
            };
            let b = &mut buffers[p];
            b.size = b.size.max(need);
            b.values.extend(lw.bufs[i].names.iter().cloned());
            let end = if last[i] == usize::MAX {
                nsteps.saturating_sub(1)
            } else {
                last[i]
            };
            let lt = b.lifetime.get_or_insert([s, end]);
            lt[0] = lt[0].min(s);
            lt[1] = lt[1].max(end.min(nsteps.saturating_sub(1)));
            phys[i] = Some(p);
        }
        if s < nsteps {
            for &i in &ends[s] {
                if let Some(p) = phys[i] {
                    free.push(p);
                }
            }
        }
    }
    let pb = |b: BufId| phys[b.0].expect("every used buffer is placed");
    // kernels and dispatches
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut kernel_index: HashMap<String, usize> = HashMap::new();
    let mut used_shaders = BTreeMap::new();
    let mut dispatches = Vec::new();
    for step in &lw.steps {
        let (name, info, bufs, groups) = encode(step, opts)?;
        // elementwise programs are spelled out in override constants: one pipeline each
        let program: Vec<(String, f64)> = match &step.kind {
            StepKind::Elementwise(p) if name == "elementwise_specialised" => p.overrides(),
            _ => Vec::new(),
        };
        let key = format!("{name}{program:?}");
        if info.len() > INFO_WORDS {
            return Err(Error::Compile(format!(
                "{}: the dispatch needs {} info words, more than {INFO_WORDS}",
                step.nodes.join(", "),
                info.len()
            )));
        }
        let k = match kernel_index.get(&key) {
            Some(&k) => k,
            None => {
                let (file, entry) = shaders::file_and_entry(name);
                let src = shaders::source(file).expect("kernel source");
                let module = shaders::validate(file, src).map_err(Error::Compile)?;
                let flat = !matches!(
                    name,
                    "matmul_tiled" | "matmul_tiled_f16w" | "matmul_vec4" | "layernorm" | "softmax"
                );
                let mut overrides = BTreeMap::new();
                if flat {
                    overrides.insert("WG".to_string(), 64.0);
                }
                overrides.extend(program.iter().cloned());
                let wg = match name {
                    "matmul_tiled" | "matmul_tiled_f16w" | "matmul_vec4" => [16, 16, 1],
                    _ => [64, 1, 1],
                };
                kernels.push(Kernel {
                    name: name.to_string(),
                    shader: format!("{file}.wgsl"),
                    entry_point: entry.into(),
                    overrides,
                    bindings: shaders::bindings(&module)
                        .into_iter()
                        .map(|(binding, ty, name)| Binding { binding, ty, name })
                        .collect(),
                    workgroup_size: wg,
                });
                used_shaders.insert(format!("{file}.wgsl"), src.to_string());
                kernel_index.insert(key, kernels.len() - 1);
                kernels.len() - 1
            }
        };
        let want = kernels[k].bindings.len() - 1;
        if bufs.len() != want {
            return Err(Error::Compile(format!(
                "internal: kernel {name} takes {want} buffers, dispatch gives {}",
                bufs.len()
            )));
        }
        dispatches.push(Dispatch {
            kernel: k,
            nodes: step.nodes.clone(),
            buffers: bufs.iter().map(|&b| pb(b)).collect(),
            workgroups: groups,
            info,
        });
    }
    let port = |name: &str, v: &Val, b: BufId| -> Result<Port> {
        Ok(Port {
            name: name.to_string(),
            dtype: crate::runtime::dtype_plan_name(v.dtype).to_string(),
            storage: storage_of(v.dtype)
                .ok_or_else(|| Error::Compile(format!("'{name}' has no GPU storage")))?
                .name()
                .to_string(),
            shape: v.shape.clone(),
            buffer: pb(b),
        })
    };
    let mut in_ports = Vec::new();
    for (name, v) in &inputs {
        let Data::Gpu(b) = v.data else { unreachable!() };
        in_ports.push(port(name, v, b)?);
    }
    let mut out_ports = Vec::new();
    for ((name, v), b) in outputs.iter().zip(&out_bufs) {
        out_ports.push(port(name, v, *b)?);
    }
    let source = source_of(opts);
    Ok(Compiled {
        plan: Plan {
            format: plan::FORMAT.into(),
            version: plan::VERSION,
            source,
            specialised_for: spec,
            shader_f16: used_shaders.values().any(|src| src.contains("enable f16;")),
            info_words: INFO_WORDS as u32,
            info_stride_bytes: (INFO_WORDS * 4) as u32,
            weights: plan::WeightsFile {
                file: "weights.bin".into(),
                bytes: weights.len() as u64,
            },
            buffers,
            kernels,
            dispatches,
            inputs: in_ports,
            outputs: out_ports,
        },
        weights,
        shaders: used_shaders,
    })
}

fn source_of(opts: &CompileOptions) -> plan::Source {
    let path = opts.source.clone().unwrap_or_default();
    let meta = std::fs::metadata(&path).ok();
    plan::Source {
        path: path.display().to_string(),
        bytes: meta.as_ref().map(|m| m.len()).unwrap_or(0),
        modified_unix_s: meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// Whether a product's operands and output suit `matmul_vec4`: A contiguous along K, B and the
/// output along N, K and N multiples of 4, and every base and stride a multiple of 4.
fn vec4_layout(mm: &super::lower::MatMulStep) -> bool {
    let four = |x: usize| x.is_multiple_of(4);
    mm.a_ks == 1
        && mm.b_ns == 1
        && four(mm.k)
        && four(mm.n)
        && four(mm.a_ms)
        && four(mm.b_ks)
        && mm.batch.iter().all(|d| four(d[1]) && four(d[2]))
}

type Encoded = (&'static str, Vec<u32>, Vec<BufId>, [u32; 3]);

fn encode(step: &super::lower::Step, opts: &CompileOptions) -> Result<Encoded> {
    Ok(match &step.kind {
        StepKind::Elementwise(p) => {
            let mut bufs = vec![p.out];
            let ops: Vec<BufId> = p.operands.iter().map(|o| o.buf).collect();
            let filler = ops.first().copied();
            for k in 0..super::program::MAX_OPERANDS {
                match ops.get(k).copied().or(filler) {
                    Some(b) => bufs.push(b),
                    None => {
                        return Err(Error::Compile(format!(
                            "{}: an elementwise kernel without tensor inputs",
                            step.nodes.join(", ")
                        )));
                    }
                }
            }
            // four elements per invocation
            let n: usize = p.shape.iter().product();
            let kernel = if opts.specialise && p.specialisable() {
                "elementwise_specialised"
            } else {
                "elementwise"
            };
            (kernel, p.encode(), bufs, flat_groups(n.div_ceil(4), 64))
        }
        StepKind::MatMul(mm) => {
            let batch: usize = mm.batch.iter().map(|d| d[0]).product();
            let (bias, bms, bns) = match mm.bias {
                Some((b, ms, ns)) => (Some(b), ms, ns),
                None => (None, 0, 0),
            };
            let mut info = vec![
                mm.m as u32,
                mm.n as u32,
                mm.k as u32,
                batch as u32,
                mm.act.code,
                mm.act.p0.to_bits(),
                mm.act.p1.to_bits(),
                mm.alpha.to_bits(),
                0,
                mm.a_ms as u32,
                mm.a_ks as u32,
                0,
                mm.b_ks as u32,
                mm.b_ns as u32,
                bias.is_some() as u32,
                0,
                bms as u32,
                bns as u32,
                0,
                mm.batch.len() as u32,
            ];
            for d in &mm.batch {
                info.extend(d.iter().map(|&x| x as u32));
            }
            let bufs = vec![mm.out, mm.a, mm.b, bias.unwrap_or(mm.a)];
            let vec4_ok = vec4_layout(mm);
            let variant = match opts.matmul_variant.as_deref() {
                _ if mm.b_f16 => "matmul_tiled_f16w",
                Some("vec4") if vec4_ok => "matmul_vec4",
                Some("vec4") | Some("tiled") => "matmul_tiled",
                Some(_) => "matmul_naive",
                None if mm.m >= 32 && mm.n >= 32 && vec4_ok => "matmul_vec4",
                None if mm.m >= 32 && mm.n >= 32 => "matmul_tiled",
                None => "matmul_naive",
            };
            if variant != "matmul_naive" {
                if batch > 65535 {
                    return Err(Error::Compile(format!(
                        "{}: batch of {batch} exceeds a dispatch dimension",
                        step.nodes.join(", ")
                    )));
                }
                (
                    variant,
                    info,
                    bufs,
                    [
                        mm.n.div_ceil(64) as u32,
                        mm.m.div_ceil(64) as u32,
                        batch.max(1) as u32,
                    ],
                )
            } else {
                (
                    "matmul_naive",
                    info,
                    bufs,
                    flat_groups(batch * mm.m * mm.n, 64),
                )
            }
        }
        StepKind::Conv(cv) => {
            let mut info = cv.info.clone();
            info.extend([cv.act.code, cv.act.p0.to_bits(), cv.act.p1.to_bits()]);
            let n = info[0] as usize;
            let bufs = vec![cv.out, cv.x, cv.w, cv.bias.unwrap_or(cv.w)];
            ("conv2d", info, bufs, flat_groups(n, 64))
        }
        StepKind::Raw {
            kernel,
            info,
            bufs,
            groups,
        } => (*kernel, info.clone(), bufs.clone(), *groups),
    })
}

/// Writes `plan.json`, one `.wgsl` per kernel and `weights.bin` into `dir` (created if needed);
/// files are written under temporary names and renamed, so a failure leaves no partial plan.
pub fn write_dir(c: &Compiled, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, src) in &c.shaders {
        files.push((name.clone(), src.as_bytes().to_vec()));
    }
    files.push(("weights.bin".into(), c.weights.clone()));
    let json = serde_json::to_vec_pretty(&c.plan)
        .map_err(|e| Error::Compile(format!("serialising the plan: {e}")))?;
    files.push(("plan.json".into(), json));
    let mut written = Vec::new();
    for (name, bytes) in &files {
        let tmp = dir.join(format!(".{name}.partial"));
        if let Err(e) = std::fs::write(&tmp, bytes) {
            for t in &written {
                let _ = std::fs::remove_file(t);
            }
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        written.push(tmp);
    }
    for (name, _) in &files {
        let tmp = dir.join(format!(".{name}.partial"));
        let dst = dir.join(name);
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    Ok(())
}

/// Reads a plan folder written by [`write_dir`]: the plan, its weights and every kernel it
/// names (file names are checked to stay inside the folder).
pub fn read_dir(dir: &Path) -> Result<Compiled> {
    let plan_path = dir.join("plan.json");
    let text = std::fs::read(&plan_path).map_err(|e| Error::io(&plan_path, e))?;
    let plan: Plan = serde_json::from_slice(&text)
        .map_err(|e| Error::bad_model(&plan_path, format!("not a graft plan: {e}")))?;
    if plan.format != plan::FORMAT || plan.version != plan::VERSION {
        return Err(Error::bad_model(
            &plan_path,
            format!(
                "format {} version {} is not {} version {}",
                plan.format,
                plan.version,
                plan::FORMAT,
                plan::VERSION
            ),
        ));
    }
    let inside = |name: &str| -> Result<std::path::PathBuf> {
        let p = Path::new(name);
        if p.components().count() != 1
            || !matches!(p.components().next(), Some(std::path::Component::Normal(_)))
        {
            return Err(Error::bad_model(
                &plan_path,
                format!("file '{name}' is not a plain name inside the plan folder"),
            ));
        }
        Ok(dir.join(p))
    };
    let wpath = inside(&plan.weights.file)?;
    let weights = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    if weights.len() as u64 != plan.weights.bytes {
        return Err(Error::bad_model(
            &wpath,
            format!(
                "holds {} bytes; the plan says {}",
                weights.len(),
                plan.weights.bytes
            ),
        ));
    }
    plan.validate(weights.len() as u64)
        .map_err(|m| Error::bad_model(&plan_path, m))?;
    let mut shaders = BTreeMap::new();
    for k in &plan.kernels {
        if shaders.contains_key(&k.shader) {
            continue;
        }
        let p = inside(&k.shader)?;
        let src = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        shaders.insert(k.shader.clone(), src);
    }
    Ok(Compiled {
        plan,
        weights,
        shaders,
    })
}
