//! Element types, tensor data in the form the text syntax holds it, and content hashes.

use onnx_protobuf::TensorProto;
use onnx_protobuf::tensor_proto::DataLocation;
use sha2::{Digest, Sha256};

/// Element type names of the ONNX text syntax, indexed by `TensorProto.DataType` value.
const TYPE_NAMES: &[(&str, i32)] = &[
    ("float", 1),
    ("uint8", 2),
    ("int8", 3),
    ("uint16", 4),
    ("int16", 5),
    ("int32", 6),
    ("int64", 7),
    ("string", 8),
    ("bool", 9),
    ("float16", 10),
    ("double", 11),
    ("uint32", 12),
    ("uint64", 13),
    ("complex64", 14),
    ("complex128", 15),
    ("bfloat16", 16),
    ("float8e4m3fn", 17),
    ("float8e4m3fnuz", 18),
    ("float8e5m2", 19),
    ("float8e5m2fnuz", 20),
    ("uint4", 21),
    ("int4", 22),
    ("float4e2m1", 23),
    ("float8e8m0", 24),
    ("uint2", 25),
    ("int2", 26),
    ("float6e2m3", 27),
    ("float6e3m2", 28),
];

/// The text name of an element type; `undefined` for 0 and unknown codes.
pub fn type_name(code: i32) -> &'static str {
    TYPE_NAMES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(n, _)| *n)
        .unwrap_or("undefined")
}

/// The element type code for a text name (`undefined` gives 0).
pub fn type_code(name: &str) -> Option<i32> {
    if name == "undefined" {
        return Some(0);
    }
    TYPE_NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// Which repeated field of `TensorProto` holds the data of an element type in the text form
/// (the field `onnx.parser` fills).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    /// `int32_data`; the payload is the given number of bytes per value in `raw_data`.
    Int32 {
        raw_bytes: usize,
        signed: bool,
    },
    /// `int32_data` with one 6-bit code per value; `raw_data` packs four codes in three bytes.
    Six,
    Int64,
    /// `uint64_data`; `raw_bytes` is 4 (uint32) or 8 (uint64).
    Uint64 {
        raw_bytes: usize,
    },
    /// `float_data` (float, complex64).
    Float,
    /// `double_data` (double, complex128).
    Double,
    String,
}

/// The data field for an element type, or `None` for `undefined`/unknown codes.
pub fn field_of(code: i32) -> Option<Field> {
    Some(match code {
        1 | 14 => Field::Float,
        11 | 15 => Field::Double,
        2 | 9 | 17..=26 => Field::Int32 {
            raw_bytes: 1,
            signed: false,
        },
        3 => Field::Int32 {
            raw_bytes: 1,
            signed: true,
        },
        4 | 10 | 16 => Field::Int32 {
            raw_bytes: 2,
            signed: false,
        },
        5 => Field::Int32 {
            raw_bytes: 2,
            signed: true,
        },
        6 => Field::Int32 {
            raw_bytes: 4,
            signed: true,
        },
        7 => Field::Int64,
        12 => Field::Uint64 { raw_bytes: 4 },
        13 => Field::Uint64 { raw_bytes: 8 },
        8 => Field::String,
        27 | 28 => Field::Six,
        _ => return None,
    })
}

/// Tensor values in text form.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Uint64(Vec<u64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    String(Vec<Vec<u8>>),
}

fn chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// The values of a (non-external) tensor as the text syntax holds them: `raw_data` is decoded
/// into the typed field `onnx.parser` would fill (trailing bytes that do not make a whole
/// element are dropped). `None` for element types the syntax has no data form for.
pub fn values(t: &TensorProto) -> Option<Values> {
    let field = field_of(t.data_type)?;
    let raw = &t.raw_data;
    let use_raw = !raw.is_empty();
    Some(match field {
        Field::Int32 { raw_bytes, signed } => {
            if use_raw {
                Values::Int32(match (raw_bytes, signed) {
                    (1, false) => raw.iter().map(|b| i32::from(*b)).collect(),
                    (1, true) => raw.iter().map(|b| i32::from(*b as i8)).collect(),
                    (2, false) => chunks::<2>(raw)
                        .map(|c| i32::from(u16::from_le_bytes(c)))
                        .collect(),
                    (2, true) => chunks::<2>(raw)
                        .map(|c| i32::from(i16::from_le_bytes(c)))
                        .collect(),
                    _ => chunks::<4>(raw).map(i32::from_le_bytes).collect(),
                })
            } else {
                Values::Int32(t.int32_data.clone())
            }
        }
        Field::Six => {
            if use_raw {
                let n = usize::try_from(element_count(t))
                    .unwrap_or(usize::MAX)
                    .min(raw.len().saturating_mul(4) / 3);
                Values::Int32(unpack6(raw, n).into_iter().map(i32::from).collect())
            } else {
                Values::Int32(t.int32_data.clone())
            }
        }
        Field::Int64 => {
            if use_raw {
                Values::Int64(chunks::<8>(raw).map(i64::from_le_bytes).collect())
            } else {
                Values::Int64(t.int64_data.clone())
            }
        }
        Field::Uint64 { raw_bytes } => {
            if use_raw {
                if raw_bytes == 4 {
                    Values::Uint64(
                        chunks::<4>(raw)
                            .map(|c| u64::from(u32::from_le_bytes(c)))
                            .collect(),
                    )
                } else {
                    Values::Uint64(chunks::<8>(raw).map(u64::from_le_bytes).collect())
                }
            } else {
                Values::Uint64(t.uint64_data.clone())
            }
        }
        Field::Float => {
            if use_raw {
                Values::Float(chunks::<4>(raw).map(f32::from_le_bytes).collect())
            } else {
                Values::Float(t.float_data.clone())
            }
        }
        Field::Double => {
            if use_raw {
                Values::Double(chunks::<8>(raw).map(f64::from_le_bytes).collect())
            } else {
                Values::Double(t.double_data.clone())
            }
        }
        Field::String => Values::String(t.string_data.clone()),
    })
}

/// Stores `v` into the typed field of `t` (clearing the others).
pub fn set_values(t: &mut TensorProto, v: Values) {
    t.raw_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.uint64_data.clear();
    t.float_data.clear();
    t.double_data.clear();
    t.string_data.clear();
    match v {
        Values::Int32(x) => t.int32_data = x,
        Values::Int64(x) => t.int64_data = x,
        Values::Uint64(x) => t.uint64_data = x,
        Values::Float(x) => t.float_data = x,
        Values::Double(x) => t.double_data = x,
        Values::String(x) => t.string_data = x,
    }
}

/// Number of elements the dims describe (saturating; negative dims count as 0).
pub fn element_count(t: &TensorProto) -> u64 {
    t.dims.iter().fold(1u64, |acc, d| {
        acc.saturating_mul(u64::try_from(*d).unwrap_or(0))
    })
}

/// Whether the tensor's data lives in an external file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location.value() == DataLocation::EXTERNAL as i32
}

/// The tensor's data as raw little-endian bytes (the `raw_data` encoding), whichever field
/// holds it. Strings are encoded as a little-endian u64 length followed by the bytes.
pub fn raw_bytes(t: &TensorProto) -> Vec<u8> {
    let mut out = Vec::new();
    feed_raw(t, &mut |b| out.extend_from_slice(b));
    out
}

/// Streams [`raw_bytes`] to `f` without materialising typed data twice.
fn feed_raw(t: &TensorProto, f: &mut dyn FnMut(&[u8])) {
    if !t.raw_data.is_empty() {
        f(&t.raw_data);
        return;
    }
    match field_of(t.data_type) {
        Some(Field::Int32 { raw_bytes, .. }) => {
            for v in &t.int32_data {
                f(&v.to_le_bytes()[..raw_bytes]);
            }
        }
        Some(Field::Six) => {
            let codes: Vec<u8> = t.int32_data.iter().map(|v| *v as u8).collect();
            f(&pack6(&codes));
        }
        Some(Field::Int64) => t.int64_data.iter().for_each(|v| f(&v.to_le_bytes())),
        Some(Field::Uint64 { raw_bytes }) => {
            for v in &t.uint64_data {
                f(&v.to_le_bytes()[..raw_bytes]);
            }
        }
        Some(Field::Float) => t.float_data.iter().for_each(|v| f(&v.to_le_bytes())),
        Some(Field::Double) => t.double_data.iter().for_each(|v| f(&v.to_le_bytes())),
        Some(Field::String) => {
            for s in &t.string_data {
                f(&(s.len() as u64).to_le_bytes());
                f(s);
            }
        }
        None => {}
    }
}

/// How many values the tensor's data field holds (for `raw_data`, how many whole elements
/// of the text form it decodes to), without decoding.
pub fn value_count(t: &TensorProto) -> u64 {
    let field = field_of(t.data_type);
    if !t.raw_data.is_empty() {
        let n = t.raw_data.len() as u64;
        return match field {
            Some(Field::Int32 { raw_bytes, .. }) => n / raw_bytes as u64,
            Some(Field::Six) => element_count(t).min(n.saturating_mul(4) / 3),
            Some(Field::Int64) | Some(Field::Double) => n / 8,
            Some(Field::Uint64 { raw_bytes }) => n / raw_bytes as u64,
            Some(Field::Float) => n / 4,
            Some(Field::String) | None => 0,
        };
    }
    let n = match field {
        Some(Field::Int32 { .. }) | Some(Field::Six) => t.int32_data.len(),
        Some(Field::Int64) => t.int64_data.len(),
        Some(Field::Uint64 { .. }) => t.uint64_data.len(),
        Some(Field::Float) => t.float_data.len(),
        Some(Field::Double) => t.double_data.len(),
        Some(Field::String) => t.string_data.len(),
        None => 0,
    };
    n as u64
}

/// Default content hash: `sha256:` and the first 16 hex digits of the SHA-256 of
/// [`raw_bytes`].
pub fn default_hash(t: &TensorProto) -> String {
    let mut h = Sha256::new();
    feed_raw(t, &mut |b| h.update(b));
    let digest = h.finalize();
    let mut s = String::from("sha256:");
    for b in digest.iter().take(8) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Unpacks `n` 6-bit codes (four per three bytes, least significant bits first).
pub fn unpack6(raw: &[u8], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let bit = i * 6;
        let (byte, shift) = (bit / 8, bit % 8);
        let lo = u16::from(raw.get(byte).copied().unwrap_or(0));
        let hi = u16::from(raw.get(byte + 1).copied().unwrap_or(0));
        out.push((((lo | (hi << 8)) >> shift) & 0x3F) as u8);
    }
    out
}

/// Packs 6-bit codes, the inverse of [`unpack6`] (`ceil(6n/8)` bytes).
pub fn pack6(codes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; (codes.len() * 6).div_ceil(8)];
    for (i, c) in codes.iter().enumerate() {
        let bit = i * 6;
        let (byte, shift) = (bit / 8, bit % 8);
        let v = u16::from(c & 0x3F) << shift;
        out[byte] |= (v & 0xFF) as u8;
        if let Some(b) = out.get_mut(byte + 1) {
            *b |= (v >> 8) as u8;
        }
    }
    out
}
