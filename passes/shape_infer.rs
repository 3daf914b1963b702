//! `shape-infer`: infers element types and shapes of node outputs and records them as value_info.
//!
//! Rewrites: walks the graph in topological order and computes, for each output of a standard
//! (default-domain) operator, its element type and shape from the types of its inputs, its
//! attributes and the constant inputs that decide shapes (Reshape's shape, Squeeze/Unsqueeze and
//! Reduce* axes, Slice bounds, Expand/Tile/Pad/Resize/Split/TopK/Range/ConstantOfShape inputs),
//! read from initializers and Constant nodes. It also tracks the *values* of small integer tensors
//! (elements fixed, symbolic or unknown) through Shape/Size -> Gather/Slice -> Concat/Unsqueeze/
//! Squeeze/Reshape/Transpose/Cast/Expand, integer Add/Sub/Mul/Div/Mod/Max/Min, Equal/Where/Not,
//! Range and ConstantOfShape (the shape arithmetic exporters emit), so a Reshape fed by
//! `Concat(Shape(x)[0], 64)` or a Pad whose pads were reordered through Reshape/Slice/Transpose
//! gets its shape.
//! Symbolic dims (`batch`, `seq`) are kept and propagated; a dim that cannot be determined becomes
//! unknown (no value, no name) and a rank that cannot be determined leaves the shape out (element
//! type only). A value with no type gets a new value_info entry; a value whose declared shape has
//! unknown dims gets them filled in. One rewrite is one value whose type was added or refined, so a
//! second run reports 0.
//! Refuses: when an inferred type contradicts the one the model declares for a value (different
//! element type, rank, or fixed dim): the declaration is kept and the refusal names the value —
//! the model is inconsistent. It never adds or changes the types of graph inputs, outputs and
//! initializers (their types live in their declarations), never replaces a declared dim (a
//! symbolic name stays), and leaves outputs of unknown, custom-domain and subgraph operators and
//! nodes with malformed attributes untyped. MaxPool/AveragePool with ceil_mode leave a dim unknown
//! where ONNX's shape function and runtimes disagree (a last window starting in the end padding).
//! Sound because each rule is the operator's type and shape function from the ONNX operator
//! definitions; where a result depends on data that is not known (a non-constant shape input, a
//! symbolic dim in arithmetic whose result is not itself a dim), the dim is left unknown rather
//! than guessed, and integer arithmetic is checked so that malformed inputs skip the node.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto};

use crate::Result;
use crate::driver::{Pass, PassContext};
use crate::ir::dtype::code;
use crate::ir::{Graph, Model, Node, Tensor, TensorData, ValueId};

pub struct ShapeInfer;

/// Largest constant integer tensor whose contents are read or tracked.
const MAX_KNOWN: u64 = 4096;

/// One dimension of a shape (or one element of a tracked integer tensor).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
    Unknown,
}

use Dim::{Fixed, Sym, Unknown};

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fixed(v) => write!(f, "{v}"),
            Sym(s) => write!(f, "{s}"),
            Unknown => write!(f, "?"),
        }
    }
}

/// A tensor type: element type (0 when unknown) and shape (`None` when the rank is unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorTy {
    pub elem: i32,
    pub shape: Option<Vec<Dim>>,
}

impl TensorTy {
    fn new(elem: i32, shape: Option<Vec<Dim>>) -> Self {
        TensorTy { elem, shape }
    }
    fn shaped(elem: i32, shape: Vec<Dim>) -> Self {
        TensorTy {
            elem,
            shape: Some(shape),
        }
    }
}

impl fmt::Display for TensorTy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = if self.elem == 0 {
            "?"
        } else {
            crate::ir::dtype::name(self.elem)
        };
        match &self.shape {
            None => write!(f, "{e}"),
            Some(s) => {
                let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                write!(f, "{e}[{}]", dims.join(","))
            }
        }
    }
}

/// Reads a tensor type from a declaration; `None` for non-tensor types.
pub fn ty_from_proto(tp: &TypeProto) -> Option<TensorTy> {
    match &tp.value {
        Some(type_proto::Value::TensorType(t)) => Some(TensorTy {
            elem: t.elem_type,
            shape: t
                .shape
                .as_ref()
                .map(|s| s.dim.iter().map(dim_from_proto).collect()),
        }),
        _ => None,
    }
}

fn dim_from_proto(d: &Dimension) -> Dim {
    match &d.value {
        Some(dimension::Value::DimValue(v)) if *v >= 0 => Fixed(*v),
        Some(dimension::Value::DimParam(p)) if !p.is_empty() => Sym(p.clone()),
        _ => Unknown,
    }
}

fn set_dim(d: &mut Dimension, v: &Dim) {
    d.value = match v {
        Fixed(x) => Some(dimension::Value::DimValue(*x)),
        Sym(s) => Some(dimension::Value::DimParam(s.clone())),
        Unknown => None,
    };
}

fn shape_proto(dims: &[Dim]) -> TensorShapeProto {
    let mut s = TensorShapeProto::new();
    for d in dims {
        let mut dp = Dimension::new();
        set_dim(&mut dp, d);
        s.dim.push(dp);
    }
    s
}

/// Writes `ty` into a type declaration, keeping everything the old one said (denotations, dims).
fn ty_to_proto(old: Option<&TypeProto>, ty: &TensorTy) -> TypeProto {
    let mut tp = match old {
        Some(tp) if matches!(tp.value, Some(type_proto::Value::TensorType(_))) => tp.clone(),
        _ => TypeProto::new(),
    };
    let mut tt = match tp.value.take() {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => type_proto::Tensor::new(),
    };
    tt.elem_type = ty.elem;
    if let Some(dims) = &ty.shape {
        match tt.shape.as_mut() {
            Some(s) if s.dim.len() == dims.len() => {
                for (dp, d) in s.dim.iter_mut().zip(dims) {
                    if dim_from_proto(dp) == Unknown {
                        set_dim(dp, d);
                    }
                }
            }
            _ => tt.shape = Some(shape_proto(dims)).into(),
        }
    }
    tp.value = Some(type_proto::Value::TensorType(tt));
    tp
}

/// Outcome of checking an inferred type against a declared one.
#[derive(Debug, PartialEq)]
enum Merge {
    Same,
    Refined(TensorTy),
    Conflict,
}

/// Fills the unknown parts of `decl` from `inf`; never replaces what `decl` states.
fn merge(decl: &TensorTy, inf: &TensorTy) -> Merge {
    if decl.elem != 0 && inf.elem != 0 && decl.elem != inf.elem {
        return Merge::Conflict;
    }
    let elem = if decl.elem != 0 { decl.elem } else { inf.elem };
    let shape = match (&decl.shape, &inf.shape) {
        (None, s) => s.clone(),
        (Some(d), None) => Some(d.clone()),
        (Some(d), Some(i)) => {
            if d.len() != i.len() {
                return Merge::Conflict;
            }
            let mut out = Vec::with_capacity(d.len());
            for (a, b) in d.iter().zip(i) {
                match (a, b) {
                    (Fixed(x), Fixed(y)) if x != y => return Merge::Conflict,
                    (Unknown, b) => out.push(b.clone()),
                    (a, _) => out.push(a.clone()),
                }
            }
            Some(out)
        }
    };
    let merged = TensorTy { elem, shape };
    if &merged == decl {
        Merge::Same
    } else {
        Merge::Refined(merged)
    }
}

/// Known contents of a small integer tensor (row-major), elements possibly symbolic.
#[derive(Clone, Debug, PartialEq)]
struct KVal {
    shape: Vec<usize>,
    items: Vec<Dim>,
}

impl KVal {
    fn scalar(d: Dim) -> Self {
        KVal {
            shape: vec![],
            items: vec![d],
        }
    }
    fn vector(items: Vec<Dim>) -> Self {
        KVal {
            shape: vec![items.len()],
            items,
        }
    }
    fn fixed(&self) -> Option<Vec<i64>> {
        self.items
            .iter()
            .map(|d| match d {
                Fixed(v) => Some(*v),
                _ => None,
            })
            .collect()
    }
    /// The elements at the cartesian product of per-axis index lists.
    fn select(&self, sel: &[Vec<usize>]) -> Option<KVal> {
        if sel.len() != self.shape.len() {
            return None;
        }
        let shape: Vec<usize> = sel.iter().map(|s| s.len()).collect();
        let count = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))?;
        if count as u64 > MAX_KNOWN {
            return None;
        }
        let strides = strides(&self.shape);
        let mut items = Vec::with_capacity(count);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..count {
            let mut flat = 0;
            for (a, &i) in idx.iter().enumerate() {
                flat += sel[a][i] * strides[a];
            }
            items.push(self.items.get(flat)?.clone());
            // Advance the multi-index (last axis fastest).
            for a in (0..idx.len()).rev() {
                idx[a] += 1;
                if idx[a] < shape[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
        Some(KVal { shape, items })
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1usize; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        st[a] = st[a + 1].saturating_mul(shape[a + 1]);
    }
    st
}

/// Broadcasts known tensors to a common shape (numpy rules); `None` if they do not broadcast.
fn kval_broadcast(args: &[KVal]) -> Option<(Vec<usize>, Vec<Vec<Dim>>)> {
    let rank = args.iter().map(|k| k.shape.len()).max().unwrap_or(0);
    let mut shape = vec![1usize; rank];
    for k in args {
        let off = rank - k.shape.len();
        for (i, &d) in k.shape.iter().enumerate() {
            let o = &mut shape[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    let mut out = Vec::with_capacity(args.len());
    for k in args {
        let off = rank - k.shape.len();
        let sel: Vec<Vec<usize>> = (0..k.shape.len())
            .map(|i| {
                if k.shape[i] == 1 {
                    vec![0; shape[off + i]]
                } else {
                    (0..k.shape[i]).collect()
                }
            })
            .collect();
        let mut items = k.select(&sel)?.items;
        // Leading broadcast axes repeat the whole block.
        let lead: usize = shape[..off]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))?;
        if (lead as u64).checked_mul(items.len() as u64)? > MAX_KNOWN {
            return None;
        }
        items = (0..lead).flat_map(|_| items.iter().cloned()).collect();
        out.push(items);
    }
    Some((shape, out))
}

/// A fully fixed, small shape.
fn fixed_shape(ty: Option<&TensorTy>) -> Option<Vec<usize>> {
    ty?.shape
        .as_ref()?
        .iter()
        .map(|d| match d {
            Fixed(v) => usize::try_from(*v).ok(),
            _ => None,
        })
        .collect()
}

fn is_int(elem: i32) -> bool {
    matches!(
        elem,
        code::INT64
            | code::INT32
            | code::INT16
            | code::INT8
            | code::UINT8
            | code::UINT16
            | code::UINT32
            | code::UINT64
    )
}

/// Integer contents of a small constant tensor (little-endian bytes).
fn tensor_ints(t: &Tensor) -> Option<KVal> {
    if t.numel() > MAX_KNOWN {
        return None;
    }
    let n = t.numel() as usize;
    let size = match t.dtype {
        code::INT64 | code::UINT64 => 8,
        code::INT32 | code::UINT32 => 4,
        code::INT16 | code::UINT16 => 2,
        code::INT8 | code::UINT8 | code::BOOL => 1,
        _ => return None,
    };
    let bytes = t.bytes("").ok()?;
    if bytes.len() != n.checked_mul(size)? {
        return None;
    }
    let items = bytes
        .chunks_exact(size)
        .map(|c| {
            let v = match t.dtype {
                code::INT64 => i64::from_le_bytes(c.try_into().ok()?),
                code::UINT64 => i64::try_from(u64::from_le_bytes(c.try_into().ok()?)).ok()?,
                code::INT32 => i32::from_le_bytes(c.try_into().ok()?) as i64,
                code::UINT32 => u32::from_le_bytes(c.try_into().ok()?) as i64,
                code::INT16 => i16::from_le_bytes(c.try_into().ok()?) as i64,
                code::UINT16 => u16::from_le_bytes(c.try_into().ok()?) as i64,
                code::INT8 => c[0] as i8 as i64,
                code::BOOL => i64::from(c[0] != 0),
                _ => c[0] as i64,
            };
            Some(Fixed(v))
        })
        .collect::<Option<Vec<Dim>>>()?;
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()?;
    Some(KVal { shape, items })
}

/// Real contents of a small constant float tensor (any rank).
fn tensor_floats(t: &Tensor) -> Option<Vec<f64>> {
    if t.numel() > MAX_KNOWN {
        return None;
    }
    let n = t.numel() as usize;
    let bytes = t.bytes("").ok()?;
    let size = match t.dtype {
        code::DOUBLE => 8,
        code::FLOAT => 4,
        code::FLOAT16 | code::BFLOAT16 => 2,
        _ => {
            return tensor_ints(t)
                .and_then(|k| k.fixed())
                .map(|v| v.into_iter().map(|x| x as f64).collect());
        }
    };
    if bytes.len() != n.checked_mul(size)? {
        return None;
    }
    bytes
        .chunks_exact(size)
        .map(|c| {
            Some(match t.dtype {
                code::DOUBLE => f64::from_le_bytes(c.try_into().ok()?),
                code::FLOAT => f32::from_le_bytes(c.try_into().ok()?) as f64,
                code::FLOAT16 => half::f16::from_le_bytes(c.try_into().ok()?).to_f64(),
                _ => half::bf16::from_le_bytes(c.try_into().ok()?).to_f64(),
            })
        })
        .collect()
}

/// Normalizes an axis into `0..rank`.
fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a.checked_add(r)? } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// Normalized, distinct axes.
fn norm_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = norm_axis(a, rank)?;
        if out.contains(&a) {
            return None;
        }
        out.push(a);
    }
    Some(out)
}

/// The broadcast of two dims (multidirectional); `None` when they cannot broadcast.
fn bcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    Some(match (a, b) {
        (Fixed(1), x) | (x, Fixed(1)) => x.clone(),
        (Fixed(x), Fixed(y)) => {
            if x != y {
                return None;
            }
            Fixed(*x)
        }
        // The other dim must be 1 or equal to this one: either way the result is this one.
        (Fixed(x), _) | (_, Fixed(x)) => Fixed(*x),
        (Sym(p), Sym(q)) if p == q => Sym(p.clone()),
        _ => Unknown,
    })
}

/// Numpy-style broadcast of shapes.
fn broadcast(shapes: &[&[Dim]]) -> Option<Vec<Dim>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Fixed(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[off + i] = bcast_dim(&out[off + i], d)?;
        }
    }
    Some(out)
}

/// Two dims that must be equal: the more precise one; `None` when two fixed dims differ.
fn unify(a: &Dim, b: &Dim) -> Option<Dim> {
    Some(match (a, b) {
        (Fixed(x), Fixed(y)) => {
            if x != y {
                return None;
            }
            Fixed(*x)
        }
        (Fixed(x), _) | (_, Fixed(x)) => Fixed(*x),
        (Sym(p), _) => Sym(p.clone()),
        (_, Sym(q)) => Sym(q.clone()),
        _ => Unknown,
    })
}

/// Product of dims: fixed when all are fixed (or one is 0), a symbol when it is the only
/// non-unit factor, else unknown.
fn dim_product(dims: &[Dim]) -> Dim {
    if dims.contains(&Fixed(0)) {
        return Fixed(0);
    }
    let mut p: i64 = 1;
    let mut other: Option<&Dim> = None;
    let mut others = 0;
    for d in dims {
        match d {
            Fixed(v) => match p.checked_mul(*v) {
                Some(x) => p = x,
                None => return Unknown,
            },
            d => {
                others += 1;
                other = Some(d);
            }
        }
    }
    match (others, other) {
        (0, _) => Fixed(p),
        (1, Some(d)) if p == 1 => d.clone(),
        _ => Unknown,
    }
}

fn dim_add(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Fixed(x), Fixed(y)) => x.checked_add(*y).map_or(Unknown, Fixed),
        (x, Fixed(0)) | (Fixed(0), x) => x.clone(),
        _ => Unknown,
    }
}

fn dim_sub(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Fixed(x), Fixed(y)) => x.checked_sub(*y).map_or(Unknown, Fixed),
        (x, Fixed(0)) => x.clone(),
        (Sym(p), Sym(q)) if p == q => Fixed(0),
        _ => Unknown,
    }
}

fn dim_mul(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Fixed(x), Fixed(y)) => x.checked_mul(*y).map_or(Unknown, Fixed),
        (Fixed(0), _) | (_, Fixed(0)) => Fixed(0),
        (x, Fixed(1)) | (Fixed(1), x) => x.clone(),
        _ => Unknown,
    }
}

fn dim_div(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        // Integer division: only where truncation and flooring agree.
        (Fixed(x), Fixed(y)) if *y != 0 && (x % y == 0 || (*x >= 0 && *y > 0)) => {
            x.checked_div(*y).map_or(Unknown, Fixed)
        }
        (x, Fixed(1)) => x.clone(),
        (Sym(p), Sym(q)) if p == q => Fixed(1),
        _ => Unknown,
    }
}

/// Length of a slice of a dim of `dim` elements (ONNX Slice clamping rules).
fn slice_len(dim: i64, start: i64, end: i64, step: i64) -> Option<(i64, i64)> {
    if step == 0 || dim < 0 {
        return None;
    }
    if dim == 0 {
        return Some((0, 0));
    }
    let (d, mut s, mut e, st) = (dim as i128, start as i128, end as i128, step as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let len = if st > 0 {
        s = s.clamp(0, d);
        e = e.clamp(0, d);
        if e > s { (e - s + st - 1) / st } else { 0 }
    } else {
        s = s.clamp(0, d - 1);
        e = e.clamp(-1, d - 1);
        if s > e { (s - e - st - 1) / (-st) } else { 0 }
    };
    Some((i64::try_from(len).ok()?, i64::try_from(s).ok()?))
}

/// Slices a dim whose size is not fixed: only the slices that keep everything are certain.
fn slice_sym(d: &Dim, start: i64, end: i64, step: i64) -> Dim {
    let big = i32::MAX as i64;
    let whole = (step == 1 && start == 0 && end >= big)
        || (step == -1 && (start >= big || start == -1) && end <= -big);
    if whole { d.clone() } else { Unknown }
}

/// The value of `-1` in a Reshape: product(input) / product(other target dims).
fn reshape_infer(input: &[Dim], others: &[Dim]) -> Option<Dim> {
    let mut num: i64 = 1;
    let mut syms: Vec<&str> = Vec::new();
    for d in input {
        match d {
            Fixed(v) => num = num.checked_mul(*v)?,
            Sym(s) => syms.push(s),
            Unknown => return Some(Unknown),
        }
    }
    let mut den: i64 = 1;
    for d in others {
        match d {
            Fixed(v) => den = den.checked_mul(*v)?,
            Sym(s) => match syms.iter().position(|x| x == s) {
                Some(p) => {
                    syms.remove(p);
                }
                None => return Some(Unknown),
            },
            Unknown => return Some(Unknown),
        }
    }
    if num == 0 || den == 0 {
        // Zero elements: -1 is ambiguous.
        return Some(Unknown);
    }
    if syms.is_empty() {
        if num % den != 0 {
            return None;
        }
        return Some(Fixed(num / den));
    }
    if syms.len() == 1 && num == den {
        return Some(Sym(syms[0].to_string()));
    }
    Some(Unknown)
}

fn attr_i(node: &Node, name: &str, default: i64) -> i64 {
    node.attr_int(name).unwrap_or(default)
}

fn attr_s(node: &Node, name: &str) -> Option<String> {
    node.attr(name)
        .map(|a| String::from_utf8_lossy(&a.s).to_string())
}

fn attr_ints(node: &Node, name: &str) -> Option<Vec<i64>> {
    node.attr_ints(name).map(|v| v.to_vec())
}

const UNARY_SAME: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "BitwiseNot",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "CumSum",
    "Elu",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "GroupNormalization",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "InstanceNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "LpNormalization",
    "LRN",
    "MeanVarianceNormalization",
    "Mish",
    "Neg",
    "Not",
    "Reciprocal",
    "Relu",
    "ReverseSequence",
    "Round",
    "Selu",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softmax",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Trilu",
    "ScatterND",
    "ScatterElements",
    "Scatter",
    "RMSNormalization",
];

const BROADCAST_SAME: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Mod",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "BitShift",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "PRelu",
];

const BROADCAST_BOOL: &[&str] = &[
    "And",
    "Or",
    "Xor",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
];

const REDUCE: &[&str] = &[
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];

/// The inference state: types and known integer contents of values seen so far.
struct Infer<'a> {
    g: &'a Graph,
    opset: Option<i64>,
    types: HashMap<ValueId, TensorTy>,
    known: HashMap<ValueId, KVal>,
    consts: HashMap<ValueId, Tensor>,
}

type Outs = Vec<Option<TensorTy>>;

impl<'a> Infer<'a> {
    fn new(g: &'a Graph, opset: Option<i64>) -> Self {
        Infer {
            g,
            opset,
            types: HashMap::new(),
            known: HashMap::new(),
            consts: HashMap::new(),
        }
    }

    /// Whether the form introduced at `since` applies (unknown opset: `fallback`).
    fn since(&self, v: i64, fallback: bool) -> bool {
        self.opset.map_or(fallback, |o| o >= v)
    }

    fn ty(&self, v: ValueId) -> Option<TensorTy> {
        if let Some(t) = self.types.get(&v) {
            return Some(t.clone());
        }
        self.g.value(v).ty.as_ref().and_then(ty_from_proto)
    }

    fn input(node: &Node, i: usize) -> Option<ValueId> {
        node.inputs.get(i).copied().flatten()
    }

    fn in_ty(&self, node: &Node, i: usize) -> Option<TensorTy> {
        Self::input(node, i).and_then(|v| self.ty(v))
    }

    fn in_elem(&self, node: &Node, i: usize) -> i32 {
        self.in_ty(node, i).map_or(0, |t| t.elem)
    }

    fn in_shape(&self, node: &Node, i: usize) -> Option<Vec<Dim>> {
        self.in_ty(node, i).and_then(|t| t.shape)
    }

    fn const_tensor(&self, v: ValueId) -> Option<&Tensor> {
        self.g.constant(v).or_else(|| self.consts.get(&v))
    }

    fn kval(&self, v: ValueId) -> Option<KVal> {
        if let Some(k) = self.known.get(&v) {
            return Some(k.clone());
        }
        self.const_tensor(v).and_then(tensor_ints)
    }

    fn in_kval(&self, node: &Node, i: usize) -> Option<KVal> {
        Self::input(node, i).and_then(|v| self.kval(v))
    }

    /// Known contents of a 1-D input (a shape).
    fn in_vec(&self, node: &Node, i: usize) -> Option<Vec<Dim>> {
        self.in_kval(node, i)
            .filter(|k| k.shape.len() == 1)
            .map(|k| k.items)
    }

    fn in_ints(&self, node: &Node, i: usize) -> Option<Vec<i64>> {
        self.in_kval(node, i).and_then(|k| k.fixed())
    }

    fn in_floats(&self, node: &Node, i: usize) -> Option<Vec<f64>> {
        Self::input(node, i)
            .and_then(|v| self.const_tensor(v))
            .and_then(tensor_floats)
    }

    /// Ints from an attribute before opset `since`, from input `idx` from then on.
    /// `Ok(None)`: absent; `Err(())`: present but not known.
    fn attr_or_input(
        &self,
        node: &Node,
        attr: &str,
        idx: usize,
        since: i64,
    ) -> std::result::Result<Option<Vec<i64>>, ()> {
        let from_input = self.since(since, node.attr(attr).is_none());
        if from_input {
            match Self::input(node, idx) {
                None => Ok(None),
                Some(_) => self.in_ints(node, idx).map(Some).ok_or(()),
            }
        } else {
            Ok(attr_ints(node, attr))
        }
    }

    /// Types of a node's outputs (`None` where unknown); empty for nodes it cannot type.
    fn infer(&self, node: &Node) -> Outs {
        let outs = self.infer_inner(node).unwrap_or_default();
        // An element type read from a malformed attribute makes the node unreadable.
        let valid = |t: &Option<TensorTy>| {
            t.as_ref()
                .is_none_or(|t| t.elem == 0 || crate::ir::dtype::name(t.elem) != "undefined")
        };
        if outs.iter().all(valid) {
            outs
        } else {
            Vec::new()
        }
    }

    fn infer_inner(&self, node: &Node) -> Option<Outs> {
        let op = node.op_type.as_str();
        let x = || self.in_ty(node, 0);
        let one = |t: TensorTy| Some(vec![Some(t)]);
        if UNARY_SAME.contains(&op) {
            return one(x()?);
        }
        if BROADCAST_SAME.contains(&op) || BROADCAST_BOOL.contains(&op) || op == "Where" {
            return self.broadcast_op(node);
        }
        if REDUCE.contains(&op) {
            return self.reduce(node);
        }
        match op {
            "IsNaN" | "IsInf" => one(TensorTy::new(code::BOOL, x()?.shape)),
            "Cast" => {
                let to = i32::try_from(node.attr_int("to")?).ok()?;
                one(TensorTy::new(to, self.in_shape(node, 0)))
            }
            "CastLike" => one(TensorTy::new(self.in_elem(node, 1), self.in_shape(node, 0))),
            "EyeLike" => {
                let t = x()?;
                let elem = match node.attr_int("dtype") {
                    Some(d) => i32::try_from(d).ok()?,
                    None => t.elem,
                };
                one(TensorTy::new(elem, t.shape))
            }
            "Dropout" => {
                let t = x()?;
                let mask = if self.since(10, true) {
                    code::BOOL
                } else {
                    t.elem
                };
                let m = TensorTy::new(mask, t.shape.clone());
                Some(vec![Some(t), Some(m)])
            }
            "LayerNormalization" => {
                let t = x()?;
                let stash = i32::try_from(attr_i(node, "stash_type", 1)).ok()?;
                let stat = match &t.shape {
                    None => TensorTy::new(stash, None),
                    Some(s) => {
                        let axis = norm_axis(attr_i(node, "axis", -1), s.len())?;
                        let mut d = s.clone();
                        for x in d.iter_mut().skip(axis) {
                            *x = Fixed(1);
                        }
                        TensorTy::shaped(stash, d)
                    }
                };
                Some(vec![Some(t), Some(stat.clone()), Some(stat)])
            }
            "BatchNormalization" => {
                let t = x()?;
                let mean = self.in_ty(node, 3);
                let var = self.in_ty(node, 4);
                Some(vec![Some(t), mean.clone(), var.clone(), mean, var])
            }
            "QuantizeLinear" => {
                let elem = match self.in_ty(node, 2) {
                    Some(z) => z.elem,
                    None => node
                        .attr_int("output_dtype")
                        .map_or(code::UINT8, |d| if d == 0 { code::UINT8 } else { d as i32 }),
                };
                one(TensorTy::new(elem, self.in_shape(node, 0)))
            }
            "DequantizeLinear" => {
                let elem = if self.since(19, true) {
                    self.in_elem(node, 1)
                } else {
                    code::FLOAT
                };
                one(TensorTy::new(elem, self.in_shape(node, 0)))
            }
            "MatMul" | "MatMulInteger" => {
                let elem = if op == "MatMul" {
                    self.in_elem(node, 0)
                } else {
                    code::INT32
                };
                let shape = match (self.in_shape(node, 0), self.in_shape(node, 1)) {
                    (Some(a), Some(b)) => Some(matmul_shape(&a, &b)?),
                    _ => None,
                };
                one(TensorTy::new(elem, shape))
            }
            "Gemm" => {
                let elem = self.in_elem(node, 0);
                let shape = match (self.in_shape(node, 0), self.in_shape(node, 1)) {
                    (Some(a), Some(b)) => {
                        if a.len() != 2 || b.len() != 2 {
                            return None;
                        }
                        let (m, ka) = if attr_i(node, "transA", 0) != 0 {
                            (&a[1], &a[0])
                        } else {
                            (&a[0], &a[1])
                        };
                        let (kb, n) = if attr_i(node, "transB", 0) != 0 {
                            (&b[1], &b[0])
                        } else {
                            (&b[0], &b[1])
                        };
                        unify(ka, kb)?;
                        Some(vec![m.clone(), n.clone()])
                    }
                    _ => None,
                };
                one(TensorTy::new(elem, shape))
            }
            "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" | "LpPool" => self.conv_pool(node),
            "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => {
                let t = x()?;
                let shape = match t.shape {
                    Some(s) => {
                        if s.len() < 2 {
                            return None;
                        }
                        let mut d = s[..2].to_vec();
                        d.resize(s.len(), Fixed(1));
                        Some(d)
                    }
                    None => None,
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Flatten" => {
                let t = x()?;
                let shape = match &t.shape {
                    Some(s) => {
                        let r = s.len() as i64;
                        let mut a = attr_i(node, "axis", 1);
                        if a < 0 {
                            a = a.checked_add(r)?;
                        }
                        if !(0..=r).contains(&a) {
                            return None;
                        }
                        let a = a as usize;
                        Some(vec![dim_product(&s[..a]), dim_product(&s[a..])])
                    }
                    None => Some(vec![Unknown, Unknown]),
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Reshape" => self.reshape(node),
            "Transpose" => {
                let t = x()?;
                let shape = match &t.shape {
                    Some(s) => {
                        let r = s.len();
                        let perm = match attr_ints(node, "perm") {
                            Some(p) => p,
                            None => (0..r as i64).rev().collect(),
                        };
                        if perm.len() != r {
                            return None;
                        }
                        let perm = norm_axes(&perm, r)?;
                        Some(perm.iter().map(|&p| s[p].clone()).collect())
                    }
                    None => attr_ints(node, "perm").map(|p| vec![Unknown; p.len()]),
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Squeeze" => {
                let t = x()?;
                let axes = self.attr_or_input(node, "axes", 1, 13);
                let shape = match (&t.shape, axes) {
                    (Some(s), Ok(Some(axes))) if !axes.is_empty() => {
                        let axes = norm_axes(&axes, s.len())?;
                        let mut out = Vec::new();
                        for (i, d) in s.iter().enumerate() {
                            if axes.contains(&i) {
                                if matches!(d, Fixed(v) if *v != 1) {
                                    return None;
                                }
                            } else {
                                out.push(d.clone());
                            }
                        }
                        Some(out)
                    }
                    (Some(s), Ok(_)) => {
                        // No axes: every dim of size 1 goes; the rank is known only when every
                        // dim is fixed.
                        if s.iter().all(|d| matches!(d, Fixed(_))) {
                            Some(s.iter().filter(|d| **d != Fixed(1)).cloned().collect())
                        } else {
                            None
                        }
                    }
                    (Some(s), Err(())) => match self.in_shape(node, 1) {
                        Some(a) if a.len() == 1 => match a[0] {
                            Fixed(k) if k >= 0 && (k as usize) <= s.len() => {
                                // Rank known, which dims go is not.
                                Some(vec![Unknown; s.len() - k as usize])
                            }
                            _ => None,
                        },
                        _ => None,
                    },
                    (None, _) => None,
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Unsqueeze" => {
                let t = x()?;
                let axes = self.attr_or_input(node, "axes", 1, 13);
                let shape = match (&t.shape, axes) {
                    (Some(s), Ok(Some(axes))) => {
                        let r = s.len().checked_add(axes.len())?;
                        let axes = norm_axes(&axes, r)?;
                        let mut it = s.iter();
                        let mut out = Vec::with_capacity(r);
                        for i in 0..r {
                            if axes.contains(&i) {
                                out.push(Fixed(1));
                            } else {
                                out.push(it.next()?.clone());
                            }
                        }
                        Some(out)
                    }
                    (Some(_), Ok(None)) => return None,
                    (Some(s), Err(())) => match self.in_shape(node, 1) {
                        Some(a) if a.len() == 1 => match a[0] {
                            Fixed(k) if (0..=64).contains(&k) => {
                                Some(vec![Unknown; s.len() + k as usize])
                            }
                            _ => None,
                        },
                        _ => None,
                    },
                    (None, _) => None,
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Concat" => {
                let mut elem = 0;
                let mut shapes = Vec::new();
                let mut any_unknown = false;
                for i in 0..node.inputs.len() {
                    let t = self.in_ty(node, i);
                    if elem == 0 {
                        elem = t.as_ref().map_or(0, |t| t.elem);
                    }
                    match t.and_then(|t| t.shape) {
                        Some(s) => shapes.push(s),
                        None => any_unknown = true,
                    }
                }
                if node.inputs.is_empty() {
                    return None;
                }
                let shape = match shapes.first() {
                    None => None,
                    Some(first) => {
                        let r = first.len();
                        let axis = norm_axis(node.attr_int("axis")?, r)?;
                        let mut out = first.clone();
                        for s in &shapes[1..] {
                            if s.len() != r {
                                return None;
                            }
                            for i in 0..r {
                                if i == axis {
                                    out[i] = dim_add(&out[i], &s[i]);
                                } else {
                                    out[i] = unify(&out[i], &s[i])?;
                                }
                            }
                        }
                        if any_unknown {
                            out[axis] = Unknown;
                        }
                        Some(out)
                    }
                };
                one(TensorTy::new(elem, shape))
            }
            "Split" => self.split(node),
            "Slice" => self.slice(node),
            "Gather" => {
                let elem = self.in_elem(node, 0);
                let shape = match (self.in_shape(node, 0), self.in_shape(node, 1)) {
                    (Some(d), Some(i)) => {
                        let axis = norm_axis(attr_i(node, "axis", 0), d.len())?;
                        let mut out = d[..axis].to_vec();
                        out.extend(i);
                        out.extend_from_slice(&d[axis + 1..]);
                        Some(out)
                    }
                    _ => None,
                };
                one(TensorTy::new(elem, shape))
            }
            "GatherElements" => one(TensorTy::new(self.in_elem(node, 0), self.in_shape(node, 1))),
            "GatherND" => {
                let elem = self.in_elem(node, 0);
                let shape = match (self.in_shape(node, 0), self.in_shape(node, 1)) {
                    (Some(d), Some(i)) => {
                        let b = usize::try_from(attr_i(node, "batch_dims", 0)).ok()?;
                        let Some(Fixed(m)) = i.last() else {
                            return one(TensorTy::new(elem, None));
                        };
                        let m = usize::try_from(*m).ok()?;
                        let start = b.checked_add(m)?;
                        if start > d.len() || b >= i.len() {
                            return None;
                        }
                        let mut out = i[..i.len() - 1].to_vec();
                        out.extend_from_slice(&d[start..]);
                        Some(out)
                    }
                    _ => None,
                };
                one(TensorTy::new(elem, shape))
            }
            "Expand" => {
                let t = x()?;
                let target = self
                    .in_vec(node, 1)
                    .or_else(|| match self.in_shape(node, 1) {
                        Some(s) if s.len() == 1 => match s[0] {
                            Fixed(n) if (0..=64).contains(&n) => Some(vec![Unknown; n as usize]),
                            _ => None,
                        },
                        _ => None,
                    });
                let shape = match (&t.shape, target) {
                    (Some(s), Some(tg)) => {
                        if tg.iter().any(|d| matches!(d, Fixed(v) if *v < 0)) {
                            return None;
                        }
                        Some(broadcast(&[s, &tg])?)
                    }
                    _ => None,
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Tile" => {
                let t = x()?;
                let shape = match &t.shape {
                    Some(s) => match self.in_ints(node, 1) {
                        Some(r) => {
                            if r.len() != s.len() || r.iter().any(|&v| v < 0) {
                                return None;
                            }
                            Some(
                                s.iter()
                                    .zip(&r)
                                    .map(|(d, &r)| dim_mul(d, &Fixed(r)))
                                    .collect(),
                            )
                        }
                        None => Some(vec![Unknown; s.len()]),
                    },
                    None => None,
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Shape" => {
                let len = match self.in_shape(node, 0) {
                    Some(s) => {
                        let (a, b) = self.shape_range(node, s.len());
                        Fixed((b - a) as i64)
                    }
                    None => Unknown,
                };
                one(TensorTy::shaped(code::INT64, vec![len]))
            }
            "Size" => one(TensorTy::shaped(code::INT64, vec![])),
            "NonZero" => {
                let r = self
                    .in_shape(node, 0)
                    .map_or(Unknown, |s| Fixed(s.len() as i64));
                one(TensorTy::shaped(code::INT64, vec![r, Unknown]))
            }
            "ConstantOfShape" => {
                let elem = node
                    .attr("value")
                    .and_then(|a| a.t.as_ref())
                    .map_or(code::FLOAT, |t| t.data_type);
                let shape = match self.in_vec(node, 0) {
                    Some(k) => {
                        if k.iter().any(|d| matches!(d, Fixed(v) if *v < 0)) {
                            return None;
                        }
                        Some(k)
                    }
                    None => match self.in_shape(node, 0) {
                        Some(s) if s.len() == 1 => match s[0] {
                            Fixed(n) if (0..=64).contains(&n) => Some(vec![Unknown; n as usize]),
                            _ => None,
                        },
                        _ => None,
                    },
                };
                one(TensorTy::new(elem, shape))
            }
            "Constant" => {
                let (elem, dims) = constant_type(node)?;
                one(TensorTy::shaped(
                    elem,
                    dims.into_iter().map(Fixed).collect(),
                ))
            }
            "Range" => {
                let elem = self.in_elem(node, 0);
                let ints = (
                    self.in_ints(node, 0),
                    self.in_ints(node, 1),
                    self.in_ints(node, 2),
                );
                if let (Some(s), Some(l), Some(d)) = ints
                    && let (&[s], &[l], &[d]) = (s.as_slice(), l.as_slice(), d.as_slice())
                {
                    if d == 0 {
                        return None;
                    }
                    let (s, l, d) = (s as i128, l as i128, d as i128);
                    let q = (l - s) / d + i128::from((l - s) % d != 0 && ((l - s) > 0) == (d > 0));
                    let n = i64::try_from(q.max(0)).ok()?;
                    return one(TensorTy::shaped(elem, vec![Fixed(n)]));
                }
                // range(0, n, 1) has n elements, whatever n is.
                if let (Some(s), Some(l), Some(d)) = (
                    self.in_kval(node, 0),
                    self.in_kval(node, 1),
                    self.in_kval(node, 2),
                ) && s.items == [Fixed(0)]
                    && d.items == [Fixed(1)]
                    && let [Sym(n)] = l.items.as_slice()
                {
                    return one(TensorTy::shaped(elem, vec![Sym(n.clone())]));
                }
                let n = match (
                    self.in_floats(node, 0),
                    self.in_floats(node, 1),
                    self.in_floats(node, 2),
                ) {
                    (Some(s), Some(l), Some(d)) if s.len() == 1 && l.len() == 1 && d.len() == 1 => {
                        if d[0] == 0.0
                            || !d[0].is_finite()
                            || !s[0].is_finite()
                            || !l[0].is_finite()
                        {
                            return None;
                        }
                        let n = ((l[0] - s[0]) / d[0]).ceil().max(0.0);
                        if n > i64::MAX as f64 / 2.0 {
                            return None;
                        }
                        Fixed(n as i64)
                    }
                    _ => Unknown,
                };
                one(TensorTy::shaped(elem, vec![n]))
            }
            "ArgMax" | "ArgMin" => {
                let shape = match self.in_shape(node, 0) {
                    Some(s) => {
                        let axis = norm_axis(attr_i(node, "axis", 0), s.len())?;
                        let mut out = s.clone();
                        if attr_i(node, "keepdims", 1) != 0 {
                            out[axis] = Fixed(1);
                        } else {
                            out.remove(axis);
                        }
                        Some(out)
                    }
                    None => None,
                };
                one(TensorTy::new(code::INT64, shape))
            }
            "Pad" => {
                let t = x()?;
                let shape = match &t.shape {
                    None => None,
                    Some(s) => {
                        let r = s.len();
                        let pads = if self.since(11, Self::input(node, 1).is_some()) {
                            self.in_ints(node, 1)
                        } else {
                            attr_ints(node, "pads").or_else(|| attr_ints(node, "paddings"))
                        };
                        let axes: Vec<usize> = match Self::input(node, 3) {
                            Some(_) if self.since(18, true) => match self.in_ints(node, 3) {
                                Some(a) => norm_axes(&a, r)?,
                                None => return one(TensorTy::shaped(t.elem, vec![Unknown; r])),
                            },
                            _ => (0..r).collect(),
                        };
                        match pads {
                            None => Some(vec![Unknown; r]),
                            Some(p) => {
                                let k = axes.len();
                                if p.len() != 2 * k {
                                    return None;
                                }
                                let mut out = s.clone();
                                for (j, &a) in axes.iter().enumerate() {
                                    let d = match &s[a] {
                                        Fixed(d) => {
                                            let v = d.checked_add(p[j])?.checked_add(p[j + k])?;
                                            if v < 0 {
                                                return None;
                                            }
                                            Fixed(v)
                                        }
                                        d if p[j] == 0 && p[j + k] == 0 => d.clone(),
                                        _ => Unknown,
                                    };
                                    out[a] = d;
                                }
                                Some(out)
                            }
                        }
                    }
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Resize" | "Upsample" => self.resize(node),
            "TopK" => {
                let t = x()?;
                let shape = match &t.shape {
                    None => None,
                    Some(s) => {
                        let axis = norm_axis(attr_i(node, "axis", -1), s.len())?;
                        let k = if self.since(10, node.attr("k").is_none()) {
                            match self.in_ints(node, 1).as_deref() {
                                Some([k]) => Fixed(*k),
                                _ => Unknown,
                            }
                        } else {
                            Fixed(node.attr_int("k")?)
                        };
                        if matches!(k, Fixed(v) if v < 0) {
                            return None;
                        }
                        let mut out = s.clone();
                        out[axis] = k;
                        Some(out)
                    }
                };
                let i = TensorTy::new(code::INT64, shape.clone());
                Some(vec![Some(TensorTy::new(t.elem, shape)), Some(i)])
            }
            "OneHot" => {
                let elem = self.in_elem(node, 2);
                let shape = match self.in_shape(node, 0) {
                    Some(s) => {
                        let axis = norm_axis(attr_i(node, "axis", -1), s.len() + 1)?;
                        let depth = match self.in_floats(node, 1).as_deref() {
                            Some([d]) if d.is_finite() && *d >= 0.0 && *d < 1e15 => {
                                Fixed(*d as i64)
                            }
                            _ => Unknown,
                        };
                        let mut out = s.clone();
                        out.insert(axis, depth);
                        Some(out)
                    }
                    None => None,
                };
                one(TensorTy::new(elem, shape))
            }
            "DepthToSpace" | "SpaceToDepth" => {
                let t = x()?;
                let b = node.attr_int("blocksize")?;
                if b <= 0 {
                    return None;
                }
                let bb = b.checked_mul(b)?;
                let shape = match &t.shape {
                    Some(s) if s.len() == 4 => {
                        if op == "DepthToSpace" {
                            Some(vec![
                                s[0].clone(),
                                exact_div(&s[1], bb)?,
                                dim_mul(&s[2], &Fixed(b)),
                                dim_mul(&s[3], &Fixed(b)),
                            ])
                        } else {
                            Some(vec![
                                s[0].clone(),
                                dim_mul(&s[1], &Fixed(bb)),
                                exact_div(&s[2], b)?,
                                exact_div(&s[3], b)?,
                            ])
                        }
                    }
                    Some(_) => return None,
                    None => None,
                };
                one(TensorTy::new(t.elem, shape))
            }
            "Einsum" => {
                let elem = self.in_elem(node, 0);
                let shapes: Option<Vec<Vec<Dim>>> = (0..node.inputs.len())
                    .map(|i| self.in_shape(node, i))
                    .collect();
                let eq = attr_s(node, "equation")?;
                let shape = match shapes {
                    Some(sh) => Some(einsum_shape(&eq, &sh)?),
                    None => None,
                };
                one(TensorTy::new(elem, shape))
            }
            _ => None,
        }
    }

    fn broadcast_op(&self, node: &Node) -> Option<Outs> {
        let op = node.op_type.as_str();
        if node.inputs.is_empty() {
            return None;
        }
        let elem = if BROADCAST_BOOL.contains(&op) {
            code::BOOL
        } else if op == "Where" {
            match self.in_elem(node, 1) {
                0 => self.in_elem(node, 2),
                e => e,
            }
        } else {
            self.in_elem(node, 0)
        };
        let shapes: Option<Vec<Vec<Dim>>> = (0..node.inputs.len())
            .map(|i| self.in_shape(node, i))
            .collect();
        let shape = match shapes {
            Some(s) => {
                let refs: Vec<&[Dim]> = s.iter().map(|v| &v[..]).collect();
                Some(broadcast(&refs)?)
            }
            None => None,
        };
        Some(vec![Some(TensorTy::new(elem, shape))])
    }

    fn reduce(&self, node: &Node) -> Option<Outs> {
        let t = self.in_ty(node, 0)?;
        let since = if node.op_type == "ReduceSum" { 13 } else { 18 };
        let axes = self.attr_or_input(node, "axes", 1, since);
        let keep = attr_i(node, "keepdims", 1) != 0;
        let from_input = self.since(since, node.attr("axes").is_none());
        let noop = from_input && attr_i(node, "noop_with_empty_axes", 0) != 0;
        let shape = match (&t.shape, axes) {
            (None, _) => None,
            (Some(s), Ok(axes)) => {
                let axes = axes.unwrap_or_default();
                if axes.is_empty() && noop {
                    Some(s.clone())
                } else {
                    let axes = if axes.is_empty() {
                        (0..s.len()).collect()
                    } else {
                        norm_axes(&axes, s.len())?
                    };
                    let mut out = Vec::new();
                    for (i, d) in s.iter().enumerate() {
                        if axes.contains(&i) {
                            if keep {
                                out.push(Fixed(1));
                            }
                        } else {
                            out.push(d.clone());
                        }
                    }
                    Some(out)
                }
            }
            (Some(s), Err(())) => {
                if keep {
                    Some(
                        s.iter()
                            .map(|d| if *d == Fixed(1) { Fixed(1) } else { Unknown })
                            .collect(),
                    )
                } else {
                    None
                }
            }
        };
        Some(vec![Some(TensorTy::new(t.elem, shape))])
    }

    /// `[start, end)` of a Shape node (opset 15 attributes), clamped.
    fn shape_range(&self, node: &Node, r: usize) -> (usize, usize) {
        let clamp = |v: i64| -> usize {
            let r = r as i64;
            let v = if v < 0 { v.saturating_add(r) } else { v };
            v.clamp(0, r) as usize
        };
        let a = clamp(attr_i(node, "start", 0));
        let b = node.attr_int("end").map_or(r, clamp);
        (a, b.max(a))
    }

    fn reshape(&self, node: &Node) -> Option<Outs> {
        let t = self.in_ty(node, 0)?;
        let allowzero = attr_i(node, "allowzero", 0) != 0;
        let target = match self.in_vec(node, 1) {
            Some(k) => k,
            None => {
                let shape = match self.in_shape(node, 1) {
                    Some(s) if s.len() == 1 => match s[0] {
                        Fixed(n) if (0..=64).contains(&n) => Some(vec![Unknown; n as usize]),
                        _ => None,
                    },
                    _ => None,
                };
                return Some(vec![Some(TensorTy::new(t.elem, shape))]);
            }
        };
        let input = t.shape.clone();
        let mut out = Vec::with_capacity(target.len());
        let mut minus_one = None;
        for (i, d) in target.iter().enumerate() {
            match d {
                Fixed(0) if !allowzero => match &input {
                    Some(s) => out.push(s.get(i)?.clone()),
                    None => out.push(Unknown),
                },
                Fixed(-1) => {
                    if minus_one.is_some() {
                        return None;
                    }
                    minus_one = Some(i);
                    out.push(Unknown);
                }
                Fixed(v) if *v < 0 => return None,
                d => out.push(d.clone()),
            }
        }
        match (minus_one, &input) {
            (Some(m), Some(s)) => {
                let others: Vec<Dim> = out
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != m)
                    .map(|(_, d)| d.clone())
                    .collect();
                out[m] = reshape_infer(s, &others)?;
            }
            (None, Some(s)) => {
                // With every dim fixed both sides, element counts must match (an overflowing
                // target cannot match a countable input).
                let fixed = |d: &[Dim]| -> Option<Vec<i64>> {
                    d.iter()
                        .map(|x| match x {
                            Fixed(v) => Some(*v),
                            _ => None,
                        })
                        .collect()
                };
                if let (Some(a), Some(b)) = (fixed(s), fixed(&out))
                    && crate::ir::dtype::element_count(&a) != crate::ir::dtype::element_count(&b)
                {
                    return None;
                }
            }
            _ => {}
        }
        Some(vec![Some(TensorTy::shaped(t.elem, out))])
    }

    fn split(&self, node: &Node) -> Option<Outs> {
        let t = self.in_ty(node, 0)?;
        let n = node.outputs.len();
        if n == 0 {
            return None;
        }
        let Some(s) = &t.shape else {
            return Some(vec![Some(TensorTy::new(t.elem, None)); n]);
        };
        let axis = norm_axis(attr_i(node, "axis", 0), s.len())?;
        let sizes = self.attr_or_input(node, "split", 1, 13);
        let dims: Vec<Dim> = match sizes {
            Ok(Some(sz)) if !sz.is_empty() => {
                if sz.len() != n || sz.iter().any(|&v| v < 0) {
                    return None;
                }
                if let Fixed(d) = s[axis] {
                    let total = sz.iter().try_fold(0i64, |a, &b| a.checked_add(b))?;
                    if total != d {
                        return None;
                    }
                }
                sz.into_iter().map(Fixed).collect()
            }
            Err(()) => vec![Unknown; n],
            _ => {
                let parts = match node.attr_int("num_outputs") {
                    Some(k) if k as usize != n || k <= 0 => return None,
                    _ => n as i64,
                };
                match &s[axis] {
                    Fixed(d) => {
                        if d % parts == 0 {
                            vec![Fixed(d / parts); n]
                        } else if self.since(18, false) && node.attr("num_outputs").is_some() {
                            let chunk = d / parts + 1;
                            let last = d.checked_sub(chunk.checked_mul(parts - 1)?)?;
                            if last <= 0 {
                                return None;
                            }
                            let mut v = vec![Fixed(chunk); n - 1];
                            v.push(Fixed(last));
                            v
                        } else {
                            return None;
                        }
                    }
                    d if n == 1 => vec![d.clone()],
                    _ => vec![Unknown; n],
                }
            }
        };
        Some(
            dims.into_iter()
                .map(|d| {
                    let mut sh = s.clone();
                    sh[axis] = d;
                    Some(TensorTy::shaped(t.elem, sh))
                })
                .collect(),
        )
    }

    /// Slice parameters: (starts, ends, axes, steps), each `None` when not known.
    #[allow(clippy::type_complexity)]
    fn slice_params(
        &self,
        node: &Node,
        r: usize,
    ) -> Option<Option<(Vec<i64>, Vec<i64>, Vec<usize>, Vec<i64>)>> {
        let (starts, ends, axes, steps) = if self.since(10, node.attr("starts").is_none()) {
            let get = |i: usize| -> std::result::Result<Option<Vec<i64>>, ()> {
                match Self::input(node, i) {
                    None => Ok(None),
                    Some(_) => self.in_ints(node, i).map(Some).ok_or(()),
                }
            };
            let (Ok(Some(s)), Ok(Some(e)), Ok(a), Ok(st)) = (get(1), get(2), get(3), get(4)) else {
                return Some(None);
            };
            (s, e, a, st)
        } else {
            (
                attr_ints(node, "starts")?,
                attr_ints(node, "ends")?,
                attr_ints(node, "axes"),
                None,
            )
        };
        let k = starts.len();
        if ends.len() != k {
            return None;
        }
        let axes = match axes {
            Some(a) => {
                if a.len() != k {
                    return None;
                }
                norm_axes(&a, r)?
            }
            None => {
                if k > r {
                    return None;
                }
                (0..k).collect()
            }
        };
        let steps = steps.unwrap_or_else(|| vec![1; k]);
        if steps.len() != k || steps.contains(&0) {
            return None;
        }
        Some(Some((starts, ends, axes, steps)))
    }

    fn slice(&self, node: &Node) -> Option<Outs> {
        let t = self.in_ty(node, 0)?;
        let Some(s) = &t.shape else {
            return Some(vec![Some(TensorTy::new(t.elem, None))]);
        };
        let shape = match self.slice_params(node, s.len())? {
            None => vec![Unknown; s.len()],
            Some((starts, ends, axes, steps)) => {
                let mut out = s.clone();
                for (j, &a) in axes.iter().enumerate() {
                    out[a] = match &s[a] {
                        Fixed(d) => Fixed(slice_len(*d, starts[j], ends[j], steps[j])?.0),
                        d => slice_sym(d, starts[j], ends[j], steps[j]),
                    };
                }
                out
            }
        };
        Some(vec![Some(TensorTy::shaped(t.elem, shape))])
    }

    fn conv_pool(&self, node: &Node) -> Option<Outs> {
        let op = node.op_type.as_str();
        let t = self.in_ty(node, 0)?;
        let is_conv = op == "Conv" || op == "ConvTranspose";
        let Some(xs) = &t.shape else {
            let idx = TensorTy::new(code::INT64, None);
            return Some(vec![Some(TensorTy::new(t.elem, None)), Some(idx)]);
        };
        if xs.len() < 3 {
            return None;
        }
        let n = xs.len() - 2;
        let w = if is_conv {
            Some(
                self.in_shape(node, 1)
                    .unwrap_or_else(|| vec![Unknown; n + 2]),
            )
        } else {
            None
        };
        if let Some(w) = &w
            && w.len() != n + 2
        {
            return None;
        }
        let group = attr_i(node, "group", 1);
        if group <= 0 {
            return None;
        }
        // Kernel spatial sizes.
        let kernel: Vec<Option<i64>> = match attr_ints(node, "kernel_shape") {
            Some(k) => {
                if k.len() != n || k.iter().any(|&v| v <= 0) {
                    return None;
                }
                k.into_iter().map(Some).collect()
            }
            None => match &w {
                Some(w) => w[2..]
                    .iter()
                    .map(|d| match d {
                        Fixed(v) => Some(*v),
                        _ => None,
                    })
                    .collect(),
                None => return None,
            },
        };
        let ints_or = |name: &str, len: usize, default: i64| -> Option<Vec<i64>> {
            match attr_ints(node, name) {
                Some(v) if v.is_empty() => Some(vec![default; len]),
                Some(v) => (v.len() == len).then_some(v),
                None => Some(vec![default; len]),
            }
        };
        let strides = ints_or("strides", n, 1)?;
        let dilations = ints_or("dilations", n, 1)?;
        let mut pads = ints_or("pads", 2 * n, 0)?;
        if strides.iter().any(|&v| v <= 0) || dilations.iter().any(|&v| v <= 0) {
            return None;
        }
        if pads.iter().any(|&v| v < 0) {
            return None;
        }
        let auto_pad = attr_s(node, "auto_pad").unwrap_or_default();
        let same = auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER";
        if auto_pad == "VALID" {
            pads = vec![0; 2 * n];
        }
        let ceil_mode = attr_i(node, "ceil_mode", 0) != 0;
        let mut out = vec![xs[0].clone()];
        // Channels.
        match (op, &w) {
            ("Conv", Some(w)) => {
                if let (Fixed(c), Fixed(wc)) = (&xs[1], &w[1])
                    && Some(*c) != wc.checked_mul(group)
                {
                    return None;
                }
                out.push(w[0].clone());
            }
            ("ConvTranspose", Some(w)) => {
                if let (Fixed(c), Fixed(wc)) = (&xs[1], &w[0])
                    && c != wc
                {
                    return None;
                }
                out.push(dim_mul(&w[1], &Fixed(group)));
            }
            _ => out.push(xs[1].clone()),
        }
        let output_shape = if op == "ConvTranspose" {
            attr_ints(node, "output_shape")
        } else {
            None
        };
        let output_padding = if op == "ConvTranspose" {
            ints_or("output_padding", n, 0)?
        } else {
            vec![0; n]
        };
        for i in 0..n {
            if let Some(os) = &output_shape {
                let v = if os.len() == n {
                    os[i]
                } else if os.len() == n + 2 {
                    os[i + 2]
                } else {
                    return None;
                };
                if v < 0 {
                    return None;
                }
                out.push(Fixed(v));
                continue;
            }
            let Some(k) = kernel[i] else {
                out.push(Unknown);
                continue;
            };
            let eff = k
                .checked_sub(1)?
                .checked_mul(dilations[i])?
                .checked_add(1)?;
            let (s, pb, pe) = (strides[i], pads[i], pads[i + n]);
            let d = &xs[i + 2];
            let o = if op == "ConvTranspose" {
                match d {
                    Fixed(d) => {
                        let v = if same {
                            d.checked_mul(s)?
                        } else {
                            s.checked_mul(d.checked_sub(1)?)?
                                .checked_add(output_padding[i])?
                                .checked_add(eff)?
                                .checked_sub(pb)?
                                .checked_sub(pe)?
                        };
                        if v < 0 {
                            return None;
                        }
                        Fixed(v)
                    }
                    d if s == 1
                        && (same || (output_padding[i] == 0 && pb.checked_add(pe)? == eff - 1)) =>
                    {
                        d.clone()
                    }
                    _ => Unknown,
                }
            } else {
                match d {
                    Fixed(d) => {
                        if same {
                            Fixed(d.checked_add(s - 1)? / s)
                        } else {
                            let padded = d.checked_add(pb)?.checked_add(pe)?;
                            let num = padded.checked_sub(eff)?;
                            if num < 0 {
                                return None;
                            }
                            let floor = num / s + 1;
                            if ceil_mode {
                                let ceil = num / s + i64::from(num % s != 0) + 1;
                                // ONNX's shape function keeps the last window even when it starts
                                // in the right padding; runtimes drop it. Only certain if equal.
                                let dropped = if (ceil - 1).checked_mul(s)? >= d.checked_add(pb)? {
                                    ceil - 1
                                } else {
                                    ceil
                                };
                                if ceil == dropped {
                                    Fixed(ceil)
                                } else {
                                    Unknown
                                }
                            } else {
                                Fixed(floor)
                            }
                        }
                    }
                    d if s == 1 && (same || pb.checked_add(pe)? == eff - 1) => d.clone(),
                    _ => Unknown,
                }
            };
            out.push(o);
        }
        let y = TensorTy::shaped(t.elem, out);
        let idx = TensorTy::new(code::INT64, y.shape.clone());
        Some(vec![Some(y), Some(idx)])
    }

    fn resize(&self, node: &Node) -> Option<Outs> {
        let t = self.in_ty(node, 0)?;
        let Some(s) = &t.shape else {
            return Some(vec![Some(TensorTy::new(t.elem, None))]);
        };
        let r = s.len();
        let (scales_idx, sizes_idx) = if node.op_type == "Upsample" || !self.since(11, true) {
            (1, None)
        } else {
            (2, Some(3))
        };
        let axes: Vec<usize> = match attr_ints(node, "axes") {
            Some(a) => norm_axes(&a, r)?,
            None => (0..r).collect(),
        };
        let present = |i: usize| {
            Self::input(node, i).is_some_and(|v| {
                // An empty tensor stands for "not given".
                !matches!(
                    self.ty(v).and_then(|t| t.shape).as_deref(),
                    Some([Fixed(0)])
                )
            })
        };
        let mut out = s.clone();
        if let Some(si) = sizes_idx
            && present(si)
        {
            let policy = attr_s(node, "keep_aspect_ratio_policy").unwrap_or_default();
            match self.in_ints(node, si) {
                Some(sz) if (policy.is_empty() || policy == "stretch") => {
                    if sz.len() != axes.len() || sz.iter().any(|&v| v < 0) {
                        return None;
                    }
                    for (&a, &v) in axes.iter().zip(&sz) {
                        out[a] = Fixed(v);
                    }
                }
                _ => {
                    for &a in &axes {
                        out[a] = Unknown;
                    }
                }
            }
        } else {
            let scales = if node.op_type == "Upsample" && node.attr("scales").is_some() {
                node.attr("scales")
                    .map(|a| a.floats.iter().map(|&f| f as f64).collect())
            } else if present(scales_idx) {
                self.in_floats(node, scales_idx)
            } else {
                return Some(vec![Some(TensorTy::new(t.elem, Some(vec![Unknown; r])))]);
            };
            match scales {
                Some(sc) => {
                    if sc.len() != axes.len() {
                        return None;
                    }
                    for (&a, &f) in axes.iter().zip(&sc) {
                        if !f.is_finite() || f < 0.0 {
                            return None;
                        }
                        out[a] = match &s[a] {
                            Fixed(d) => {
                                // ONNX computes this in single precision.
                                let v = ((*d as f32) * (f as f32)).floor();
                                if !(0.0..9.0e15).contains(&v) {
                                    return None;
                                }
                                Fixed(v as i64)
                            }
                            d if f == 1.0 => d.clone(),
                            _ => Unknown,
                        };
                    }
                }
                None => {
                    for &a in &axes {
                        out[a] = Unknown;
                    }
                }
            }
        }
        Some(vec![Some(TensorTy::shaped(t.elem, out))])
    }

    /// Known integer contents of a node's first output.
    fn known_out(&self, node: &Node, out_ty: Option<&TensorTy>) -> Option<KVal> {
        let op = node.op_type.as_str();
        let kv = |i: usize| self.in_kval(node, i);
        match op {
            "Constant" => {
                let a = node.attrs.first()?;
                match a.name.as_str() {
                    "value_int" => Some(KVal::scalar(Fixed(a.i))),
                    "value_ints" if a.ints.len() as u64 <= MAX_KNOWN => {
                        Some(KVal::vector(a.ints.iter().map(|&v| Fixed(v)).collect()))
                    }
                    _ => None,
                }
            }
            "Shape" => {
                let s = self.in_shape(node, 0)?;
                let (a, b) = self.shape_range(node, s.len());
                Some(KVal::vector(s[a..b].to_vec()))
            }
            "Size" => Some(KVal::scalar(dim_product(&self.in_shape(node, 0)?))),
            // Same elements, new shape: the output's (fully fixed) inferred shape.
            "Identity" | "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten" | "Cast" => {
                if op == "Cast" && !is_int(node.attr_int("to")? as i32) {
                    return None;
                }
                let k = kv(0)?;
                let shape = fixed_shape(out_ty)?;
                let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))?;
                (n == k.items.len()).then_some(KVal {
                    shape,
                    items: k.items,
                })
            }
            "Expand" => {
                let k = kv(0)?;
                let shape = fixed_shape(out_ty)?;
                let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))?;
                if n as u64 > MAX_KNOWN {
                    return None;
                }
                let target = KVal {
                    shape: shape.clone(),
                    items: vec![Unknown; n],
                };
                let (bs, mut items) = kval_broadcast(&[k, target])?;
                (bs == shape).then(|| KVal {
                    shape,
                    items: items.swap_remove(0),
                })
            }
            "Transpose" => {
                let k = kv(0)?;
                let r = k.shape.len();
                let perm = match attr_ints(node, "perm") {
                    Some(p) => norm_axes(&p, r)?,
                    None => (0..r).rev().collect(),
                };
                if perm.len() != r {
                    return None;
                }
                let shape: Vec<usize> = perm.iter().map(|&p| k.shape[p]).collect();
                let st = strides(&k.shape);
                let n = k.items.len();
                let mut items = Vec::with_capacity(n);
                let mut idx = vec![0usize; r];
                for _ in 0..n {
                    let flat: usize = (0..r).map(|j| idx[j] * st[perm[j]]).sum();
                    items.push(k.items.get(flat)?.clone());
                    for a in (0..r).rev() {
                        idx[a] += 1;
                        if idx[a] < shape[a] {
                            break;
                        }
                        idx[a] = 0;
                    }
                }
                Some(KVal { shape, items })
            }
            "Gather" => {
                let data = kv(0)?;
                let r = data.shape.len();
                let axis = norm_axis(attr_i(node, "axis", 0), r)?;
                let idx = kv(1)?;
                let n = data.shape[axis];
                let picks = idx
                    .fixed()?
                    .into_iter()
                    .map(|i| norm_axis(i, n))
                    .collect::<Option<Vec<usize>>>()?;
                let mut sel: Vec<Vec<usize>> =
                    data.shape.iter().map(|&d| (0..d).collect()).collect();
                sel[axis] = picks;
                let g = data.select(&sel)?;
                // Replace the gathered axis by the indices' shape.
                let mut shape = data.shape[..axis].to_vec();
                shape.extend(&idx.shape);
                shape.extend(&data.shape[axis + 1..]);
                Some(KVal {
                    shape,
                    items: g.items,
                })
            }
            "Slice" => {
                let data = kv(0)?;
                let r = data.shape.len();
                let (starts, ends, axes, steps) = self.slice_params(node, r)??;
                let mut sel: Vec<Vec<usize>> =
                    data.shape.iter().map(|&d| (0..d).collect()).collect();
                for (j, &a) in axes.iter().enumerate() {
                    let d = i64::try_from(data.shape[a]).ok()?;
                    let (len, start) = slice_len(d, starts[j], ends[j], steps[j])?;
                    let mut picks = Vec::new();
                    let mut i = start;
                    for _ in 0..len {
                        picks.push(usize::try_from(i).ok()?);
                        i = i.checked_add(steps[j])?;
                    }
                    sel[a] = picks;
                }
                data.select(&sel)
            }
            "Concat" => {
                let parts: Vec<KVal> = (0..node.inputs.len()).map(kv).collect::<Option<_>>()?;
                let first = parts.first()?;
                let r = first.shape.len();
                let axis = norm_axis(node.attr_int("axis")?, r)?;
                let outer: usize = first.shape[..axis].iter().product();
                let mut shape = first.shape.clone();
                shape[axis] = 0;
                for p in &parts {
                    if p.shape.len() != r
                        || (0..r).any(|i| i != axis && p.shape[i] != first.shape[i])
                    {
                        return None;
                    }
                    shape[axis] += p.shape[axis];
                }
                let mut items = Vec::new();
                for o in 0..outer {
                    for p in &parts {
                        let chunk = p.items.len() / outer.max(1);
                        items.extend_from_slice(p.items.get(o * chunk..(o + 1) * chunk)?);
                    }
                }
                if items.len() as u64 > MAX_KNOWN {
                    return None;
                }
                Some(KVal { shape, items })
            }
            "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Max" | "Min" | "Equal" | "Where" => {
                let out_elem = out_ty?.elem;
                if !(is_int(out_elem) || (op == "Equal" && out_elem == code::BOOL)) {
                    return None;
                }
                let arity = if op == "Where" { 3 } else { 2 };
                if node.inputs.len() != arity {
                    return None;
                }
                let args: Vec<KVal> = (0..arity).map(kv).collect::<Option<_>>()?;
                let (shape, vals) = kval_broadcast(&args)?;
                let fmod = attr_i(node, "fmod", 0) != 0;
                let mut items = Vec::with_capacity(vals[0].len());
                for (i, (x, y)) in vals[0].iter().zip(&vals[1]).enumerate() {
                    items.push(match op {
                        "Add" => dim_add(x, y),
                        "Sub" => dim_sub(x, y),
                        "Mul" => dim_mul(x, y),
                        "Div" => dim_div(x, y),
                        "Mod" => match (x, y) {
                            (Fixed(a), Fixed(b)) if *b != 0 => {
                                let r = a.checked_rem(*b).map_or(Unknown, Fixed);
                                match r {
                                    // Integer Mod takes the divisor's sign unless fmod is set.
                                    Fixed(r) if !fmod && r != 0 && (r < 0) != (*b < 0) => {
                                        r.checked_add(*b).map_or(Unknown, Fixed)
                                    }
                                    r => r,
                                }
                            }
                            _ => Unknown,
                        },
                        "Equal" => match (x, y) {
                            (Fixed(p), Fixed(q)) => Fixed(i64::from(p == q)),
                            (Sym(p), Sym(q)) if p == q => Fixed(1),
                            // A dim is never negative.
                            (Sym(_), Fixed(v)) | (Fixed(v), Sym(_)) if *v < 0 => Fixed(0),
                            _ => Unknown,
                        },
                        "Where" => {
                            let z = &vals[2][i];
                            match x {
                                Fixed(0) => z.clone(),
                                Fixed(_) => y.clone(),
                                _ if y == z => y.clone(),
                                _ => Unknown,
                            }
                        }
                        _ => match (x, y) {
                            (Fixed(p), Fixed(q)) => {
                                Fixed(if op == "Max" { *p.max(q) } else { *p.min(q) })
                            }
                            _ if x == y => x.clone(),
                            _ => Unknown,
                        },
                    });
                }
                Some(KVal { shape, items })
            }
            "Not" => {
                let k = kv(0)?;
                let items = k
                    .items
                    .iter()
                    .map(|d| match d {
                        Fixed(0) => Fixed(1),
                        Fixed(_) => Fixed(0),
                        _ => Unknown,
                    })
                    .collect();
                Some(KVal {
                    shape: k.shape,
                    items,
                })
            }
            "Range" => {
                if !is_int(out_ty?.elem) {
                    return None;
                }
                let (s, d) = (kv(0)?.fixed()?, kv(2)?.fixed()?);
                let (&[s], &[d]) = (s.as_slice(), d.as_slice()) else {
                    return None;
                };
                let Some(Fixed(n)) = out_ty?.shape.as_ref()?.first().cloned() else {
                    return None;
                };
                if !(0..=64).contains(&n) {
                    return None;
                }
                let items = (0..n)
                    .map(|i| i.checked_mul(d).and_then(|x| x.checked_add(s)).map(Fixed))
                    .collect::<Option<Vec<Dim>>>()?;
                Some(KVal::vector(items))
            }
            "ConstantOfShape" => {
                let t = self.consts.get(&node.outputs.first().copied().flatten()?)?;
                tensor_ints(t)
            }
            _ => None,
        }
    }

    /// The constant tensor a Constant/ConstantOfShape node produces, when it is small.
    fn const_out(&self, node: &Node, out_ty: Option<&TensorTy>) -> Option<Tensor> {
        match node.op_type.as_str() {
            "Constant" => {
                let a = node.attrs.first()?;
                match a.name.as_str() {
                    "value" => {
                        let t: &TensorProto = a.t.as_ref()?;
                        crate::ir::tensor::check_embedded("", t).ok()?;
                        Some(Tensor {
                            dtype: t.data_type,
                            dims: t.dims.clone(),
                            data: TensorData::Embedded(Arc::new(t.clone())),
                        })
                    }
                    "value_int" => Some(Tensor::from_raw(
                        code::INT64,
                        vec![],
                        a.i.to_le_bytes().to_vec(),
                    )),
                    "value_ints" if a.ints.len() as u64 <= MAX_KNOWN => Some(Tensor::from_raw(
                        code::INT64,
                        vec![a.ints.len() as i64],
                        a.ints.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    )),
                    "value_float" => Some(Tensor::from_raw(
                        code::FLOAT,
                        vec![],
                        a.f.to_le_bytes().to_vec(),
                    )),
                    "value_floats" => Some(Tensor::from_raw(
                        code::FLOAT,
                        vec![a.floats.len() as i64],
                        a.floats.iter().flat_map(|f| f.to_le_bytes()).collect(),
                    )),
                    _ => None,
                }
            }
            "ConstantOfShape" => {
                let dims: Vec<i64> = out_ty?
                    .shape
                    .as_ref()?
                    .iter()
                    .map(|d| match d {
                        Fixed(v) => Some(*v),
                        _ => None,
                    })
                    .collect::<Option<_>>()?;
                let count = crate::ir::dtype::element_count(&dims)?;
                if count > 64 {
                    return None;
                }
                let (dtype, one) = match node.attr("value").and_then(|a| a.t.as_ref()) {
                    Some(t) => {
                        crate::ir::tensor::check_embedded("", t).ok()?;
                        let tt = Tensor {
                            dtype: t.data_type,
                            dims: t.dims.clone(),
                            data: TensorData::Embedded(Arc::new(t.clone())),
                        };
                        if tt.numel() != 1 {
                            return None;
                        }
                        (t.data_type, tt.bytes("").ok()?.to_vec())
                    }
                    None => (code::FLOAT, 0f32.to_le_bytes().to_vec()),
                };
                let bytes = one.repeat(count as usize);
                Some(Tensor::from_raw(dtype, dims, bytes))
            }
            _ => None,
        }
    }
}

/// Element type and dims of a Constant node's output.
fn constant_type(node: &Node) -> Option<(i32, Vec<i64>)> {
    let a = node.attrs.first()?;
    if node.attrs.len() != 1 {
        return None;
    }
    Some(match a.name.as_str() {
        "value" => {
            let t = a.t.as_ref()?;
            if t.dims.iter().any(|&d| d < 0) {
                return None;
            }
            (t.data_type, t.dims.clone())
        }
        "sparse_value" => {
            let s = a.sparse_tensor.as_ref()?;
            if s.dims.iter().any(|&d| d < 0) {
                return None;
            }
            (s.values.as_ref()?.data_type, s.dims.clone())
        }
        "value_float" => (code::FLOAT, vec![]),
        "value_floats" => (code::FLOAT, vec![a.floats.len() as i64]),
        "value_int" => (code::INT64, vec![]),
        "value_ints" => (code::INT64, vec![a.ints.len() as i64]),
        "value_string" => (code::STRING, vec![]),
        "value_strings" => (code::STRING, vec![a.strings.len() as i64]),
        _ => return None,
    })
}

fn exact_div(d: &Dim, b: i64) -> Option<Dim> {
    Some(match d {
        Fixed(v) => {
            if v % b != 0 {
                return None;
            }
            Fixed(v / b)
        }
        d if b == 1 => d.clone(),
        _ => Unknown,
    })
}

/// MatMul's output shape (numpy matmul semantics); `None` for mismatched operands.
fn matmul_shape(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a1 = a.len() == 1;
    let b1 = b.len() == 1;
    let aa: Vec<Dim> = if a1 {
        vec![Fixed(1), a[0].clone()]
    } else {
        a.to_vec()
    };
    let bb: Vec<Dim> = if b1 {
        vec![b[0].clone(), Fixed(1)]
    } else {
        b.to_vec()
    };
    let (ra, rb) = (aa.len(), bb.len());
    unify(&aa[ra - 1], &bb[rb - 2])?;
    let mut out = broadcast(&[&aa[..ra - 2], &bb[..rb - 2]])?;
    if !a1 {
        out.push(aa[ra - 2].clone());
    }
    if !b1 {
        out.push(bb[rb - 1].clone());
    }
    Some(out)
}

/// Einsum's output shape for an equation of letters and `...`.
fn einsum_shape(eq: &str, shapes: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != shapes.len() {
        return None;
    }
    let mut letters: HashMap<char, Dim> = HashMap::new();
    let mut counts: HashMap<char, usize> = HashMap::new();
    let mut ell: Vec<Dim> = Vec::new();
    let mut has_ell = false;
    for (term, shape) in terms.iter().zip(shapes) {
        let (pre, post, with_ell) = match term.split_once("...") {
            Some((p, q)) => (p, q, true),
            None => (*term, "", false),
        };
        if !pre
            .chars()
            .chain(post.chars())
            .all(|c| c.is_ascii_alphabetic())
        {
            return None;
        }
        let nl = pre.len() + post.len();
        if (!with_ell && nl != shape.len()) || nl > shape.len() {
            return None;
        }
        let ell_len = shape.len() - nl;
        let mut dims = shape.iter();
        for c in pre.chars() {
            let d = dims.next()?;
            let e = letters.entry(c).or_insert(Unknown);
            *e = unify(e, d)?;
            *counts.entry(c).or_insert(0) += 1;
        }
        if with_ell {
            has_ell = true;
            let part: Vec<Dim> = (0..ell_len)
                .map(|_| dims.next().cloned())
                .collect::<Option<_>>()?;
            ell = broadcast(&[&ell, &part])?;
        }
        for c in post.chars() {
            let d = dims.next()?;
            let e = letters.entry(c).or_insert(Unknown);
            *e = unify(e, d)?;
            *counts.entry(c).or_insert(0) += 1;
        }
    }
    let mut out = Vec::new();
    match rhs {
        Some(r) => {
            let (pre, post, with_ell) = match r.split_once("...") {
                Some((p, q)) => (p, q, true),
                None => (r, "", false),
            };
            for c in pre.chars() {
                out.push(letters.get(&c)?.clone());
            }
            if with_ell {
                if !has_ell {
                    return None;
                }
                out.extend(ell);
            }
            for c in post.chars() {
                out.push(letters.get(&c)?.clone());
            }
        }
        None => {
            out.extend(ell);
            let mut once: Vec<char> = counts
                .iter()
                .filter(|(_, n)| **n == 1)
                .map(|(c, _)| *c)
                .collect();
            once.sort_unstable();
            for c in once {
                out.push(letters[&c].clone());
            }
        }
    }
    Some(out)
}

impl Pass for ShapeInfer {
    fn name(&self) -> &'static str {
        "shape-infer"
    }
    fn summary(&self) -> &'static str {
        "infer element types and shapes (symbolic dims kept) of node outputs into value_info"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<usize> {
        let opset = model.opset("");
        let order = model.graph.topo_order()?;
        let g = &model.graph;
        let mut inf = Infer::new(g, opset);
        let mut updates: Vec<(ValueId, TensorTy)> = Vec::new();
        for n in order {
            let node = g.node(n);
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                continue;
            }
            let outs = inf.infer(node);
            for (i, o) in node.outputs.iter().enumerate() {
                let Some(v) = *o else { continue };
                let Some(inferred) = outs.get(i).cloned().flatten() else {
                    continue;
                };
                let val = g.value(v);
                let writable =
                    !g.is_output(v) && !val.is_input && val.initializer.is_none() && !val.sparse;
                match val.ty.as_ref() {
                    Some(tp) => {
                        let Some(decl) = ty_from_proto(tp) else {
                            continue;
                        };
                        match merge(&decl, &inferred) {
                            Merge::Same => {}
                            Merge::Conflict => cx.refuse(
                                node.label(),
                                format!(
                                    "'{}' is declared {decl} but the operator gives {inferred}; the declaration is kept",
                                    val.name
                                ),
                            ),
                            Merge::Refined(m) => {
                                if writable {
                                    updates.push((v, m.clone()));
                                }
                                inf.types.insert(v, m);
                            }
                        }
                    }
                    None => {
                        if writable && inferred.elem != 0 {
                            updates.push((v, inferred.clone()));
                        }
                        inf.types.insert(v, inferred);
                    }
                }
            }
            if let Some(Some(v)) = node.outputs.first() {
                let ty = inf.ty(*v);
                if let Some(t) = inf.const_out(node, ty.as_ref()) {
                    inf.consts.insert(*v, t);
                }
                if let Some(k) = inf.known_out(node, ty.as_ref()) {
                    inf.known.insert(*v, k);
                }
            }
        }
        drop(inf);
        let g = &mut model.graph;
        let listed: HashSet<ValueId> = g.value_info_order.iter().copied().collect();
        let rewrites = updates.len();
        for (v, ty) in updates {
            let val = g.value_mut(v);
            let tp = ty_to_proto(val.ty.as_ref(), &ty);
            let mut info = val.info.take().unwrap_or_else(|| ValueInfoProto {
                name: val.name.clone(),
                ..Default::default()
            });
            info.type_ = Some(tp.clone()).into();
            val.info = Some(info);
            val.ty = Some(tp);
            if !listed.contains(&v) {
                g.value_info_order.push(v);
            }
        }
        Ok(rewrites)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Refusal;
    use onnx_protobuf::attribute_proto::AttributeType;
    use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
    use std::path::Path;

    const F: i32 = code::FLOAT;
    const I: i32 = code::INT64;

    /// A type from text: `"batch,8"`; `?` is an unknown dim; `"-"` means no shape.
    fn vi(name: &str, elem: i32, dims: &str) -> ValueInfoProto {
        let shape = (dims != "-").then(|| {
            dims.split(',')
                .filter(|d| !d.is_empty())
                .map(|d| match d.trim() {
                    "?" => Unknown,
                    d => d.parse().map_or(Sym(d.to_string()), Fixed),
                })
                .collect()
        });
        ValueInfoProto {
            name: name.into(),
            type_: Some(ty_to_proto(None, &TensorTy::new(elem, shape))).into(),
            ..Default::default()
        }
    }

    fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        }
    }

    fn ai(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            i: v,
            type_: AttributeType::INT.into(),
            ..Default::default()
        }
    }

    fn ais(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            ints: v.to_vec(),
            type_: AttributeType::INTS.into(),
            ..Default::default()
        }
    }

    fn astr(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            s: v.as_bytes().to_vec(),
            type_: AttributeType::STRING.into(),
            ..Default::default()
        }
    }

    fn ints(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type: I,
            dims: dims.to_vec(),
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    fn floats(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type: F,
            dims: dims.to_vec(),
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    /// A zero-filled float weight.
    fn weight(name: &str, dims: &[i64]) -> TensorProto {
        let n: i64 = dims.iter().product();
        floats(name, dims, &vec![0.0; n as usize])
    }

    struct Case {
        opset: i64,
        inputs: Vec<ValueInfoProto>,
        inits: Vec<TensorProto>,
        nodes: Vec<NodeProto>,
        value_info: Vec<ValueInfoProto>,
    }

    fn case(opset: i64, inputs: Vec<ValueInfoProto>, nodes: Vec<NodeProto>) -> Case {
        Case {
            opset,
            inputs,
            inits: vec![],
            nodes,
            value_info: vec![],
        }
    }

    impl Case {
        fn inits(mut self, t: Vec<TensorProto>) -> Self {
            self.inits = t;
            self
        }
        fn declare(mut self, v: Vec<ValueInfoProto>) -> Self {
            self.value_info = v;
            self
        }
        /// The model; the last node's first output is the (untyped) graph output.
        fn model(self) -> Model {
            let last = self.nodes.last().expect("nodes").output[0].clone();
            let g = GraphProto {
                name: "g".into(),
                input: self.inputs,
                initializer: self.inits,
                node: self.nodes,
                output: vec![ValueInfoProto {
                    name: last,
                    ..Default::default()
                }],
                value_info: self.value_info,
                ..Default::default()
            };
            let p = ModelProto {
                ir_version: 9,
                opset_import: vec![OperatorSetIdProto {
                    domain: String::new(),
                    version: self.opset,
                    ..Default::default()
                }],
                graph: Some(g).into(),
                ..Default::default()
            };
            crate::onnx::model_from_proto(p, Path::new("test.onnx"), None).expect("valid model")
        }
        fn run(self) -> (Model, usize, Vec<Refusal>) {
            let mut m = self.model();
            let (n, r) = run(&mut m);
            (m, n, r)
        }
    }

    fn run(m: &mut Model) -> (usize, Vec<Refusal>) {
        let mut cx = PassContext::default();
        let n = ShapeInfer.run(m, &mut cx).expect("pass runs");
        crate::ir::verify(&m.graph).expect("valid graph");
        (n, cx.refusals)
    }

    /// The recorded type of a value as text (`float[batch,8]`), or `none`.
    fn ty(m: &Model, name: &str) -> String {
        let g = &m.graph;
        let v = g.find_value(name).expect("value exists");
        match g.value(v).ty.as_ref().and_then(ty_from_proto) {
            Some(t) => t.to_string(),
            None => "none".into(),
        }
    }

    /// Identity nodes that keep the values under test off the graph output.
    fn tail(from: &str) -> NodeProto {
        node("Identity", &[from], &["out"], vec![])
    }

    #[test]
    fn broadcasting_keeps_symbolic_dims() {
        let (m, n, refusals) = case(
            18,
            vec![
                vi("x", F, "batch,8"),
                vi("b", F, "8"),
                vi("y", F, "batch,1,8"),
                vi("s", F, "seq,1"),
                vi("u", F, "seq,8"),
                vi("c", code::BOOL, "batch,1"),
                vi("k", F, ""),
                vi("q", F, "?,8"),
            ],
            vec![
                node("Add", &["x", "b"], &["a"], vec![]),
                node("Mul", &["y", "s"], &["m"], vec![]),
                node("Sub", &["x", "u"], &["d"], vec![]),
                node("Less", &["x", "b"], &["l"], vec![]),
                node("Where", &["c", "b", "k"], &["w"], vec![]),
                node("Add", &["q", "x"], &["qa"], vec![]),
                node("Sum", &["a", "d", "w"], &["sum"], vec![]),
                tail("sum"),
            ],
        )
        .run();
        assert!(refusals.is_empty());
        // [batch,8] + [8] -> [batch,8]
        assert_eq!(ty(&m, "a"), "float[batch,8]");
        // [batch,1,8] * [seq,1] -> [batch,seq,8]
        assert_eq!(ty(&m, "m"), "float[batch,seq,8]");
        // batch vs seq: equal or one is 1 at run time; which is not known.
        assert_eq!(ty(&m, "d"), "float[?,8]");
        assert_eq!(ty(&m, "l"), "bool[batch,8]");
        assert_eq!(ty(&m, "w"), "float[batch,8]");
        // unknown vs batch: either could be 1.
        assert_eq!(ty(&m, "qa"), "float[?,8]");
        assert_eq!(ty(&m, "sum"), "float[?,8]");
        assert_eq!(n, 7);
        // Recorded as value_info; never for graph inputs or outputs.
        let g = &m.graph;
        let names: Vec<&str> = g
            .value_info_order
            .iter()
            .map(|&v| g.value(v).name.as_str())
            .collect();
        assert_eq!(names, ["a", "m", "d", "l", "w", "qa", "sum"]);
        let a = g.find_value("a").unwrap();
        let info = g.value(a).info.as_ref().expect("info");
        assert_eq!(info.name, "a");
        assert_eq!(info.type_.as_ref(), g.value(a).ty.as_ref());
        assert_eq!(ty(&m, "out"), "none");
    }

    #[test]
    fn incompatible_broadcast_is_left_alone() {
        let (m, n, _) = case(
            18,
            vec![vi("x", F, "batch,8"), vi("b", F, "3")],
            vec![node("Add", &["x", "b"], &["a"], vec![]), tail("a")],
        )
        .run();
        assert_eq!(ty(&m, "a"), "none");
        assert_eq!(n, 0);
    }

    #[test]
    fn matmul_and_gemm() {
        let (m, _, _) = case(
            18,
            vec![
                vi("x", F, "batch,seq,32"),
                vi("a", F, "2,1,4,8"),
                vi("b", F, "3,8,5"),
                vi("v", F, "8"),
                vi("m", F, "4,8"),
                vi("p", F, "16,8"),
            ],
            vec![
                node("MatMul", &["x", "w"], &["xw"], vec![]),
                node("MatMul", &["a", "b"], &["ab"], vec![]),
                node("MatMul", &["v", "b"], &["vb"], vec![]),
                node("MatMul", &["m", "v"], &["mv"], vec![]),
                node("MatMul", &["v", "v"], &["vv"], vec![]),
                node("Gemm", &["m", "p"], &["g"], vec![ai("transB", 1)]),
                node("Gemm", &["p", "m"], &["g2"], vec![ai("transA", 1)]),
                node("MatMul", &["m", "m"], &["bad"], vec![]),
                tail("g"),
            ],
        )
        .inits(vec![weight("w", &[32, 64])])
        .run();
        // [batch,seq,32] x [32,64] -> [batch,seq,64]
        assert_eq!(ty(&m, "xw"), "float[batch,seq,64]");
        // batch dims [2,1] and [3] broadcast to [2,3]; then [4,8]x[8,5] -> [4,5]
        assert_eq!(ty(&m, "ab"), "float[2,3,4,5]");
        // 1-D first operand: [8] -> [1,8]; [3] x ([1,8]x[8,5]) -> [3,1,5] -> drop the 1 -> [3,5]
        assert_eq!(ty(&m, "vb"), "float[3,5]");
        // 1-D second operand: [4,8] x [8] -> [4]
        assert_eq!(ty(&m, "mv"), "float[4]");
        // dot product -> scalar
        assert_eq!(ty(&m, "vv"), "float[]");
        // [4,8] x [16,8]^T -> [4,16]
        assert_eq!(ty(&m, "g"), "float[4,16]");
        // [16,8]^T x [4,8]: K is 16 vs 4: malformed
        assert_eq!(ty(&m, "g2"), "none");
        // [4,8] x [4,8]: inner dims 8 vs 4
        assert_eq!(ty(&m, "bad"), "none");
    }

    #[test]
    fn conv_pads_strides_dilations_groups() {
        let (m, _, _) = case(
            18,
            vec![
                vi("x", F, "N,4,10,12"),
                vi("t", F, "1,4,5,5"),
                vi("p", F, "1,3,7,7"),
                vi("bad", F, "1,5,10,12"),
            ],
            vec![
                // H: eff 3, (10+1+1-3)/2+1 = 5; W: eff (3-1)*2+1 = 5, (12+0+2-5)/1+1 = 10
                node(
                    "Conv",
                    &["x", "w", "bias"],
                    &["c"],
                    vec![
                        ai("group", 2),
                        ais("pads", &[1, 0, 1, 2]),
                        ais("strides", &[2, 1]),
                        ais("dilations", &[1, 2]),
                    ],
                ),
                // SAME_UPPER: ceil(10/2) = 5, ceil(12/3) = 4
                node(
                    "Conv",
                    &["x", "w"],
                    &["same"],
                    vec![
                        ai("group", 2),
                        astr("auto_pad", "SAME_UPPER"),
                        ais("strides", &[2, 3]),
                    ],
                ),
                // 3x3, pads 1, stride 1 keeps the spatial size; VALID: 10-3+1 = 8, 12-3+1 = 10
                node(
                    "Conv",
                    &["x", "w"],
                    &["keep"],
                    vec![ai("group", 2), ais("pads", &[1, 1, 1, 1])],
                ),
                node(
                    "Conv",
                    &["x", "w"],
                    &["valid"],
                    vec![ai("group", 2), astr("auto_pad", "VALID")],
                ),
                // 4 input channels vs 2*1: wrong group
                node("Conv", &["bad", "w"], &["nogroup"], vec![]),
                // ConvTranspose: 2*(5-1) + 1 + 3 - 1 - 1 = 10; channels 3*1
                node(
                    "ConvTranspose",
                    &["t", "wt"],
                    &["ct"],
                    vec![
                        ais("strides", &[2, 2]),
                        ais("pads", &[1, 1, 1, 1]),
                        ais("output_padding", &[1, 1]),
                    ],
                ),
                node(
                    "ConvTranspose",
                    &["t", "wt"],
                    &["cto"],
                    vec![ais("strides", &[2, 2]), ais("output_shape", &[11, 12])],
                ),
                // (7-3)/2+1 = 3
                node(
                    "MaxPool",
                    &["p"],
                    &["mp", "mpi"],
                    vec![ais("kernel_shape", &[3, 3]), ais("strides", &[2, 2])],
                ),
                // ceil mode: (7+0-2)/2 = 2.5 -> 3 -> 4 windows; the last starts at 6 < 7: kept
                node(
                    "AveragePool",
                    &["p"],
                    &["ap"],
                    vec![
                        ais("kernel_shape", &[2, 2]),
                        ais("strides", &[2, 2]),
                        ai("ceil_mode", 1),
                    ],
                ),
                node("GlobalAveragePool", &["p"], &["gap"], vec![]),
                node("Flatten", &["gap"], &["fl"], vec![]),
                tail("fl"),
            ],
        )
        .inits(vec![
            weight("w", &[8, 2, 3, 3]),
            weight("bias", &[8]),
            weight("wt", &[4, 3, 3, 3]),
        ])
        .run();
        assert_eq!(ty(&m, "c"), "float[N,8,5,10]");
        assert_eq!(ty(&m, "same"), "float[N,8,5,4]");
        assert_eq!(ty(&m, "keep"), "float[N,8,10,12]");
        assert_eq!(ty(&m, "valid"), "float[N,8,8,10]");
        assert_eq!(ty(&m, "nogroup"), "none");
        assert_eq!(ty(&m, "ct"), "float[1,3,10,10]");
        assert_eq!(ty(&m, "cto"), "float[1,3,11,12]");
        assert_eq!(ty(&m, "mp"), "float[1,3,3,3]");
        assert_eq!(ty(&m, "mpi"), "int64[1,3,3,3]");
        assert_eq!(ty(&m, "ap"), "float[1,3,4,4]");
        assert_eq!(ty(&m, "gap"), "float[1,3,1,1]");
        assert_eq!(ty(&m, "fl"), "float[1,3]");
    }

    #[test]
    fn reshape_with_zero_minus_one_and_computed_shapes() {
        let (m, _, _) = case(
            18,
            vec![
                vi("x", F, "2,3,4"),
                vi("h", F, "batch,seq,768"),
                vi("q", F, "batch,seq,12,64"),
                vi("z", F, "3,0"),
            ],
            vec![
                // 0 copies dim 0; -1 = 24/2 = 12
                node("Reshape", &["x", "s0"], &["r0"], vec![]),
                node("Reshape", &["h", "heads"], &["r1"], vec![]),
                // -1 = batch*seq*768 / (batch*seq) = 768
                node("Reshape", &["q", "merge"], &["r2"], vec![]),
                // -1 = batch*seq*768/(batch*64) = 12*seq: not a dim
                node("Reshape", &["h", "s3"], &["r3"], vec![]),
                // The shape computed from Shape(q): [batch, seq] ++ [768]
                node("Shape", &["q"], &["qs"], vec![]),
                node("Gather", &["qs", "i01"], &["bs"], vec![ai("axis", 0)]),
                node("Concat", &["bs", "c768"], &["shp"], vec![ai("axis", 0)]),
                node("Reshape", &["q", "shp"], &["r4"], vec![]),
                // Shape(h)[0] as a scalar, unsqueezed, concatenated with [-1, 64]
                node("Shape", &["h"], &["hs"], vec![]),
                node("Gather", &["hs", "i0"], &["b0"], vec![]),
                node("Unsqueeze", &["b0", "ax0"], &["b1"], vec![]),
                node("Concat", &["b1", "s5"], &["shp2"], vec![ai("axis", 0)]),
                node("Reshape", &["x", "shp2"], &["r5"], vec![]),
                // Slice of a shape: the last two dims of q -> [12, 64]; Mul -> [768]
                node("Slice", &["qs", "m2", "big"], &["tail2"], vec![]),
                node("ReduceProd", &["tail2"], &["prod"], vec![ai("keepdims", 1)]),
                node("Concat", &["bs", "neg1"], &["shp3"], vec![ai("axis", 0)]),
                node("Reshape", &["q", "shp3"], &["r6"], vec![]),
                // allowzero: 0 is a real 0
                node("Reshape", &["z", "s7"], &["r7"], vec![ai("allowzero", 1)]),
                node("Reshape", &["z", "s7"], &["r8"], vec![]),
                tail("r8"),
            ],
        )
        .inits(vec![
            ints("s0", &[2], &[0, -1]),
            ints("heads", &[4], &[0, 0, 12, 64]),
            ints("merge", &[3], &[0, 0, -1]),
            ints("s3", &[3], &[0, -1, 64]),
            ints("i01", &[2], &[0, 1]),
            ints("c768", &[1], &[768]),
            ints("i0", &[], &[0]),
            ints("ax0", &[1], &[0]),
            ints("s5", &[2], &[-1, 6]),
            ints("m2", &[1], &[-2]),
            ints("big", &[1], &[i64::MAX]),
            ints("neg1", &[1], &[-1]),
            ints("s7", &[2], &[0, 5]),
        ])
        .run();
        assert_eq!(ty(&m, "r0"), "float[2,12]");
        assert_eq!(ty(&m, "r1"), "float[batch,seq,12,64]");
        assert_eq!(ty(&m, "r2"), "float[batch,seq,768]");
        assert_eq!(ty(&m, "r3"), "float[batch,?,64]");
        assert_eq!(ty(&m, "qs"), "int64[4]");
        assert_eq!(ty(&m, "bs"), "int64[2]");
        assert_eq!(ty(&m, "shp"), "int64[3]");
        assert_eq!(ty(&m, "r4"), "float[batch,seq,768]");
        assert_eq!(ty(&m, "b0"), "int64[]");
        assert_eq!(ty(&m, "b1"), "int64[1]");
        // x has 24 elements: [batch, -1, 6]; -1 = 24/(batch*6) is not a dim
        assert_eq!(ty(&m, "r5"), "float[batch,?,6]");
        assert_eq!(ty(&m, "tail2"), "int64[2]");
        assert_eq!(ty(&m, "prod"), "int64[1]");
        // [batch, seq, -1] of [batch,seq,12,64]: -1 = 768
        assert_eq!(ty(&m, "r6"), "float[batch,seq,768]");
        assert_eq!(ty(&m, "r7"), "float[0,5]");
        // 0 copies 3: [3,5] has 15 elements, z has 0: malformed
        assert_eq!(ty(&m, "r8"), "none");
    }

    #[test]
    fn transpose() {
        let (m, _, _) = case(
            18,
            vec![vi("x", F, "batch,seq,12,64")],
            vec![
                node(
                    "Transpose",
                    &["x"],
                    &["t"],
                    vec![ais("perm", &[0, 2, 1, 3])],
                ),
                node("Transpose", &["x"], &["r"], vec![]),
                node(
                    "Transpose",
                    &["x"],
                    &["bad"],
                    vec![ais("perm", &[0, 0, 1, 2])],
                ),
                tail("t"),
            ],
        )
        .run();
        assert_eq!(ty(&m, "t"), "float[batch,12,seq,64]");
        assert_eq!(ty(&m, "r"), "float[64,12,seq,batch]");
        assert_eq!(ty(&m, "bad"), "none");
    }

    #[test]
    fn squeeze_unsqueeze_by_opset() {
        // Before opset 13 axes are attributes.
        let (m, _, _) = case(
            11,
            vec![vi("x", F, "3,4"), vi("y", F, "batch,1,8")],
            vec![
                // output rank 4: axes 0 and -1 -> 3: [1,3,4,1]
                node("Unsqueeze", &["x"], &["u"], vec![ais("axes", &[0, -1])]),
                node("Squeeze", &["y"], &["s"], vec![ais("axes", &[1])]),
                node("Squeeze", &["y"], &["bad"], vec![ais("axes", &[2])]),
                tail("u"),
            ],
        )
        .run();
        assert_eq!(ty(&m, "u"), "float[1,3,4,1]");
        assert_eq!(ty(&m, "s"), "float[batch,8]");
        // squeezing a dim of 8 is malformed
        assert_eq!(ty(&m, "bad"), "none");

        // From opset 13 axes are an input.
        let (m, _, _) = case(
            13,
            vec![
                vi("x", F, "3,4"),
                vi("y", F, "3,1,4,1"),
                vi("z", F, "batch,1"),
            ],
            vec![
                node("Unsqueeze", &["x", "a"], &["u"], vec![]),
                node("Squeeze", &["y"], &["s"], vec![]),
                node("Squeeze", &["y", "a1"], &["s1"], vec![]),
                // No axes and a symbolic dim: the rank is unknown.
                node("Squeeze", &["z"], &["sz"], vec![]),
                // An axes attribute is not read at opset 13: no axes input means "all 1s".
                node("Squeeze", &["y"], &["sa"], vec![ais("axes", &[1])]),
                tail("u"),
            ],
        )
        .inits(vec![ints("a", &[2], &[1, 3]), ints("a1", &[1], &[-1])])
        .run();
        // axes 1 and 3 of rank 4: [3,1,4,1]
        assert_eq!(ty(&m, "u"), "float[3,1,4,1]");
        assert_eq!(ty(&m, "s"), "float[3,4]");
        assert_eq!(ty(&m, "s1"), "float[3,1,4]");
        assert_eq!(ty(&m, "sz"), "float");
        assert_eq!(ty(&m, "sa"), "float[3,4]");
    }

    #[test]
    fn slice_with_negative_indices() {
        let (m, _, _) = case(
            18,
            vec![vi("x", F, "10,batch,8")],
            vec![
                // axis 0: [-3, end) -> 3; axis 1 whole -> batch
                node("Slice", &["x", "st", "en", "ax"], &["a"], vec![]),
                // axis 2 from -1 down to the start, step -2: 7,5,3,1 -> 4
                node("Slice", &["x", "m1", "min", "two", "mtwo"], &["b"], vec![]),
                // axis 0 [2, -2) -> 6 (axes default to 0..k)
                node("Slice", &["x", "two1", "mtwo1"], &["c"], vec![]),
                // axis 1 symbolic [0, 4): unknown
                node("Slice", &["x", "zero", "four", "one"], &["d"], vec![]),
                // step 0 is malformed
                node(
                    "Slice",
                    &["x", "zero", "four", "zero", "zero"],
                    &["e"],
                    vec![],
                ),
                tail("a"),
            ],
        )
        .inits(vec![
            ints("st", &[2], &[-3, 0]),
            ints("en", &[2], &[i64::MAX, i64::MAX]),
            ints("ax", &[2], &[0, 1]),
            ints("m1", &[1], &[-1]),
            ints("min", &[1], &[i64::MIN]),
            ints("two", &[1], &[2]),
            ints("mtwo", &[1], &[-2]),
            ints("two1", &[1], &[2]),
            ints("mtwo1", &[1], &[-2]),
            ints("zero", &[1], &[0]),
            ints("four", &[1], &[4]),
            ints("one", &[1], &[1]),
        ])
        .run();
        assert_eq!(ty(&m, "a"), "float[3,batch,8]");
        assert_eq!(ty(&m, "b"), "float[10,batch,4]");
        assert_eq!(ty(&m, "c"), "float[6,batch,8]");
        assert_eq!(ty(&m, "d"), "float[10,?,8]");
        assert_eq!(ty(&m, "e"), "none");

        // Opset 9: attributes.
        let (m, _, _) = case(
            9,
            vec![vi("x", F, "10,6")],
            vec![
                node(
                    "Slice",
                    &["x"],
                    &["a"],
                    vec![ais("starts", &[1, -4]), ais("ends", &[100, -1])],
                ),
                tail("a"),
            ],
        )
        .run();
        // [1, 10) -> 9; [2, 5) -> 3
        assert_eq!(ty(&m, "a"), "float[9,3]");
    }

    #[test]
    fn contradiction_is_refused_and_unknown_dims_are_filled() {
        let (m, n, refusals) = case(
            18,
            vec![vi("x", F, "batch,8"), vi("b", F, "8")],
            vec![
                node("Add", &["x", "b"], &["z"], vec![]),
                node("Relu", &["z"], &["r"], vec![]),
                node("Cast", &["r"], &["c"], vec![ai("to", I as i64)]),
                node("Neg", &["x"], &["g"], vec![]),
                node("Sigmoid", &["x"], &["h"], vec![]),
                tail("c"),
            ],
        )
        .declare(vec![
            vi("z", F, "batch,9"),
            vi("r", F, "?,?"),
            vi("c", F, "-"),
            vi("g", F, "n,8"),
            vi("h", F, "-"),
        ])
        .run();
        // z: declared [batch,9], inferred [batch,8]: kept, refused, named.
        assert_eq!(ty(&m, "z"), "float[batch,9]");
        assert!(
            refusals
                .iter()
                .any(|r| r.node.contains("Add") && r.reason.contains("'z'")),
            "{refusals:?}"
        );
        // r: Relu of the declared z; unknown dims filled from it.
        assert_eq!(ty(&m, "r"), "float[batch,9]");
        // c: elem type contradiction (int64 vs declared float).
        assert_eq!(ty(&m, "c"), "float");
        assert!(refusals.iter().any(|r| r.reason.contains("'c'")));
        // g: a declared symbolic name is never replaced.
        assert_eq!(ty(&m, "g"), "float[n,8]");
        // h: a declared type without shape gets one.
        assert_eq!(ty(&m, "h"), "float[batch,8]");
        assert_eq!(refusals.len(), 2);
        assert_eq!(n, 2);
        // Declared entries are not listed twice.
        assert_eq!(m.graph.value_info_order.len(), 5);
    }

    #[test]
    fn second_run_changes_nothing() {
        let mut m = case(
            13,
            vec![vi("ids", I, "batch,seq"), vi("x", F, "batch,seq,32")],
            vec![
                node("Gather", &["emb", "ids"], &["e"], vec![]),
                node("Add", &["e", "x"], &["a"], vec![]),
                node(
                    "LayerNormalization",
                    &["a", "g", "bb"],
                    &["ln"],
                    vec![ai("axis", -1)],
                ),
                node("MatMul", &["ln", "w"], &["mm"], vec![]),
                node("Shape", &["mm"], &["s"], vec![]),
                node("Gather", &["s", "i0"], &["b"], vec![]),
                node("Unsqueeze", &["b", "ax"], &["bu"], vec![]),
                node("Concat", &["bu", "rest"], &["shape"], vec![ai("axis", 0)]),
                node("Reshape", &["mm", "shape"], &["r"], vec![]),
                node(
                    "Transpose",
                    &["r"],
                    &["t"],
                    vec![ais("perm", &[0, 2, 1, 3])],
                ),
                node("Softmax", &["t"], &["sm"], vec![ai("axis", -1)]),
                tail("sm"),
            ],
        )
        .inits(vec![
            weight("emb", &[100, 32]),
            weight("g", &[32]),
            weight("bb", &[32]),
            weight("w", &[32, 64]),
            ints("i0", &[], &[0]),
            ints("ax", &[1], &[0]),
            ints("rest", &[3], &[-1, 4, 16]),
        ])
        .model();
        let (n1, _) = run(&mut m);
        assert_eq!(ty(&m, "e"), "float[batch,seq,32]");
        assert_eq!(ty(&m, "mm"), "float[batch,seq,64]");
        assert_eq!(ty(&m, "shape"), "int64[4]");
        // -1 = batch*seq*64 / (batch*4*16) = seq
        assert_eq!(ty(&m, "r"), "float[batch,seq,4,16]");
        assert_eq!(ty(&m, "t"), "float[batch,4,seq,16]");
        assert_eq!(n1, 11);
        let (n2, refusals) = run(&mut m);
        assert_eq!(n2, 0);
        assert!(refusals.is_empty());
        // The result survives a save/load round trip as value_info.
        let p = crate::onnx::model_to_proto(m).expect("saves");
        let gp = p.graph.as_ref().expect("graph");
        assert_eq!(gp.value_info.len(), 11);
        assert!(
            gp.value_info
                .iter()
                .all(|v| v.name != "out" && v.name != "ids")
        );
    }

    #[test]
    fn other_operators() {
        let (m, _, _) = case(
            18,
            vec![
                vi("x", F, "batch,6,4"),
                vi("img", F, "1,3,8,8"),
                vi("idx", I, "batch,5,2"),
            ],
            vec![
                node("Split", &["x", "sp"], &["s1", "s2"], vec![ai("axis", 1)]),
                node("Split", &["x"], &["e1", "e2", "e3"], vec![ai("axis", 1)]),
                node(
                    "Split",
                    &["img"],
                    &["u1", "u2", "u3"],
                    vec![ai("axis", 2), ai("num_outputs", 3)],
                ),
                node("ReduceMean", &["x", "rax"], &["rm"], vec![]),
                node("ReduceSum", &["x"], &["rs"], vec![ai("keepdims", 0)]),
                node("ReduceL2", &["x", "rax"], &["rl"], vec![ai("keepdims", 0)]),
                node(
                    "ArgMax",
                    &["x"],
                    &["am"],
                    vec![ai("axis", -1), ai("keepdims", 0)],
                ),
                node("Expand", &["x", "exs"], &["ex"], vec![]),
                node("Tile", &["x", "reps"], &["ti"], vec![]),
                node("Pad", &["img", "pads"], &["pd"], vec![]),
                node("Resize", &["img", "", "scales"], &["rz"], vec![]),
                node("Resize", &["img", "", "", "sizes"], &["rz2"], vec![]),
                node("TopK", &["x", "k"], &["tv", "ti2"], vec![ai("axis", 1)]),
                node(
                    "Einsum",
                    &["x", "img4"],
                    &["ein"],
                    vec![astr("equation", "bij,jk->bik")],
                ),
                node("Range", &["r0", "r1", "r2"], &["rg"], vec![]),
                node("ConstantOfShape", &["cs"], &["co"], vec![]),
                node(
                    "Shape",
                    &["img"],
                    &["sh"],
                    vec![ai("start", 1), ai("end", -1)],
                ),
                node("Size", &["x"], &["sz"], vec![]),
                node("GatherND", &["x", "idx"], &["gnd"], vec![]),
                node(
                    "GatherElements",
                    &["x", "ge"],
                    &["gel"],
                    vec![ai("axis", 1)],
                ),
                node("Dropout", &["x"], &["dr", "mask"], vec![]),
                node(
                    "LayerNormalization",
                    &["x", "lg"],
                    &["ln", "mean", "inv"],
                    vec![ai("axis", 1)],
                ),
                node(
                    "Cast",
                    &["x"],
                    &["ca"],
                    vec![ai("to", code::FLOAT16 as i64)],
                ),
                node("Flatten", &["x"], &["fl"], vec![ai("axis", 0)]),
                node("Trilu", &["x"], &["tr"], vec![]),
                node("CumSum", &["x", "i0"], &["cu"], vec![]),
                node(
                    "DepthToSpace",
                    &["img4d"],
                    &["d2s"],
                    vec![ai("blocksize", 2)],
                ),
                node("Custom", &["x"], &["cust"], vec![]),
                tail("rm"),
            ],
        )
        .inits(vec![
            ints("sp", &[2], &[2, 4]),
            ints("rax", &[1], &[-1]),
            ints("exs", &[4], &[3, 1, 1, 4]),
            ints("reps", &[3], &[1, 2, 3]),
            ints("pads", &[8], &[0, 0, 1, 2, 0, 0, 3, 4]),
            floats("scales", &[4], &[1.0, 1.0, 2.0, 0.5]),
            ints("sizes", &[4], &[1, 3, 5, 7]),
            ints("k", &[1], &[2]),
            weight("img4", &[4, 7]),
            ints("r0", &[], &[1]),
            ints("r1", &[], &[10]),
            ints("r2", &[], &[3]),
            ints("cs", &[2], &[2, 5]),
            ints("ge", &[3], &[0, 0, 0]),
            weight("lg", &[6, 4]),
            ints("i0", &[], &[0]),
            weight("img4d", &[1, 8, 2, 3]),
        ])
        .run();
        assert_eq!(ty(&m, "s1"), "float[batch,2,4]");
        assert_eq!(ty(&m, "s2"), "float[batch,4,4]");
        assert_eq!(ty(&m, "e2"), "float[batch,2,4]");
        // opset 18 uneven split: ceil(8/3) = 3, 3, then 2
        assert_eq!(ty(&m, "u1"), "float[1,3,3,8]");
        assert_eq!(ty(&m, "u3"), "float[1,3,2,8]");
        assert_eq!(ty(&m, "rm"), "float[batch,6,1]");
        assert_eq!(ty(&m, "rs"), "float[]");
        assert_eq!(ty(&m, "rl"), "float[batch,6]");
        assert_eq!(ty(&m, "am"), "int64[batch,6]");
        // [batch,6,4] expanded to [3,1,1,4] -> [3,batch,6,4]
        assert_eq!(ty(&m, "ex"), "float[3,batch,6,4]");
        assert_eq!(ty(&m, "ti"), "float[batch,12,12]");
        // H 8+1+3 = 12, W 8+2+4 = 14
        assert_eq!(ty(&m, "pd"), "float[1,3,12,14]");
        assert_eq!(ty(&m, "rz"), "float[1,3,16,4]");
        assert_eq!(ty(&m, "rz2"), "float[1,3,5,7]");
        assert_eq!(ty(&m, "tv"), "float[batch,2,4]");
        assert_eq!(ty(&m, "ti2"), "int64[batch,2,4]");
        assert_eq!(ty(&m, "ein"), "float[batch,6,7]");
        // ceil((10-1)/3) = 3
        assert_eq!(ty(&m, "rg"), "int64[3]");
        assert_eq!(ty(&m, "co"), "float[2,5]");
        assert_eq!(ty(&m, "sh"), "int64[2]");
        assert_eq!(ty(&m, "sz"), "int64[]");
        // indices [batch,5,2]: last dim 2 indexes two dims of x -> [batch,5] ++ [4]
        assert_eq!(ty(&m, "gnd"), "float[batch,5,4]");
        assert_eq!(ty(&m, "gel"), "float[3]");
        assert_eq!(ty(&m, "mask"), "bool[batch,6,4]");
        assert_eq!(ty(&m, "ln"), "float[batch,6,4]");
        assert_eq!(ty(&m, "mean"), "float[batch,1,1]");
        assert_eq!(ty(&m, "ca"), "float16[batch,6,4]");
        assert_eq!(ty(&m, "fl"), "float[1,?]");
        assert_eq!(ty(&m, "tr"), "float[batch,6,4]");
        assert_eq!(ty(&m, "cu"), "float[batch,6,4]");
        assert_eq!(ty(&m, "d2s"), "float[1,2,4,6]");
        assert_eq!(ty(&m, "cust"), "none");
    }

    #[test]
    fn constants_and_shape_values() {
        let t = floats("", &[2, 3], &[0.0; 6]);
        let mut cattr = AttributeProto {
            name: "value".into(),
            type_: AttributeType::TENSOR.into(),
            ..Default::default()
        };
        cattr.t = Some(t).into();
        let (m, _, _) = case(
            18,
            vec![vi("x", F, "batch,seq,8")],
            vec![
                node("Constant", &[], &["c"], vec![cattr]),
                node(
                    "Constant",
                    &[],
                    &["ci"],
                    vec![ais("value_ints", &[0, -1, 2, 4])],
                ),
                node("Reshape", &["x", "ci"], &["r"], vec![]),
                node("Shape", &["x"], &["s"], vec![]),
                node("Constant", &[], &["one"], vec![ai("value_int", 1)]),
                node("Gather", &["s", "one"], &["seq"], vec![]),
                node("Cast", &["seq"], &["seq64"], vec![ai("to", I as i64)]),
                node("Constant", &[], &["z"], vec![ai("value_int", 0)]),
                node("Range", &["z", "seq64", "one"], &["pos"], vec![]),
                node("Mul", &["seq64", "one"], &["seq2"], vec![]),
                node("Unsqueeze", &["seq2", "zax"], &["sequ"], vec![]),
                node("ConstantOfShape", &["sequ"], &["ones"], vec![]),
                tail("ones"),
            ],
        )
        .inits(vec![ints("zax", &[1], &[0])])
        .run();
        assert_eq!(ty(&m, "c"), "float[2,3]");
        assert_eq!(ty(&m, "ci"), "int64[4]");
        // [batch, -1, 2, 4]: -1 = batch*seq*8 / (batch*8) = seq
        assert_eq!(ty(&m, "r"), "float[batch,seq,2,4]");
        assert_eq!(ty(&m, "seq"), "int64[]");
        // range(0, seq, 1) has seq elements
        assert_eq!(ty(&m, "pos"), "int64[seq]");
        assert_eq!(ty(&m, "ones"), "float[seq]");
    }

    #[test]
    fn shape_arithmetic_that_exporters_emit() {
        let ones = AttributeProto {
            name: "value".into(),
            type_: AttributeType::TENSOR.into(),
            t: Some(ints("", &[1], &[1])).into(),
            ..Default::default()
        };
        let zeros = AttributeProto {
            t: Some(ints("", &[1], &[0])).into(),
            ..ones.clone()
        };
        let (m, _, _) = case(
            18,
            vec![
                vi("x", F, "batch,3,8,8"),
                vi("cls", F, "1,1,32"),
                vi("y", F, "6,4"),
            ],
            vec![
                // torch's F.pad(x, (1, 1, 2, 2), mode="reflect") as the TorchScript exporter
                // writes it: pads reversed pairwise into ONNX order.
                node(
                    "Constant",
                    &[],
                    &["p"],
                    vec![ais("value_ints", &[1, 1, 2, 2])],
                ),
                node("ConstantOfShape", &["four"], &["z"], vec![zeros]),
                node("Concat", &["p", "z"], &["c"], vec![ai("axis", 0)]),
                node("Reshape", &["c", "pairs"], &["r"], vec![]),
                node("Slice", &["r", "m1", "mbig", "ax0", "m1"], &["s"], vec![]),
                node("Transpose", &["s"], &["t"], vec![ais("perm", &[1, 0])]),
                node("Reshape", &["t", "flat"], &["f"], vec![]),
                node(
                    "Pad",
                    &["x", "f"],
                    &["padded"],
                    vec![astr("mode", "reflect")],
                ),
                // cls.expand(2, -1, -1): -1 entries replaced by 1 through Equal/Where.
                node("ConstantOfShape", &["three"], &["o"], vec![ones]),
                node("Mul", &["o", "m1"], &["neg"], vec![]),
                node("Equal", &["target", "neg"], &["eq"], vec![]),
                node("Where", &["eq", "o", "target"], &["w"], vec![]),
                node("Expand", &["cls", "w"], &["ex"], vec![]),
                // Mod takes the divisor's sign: -1 mod 3 = 2.
                node("Mod", &["m1", "three"], &["md"], vec![]),
                node("Concat", &["md", "m1"], &["shp"], vec![ai("axis", 0)]),
                node("Reshape", &["y", "shp"], &["ry"], vec![]),
                tail("padded"),
            ],
        )
        .inits(vec![
            ints("four", &[1], &[4]),
            ints("three", &[1], &[3]),
            ints("pairs", &[2], &[-1, 2]),
            ints("m1", &[1], &[-1]),
            ints("mbig", &[1], &[-i64::MAX]),
            ints("ax0", &[1], &[0]),
            ints("flat", &[1], &[-1]),
            ints("target", &[3], &[2, -1, -1]),
        ])
        .run();
        assert_eq!(ty(&m, "r"), "int64[4,2]");
        assert_eq!(ty(&m, "t"), "int64[2,4]");
        // pads [0,0,2,1, 0,0,2,1]: H 8+2+2 = 12, W 8+1+1 = 10
        assert_eq!(ty(&m, "padded"), "float[batch,3,12,10]");
        // shape [2,1,1] broadcast with [1,1,32]
        assert_eq!(ty(&m, "ex"), "float[2,1,32]");
        // [2, -1] of 24 elements
        assert_eq!(ty(&m, "ry"), "float[2,12]");
    }

    #[test]
    fn malformed_input_never_panics() {
        let (m, _, _) = case(
            18,
            vec![vi("x", F, "2,3"), vi("big", F, "9223372036854775807,2")],
            vec![
                node("Reshape", &["x", "huge"], &["a"], vec![]),
                node("Reshape", &["x", "twoneg"], &["b"], vec![]),
                node("Transpose", &["x"], &["c"], vec![ais("perm", &[5, 0])]),
                node("Conv", &["x", "w"], &["d"], vec![ais("strides", &[0])]),
                node("Flatten", &["big"], &["e"], vec![ai("axis", 9)]),
                node("Reshape", &["big", "minus"], &["f"], vec![]),
                node("Tile", &["big", "reps"], &["g"], vec![]),
                node("Pad", &["big", "pads"], &["h"], vec![]),
                node("Gather", &["x", "i"], &["k"], vec![ai("axis", i64::MIN)]),
                node("Split", &["x"], &["l1", "l2"], vec![ai("axis", 1)]),
                node("Concat", &["x", "big"], &["n"], vec![ai("axis", 7)]),
                node("Cast", &["x"], &["o"], vec![]),
                node("Cast", &["x"], &["o2"], vec![ai("to", 1 << 32 | 1)]),
                node("Cast", &["x"], &["o3"], vec![ai("to", 999)]),
                node("Einsum", &["x"], &["p"], vec![astr("equation", "ab,->..b")]),
                node("Flatten", &["big"], &["q"], vec![ai("axis", 0)]),
                tail("q"),
            ],
        )
        .inits(vec![
            ints("huge", &[2], &[i64::MAX, i64::MAX]),
            ints("twoneg", &[2], &[-1, -1]),
            weight("w", &[1, 2, 1]),
            ints("minus", &[1], &[-7]),
            ints("reps", &[2], &[i64::MAX, 3]),
            ints("pads", &[4], &[i64::MAX, 0, 5, 0]),
            ints("i", &[], &[0]),
        ])
        .run();
        for v in [
            "a", "b", "c", "d", "e", "f", "h", "k", "l1", "n", "o", "o2", "o3", "p",
        ] {
            assert_eq!(ty(&m, v), "none", "{v}");
        }
        // i64::MAX * 2 elements overflow: the dim is unknown, not wrong.
        assert_eq!(ty(&m, "q"), "float[1,?]");
        assert_eq!(ty(&m, "g"), "float[?,6]");
    }
}
