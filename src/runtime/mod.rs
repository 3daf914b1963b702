//! Runs an execution plan ([`crate::codegen::plan::Plan`]) with wgpu.
//!
//! [`Gpu`] owns the device; [`Executable`] creates the plan's buffers (weights uploaded once),
//! pipelines (one per kernel) and bind groups (one per dispatch), and runs it: write inputs,
//! encode every dispatch in one compute pass, read outputs back. Tensors cross the host boundary
//! as 32-bit words: int64 is narrowed to i32 with a range check, and read back widened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::codegen::plan::{BufferKind, Plan, Port};
use crate::eval::TensorValue;
use crate::ir::dtype::code;
use crate::{Error, Result};

/// A wgpu device and queue, with the errors wgpu reports asynchronously collected rather than
/// panicking.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: String,
    pub backend: String,
    pub shader_f16: bool,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Gpu {
    /// Opens the first adapter wgpu offers (high-performance preference), with the adapter's own
    /// limits so large models fit.
    pub fn new() -> Result<Gpu> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| {
            Error::Gpu(format!(
                "no GPU adapter found ({e}); on Linux install a Vulkan driver, e.g. \
                 `apt-get install mesa-vulkan-drivers libvulkan1` for the software one"
            ))
        })?;
        let info = adapter.get_info();
        let features = adapter.features() & wgpu::Features::SHADER_F16;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("graft"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("opening {}: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Gpu {
            device,
            queue,
            adapter: info.name.clone(),
            backend: format!("{:?}", info.backend),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            errors,
        })
    }

    /// Fails with the first error wgpu reported since the last check.
    pub fn check(&self, during: &str) -> Result<()> {
        let mut v = self
            .errors
            .lock()
            .map_err(|_| Error::Gpu("error log poisoned".into()))?;
        if let Some(first) = v.first().cloned() {
            v.clear();
            return Err(Error::Gpu(format!("{during}: {first}")));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!("{} ({})", self.adapter, self.backend)
    }

    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
        Ok(())
    }
}

/// A plan made ready on a device.
pub struct Executable {
    plan: Plan,
    buffers: Vec<wgpu::Buffer>,
    pipelines: Vec<wgpu::ComputePipeline>,
    bind_groups: Vec<wgpu::BindGroup>,
    _info: wgpu::Buffer,
}

impl Executable {
    /// Creates buffers, uploads weights, builds pipelines from `shader(file)` and bind groups.
    pub fn new(
        gpu: &Gpu,
        plan: &Plan,
        weights: &[u8],
        shader: &dyn Fn(&str) -> Result<String>,
    ) -> Result<Executable> {
        plan.validate(weights.len() as u64)
            .map_err(|m| Error::Gpu(format!("invalid plan: {m}")))?;
        let dev = &gpu.device;
        if plan.shader_f16 && !gpu.shader_f16 {
            return Err(Error::Gpu(format!(
                "the plan uses f16 kernels and {} lacks shader-f16; compile it without \
                 --shader-f16",
                gpu.describe()
            )));
        }
        let limits = dev.limits();
        let mut buffers = Vec::with_capacity(plan.buffers.len());
        for (i, b) in plan.buffers.iter().enumerate() {
            // whole vec4s, so kernels may view any buffer as array<vec4<f32>>
            let size = b.size.max(16).next_multiple_of(16);
            if size > limits.max_buffer_size || size > limits.max_storage_buffer_binding_size {
                return Err(Error::Gpu(format!(
                    "buffer {i} ({}) needs {size} bytes; the adapter allows {} per binding",
                    b.values.first().map(|s| s.as_str()).unwrap_or("?"),
                    limits.max_storage_buffer_binding_size
                )));
            }
            let buf = dev.create_buffer(&wgpu::BufferDescriptor {
                label: b.values.first().map(|s| s.as_str()),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            if b.kind == BufferKind::Weight {
                let off = b.weights_offset.unwrap_or(0) as usize;
                let end = off + b.size as usize;
                let bytes = weights.get(off..end).ok_or_else(|| {
                    Error::Gpu(format!(
                        "weights file holds {} bytes; buffer {i} needs bytes {off}..{end}",
                        weights.len()
                    ))
                })?;
                let mut padded = bytes.to_vec();
                padded.resize(size as usize, 0);
                gpu.queue.write_buffer(&buf, 0, &padded);
            }
            buffers.push(buf);
        }
        // kernels
        let mut modules: HashMap<String, wgpu::ShaderModule> = HashMap::new();
        let mut pipelines = Vec::with_capacity(plan.kernels.len());
        for k in &plan.kernels {
            if !modules.contains_key(&k.shader) {
                let src = shader(&k.shader)?;
                crate::codegen::shaders::validate(&k.shader, &src).map_err(Error::Gpu)?;
                let m = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&k.shader),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                });
                modules.insert(k.shader.clone(), m);
            }
            let constants: Vec<(&str, f64)> =
                k.overrides.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let p = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&k.name),
                layout: None,
                module: &modules[&k.shader],
                entry_point: Some(&k.entry_point),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            pipelines.push(p);
        }
        gpu.check("creating pipelines")?;
        // per-dispatch info, one aligned slot each
        let stride = plan.info_stride_bytes as u64;
        if stride < (plan.info_words as u64) * 4
            || !stride.is_multiple_of(limits.min_uniform_buffer_offset_alignment as u64)
        {
            return Err(Error::Gpu(format!(
                "info stride {stride} does not suit this adapter"
            )));
        }
        let mut info_bytes = vec![0u8; (stride as usize) * plan.dispatches.len().max(1)];
        for (i, d) in plan.dispatches.iter().enumerate() {
            if d.info.len() > plan.info_words as usize {
                return Err(Error::Gpu(format!("dispatch {i} has too many info words")));
            }
            for (j, w) in d.info.iter().enumerate() {
                let at = i * stride as usize + 4 * j;
                info_bytes[at..at + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
        let info = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("info"),
            size: info_bytes.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&info, 0, &info_bytes);
        let mut bind_groups = Vec::with_capacity(plan.dispatches.len());
        for (i, d) in plan.dispatches.iter().enumerate() {
            let k = plan
                .kernels
                .get(d.kernel)
                .ok_or_else(|| Error::Gpu(format!("dispatch {i} names kernel {}", d.kernel)))?;
            if d.buffers.len() + 1 != k.bindings.len() {
                return Err(Error::Gpu(format!(
                    "dispatch {i} binds {} buffers; kernel {} takes {}",
                    d.buffers.len(),
                    k.name,
                    k.bindings.len().saturating_sub(1)
                )));
            }
            let layout = pipelines[d.kernel].get_bind_group_layout(0);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &info,
                    offset: i as u64 * stride,
                    size: wgpu::BufferSize::new(plan.info_words as u64 * 4),
                }),
            }];
            for (j, &b) in d.buffers.iter().enumerate() {
                let buf = buffers
                    .get(b)
                    .ok_or_else(|| Error::Gpu(format!("dispatch {i} names buffer {b}")))?;
                entries.push(wgpu::BindGroupEntry {
                    binding: j as u32 + 1,
                    resource: buf.as_entire_binding(),
                });
            }
            bind_groups.push(dev.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            }));
        }
        gpu.check("creating bind groups")?;
        gpu.wait()?;
        Ok(Executable {
            plan: plan.clone(),
            buffers,
            pipelines,
            bind_groups,
            _info: info,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Writes the inputs (by name; every plan input must be given, with the plan's shape).
    pub fn write_inputs(&self, gpu: &Gpu, inputs: &[(String, TensorValue)]) -> Result<()> {
        for port in &self.plan.inputs {
            let (_, t) = inputs
                .iter()
                .find(|(n, _)| *n == port.name)
                .ok_or_else(|| Error::Usage(format!("input '{}' was not given", port.name)))?;
            if t.shape() != port.shape.as_slice() {
                return Err(Error::Usage(format!(
                    "input '{}' has shape {:?}; the plan was compiled for {:?}",
                    port.name,
                    t.shape(),
                    port.shape
                )));
            }
            let bytes = to_storage(t, port)?;
            if !bytes.is_empty() {
                gpu.queue
                    .write_buffer(&self.buffers[port.buffer], 0, &bytes);
            }
        }
        Ok(())
    }

    /// Encodes and submits every dispatch, and waits for the device.
    pub fn dispatch(&self, gpu: &Gpu) -> Result<()> {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            for (i, d) in self.plan.dispatches.iter().enumerate() {
                let [x, y, z] = d.workgroups;
                if x == 0 || y == 0 || z == 0 {
                    continue;
                }
                pass.set_pipeline(&self.pipelines[d.kernel]);
                pass.set_bind_group(0, &self.bind_groups[i], &[]);
                pass.dispatch_workgroups(x, y, z);
            }
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait()?;
        gpu.check("running the plan")
    }

    /// Reads every output back as host tensors of the plan's ONNX types.
    pub fn read_outputs(&self, gpu: &Gpu) -> Result<Vec<(String, TensorValue)>> {
        let mut stagings = Vec::new();
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for port in &self.plan.outputs {
            let n: usize = port.shape.iter().product();
            let size = (4 * n as u64).max(4);
            let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&port.name),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.copy_buffer_to_buffer(&self.buffers[port.buffer], 0, &staging, 0, size);
            stagings.push(staging);
        }
        gpu.queue.submit([enc.finish()]);
        let mut out = Vec::new();
        for (port, staging) in self.plan.outputs.iter().zip(&stagings) {
            let slice = staging.slice(..);
            let done = Arc::new(Mutex::new(None));
            let d2 = done.clone();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                if let Ok(mut g) = d2.lock() {
                    *g = Some(r.is_ok());
                }
            });
            gpu.wait()?;
            if done.lock().ok().and_then(|g| *g) != Some(true) {
                return Err(Error::Gpu(format!("reading output '{}' failed", port.name)));
            }
            let words = {
                let view = slice
                    .get_mapped_range()
                    .map_err(|e| Error::Gpu(format!("mapping '{}': {e}", port.name)))?;
                view.to_vec()
            };
            staging.unmap();
            out.push((port.name.clone(), from_storage(&words, port)?));
        }
        gpu.check("reading outputs")?;
        Ok(out)
    }

    /// Writes inputs, runs and reads outputs.
    pub fn run(
        &self,
        gpu: &Gpu,
        inputs: &[(String, TensorValue)],
    ) -> Result<Vec<(String, TensorValue)>> {
        self.write_inputs(gpu, inputs)?;
        self.dispatch(gpu)?;
        self.read_outputs(gpu)
    }
}

/// A host tensor as the plan's 32-bit words.
fn to_storage(t: &TensorValue, port: &Port) -> Result<Vec<u8>> {
    let want = dtype_code(&port.dtype);
    if t.data_type() != want {
        return Err(Error::Usage(format!(
            "input '{}' has type {}; the model takes {}",
            port.name,
            crate::eval::dtype_name(t.data_type()),
            port.dtype
        )));
    }
    crate::codegen::to_words(t).map_err(|m| Error::Usage(format!("input '{}': {m}", port.name)))
}

/// 32-bit words back to a host tensor of the port's type.
fn from_storage(words: &[u8], port: &Port) -> Result<TensorValue> {
    let n: usize = port.shape.iter().product();
    let words = &words[..4 * n];
    let shape = ndarray::IxDyn(&port.shape);
    let bad = |e: ndarray::ShapeError| Error::Gpu(format!("output '{}': {e}", port.name));
    if port.storage == "f32" {
        let v: Vec<f32> = words
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let t = TensorValue::F32(ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad)?);
        let to = dtype_code(&port.dtype);
        return if to == code::FLOAT {
            Ok(t)
        } else {
            t.cast(to)
                .map_err(|e| Error::Gpu(format!("output '{}': {e}", port.name)))
        };
    }
    let v: Vec<i32> = words
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let a = ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad)?;
    let to = dtype_code(&port.dtype);
    if to == code::BOOL {
        return Ok(TensorValue::Bool(a.mapv(|x| x != 0)));
    }
    TensorValue::I32(a)
        .cast(to)
        .map_err(|e| Error::Gpu(format!("output '{}': {e}", port.name)))
}

/// The ONNX type code of a plan dtype name.
pub fn dtype_code(name: &str) -> i32 {
    match name {
        "float32" => code::FLOAT,
        "float16" => code::FLOAT16,
        "bfloat16" => code::BFLOAT16,
        "float64" => code::DOUBLE,
        "int64" => code::INT64,
        "int32" => code::INT32,
        "int16" => code::INT16,
        "int8" => code::INT8,
        "uint8" => code::UINT8,
        "uint16" => code::UINT16,
        "uint32" => code::UINT32,
        "uint64" => code::UINT64,
        "bool" => code::BOOL,
        _ => code::UNDEFINED,
    }
}

/// The plan name of an ONNX type code.
pub fn dtype_plan_name(dtype: i32) -> &'static str {
    match dtype {
        code::FLOAT => "float32",
        code::FLOAT16 => "float16",
        code::BFLOAT16 => "bfloat16",
        code::DOUBLE => "float64",
        code::INT64 => "int64",
        code::INT32 => "int32",
        code::INT16 => "int16",
        code::INT8 => "int8",
        code::UINT8 => "uint8",
        code::UINT16 => "uint16",
        code::UINT32 => "uint32",
        code::UINT64 => "uint64",
        code::BOOL => "bool",
        _ => "undefined",
    }
}
