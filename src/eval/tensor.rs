//! Tensor values, their element types and conversions to and from `TensorProto`.

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use onnx_protobuf::TensorProto;

use super::{EvalError, Result};

/// ONNX `TensorProto.DataType` codes (the IR's own table).
pub use crate::ir::dtype::code as dtype;

/// Name of an ONNX data type code, as in `TensorProto.DataType`.
pub fn dtype_name(dt: i32) -> &'static str {
    match dt {
        0 => "UNDEFINED",
        1 => "FLOAT",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "STRING",
        9 => "BOOL",
        10 => "FLOAT16",
        11 => "DOUBLE",
        12 => "UINT32",
        13 => "UINT64",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        16 => "BFLOAT16",
        17 => "FLOAT8E4M3FN",
        18 => "FLOAT8E4M3FNUZ",
        19 => "FLOAT8E5M2",
        20 => "FLOAT8E5M2FNUZ",
        21 => "UINT4",
        22 => "INT4",
        23 => "FLOAT4E2M1",
        24 => "FLOAT8E8M0",
        25 => "UINT2",
        26 => "INT2",
        _ => "UNKNOWN",
    }
}

/// A tensor with its data, one variant per element type the evaluator computes with.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValue {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    I8(ArrayD<i8>),
    I16(ArrayD<i16>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    U64(ArrayD<u64>),
    Bool(ArrayD<bool>),
    Str(ArrayD<String>),
}

/// An element type of a [`TensorValue`] variant.
pub trait Elem:
    Clone + Default + PartialEq + PartialOrd + std::fmt::Debug + Send + Sync + 'static
{
    const DTYPE: i32;
    fn wrap(a: ArrayD<Self>) -> TensorValue;
    fn get(t: &TensorValue) -> Option<&ArrayD<Self>>;
}

/// A scalar in a wide form, used for casts between any two numeric/bool types.
#[derive(Clone, Copy, Debug)]
pub enum Sc {
    F(f64),
    I(i128),
}

/// Numeric and bool element types (convertible among each other).
pub trait Castable: Elem + Copy {
    fn to_sc(self) -> Sc;
    fn from_sc(s: Sc) -> Self;
}

/// Numeric element types. Integer arithmetic wraps; f16/bf16 compute in f32 per operation.
pub trait Num: Castable {
    const IS_FLOAT: bool;
    fn to_f64(self) -> f64;
    /// `as`-style conversion (saturating for integers, NaN to 0).
    fn from_f64(v: f64) -> Self;
    fn zero() -> Self;
    fn one() -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// `None` for integer division by zero. Integer division truncates.
    fn div(self, o: Self) -> Option<Self>;
    /// `fmod`: sign of the dividend (C fmod); otherwise sign of the divisor (Python %).
    fn rem(self, o: Self, fmod: bool) -> Option<Self>;
    fn neg(self) -> Self;
    fn abs(self) -> Self;
    /// Smallest value (-inf for floats).
    fn lowest() -> Self;
    /// Largest value (+inf for floats).
    fn highest() -> Self;
    fn is_nan(self) -> bool;
    fn max_of(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            if self.is_nan() { self } else { o }
        } else if o > self {
            o
        } else {
            self
        }
    }
    fn min_of(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            if self.is_nan() { self } else { o }
        } else if o < self {
            o
        } else {
            self
        }
    }
}

macro_rules! impl_elem {
    ($t:ty, $var:ident, $code:expr) => {
        impl Elem for $t {
            const DTYPE: i32 = $code;
            fn wrap(a: ArrayD<Self>) -> TensorValue {
                TensorValue::$var(a)
            }
            fn get(t: &TensorValue) -> Option<&ArrayD<Self>> {
                match t {
                    TensorValue::$var(a) => Some(a),
                    _ => None,
                }
            }
        }
    };
}

impl_elem!(f32, F32, dtype::FLOAT);
impl_elem!(f64, F64, dtype::DOUBLE);
impl_elem!(f16, F16, dtype::FLOAT16);
impl_elem!(bf16, BF16, dtype::BFLOAT16);
impl_elem!(i8, I8, dtype::INT8);
impl_elem!(i16, I16, dtype::INT16);
impl_elem!(i32, I32, dtype::INT32);
impl_elem!(i64, I64, dtype::INT64);
impl_elem!(u8, U8, dtype::UINT8);
impl_elem!(u16, U16, dtype::UINT16);
impl_elem!(u32, U32, dtype::UINT32);
impl_elem!(u64, U64, dtype::UINT64);
impl_elem!(bool, Bool, dtype::BOOL);
impl_elem!(String, Str, dtype::STRING);

macro_rules! impl_int {
    ($t:ty) => {
        impl Castable for $t {
            fn to_sc(self) -> Sc {
                Sc::I(self as i128)
            }
            fn from_sc(s: Sc) -> Self {
                match s {
                    Sc::F(v) => v as $t,
                    Sc::I(v) => v as $t,
                }
            }
        }
        impl Num for $t {
            const IS_FLOAT: bool = false;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn zero() -> Self {
                0
            }
            fn one() -> Self {
                1
            }
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            fn div(self, o: Self) -> Option<Self> {
                if o == 0 {
                    None
                } else {
                    Some(self.wrapping_div(o))
                }
            }
            fn rem(self, o: Self, fmod: bool) -> Option<Self> {
                if o == 0 {
                    return None;
                }
                let r = self.wrapping_rem(o);
                #[allow(unused_comparisons)]
                let fix = !fmod && r != 0 && ((r < 0) != (o < 0));
                Some(if fix { r.wrapping_add(o) } else { r })
            }
            fn neg(self) -> Self {
                self.wrapping_neg()
            }
            #[allow(unused_comparisons)]
            fn abs(self) -> Self {
                if self < 0 { self.wrapping_neg() } else { self }
            }
            fn lowest() -> Self {
                <$t>::MIN
            }
            fn highest() -> Self {
                <$t>::MAX
            }
            fn is_nan(self) -> bool {
                false
            }
        }
    };
}

impl_int!(i8);
impl_int!(i16);
impl_int!(i32);
impl_int!(i64);
impl_int!(u8);
impl_int!(u16);
impl_int!(u32);
impl_int!(u64);

fn fmod_f64(a: f64, b: f64, fmod: bool) -> f64 {
    let r = a % b;
    if !fmod && r != 0.0 && ((r < 0.0) != (b < 0.0)) {
        r + b
    } else {
        r
    }
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Castable for $t {
            fn to_sc(self) -> Sc {
                Sc::F(self as f64)
            }
            fn from_sc(s: Sc) -> Self {
                match s {
                    Sc::F(v) => v as $t,
                    Sc::I(v) => v as $t,
                }
            }
        }
        impl Num for $t {
            const IS_FLOAT: bool = true;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn zero() -> Self {
                0.0
            }
            fn one() -> Self {
                1.0
            }
            fn add(self, o: Self) -> Self {
                self + o
            }
            fn sub(self, o: Self) -> Self {
                self - o
            }
            fn mul(self, o: Self) -> Self {
                self * o
            }
            fn div(self, o: Self) -> Option<Self> {
                Some(self / o)
            }
            fn rem(self, o: Self, fmod: bool) -> Option<Self> {
                Some(fmod_f64(self as f64, o as f64, fmod) as $t)
            }
            fn neg(self) -> Self {
                -self
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn lowest() -> Self {
                <$t>::NEG_INFINITY
            }
            fn highest() -> Self {
                <$t>::INFINITY
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}

impl_float!(f32);
impl_float!(f64);

macro_rules! impl_half {
    ($t:ty) => {
        impl Castable for $t {
            fn to_sc(self) -> Sc {
                Sc::F(self.to_f64())
            }
            fn from_sc(s: Sc) -> Self {
                match s {
                    Sc::F(v) => <$t>::from_f64(v),
                    Sc::I(v) => <$t>::from_f64(v as f64),
                }
            }
        }
        impl Num for $t {
            const IS_FLOAT: bool = true;
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn zero() -> Self {
                <$t>::ZERO
            }
            fn one() -> Self {
                <$t>::ONE
            }
            fn add(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() + o.to_f32())
            }
            fn sub(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() - o.to_f32())
            }
            fn mul(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() * o.to_f32())
            }
            fn div(self, o: Self) -> Option<Self> {
                Some(<$t>::from_f32(self.to_f32() / o.to_f32()))
            }
            fn rem(self, o: Self, fmod: bool) -> Option<Self> {
                Some(<$t>::from_f64(fmod_f64(self.to_f64(), o.to_f64(), fmod)))
            }
            fn neg(self) -> Self {
                -self
            }
            fn abs(self) -> Self {
                <$t>::from_f32(self.to_f32().abs())
            }
            fn lowest() -> Self {
                <$t>::NEG_INFINITY
            }
            fn highest() -> Self {
                <$t>::INFINITY
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}

impl_half!(f16);
impl_half!(bf16);

impl Castable for bool {
    fn to_sc(self) -> Sc {
        Sc::I(self as i128)
    }
    fn from_sc(s: Sc) -> Self {
        match s {
            Sc::F(v) => v != 0.0,
            Sc::I(v) => v != 0,
        }
    }
}

/// Bytes per element of a data type as stored in raw_data (0 for sub-byte, string or unknown).
pub fn elem_size(dt: i32) -> usize {
    match dt {
        dtype::FLOAT | dtype::INT32 | dtype::UINT32 => 4,
        dtype::DOUBLE | dtype::INT64 | dtype::UINT64 | dtype::COMPLEX64 => 8,
        dtype::COMPLEX128 => 16,
        dtype::FLOAT16 | dtype::BFLOAT16 | dtype::INT16 | dtype::UINT16 => 2,
        dtype::UINT8 | dtype::INT8 | dtype::BOOL => 1,
        dtype::FLOAT8E4M3FN
        | dtype::FLOAT8E4M3FNUZ
        | dtype::FLOAT8E5M2
        | dtype::FLOAT8E5M2FNUZ
        | dtype::FLOAT8E8M0 => 1,
        _ => 0,
    }
}

fn shape_from_dims(dims: &[i64]) -> Result<(Vec<usize>, usize)> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut n: usize = 1;
    for &d in dims {
        if d < 0 {
            return Err(EvalError::Tensor(format!(
                "negative dimension {d} in {dims:?}"
            )));
        }
        let d = usize::try_from(d)
            .map_err(|_| EvalError::Tensor(format!("dimension {d} does not fit in usize")))?;
        n = n.checked_mul(d).ok_or_else(|| {
            EvalError::Tensor(format!("element count of shape {dims:?} overflows"))
        })?;
        shape.push(d);
    }
    Ok((shape, n))
}

fn mk<T>(shape: Vec<usize>, v: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(&shape), v)
        .map_err(|e| EvalError::Tensor(format!("shape {shape:?}: {e}")))
}

fn decode_f8(b: u8, dt: i32) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    match dt {
        dtype::FLOAT8E4M3FN => {
            let e = ((b >> 3) & 0xF) as i32;
            let m = (b & 7) as f32;
            if e == 15 && b & 7 == 7 {
                f32::NAN
            } else if e == 0 {
                sign * m / 8.0 * 2f32.powi(-6)
            } else {
                sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
            }
        }
        dtype::FLOAT8E4M3FNUZ => {
            if b == 0x80 {
                return f32::NAN;
            }
            let e = ((b >> 3) & 0xF) as i32;
            let m = (b & 7) as f32;
            if e == 0 {
                sign * m / 8.0 * 2f32.powi(-7)
            } else {
                sign * (1.0 + m / 8.0) * 2f32.powi(e - 8)
            }
        }
        dtype::FLOAT8E5M2 => {
            let e = ((b >> 2) & 0x1F) as i32;
            let m = (b & 3) as f32;
            if e == 31 {
                if b & 3 == 0 {
                    sign * f32::INFINITY
                } else {
                    f32::NAN
                }
            } else if e == 0 {
                sign * m / 4.0 * 2f32.powi(-14)
            } else {
                sign * (1.0 + m / 4.0) * 2f32.powi(e - 15)
            }
        }
        dtype::FLOAT8E5M2FNUZ => {
            if b == 0x80 {
                return f32::NAN;
            }
            let e = ((b >> 2) & 0x1F) as i32;
            let m = (b & 3) as f32;
            if e == 0 {
                sign * m / 4.0 * 2f32.powi(-15)
            } else {
                sign * (1.0 + m / 4.0) * 2f32.powi(e - 16)
            }
        }
        _ => {
            // FLOAT8E8M0: unsigned exponent only, 0xFF is NaN.
            if b == 0xFF {
                f32::NAN
            } else {
                2f32.powi(b as i32 - 127)
            }
        }
    }
}

fn decode_f4(n: u8) -> f32 {
    let sign = if n & 8 != 0 { -1.0f32 } else { 1.0 };
    let e = ((n >> 1) & 3) as i32;
    let m = (n & 1) as f32;
    if e == 0 {
        sign * m * 0.5
    } else {
        sign * (1.0 + m / 2.0) * 2f32.powi(e - 1)
    }
}

macro_rules! le_decode {
    ($raw:expr, $t:ty, $n:expr) => {{
        const W: usize = std::mem::size_of::<$t>();
        let mut v: Vec<$t> = Vec::with_capacity($n);
        for c in $raw.chunks_exact(W) {
            let mut b = [0u8; W];
            b.copy_from_slice(c);
            v.push(<$t>::from_le_bytes(b));
        }
        v
    }};
}

fn sub_byte_bits(dt: i32) -> Option<usize> {
    match dt {
        dtype::INT4 | dtype::UINT4 | dtype::FLOAT4E2M1 => Some(4),
        dtype::INT2 | dtype::UINT2 => Some(2),
        _ => None,
    }
}

/// Unpacks sub-byte elements (low bits first) into one value per byte (unsigned field values).
fn unpack_bits(raw: &[u8], n: usize, bits: usize) -> Vec<u8> {
    let per = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..n)
        .map(|i| (raw[i / per] >> ((i % per) * bits)) & mask)
        .collect()
}

fn sub_byte_to_tensor(dt: i32, shape: Vec<usize>, vals: Vec<u8>) -> Result<TensorValue> {
    Ok(match dt {
        dtype::UINT4 | dtype::UINT2 => TensorValue::U8(mk(shape, vals)?),
        dtype::INT4 => TensorValue::I8(mk(
            shape,
            vals.into_iter().map(|v| ((v << 4) as i8) >> 4).collect(),
        )?),
        dtype::INT2 => TensorValue::I8(mk(
            shape,
            vals.into_iter().map(|v| ((v << 6) as i8) >> 6).collect(),
        )?),
        _ => TensorValue::F32(mk(shape, vals.into_iter().map(decode_f4).collect())?),
    })
}

fn unsupported(dt: i32, ctx: &str) -> EvalError {
    EvalError::UnsupportedDtype {
        dtype: dt,
        context: ctx.to_string(),
    }
}

impl TensorValue {
    /// ONNX `TensorProto.DataType` code of this value.
    pub fn data_type(&self) -> i32 {
        dispatch_all!(self, _a, T => <T as Elem>::DTYPE)
    }

    pub fn shape(&self) -> &[usize] {
        dispatch_all!(self, a, T => a.shape())
    }

    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    pub fn len(&self) -> usize {
        dispatch_all!(self, a, T => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per element in memory (strings count as a pointer-sized estimate).
    pub fn elem_bytes(&self) -> usize {
        match self {
            TensorValue::Str(_) => std::mem::size_of::<String>(),
            other => elem_size(other.data_type()),
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(
            self,
            TensorValue::F32(_) | TensorValue::F64(_) | TensorValue::F16(_) | TensorValue::BF16(_)
        )
    }

    pub fn is_int(&self) -> bool {
        matches!(
            self,
            TensorValue::I8(_)
                | TensorValue::I16(_)
                | TensorValue::I32(_)
                | TensorValue::I64(_)
                | TensorValue::U8(_)
                | TensorValue::U16(_)
                | TensorValue::U32(_)
                | TensorValue::U64(_)
        )
    }

    /// Decodes little-endian `raw_data` of the given type and shape. Sub-byte types (int4, uint4,
    /// float4e2m1, int2, uint2; low bits first) decode to I8/U8/F32; float8 types decode to F32.
    pub fn from_raw(data_type: i32, dims: &[i64], raw: &[u8]) -> Result<Self> {
        let (shape, n) = shape_from_dims(dims)?;
        if let Some(bits) = sub_byte_bits(data_type) {
            let per = 8 / bits;
            let need = n.div_ceil(per);
            if raw.len() != need {
                return Err(EvalError::Tensor(format!(
                    "raw data of {} has {} bytes, expected {need} for shape {dims:?}",
                    dtype_name(data_type),
                    raw.len()
                )));
            }
            return sub_byte_to_tensor(data_type, shape, unpack_bits(raw, n, bits));
        }
        if data_type == dtype::STRING {
            return Err(EvalError::Tensor(
                "STRING tensors cannot be stored in raw_data".into(),
            ));
        }
        let w = elem_size(data_type);
        if w == 0 || matches!(data_type, dtype::COMPLEX64 | dtype::COMPLEX128) {
            return Err(unsupported(data_type, "raw tensor data"));
        }
        let need = n
            .checked_mul(w)
            .ok_or_else(|| EvalError::Tensor(format!("byte size of shape {dims:?} overflows")))?;
        if raw.len() != need {
            return Err(EvalError::Tensor(format!(
                "raw data of {} has {} bytes, expected {need} for shape {dims:?}",
                dtype_name(data_type),
                raw.len()
            )));
        }
        Ok(match data_type {
            dtype::FLOAT => TensorValue::F32(mk(shape, le_decode!(raw, f32, n))?),
            dtype::DOUBLE => TensorValue::F64(mk(shape, le_decode!(raw, f64, n))?),
            dtype::FLOAT16 => TensorValue::F16(mk(
                shape,
                le_decode!(raw, u16, n)
                    .into_iter()
                    .map(f16::from_bits)
                    .collect(),
            )?),
            dtype::BFLOAT16 => TensorValue::BF16(mk(
                shape,
                le_decode!(raw, u16, n)
                    .into_iter()
                    .map(bf16::from_bits)
                    .collect(),
            )?),
            dtype::INT8 => TensorValue::I8(mk(shape, raw.iter().map(|&b| b as i8).collect())?),
            dtype::UINT8 => TensorValue::U8(mk(shape, raw.to_vec())?),
            dtype::BOOL => TensorValue::Bool(mk(shape, raw.iter().map(|&b| b != 0).collect())?),
            dtype::INT16 => TensorValue::I16(mk(shape, le_decode!(raw, i16, n))?),
            dtype::UINT16 => TensorValue::U16(mk(shape, le_decode!(raw, u16, n))?),
            dtype::INT32 => TensorValue::I32(mk(shape, le_decode!(raw, i32, n))?),
            dtype::UINT32 => TensorValue::U32(mk(shape, le_decode!(raw, u32, n))?),
            dtype::INT64 => TensorValue::I64(mk(shape, le_decode!(raw, i64, n))?),
            dtype::UINT64 => TensorValue::U64(mk(shape, le_decode!(raw, u64, n))?),
            dtype::FLOAT8E4M3FN
            | dtype::FLOAT8E4M3FNUZ
            | dtype::FLOAT8E5M2
            | dtype::FLOAT8E5M2FNUZ
            | dtype::FLOAT8E8M0 => TensorValue::F32(mk(
                shape,
                raw.iter().map(|&b| decode_f8(b, data_type)).collect(),
            )?),
            other => return Err(unsupported(other, "raw tensor data")),
        })
    }

    /// Decodes a `TensorProto` from `raw_data` or its typed `*_data` field. External data and
    /// segments are refused.
    pub fn from_proto(t: &TensorProto) -> Result<Self> {
        let external = matches!(
            t.data_location.enum_value(),
            Ok(onnx_protobuf::tensor_proto::DataLocation::EXTERNAL)
        );
        if external || !t.external_data.is_empty() {
            return Err(EvalError::Tensor(format!(
                "tensor '{}' stores its data externally; load it first",
                t.name
            )));
        }
        if t.segment.is_some() {
            return Err(EvalError::Tensor(format!(
                "tensor '{}' is a segment; segmented tensors are not supported",
                t.name
            )));
        }
        let dt = t.data_type;
        if dt != dtype::STRING && !t.raw_data.is_empty() {
            return Self::from_raw(dt, &t.dims, &t.raw_data);
        }
        let (shape, n) = shape_from_dims(&t.dims)?;
        let count = |len: usize, field: &str| -> Result<()> {
            if len != n {
                Err(EvalError::Tensor(format!(
                    "tensor '{}' of shape {:?} has {len} values in {field}, expected {n}",
                    t.name, t.dims
                )))
            } else {
                Ok(())
            }
        };
        let i32s = &t.int32_data;
        Ok(match dt {
            dtype::FLOAT => {
                count(t.float_data.len(), "float_data")?;
                TensorValue::F32(mk(shape, t.float_data.clone())?)
            }
            dtype::DOUBLE => {
                count(t.double_data.len(), "double_data")?;
                TensorValue::F64(mk(shape, t.double_data.clone())?)
            }
            dtype::INT64 => {
                count(t.int64_data.len(), "int64_data")?;
                TensorValue::I64(mk(shape, t.int64_data.clone())?)
            }
            dtype::UINT64 => {
                count(t.uint64_data.len(), "uint64_data")?;
                TensorValue::U64(mk(shape, t.uint64_data.clone())?)
            }
            dtype::UINT32 => {
                count(t.uint64_data.len(), "uint64_data")?;
                TensorValue::U32(mk(
                    shape,
                    t.uint64_data.iter().map(|&v| v as u32).collect(),
                )?)
            }
            dtype::INT32 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::I32(mk(shape, i32s.clone())?)
            }
            dtype::INT16 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::I16(mk(shape, i32s.iter().map(|&v| v as i16).collect())?)
            }
            dtype::INT8 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::I8(mk(shape, i32s.iter().map(|&v| v as i8).collect())?)
            }
            dtype::UINT16 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::U16(mk(shape, i32s.iter().map(|&v| v as u16).collect())?)
            }
            dtype::UINT8 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::U8(mk(shape, i32s.iter().map(|&v| v as u8).collect())?)
            }
            dtype::BOOL => {
                count(i32s.len(), "int32_data")?;
                TensorValue::Bool(mk(shape, i32s.iter().map(|&v| v != 0).collect())?)
            }
            dtype::FLOAT16 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::F16(mk(
                    shape,
                    i32s.iter().map(|&v| f16::from_bits(v as u16)).collect(),
                )?)
            }
            dtype::BFLOAT16 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::BF16(mk(
                    shape,
                    i32s.iter().map(|&v| bf16::from_bits(v as u16)).collect(),
                )?)
            }
            dtype::FLOAT8E4M3FN
            | dtype::FLOAT8E4M3FNUZ
            | dtype::FLOAT8E5M2
            | dtype::FLOAT8E5M2FNUZ
            | dtype::FLOAT8E8M0 => {
                count(i32s.len(), "int32_data")?;
                TensorValue::F32(mk(
                    shape,
                    i32s.iter().map(|&v| decode_f8(v as u8, dt)).collect(),
                )?)
            }
            dtype::STRING => {
                count(t.string_data.len(), "string_data")?;
                TensorValue::Str(mk(
                    shape,
                    t.string_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                )?)
            }
            d if sub_byte_bits(d).is_some() => {
                let bits = sub_byte_bits(d).unwrap_or(4);
                let per = 8 / bits;
                let bytes: Vec<u8> = i32s.iter().map(|&v| v as u8).collect();
                if bytes.len() != n.div_ceil(per) {
                    return Err(EvalError::Tensor(format!(
                        "tensor '{}' of {} has {} packed values, expected {}",
                        t.name,
                        dtype_name(d),
                        bytes.len(),
                        n.div_ceil(per)
                    )));
                }
                sub_byte_to_tensor(d, shape, unpack_bits(&bytes, n, bits))?
            }
            other => return Err(unsupported(other, &format!("tensor '{}'", t.name))),
        })
    }

    /// Little-endian bytes in logical (row-major) order, as `TensorProto.raw_data`.
    /// Strings have no raw form and give an empty vector.
    pub fn to_raw_bytes(&self) -> Vec<u8> {
        fn le<T: Copy, const W: usize>(a: &ArrayD<T>, f: impl Fn(T) -> [u8; W]) -> Vec<u8> {
            let mut v = Vec::with_capacity(a.len() * W);
            for &x in a.iter() {
                v.extend_from_slice(&f(x));
            }
            v
        }
        match self {
            TensorValue::F32(a) => le(a, f32::to_le_bytes),
            TensorValue::F64(a) => le(a, f64::to_le_bytes),
            TensorValue::F16(a) => le(a, |x: f16| x.to_bits().to_le_bytes()),
            TensorValue::BF16(a) => le(a, |x: bf16| x.to_bits().to_le_bytes()),
            TensorValue::I8(a) => le(a, i8::to_le_bytes),
            TensorValue::I16(a) => le(a, i16::to_le_bytes),
            TensorValue::I32(a) => le(a, i32::to_le_bytes),
            TensorValue::I64(a) => le(a, i64::to_le_bytes),
            TensorValue::U8(a) => le(a, u8::to_le_bytes),
            TensorValue::U16(a) => le(a, u16::to_le_bytes),
            TensorValue::U32(a) => le(a, u32::to_le_bytes),
            TensorValue::U64(a) => le(a, u64::to_le_bytes),
            TensorValue::Bool(a) => le(a, |b: bool| [b as u8]),
            TensorValue::Str(_) => Vec::new(),
        }
    }

    /// A `TensorProto` in raw_data form (strings in string_data).
    pub fn to_proto(&self, name: &str) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.to_string();
        t.data_type = self.data_type();
        t.dims = self.shape().iter().map(|&d| d as i64).collect();
        match self {
            TensorValue::Str(a) => {
                t.string_data = a.iter().map(|s| s.as_bytes().to_vec()).collect();
            }
            other => t.raw_data = other.to_raw_bytes(),
        }
        t
    }

    /// All elements as f64 in row-major order (bool as 0/1, strings as NaN).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        dispatch_num!(self, a, T => a.iter().map(|&x| Num::to_f64(x)).collect(),
        other => match other {
            TensorValue::Bool(a) => a.iter().map(|&b| b as u8 as f64).collect(),
            TensorValue::Str(a) => a.iter().map(|_| f64::NAN).collect(),
            _ => Vec::new(),
        })
    }

    /// All elements as i64 if this is an integer tensor (unsigned values above i64::MAX wrap).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        dispatch_int!(self, a, T => Some(a.iter().map(|&x| x as i64).collect()), _o => None)
    }

    /// Scalar constructors.
    pub fn scalar_i64(v: i64) -> Self {
        TensorValue::I64(ArrayD::from_elem(IxDyn(&[]), v))
    }

    pub fn scalar_f32(v: f32) -> Self {
        TensorValue::F32(ArrayD::from_elem(IxDyn(&[]), v))
    }

    /// 1-D int64 tensor.
    pub fn vec_i64(v: Vec<i64>) -> Self {
        TensorValue::I64(ndarray::Array1::from(v).into_dyn())
    }

    /// Converts to another element type with ONNX Cast semantics (float to int truncates and
    /// saturates, NaN to 0; int to int wraps; to bool is `!= 0`; strings parse/format).
    pub fn cast(&self, to: i32) -> Result<TensorValue> {
        if to == self.data_type() {
            return Ok(self.clone());
        }
        if to == dtype::STRING {
            return Ok(TensorValue::Str(
                dispatch_all!(self, a, T => a.map(elem_to_string)),
            ));
        }
        if let TensorValue::Str(a) = self {
            let parsed: Vec<Sc> = a.iter().map(|s| parse_sc(s)).collect::<Result<Vec<_>>>()?;
            let arr = mk(a.shape().to_vec(), parsed)?;
            return with_dtype!(to, T => Ok(T::wrap(arr.map(|&s| <T as Castable>::from_sc(s)))),
                other => Err(unsupported(other, "Cast target")));
        }
        macro_rules! go {
            ($a:expr) => {
                with_dtype!(to, T => Ok(T::wrap($a.map(|&x| <T as Castable>::from_sc(Castable::to_sc(x))))),
                    other => Err(unsupported(other, "Cast target")))
            };
        }
        match self {
            TensorValue::F32(a) => go!(a),
            TensorValue::F64(a) => go!(a),
            TensorValue::F16(a) => go!(a),
            TensorValue::BF16(a) => go!(a),
            TensorValue::I8(a) => go!(a),
            TensorValue::I16(a) => go!(a),
            TensorValue::I32(a) => go!(a),
            TensorValue::I64(a) => go!(a),
            TensorValue::U8(a) => go!(a),
            TensorValue::U16(a) => go!(a),
            TensorValue::U32(a) => go!(a),
            TensorValue::U64(a) => go!(a),
            TensorValue::Bool(a) => go!(a),
            TensorValue::Str(_) => Err(unsupported(dtype::STRING, "Cast source")),
        }
    }

    /// Float view of a numeric tensor in f32 (f64 stays separate; see `float_compute`).
    pub fn to_f32_array(&self) -> Option<ArrayD<f32>> {
        dispatch_num!(self, a, T => Some(a.map(|&x| Num::to_f64(x) as f32)),
        other => match other {
            TensorValue::Bool(a) => Some(a.map(|&b| b as u8 as f32)),
            _ => None,
        })
    }
}

fn elem_to_string<T: std::fmt::Debug + 'static>(x: &T) -> String {
    let any = x as &dyn std::any::Any;
    if let Some(v) = any.downcast_ref::<f32>() {
        return fmt_float(*v as f64, true);
    }
    if let Some(v) = any.downcast_ref::<f64>() {
        return fmt_float(*v, false);
    }
    if let Some(v) = any.downcast_ref::<f16>() {
        return fmt_float(v.to_f64(), true);
    }
    if let Some(v) = any.downcast_ref::<bf16>() {
        return fmt_float(v.to_f64(), true);
    }
    if let Some(v) = any.downcast_ref::<bool>() {
        return if *v { "True".into() } else { "False".into() };
    }
    if let Some(v) = any.downcast_ref::<String>() {
        return v.clone();
    }
    format!("{x:?}")
}

fn fmt_float(v: f64, single: bool) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "INF".into() } else { "-INF".into() }
    } else if single {
        format!("{}", v as f32)
    } else {
        format!("{v}")
    }
}

fn parse_sc(s: &str) -> Result<Sc> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i128>() {
        return Ok(Sc::I(i));
    }
    let lower = t.to_ascii_lowercase();
    let v = match lower.trim_start_matches('+') {
        "inf" | "infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        "nan" | "-nan" => f64::NAN,
        _ => t
            .parse::<f64>()
            .map_err(|_| EvalError::Tensor(format!("cannot parse string '{s}' as a number")))?,
    };
    Ok(Sc::F(v))
}

/// Multidirectional (numpy) broadcast of shapes; `None` if incompatible.
pub(crate) fn broadcast_shapes(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// Elements in row-major order, borrowed when the array is already in standard layout.
pub(crate) fn flat<T: Clone>(a: &ArrayD<T>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().cloned().collect()),
    }
}

/// Builds an array from a row-major vector.
pub(crate) fn arr<T>(shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), v)
        .map_err(|e| EvalError::Tensor(format!("internal shape mismatch for {shape:?}: {e}")))
}

/// A copy in standard (row-major) layout.
pub(crate) fn std_owned<T: Clone>(v: ndarray::ArrayViewD<'_, T>) -> ArrayD<T> {
    v.as_standard_layout().into_owned()
}
