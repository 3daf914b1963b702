//! Reading value types: element type and (possibly symbolic) shape.

use onnx_protobuf::type_proto;

use crate::ir::{Graph, ValueId};

/// One dimension: a known size, a symbol, or unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Known(i64),
    Symbol(String),
    Unknown,
}

/// The element type of a value, from its declared or inferred type, or its initializer.
pub fn elem_type(g: &Graph, v: ValueId) -> Option<i32> {
    let val = g.value(v);
    if let Some(t) = &val.initializer {
        return Some(t.dtype);
    }
    match val.ty.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(tt) => Some(tt.elem_type).filter(|&e| e != 0),
        _ => None,
    }
}

/// The shape of a value, if its rank is known.
pub fn shape(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    let val = g.value(v);
    if let Some(t) = &val.initializer {
        return Some(t.dims.iter().map(|&d| Dim::Known(d)).collect());
    }
    let type_proto::Value::TensorType(tt) = val.ty.as_ref()?.value.as_ref()? else {
        return None;
    };
    let s = tt.shape.as_ref()?;
    Some(
        s.dim
            .iter()
            .map(|d| {
                if d.has_dim_value() {
                    Dim::Known(d.dim_value())
                } else if d.has_dim_param() && !d.dim_param().is_empty() {
                    Dim::Symbol(d.dim_param().to_string())
                } else {
                    Dim::Unknown
                }
            })
            .collect(),
    )
}

/// The shape if every dim is known.
pub fn static_shape(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    shape(g, v)?
        .into_iter()
        .map(|d| match d {
            Dim::Known(x) if x >= 0 => Some(x),
            _ => None,
        })
        .collect()
}

/// The size of the last axis, if known.
pub fn last_dim(g: &Graph, v: ValueId) -> Option<i64> {
    match shape(g, v)?.last()? {
        Dim::Known(x) => Some(*x),
        _ => None,
    }
}
