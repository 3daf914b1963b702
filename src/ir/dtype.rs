//! ONNX tensor element types: codes, names and storage sizes.

/// ONNX `TensorProto.DataType` codes used across graft.
pub mod code {
    pub const UNDEFINED: i32 = 0;
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const UINT16: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const UINT32: i32 = 12;
    pub const UINT64: i32 = 13;
    pub const COMPLEX64: i32 = 14;
    pub const COMPLEX128: i32 = 15;
    pub const BFLOAT16: i32 = 16;
    pub const FLOAT8E4M3FN: i32 = 17;
    pub const FLOAT8E4M3FNUZ: i32 = 18;
    pub const FLOAT8E5M2: i32 = 19;
    pub const FLOAT8E5M2FNUZ: i32 = 20;
    pub const UINT4: i32 = 21;
    pub const INT4: i32 = 22;
    pub const FLOAT4E2M1: i32 = 23;
    pub const FLOAT8E8M0: i32 = 24;
    pub const UINT2: i32 = 25;
    pub const INT2: i32 = 26;
}

/// Storage bits of one element, or `None` for strings and unknown codes.
pub fn bits(dtype: i32) -> Option<u64> {
    use code::*;
    Some(match dtype {
        FLOAT | INT32 | UINT32 => 32,
        UINT8 | INT8 | BOOL | FLOAT8E4M3FN | FLOAT8E4M3FNUZ | FLOAT8E5M2 | FLOAT8E5M2FNUZ
        | FLOAT8E8M0 => 8,
        UINT16 | INT16 | FLOAT16 | BFLOAT16 => 16,
        INT64 | DOUBLE | UINT64 | COMPLEX64 => 64,
        COMPLEX128 => 128,
        UINT4 | INT4 | FLOAT4E2M1 => 4,
        UINT2 | INT2 => 2,
        _ => return None,
    })
}

/// The name ONNX's textual syntax uses for an element type.
pub fn name(dtype: i32) -> &'static str {
    use code::*;
    match dtype {
        FLOAT => "float",
        UINT8 => "uint8",
        INT8 => "int8",
        UINT16 => "uint16",
        INT16 => "int16",
        INT32 => "int32",
        INT64 => "int64",
        STRING => "string",
        BOOL => "bool",
        FLOAT16 => "float16",
        DOUBLE => "double",
        UINT32 => "uint32",
        UINT64 => "uint64",
        COMPLEX64 => "complex64",
        COMPLEX128 => "complex128",
        BFLOAT16 => "bfloat16",
        FLOAT8E4M3FN => "float8e4m3fn",
        FLOAT8E4M3FNUZ => "float8e4m3fnuz",
        FLOAT8E5M2 => "float8e5m2",
        FLOAT8E5M2FNUZ => "float8e5m2fnuz",
        UINT4 => "uint4",
        INT4 => "int4",
        FLOAT4E2M1 => "float4e2m1",
        FLOAT8E8M0 => "float8e8m0",
        UINT2 => "uint2",
        INT2 => "int2",
        _ => "undefined",
    }
}

/// True for element types that hold real numbers (the ones weights use).
pub fn is_float(dtype: i32) -> bool {
    use code::*;
    matches!(
        dtype,
        FLOAT
            | FLOAT16
            | BFLOAT16
            | DOUBLE
            | FLOAT8E4M3FN
            | FLOAT8E4M3FNUZ
            | FLOAT8E5M2
            | FLOAT8E5M2FNUZ
            | FLOAT4E2M1
            | FLOAT8E8M0
    )
}

/// Number of elements of a shape, or `None` if a dim is negative or the product overflows.
pub fn element_count(dims: &[i64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| {
        if d < 0 {
            None
        } else {
            acc.checked_mul(d as u64)
        }
    })
}

/// Bytes a dense little-endian buffer of `count` elements takes (sub-byte types packed).
pub fn byte_len(dtype: i32, count: u64) -> Option<u64> {
    let b = bits(dtype)?;
    let total_bits = count.checked_mul(b)?;
    Some(total_bits.div_ceil(8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_lengths() {
        assert_eq!(element_count(&[2, 3, 4]), Some(24));
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[-1, 3]), None);
        assert_eq!(element_count(&[i64::MAX, 3]), None);
        assert_eq!(byte_len(code::INT4, 5), Some(3));
        assert_eq!(byte_len(code::FLOAT16, 5), Some(10));
        assert_eq!(byte_len(code::STRING, 5), None);
        assert_eq!(byte_len(code::DOUBLE, u64::MAX / 4), None);
    }
}
