//! Constant tensors as f64 arrays (merges compute in f64 and cast once to the stored dtype).

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::ir::dtype::code;
use crate::ir::{Graph, Tensor, TensorData, ValueId};

/// Whether graft can read and write this element type as real numbers for merging.
pub fn is_mergeable_float(dtype: i32) -> bool {
    matches!(
        dtype,
        code::FLOAT | code::DOUBLE | code::FLOAT16 | code::BFLOAT16
    )
}

/// A float tensor's values as f64.
pub fn to_f64(t: &Tensor, name: &str) -> Result<ArrayD<f64>> {
    let bytes = t.bytes(name)?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let v = decode_f64(&bytes, t.dtype).ok_or_else(|| {
        Error::tensor(
            name,
            format!(
                "element type {} cannot be merged",
                crate::ir::dtype::name(t.dtype)
            ),
        )
    })?;
    ArrayD::from_shape_vec(IxDyn(&shape), v)
        .map_err(|e| Error::tensor(name, format!("shape mismatch: {e}")))
}

/// Little-endian float bytes as f64 (float, double, float16, bfloat16), or `None` for other
/// element types.
pub fn decode_f64(bytes: &[u8], dtype: i32) -> Option<Vec<f64>> {
    use rayon::prelude::*;
    Some(match dtype {
        code::FLOAT => bytes
            .par_chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        code::DOUBLE => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        code::FLOAT16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        code::BFLOAT16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        _ => return None,
    })
}

/// f64 values as little-endian bytes of `dtype` (float, double, float16, bfloat16).
pub fn encode_f64(values: &[f64], dtype: i32, out: &mut Vec<u8>) {
    match dtype {
        code::DOUBLE => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        code::FLOAT16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f64(*v).to_le_bytes())),
        code::BFLOAT16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f64(*v).to_le_bytes())),
        _ => values
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as f32).to_le_bytes())),
    }
}

/// Integer tensor values (int64/int32), e.g. shapes and axes.
pub fn to_i64(t: &Tensor, name: &str) -> Result<Vec<i64>> {
    let bytes = t.bytes(name)?;
    match t.dtype {
        code::INT64 => Ok(bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        code::INT32 => Ok(bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect()),
        other => Err(Error::tensor(
            name,
            format!("expected integers, found {}", crate::ir::dtype::name(other)),
        )),
    }
}

/// An f64 array stored as a tensor of `dtype` (rounded once); large results are parked in a
/// temporary file, to be saved as external data when `external` (as the weight they replace
/// was) or embedded otherwise.
pub fn from_f64_like(a: &ArrayD<f64>, dtype: i32, external: bool) -> Result<Tensor> {
    let t = from_f64(a, dtype);
    let TensorData::Raw(b) = t.data else {
        return Ok(t);
    };
    let bytes = std::sync::Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone());
    Tensor::computed(t.dtype, t.dims, bytes, external)
}

/// A matrix (or a transposed view of one) stored as a tensor of `dtype`, rounded once, large
/// ones parked in a temporary file; conversion runs on all cores.
pub fn matrix_tensor(m: ndarray::ArrayView2<f64>, dtype: i32, external: bool) -> Result<Tensor> {
    use rayon::prelude::*;
    let dims = vec![m.nrows() as i64, m.ncols() as i64];
    let width = match dtype {
        code::DOUBLE => 8,
        code::FLOAT16 | code::BFLOAT16 => 2,
        _ => 4,
    };
    let cols = m.ncols();
    let mut bytes = vec![0u8; m.len() * width];
    if cols > 0 {
        bytes
            .par_chunks_mut(cols * width)
            .enumerate()
            .for_each(|(i, out)| {
                let row = m.row(i);
                for (o, v) in out.chunks_exact_mut(width).zip(row.iter()) {
                    match dtype {
                        code::DOUBLE => o.copy_from_slice(&v.to_le_bytes()),
                        code::FLOAT16 => o.copy_from_slice(&f16::from_f64(*v).to_le_bytes()),
                        code::BFLOAT16 => o.copy_from_slice(&bf16::from_f64(*v).to_le_bytes()),
                        _ => o.copy_from_slice(&(*v as f32).to_le_bytes()),
                    }
                }
            });
    }
    let dtype = if width == 4 && dtype != code::FLOAT {
        code::FLOAT
    } else {
        dtype
    };
    Tensor::computed(dtype, dims, bytes, external)
}

/// An f64 array stored as a tensor of `dtype` (rounded once), in memory.
pub fn from_f64(a: &ArrayD<f64>, dtype: i32) -> Tensor {
    let dims: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let mut bytes = Vec::with_capacity(a.len() * 4);
    match dtype {
        code::DOUBLE => a
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        code::FLOAT16 => a
            .iter()
            .for_each(|v| bytes.extend_from_slice(&f16::from_f64(*v).to_le_bytes())),
        code::BFLOAT16 => a
            .iter()
            .for_each(|v| bytes.extend_from_slice(&bf16::from_f64(*v).to_le_bytes())),
        _ => a
            .iter()
            .for_each(|v| bytes.extend_from_slice(&(*v as f32).to_le_bytes())),
    }
    Tensor::from_raw(dtype, dims, bytes)
}

/// The f64 value of a constant input, if `v` is an initializer that is not a graph input.
pub fn const_f64(g: &Graph, v: ValueId) -> Option<ArrayD<f64>> {
    let val = g.value(v);
    if val.is_input {
        return None;
    }
    let t = val.initializer.as_ref()?;
    if !is_mergeable_float(t.dtype) {
        return None;
    }
    to_f64(t, &val.name).ok()
}

/// Whether `v` is a constant (an initializer a caller cannot override).
pub fn is_const(g: &Graph, v: ValueId) -> bool {
    let val = g.value(v);
    val.initializer.is_some() && !val.is_input
}
