//! Lowering state: the value table (compile-time constants or GPU buffers with concrete shapes),
//! logical buffers and the list of steps, plus the helpers every op lowering uses.

use std::collections::HashMap;
use std::rc::Rc;

use crate::eval::TensorValue;
use crate::ir::dtype::code;
use crate::ir::{Graph, Node, NodeId, ValueId};

use super::BufId;
use super::program::Program;

/// Why lowering stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Fail {
    /// The op, or this form of it, has no kernel; the message says which.
    Unsupported(String),
    /// The model is inconsistent (shapes, attributes).
    Invalid(String),
    /// A value that decides shapes is only known at run time.
    NeedsValue { value: String, msg: String },
}

pub type Res<T> = std::result::Result<T, Fail>;

/// How elements are held on the GPU: every element is one 32-bit word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    I32,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::I32 => "i32",
        }
    }
}

/// The GPU storage of an ONNX element type, if it has one.
pub fn storage_of(dtype: i32) -> Option<Storage> {
    match dtype {
        code::FLOAT | code::FLOAT16 | code::BFLOAT16 => Some(Storage::F32),
        code::INT64
        | code::INT32
        | code::INT16
        | code::INT8
        | code::UINT8
        | code::UINT16
        | code::UINT32
        | code::UINT64
        | code::BOOL => Some(Storage::I32),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub enum Data {
    Const(Rc<TensorValue>),
    Gpu(BufId),
}

/// A value during lowering: concrete shape, ONNX element type, and where it lives.
#[derive(Debug, Clone)]
pub struct Val {
    pub shape: Vec<usize>,
    pub dtype: i32,
    pub data: Data,
}

impl Val {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn konst(&self) -> Option<&Rc<TensorValue>> {
        match &self.data {
            Data::Const(t) => Some(t),
            Data::Gpu(_) => None,
        }
    }
    pub fn is_float(&self) -> bool {
        storage_of(self.dtype) == Some(Storage::F32)
    }
}

#[derive(Debug, Clone)]
pub enum BufKind {
    /// Constant data, already converted to 32-bit words.
    Weight(Rc<Vec<u8>>),
    Input,
    Activation,
}

#[derive(Debug, Clone)]
pub struct LBuf {
    pub bytes: u64,
    pub kind: BufKind,
    pub names: Vec<String>,
}

/// A fixed-function matrix product with its epilogue (see shaders/matmul.wgsl).
#[derive(Debug, Clone)]
pub struct MatMulStep {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Per batch dimension: extent, A stride, B stride, bias stride.
    pub batch: Vec<[usize; 4]>,
    pub a: BufId,
    pub a_ms: usize,
    pub a_ks: usize,
    pub b: BufId,
    pub b_ks: usize,
    pub b_ns: usize,
    pub alpha: f32,
    /// B is held as f16 (constant weights with `shader-f16`).
    pub b_f16: bool,
    /// Bias buffer, m-stride, n-stride.
    pub bias: Option<(BufId, usize, usize)>,
    pub act: Activation,
    pub out: BufId,
}

/// The epilogue activations of the matmul and conv kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Activation {
    pub code: u32,
    pub p0: f32,
    pub p1: f32,
}

impl Activation {
    pub const NONE: Activation = Activation {
        code: 0,
        p0: 0.0,
        p1: 0.0,
    };
}

#[derive(Debug, Clone)]
pub struct ConvStep {
    /// info words 0..=17 of shaders/conv2d.wgsl (activation words are filled at encode time).
    pub info: Vec<u32>,
    pub x: BufId,
    pub w: BufId,
    pub bias: Option<BufId>,
    pub act: Activation,
    pub out: BufId,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Elementwise(Program),
    MatMul(MatMulStep),
    Conv(ConvStep),
    /// Any other kernel: output buffer first, then inputs, in binding order.
    Raw {
        kernel: &'static str,
        info: Vec<u32>,
        bufs: Vec<BufId>,
        groups: [u32; 3],
    },
}

#[derive(Debug, Clone)]
pub struct Step {
    pub nodes: Vec<String>,
    pub kind: StepKind,
}

impl Step {
    /// The buffer written.
    pub fn out(&self) -> BufId {
        match &self.kind {
            StepKind::Elementwise(p) => p.out,
            StepKind::MatMul(m) => m.out,
            StepKind::Conv(c) => c.out,
            StepKind::Raw { bufs, .. } => bufs[0],
        }
    }
    /// The buffers read.
    pub fn reads(&self) -> Vec<BufId> {
        match &self.kind {
            StepKind::Elementwise(p) => p.operands.iter().map(|o| o.buf).collect(),
            StepKind::MatMul(m) => {
                let mut v = vec![m.a, m.b];
                v.extend(m.bias.map(|b| b.0));
                v
            }
            StepKind::Conv(c) => {
                let mut v = vec![c.x, c.w];
                v.extend(c.bias);
                v
            }
            StepKind::Raw { bufs, .. } => bufs[1..].to_vec(),
        }
    }
}

/// The lowering state.
pub struct Lowerer<'g> {
    pub graph: &'g Graph,
    pub opset: i64,
    pub vals: HashMap<ValueId, Val>,
    pub bufs: Vec<LBuf>,
    pub steps: Vec<Step>,
    /// Constants already uploaded, by value, so each is stored once.
    /// (keyed by the constant's address; the map keeps it alive so the address is not reused)
    pub uploaded: HashMap<usize, (Rc<TensorValue>, BufId)>,
    /// Constants uploaded as f16, by address.
    pub uploaded_f16: HashMap<usize, (Rc<TensorValue>, BufId)>,
    /// The node being lowered, for messages and step labels.
    pub node: Option<NodeId>,
    /// Whether f16 kernels may be used (see `CompileOptions::shader_f16`).
    pub shader_f16: bool,
}

impl<'g> Lowerer<'g> {
    pub fn new(graph: &'g Graph, opset: i64) -> Self {
        Lowerer {
            graph,
            opset,
            vals: HashMap::new(),
            bufs: Vec::new(),
            steps: Vec::new(),
            uploaded: HashMap::new(),
            uploaded_f16: HashMap::new(),
            node: None,
            shader_f16: false,
        }
    }

    pub fn cur(&self) -> &'g Node {
        self.graph.node(self.node.expect("lowering a node"))
    }

    pub fn node_name(&self) -> String {
        let n = self.cur();
        if n.name.is_empty() {
            format!("{}#{}", n.op_type, n.order)
        } else {
            n.name.clone()
        }
    }

    pub fn unsupported(&self, what: impl std::fmt::Display) -> Fail {
        Fail::Unsupported(what.to_string())
    }

    pub fn invalid(&self, what: impl std::fmt::Display) -> Fail {
        Fail::Invalid(what.to_string())
    }

    /// Input `i` of the current node, `None` when omitted.
    pub fn opt(&self, i: usize) -> Res<Option<Val>> {
        let n = self.cur();
        match n.inputs.get(i).copied().flatten() {
            None => Ok(None),
            Some(v) => match self.vals.get(&v) {
                Some(val) => Ok(Some(val.clone())),
                None => Err(self.invalid(format!(
                    "input '{}' is not defined before this node",
                    self.graph.value(v).name
                ))),
            },
        }
    }

    pub fn req(&self, i: usize) -> Res<Val> {
        self.opt(i)?
            .ok_or_else(|| self.invalid(format!("input {i} is required")))
    }

    pub fn input_name(&self, i: usize) -> String {
        self.cur()
            .inputs
            .get(i)
            .copied()
            .flatten()
            .map(|v| self.graph.value(v).name.clone())
            .unwrap_or_default()
    }

    /// Input `i` as a compile-time constant (it decides shapes or is otherwise needed now).
    pub fn konst(&self, i: usize, what: &str) -> Res<Option<Rc<TensorValue>>> {
        match self.opt(i)? {
            None => Ok(None),
            Some(v) => match v.konst() {
                Some(t) => Ok(Some(t.clone())),
                None => Err(Fail::NeedsValue {
                    value: self.input_name(i),
                    msg: format!(
                        "its {what} (input '{}') must be known at compile time",
                        self.input_name(i)
                    ),
                }),
            },
        }
    }

    pub fn ints(&self, i: usize, what: &str) -> Res<Option<Vec<i64>>> {
        match self.konst(i, what)? {
            None => Ok(None),
            Some(t) => t
                .to_i64_vec()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("{what} must be integers"))),
        }
    }

    pub fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.cur().attr_int(name).unwrap_or(default)
    }

    pub fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.cur().attr_float(name).unwrap_or(default)
    }

    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.cur().attr_ints(name).map(|v| v.to_vec())
    }

    pub fn attr_s(&self, name: &str, default: &str) -> String {
        self.cur()
            .attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    /// Normalises a possibly negative axis.
    pub fn axis(&self, axis: i64, rank: usize) -> Res<usize> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r.max(1) {
            return Err(self.invalid(format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(a as usize)
    }

    pub fn new_buf(&mut self, bytes: u64, kind: BufKind, name: &str) -> BufId {
        self.bufs.push(LBuf {
            bytes: bytes.max(4),
            kind,
            names: vec![name.to_string()],
        });
        BufId(self.bufs.len() - 1)
    }

    /// The GPU buffer holding a value, uploading constants once.
    pub fn buf(&mut self, v: &Val) -> Res<BufId> {
        match &v.data {
            Data::Gpu(b) => Ok(*b),
            Data::Const(t) => {
                let key = Rc::as_ptr(t) as usize;
                if let Some((_, b)) = self.uploaded.get(&key) {
                    return Ok(*b);
                }
                let bytes = to_words(t).map_err(|m| self.unsupported(m))?;
                let name = format!("constant {}", self.uploaded.len());
                let b = self.new_buf(bytes.len() as u64, BufKind::Weight(Rc::new(bytes)), &name);
                self.uploaded.insert(key, (t.clone(), b));
                Ok(b)
            }
        }
    }

    /// A constant float16 weight as f16 halves, when f16 kernels are allowed; `None` otherwise.
    pub fn buf_f16(&mut self, v: &Val) -> Option<BufId> {
        if !self.shader_f16 || v.dtype != code::FLOAT16 {
            return None;
        }
        let t = v.konst()?;
        let key = Rc::as_ptr(t) as usize;
        if let Some((_, b)) = self.uploaded_f16.get(&key) {
            return Some(*b);
        }
        let a = t.to_f32_array()?;
        let bytes: Vec<u8> = a
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let name = format!("f16 constant {}", self.uploaded_f16.len());
        let b = self.new_buf(bytes.len() as u64, BufKind::Weight(Rc::new(bytes)), &name);
        self.uploaded_f16.insert(key, (t.clone(), b));
        Some(b)
    }

    /// A fresh activation buffer for output `slot` of the current node.
    pub fn out_buf(&mut self, slot: usize, shape: &[usize], dtype: i32) -> Res<BufId> {
        if storage_of(dtype).is_none() {
            return Err(self.unsupported(format!(
                "element type {} has no GPU storage",
                crate::ir::dtype::name(dtype)
            )));
        }
        let n = checked_numel(shape).ok_or_else(|| {
            self.unsupported(format!(
                "an output of shape {shape:?} exceeds the 2^30 elements one GPU buffer holds"
            ))
        })?;
        let name = self.out_name(slot);
        let b = self.new_buf(4 * n as u64, BufKind::Activation, &name);
        self.set_out(
            slot,
            Val {
                shape: shape.to_vec(),
                dtype,
                data: Data::Gpu(b),
            },
        );
        Ok(b)
    }

    pub fn out_name(&self, slot: usize) -> String {
        self.cur()
            .outputs
            .get(slot)
            .copied()
            .flatten()
            .map(|v| self.graph.value(v).name.clone())
            .unwrap_or_default()
    }

    pub fn set_out(&mut self, slot: usize, val: Val) {
        if let Some(Some(v)) = self.cur().outputs.get(slot).copied() {
            if let Data::Gpu(b) = &val.data {
                let name = self.graph.value(v).name.clone();
                if !self.bufs[b.0].names.contains(&name) {
                    self.bufs[b.0].names.push(name);
                }
            }
            self.vals.insert(v, val);
        }
    }

    pub fn push(&mut self, kind: StepKind) {
        let name = self.node_name();
        self.steps.push(Step {
            nodes: vec![name],
            kind,
        });
    }

    pub fn raw(
        &mut self,
        kernel: &'static str,
        info: Vec<u32>,
        bufs: Vec<BufId>,
        groups: [u32; 3],
    ) {
        self.push(StepKind::Raw {
            kernel,
            info,
            bufs,
            groups,
        });
    }
}

/// Elements of a shape, if kernels can index them with 32-bit words.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= u32::MAX as usize / 4)
}

/// Workgroups for a flat kernel over `n` invocations (x capped at 65535, the rest in y).
pub fn flat_groups(n: usize, wg: usize) -> [u32; 3] {
    let g = n.div_ceil(wg).max(1);
    let x = g.min(65535);
    [x as u32, g.div_ceil(x) as u32, 1]
}

/// One workgroup per row, rows split over x and y.
pub fn row_groups(rows: usize) -> [u32; 3] {
    flat_groups(rows, 1)
}

/// A constant as 32-bit GPU words (f32, or i32 for integers and bool).
pub fn to_words(t: &TensorValue) -> Result<Vec<u8>, String> {
    let dtype = t.data_type();
    match storage_of(dtype) {
        Some(Storage::F32) => {
            let a = t
                .cast(code::FLOAT)
                .map_err(|e| e.to_string())?
                .to_f32_array()
                .ok_or("not a float tensor")?;
            Ok(a.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        Some(Storage::I32) => {
            let v: Vec<i64> = match t {
                TensorValue::Bool(a) => a.iter().map(|&b| b as i64).collect(),
                TensorValue::U64(a) => a.iter().map(|&x| x.min(i64::MAX as u64) as i64).collect(),
                other => other.to_i64_vec().ok_or("not an integer tensor")?,
            };
            let mut out = Vec::with_capacity(v.len() * 4);
            for x in v {
                let w = i32::try_from(x).map_err(|_| {
                    format!(
                        "the {} value {x} does not fit the GPU's 32-bit integers",
                        crate::ir::dtype::name(dtype)
                    )
                })?;
                out.extend(w.to_le_bytes());
            }
            Ok(out)
        }
        None => Err(format!(
            "element type {} has no GPU storage",
            crate::ir::dtype::name(dtype)
        )),
    }
}
