//! The execution plan: everything a WebGPU host needs to run a compiled model, as written to
//! `plan.json` (format documented in docs/plan-format.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "graft-plan";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub format: String,
    pub version: u32,
    /// The ONNX file the plan was compiled from, and its size and modification time, so that a
    /// plan run with other shapes can be recompiled from it.
    pub source: Source,
    /// The shapes (and, for inputs whose values decide shapes, the values) this plan is
    /// specialised for.
    pub specialised_for: Specialisation,
    /// Whether kernels use `f16`, so the adapter needs `shader-f16`. Only float16 matmul
    /// weights are held as f16 (with `--shader-f16`); all computation is in f32.
    pub shader_f16: bool,
    /// 32-bit words of per-dispatch info; dispatch `i`'s words live at byte
    /// `i * info_stride_bytes` of one uniform buffer.
    pub info_words: u32,
    pub info_stride_bytes: u32,
    pub weights: WeightsFile,
    pub buffers: Vec<Buffer>,
    pub kernels: Vec<Kernel>,
    pub dispatches: Vec<Dispatch>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub path: String,
    pub bytes: u64,
    pub modified_unix_s: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Specialisation {
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    pub input_values: BTreeMap<String, Vec<i64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WeightsFile {
    pub file: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BufferKind {
    /// Filled once from `weights.bin` (`weights_offset`, `size` bytes).
    Weight,
    /// Written by the host before each run.
    Input,
    /// Written by dispatches; may hold different values over its lifetime.
    Activation,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Buffer {
    pub kind: BufferKind,
    /// Bytes (a multiple of 4, at least 4).
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub weights_offset: Option<u64>,
    /// First and last dispatch that use the buffer (activations only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lifetime: Option<[usize; 2]>,
    /// Values held, for reading plans.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Binding {
    pub binding: u32,
    /// "uniform", "read-only-storage" or "storage".
    #[serde(rename = "type")]
    pub ty: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Kernel {
    /// Kernel name, e.g. "matmul_tiled".
    pub name: String,
    /// WGSL file in the plan folder.
    pub shader: String,
    pub entry_point: String,
    /// Pipeline-overridable constants.
    pub overrides: BTreeMap<String, f64>,
    /// Binding 0 is always the info uniform; the rest are storage buffers in order.
    pub bindings: Vec<Binding>,
    /// Invocations per workgroup, for reading dispatch sizes.
    pub workgroup_size: [u32; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dispatch {
    pub kernel: usize,
    /// ONNX nodes this dispatch computes (several when fused).
    pub nodes: Vec<String>,
    /// Buffers for bindings 1.. of the kernel, in order.
    pub buffers: Vec<usize>,
    pub workgroups: [u32; 3],
    pub info: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Port {
    pub name: String,
    /// ONNX element type name, e.g. "float32", "int64", "bool".
    pub dtype: String,
    /// Element type in the buffer: "f32" or "i32" (int64 and other integers narrowed, bool as
    /// 0/1).
    pub storage: String,
    pub shape: Vec<usize>,
    pub buffer: usize,
}

impl Plan {
    /// Checks that every index and size in the plan is consistent, so a runner can use them
    /// without further checks: kernels, buffers and ports referenced exist, ports fit their
    /// buffers, weights lie inside the weights file, info fits its slot.
    pub fn validate(&self, weights_len: u64) -> Result<(), String> {
        const MAX_BUFFER: u64 = 1 << 40;
        if u64::from(self.info_words) * 4 > u64::from(self.info_stride_bytes) {
            return Err("info_words do not fit info_stride_bytes".into());
        }
        for (i, b) in self.buffers.iter().enumerate() {
            if b.size > MAX_BUFFER {
                return Err(format!("buffer {i} claims {} bytes", b.size));
            }
            if let Some(off) = b.weights_offset {
                let end = off.checked_add(b.size).filter(|&e| e <= weights_len);
                if end.is_none() {
                    return Err(format!(
                        "buffer {i} reads bytes {off}.. beyond the {weights_len}-byte weights"
                    ));
                }
            } else if b.kind == BufferKind::Weight {
                return Err(format!("weight buffer {i} has no weights_offset"));
            }
        }
        for (i, k) in self.kernels.iter().enumerate() {
            if k.bindings.is_empty() {
                return Err(format!("kernel {i} ({}) has no bindings", k.name));
            }
        }
        for (i, d) in self.dispatches.iter().enumerate() {
            let k = self
                .kernels
                .get(d.kernel)
                .ok_or_else(|| format!("dispatch {i} names kernel {}", d.kernel))?;
            if d.buffers.len() + 1 != k.bindings.len() {
                return Err(format!(
                    "dispatch {i} binds {} buffers; kernel {} takes {}",
                    d.buffers.len(),
                    k.name,
                    k.bindings.len() - 1
                ));
            }
            if let Some(b) = d.buffers.iter().find(|&&b| b >= self.buffers.len()) {
                return Err(format!("dispatch {i} names buffer {b}"));
            }
            if d.info.len() > self.info_words as usize {
                return Err(format!("dispatch {i} has {} info words", d.info.len()));
            }
        }
        for p in self.inputs.iter().chain(&self.outputs) {
            let b = self
                .buffers
                .get(p.buffer)
                .ok_or_else(|| format!("'{}' names buffer {}", p.name, p.buffer))?;
            let words = p
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .and_then(|n| n.checked_mul(4));
            if words.is_none_or(|w| w > b.size.max(4)) {
                return Err(format!(
                    "'{}' of shape {:?} does not fit buffer {} ({} bytes)",
                    p.name, p.shape, p.buffer, b.size
                ));
            }
            if p.storage != "f32" && p.storage != "i32" {
                return Err(format!("'{}' has storage '{}'", p.name, p.storage));
            }
        }
        Ok(())
    }
}
