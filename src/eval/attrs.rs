//! Per-node evaluation context: attribute access (reading the proto fields directly, never
//! panicking), input access and size checks.

use onnx_protobuf::AttributeProto;
use onnx_protobuf::attribute_proto::AttributeType;

use super::{EvalError, EvalOptions, Result, TensorValue};

pub(crate) struct Ctx<'a> {
    pub op: &'a str,
    pub opset: i64,
    pub attrs: &'a [AttributeProto],
    pub inputs: &'a [Option<&'a TensorValue>],
    pub num_outputs: usize,
    pub opts: &'a EvalOptions,
}

fn type_name(t: AttributeType) -> &'static str {
    match t {
        AttributeType::UNDEFINED => "UNDEFINED",
        AttributeType::FLOAT => "FLOAT",
        AttributeType::INT => "INT",
        AttributeType::STRING => "STRING",
        AttributeType::TENSOR => "TENSOR",
        AttributeType::GRAPH => "GRAPH",
        AttributeType::SPARSE_TENSOR => "SPARSE_TENSOR",
        AttributeType::TYPE_PROTO => "TYPE_PROTO",
        AttributeType::FLOATS => "FLOATS",
        AttributeType::INTS => "INTS",
        AttributeType::STRINGS => "STRINGS",
        AttributeType::TENSORS => "TENSORS",
        AttributeType::GRAPHS => "GRAPHS",
        AttributeType::SPARSE_TENSORS => "SPARSE_TENSORS",
        AttributeType::TYPE_PROTOS => "TYPE_PROTOS",
    }
}

impl<'a> Ctx<'a> {
    pub fn new(
        op: &'a str,
        opset: i64,
        attrs: &'a [AttributeProto],
        inputs: &'a [Option<&'a TensorValue>],
        num_outputs: usize,
        opts: &'a EvalOptions,
    ) -> Self {
        Ctx {
            op,
            opset,
            attrs,
            inputs,
            num_outputs,
            opts,
        }
    }

    pub fn err(&self, msg: impl Into<String>) -> EvalError {
        EvalError::Op {
            op: self.op.to_string(),
            msg: msg.into(),
        }
    }

    /// The attribute with this name, checked to be of the expected type (UNDEFINED is accepted,
    /// as some hand-written models leave the type out).
    fn attr(&self, name: &str, expected: AttributeType) -> Result<Option<&'a AttributeProto>> {
        let Some(a) = self.attrs.iter().find(|a| a.name == name) else {
            return Ok(None);
        };
        if !a.ref_attr_name.is_empty() {
            return Err(self.err(format!(
                "attribute '{name}' refers to an unresolved function attribute '{}'",
                a.ref_attr_name
            )));
        }
        match a.type_.enum_value() {
            Ok(t) if t == expected || t == AttributeType::UNDEFINED => Ok(Some(a)),
            Ok(t) => Err(self.err(format!(
                "attribute '{name}' has type {}, expected {}",
                type_name(t),
                type_name(expected)
            ))),
            Err(v) => Err(self.err(format!("attribute '{name}' has unknown attribute type {v}"))),
        }
    }

    pub fn has_attr(&self, name: &str) -> bool {
        self.attrs.iter().any(|a| a.name == name)
    }

    pub fn attr_i(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.attr(name, AttributeType::INT)?.map(|a| a.i))
    }

    pub fn attr_i_or(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.attr_i(name)?.unwrap_or(default))
    }

    pub fn attr_f(&self, name: &str) -> Result<Option<f32>> {
        Ok(self.attr(name, AttributeType::FLOAT)?.map(|a| a.f))
    }

    pub fn attr_f_or(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.attr_f(name)?.unwrap_or(default))
    }

    pub fn attr_s(&self, name: &str) -> Result<Option<String>> {
        match self.attr(name, AttributeType::STRING)? {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s.clone())
                .map(Some)
                .map_err(|_| self.err(format!("attribute '{name}' is not valid UTF-8"))),
        }
    }

    pub fn attr_s_or(&self, name: &str, default: &str) -> Result<String> {
        Ok(self.attr_s(name)?.unwrap_or_else(|| default.to_string()))
    }

    pub fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self
            .attr(name, AttributeType::INTS)?
            .map(|a| a.ints.clone()))
    }

    pub fn attr_floats(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self
            .attr(name, AttributeType::FLOATS)?
            .map(|a| a.floats.clone()))
    }

    pub fn attr_strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        match self.attr(name, AttributeType::STRINGS)? {
            None => Ok(None),
            Some(a) => a
                .strings
                .iter()
                .map(|s| {
                    String::from_utf8(s.clone()).map_err(|_| {
                        self.err(format!(
                            "attribute '{name}' holds a string that is not UTF-8"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    pub fn attr_tensor(&self, name: &str) -> Result<Option<TensorValue>> {
        match self.attr(name, AttributeType::TENSOR)? {
            None => Ok(None),
            Some(a) => match a.t.as_ref() {
                None => Err(self.err(format!("attribute '{name}' holds no tensor"))),
                Some(t) => TensorValue::from_proto(t)
                    .map(Some)
                    .map_err(|e| self.err(format!("attribute '{name}': {e}"))),
            },
        }
    }

    /// A required input.
    pub fn input(&self, i: usize) -> Result<&'a TensorValue> {
        match self.inputs.get(i) {
            Some(Some(t)) => Ok(t),
            _ => Err(self.err(format!("missing required input {i}"))),
        }
    }

    /// An optional input (absent index or omitted).
    pub fn opt_input(&self, i: usize) -> Option<&'a TensorValue> {
        self.inputs.get(i).copied().flatten()
    }

    /// An optional integer tensor input (int32 or int64) as a flat list.
    pub fn ints_input(&self, i: usize, what: &str) -> Result<Option<Vec<i64>>> {
        match self.opt_input(i) {
            None => Ok(None),
            Some(t) => t.to_i64_vec().map(Some).ok_or_else(|| {
                self.err(format!(
                    "{what} (input {i}) must be an integer tensor, got {}",
                    super::dtype_name(t.data_type())
                ))
            }),
        }
    }

    /// Checks that a tensor of `shape` with elements of `elem_size` bytes fits the allocation
    /// limit; returns its element count.
    pub fn check_alloc(&self, shape: &[usize], elem_size: usize) -> Result<usize> {
        check_alloc(self.op, shape, elem_size, self.opts.max_tensor_bytes)
    }

    /// Normalizes a possibly negative axis for a tensor of `rank`.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        norm_axis(axis, rank).ok_or_else(|| {
            self.err(format!(
                "axis {axis} is out of range for a tensor of rank {rank}"
            ))
        })
    }
}

pub(crate) fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(0) {
        None
    } else {
        Some(a as usize)
    }
}

pub(crate) fn check_alloc(
    what: &str,
    shape: &[usize],
    elem_size: usize,
    limit: usize,
) -> Result<usize> {
    let mut elems: u128 = 1;
    for &d in shape {
        elems = elems.saturating_mul(d as u128);
    }
    let bytes = elems.saturating_mul(elem_size.max(1) as u128);
    if bytes > limit as u128 || elems > usize::MAX as u128 {
        return Err(EvalError::TooLarge {
            what: what.to_string(),
            elements: elems,
            bytes,
            limit,
        });
    }
    Ok(elems as usize)
}
