//! Dispatch macros: run a generic body with a type alias bound to the element type of a
//! [`TensorValue`](super::TensorValue) variant.

/// Any variant. `$a` binds the inner array (by reference when matching on a reference).
macro_rules! dispatch_all {
    ($v:expr, $a:ident, $T:ident => $body:expr) => {
        match $v {
            TensorValue::F32($a) => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            TensorValue::F64($a) => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            TensorValue::F16($a) => {
                #[allow(dead_code)]
                type $T = half::f16;
                $body
            }
            TensorValue::BF16($a) => {
                #[allow(dead_code)]
                type $T = half::bf16;
                $body
            }
            TensorValue::I8($a) => {
                #[allow(dead_code)]
                type $T = i8;
                $body
            }
            TensorValue::I16($a) => {
                #[allow(dead_code)]
                type $T = i16;
                $body
            }
            TensorValue::I32($a) => {
                #[allow(dead_code)]
                type $T = i32;
                $body
            }
            TensorValue::I64($a) => {
                #[allow(dead_code)]
                type $T = i64;
                $body
            }
            TensorValue::U8($a) => {
                #[allow(dead_code)]
                type $T = u8;
                $body
            }
            TensorValue::U16($a) => {
                #[allow(dead_code)]
                type $T = u16;
                $body
            }
            TensorValue::U32($a) => {
                #[allow(dead_code)]
                type $T = u32;
                $body
            }
            TensorValue::U64($a) => {
                #[allow(dead_code)]
                type $T = u64;
                $body
            }
            TensorValue::Bool($a) => {
                #[allow(dead_code)]
                type $T = bool;
                $body
            }
            TensorValue::Str($a) => {
                #[allow(dead_code)]
                type $T = String;
                $body
            }
        }
    };
}

/// Numeric variants (floats incl. f16/bf16 and integers); `$other` handles bool and string.
macro_rules! dispatch_num {
    ($v:expr, $a:ident, $T:ident => $body:expr, $o:ident => $other:expr) => {
        match $v {
            TensorValue::F32($a) => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            TensorValue::F64($a) => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            TensorValue::F16($a) => {
                #[allow(dead_code)]
                type $T = half::f16;
                $body
            }
            TensorValue::BF16($a) => {
                #[allow(dead_code)]
                type $T = half::bf16;
                $body
            }
            TensorValue::I8($a) => {
                #[allow(dead_code)]
                type $T = i8;
                $body
            }
            TensorValue::I16($a) => {
                #[allow(dead_code)]
                type $T = i16;
                $body
            }
            TensorValue::I32($a) => {
                #[allow(dead_code)]
                type $T = i32;
                $body
            }
            TensorValue::I64($a) => {
                #[allow(dead_code)]
                type $T = i64;
                $body
            }
            TensorValue::U8($a) => {
                #[allow(dead_code)]
                type $T = u8;
                $body
            }
            TensorValue::U16($a) => {
                #[allow(dead_code)]
                type $T = u16;
                $body
            }
            TensorValue::U32($a) => {
                #[allow(dead_code)]
                type $T = u32;
                $body
            }
            TensorValue::U64($a) => {
                #[allow(dead_code)]
                type $T = u64;
                $body
            }
            $o => $other,
        }
    };
}

/// Integer variants only.
macro_rules! dispatch_int {
    ($v:expr, $a:ident, $T:ident => $body:expr, $o:ident => $other:expr) => {
        match $v {
            TensorValue::I8($a) => {
                #[allow(dead_code)]
                type $T = i8;
                $body
            }
            TensorValue::I16($a) => {
                #[allow(dead_code)]
                type $T = i16;
                $body
            }
            TensorValue::I32($a) => {
                #[allow(dead_code)]
                type $T = i32;
                $body
            }
            TensorValue::I64($a) => {
                #[allow(dead_code)]
                type $T = i64;
                $body
            }
            TensorValue::U8($a) => {
                #[allow(dead_code)]
                type $T = u8;
                $body
            }
            TensorValue::U16($a) => {
                #[allow(dead_code)]
                type $T = u16;
                $body
            }
            TensorValue::U32($a) => {
                #[allow(dead_code)]
                type $T = u32;
                $body
            }
            TensorValue::U64($a) => {
                #[allow(dead_code)]
                type $T = u64;
                $body
            }
            $o => $other,
        }
    };
}

/// Runs `$body` with `$T` bound to the element type for an ONNX data type code.
macro_rules! with_dtype {
    ($dt:expr, $T:ident => $body:expr, $o:ident => $other:expr) => {
        match $dt {
            1 => {
                type $T = f32;
                $body
            }
            11 => {
                type $T = f64;
                $body
            }
            10 => {
                type $T = half::f16;
                $body
            }
            16 => {
                type $T = half::bf16;
                $body
            }
            3 => {
                type $T = i8;
                $body
            }
            5 => {
                type $T = i16;
                $body
            }
            6 => {
                type $T = i32;
                $body
            }
            7 => {
                type $T = i64;
                $body
            }
            2 => {
                type $T = u8;
                $body
            }
            4 => {
                type $T = u16;
                $body
            }
            12 => {
                type $T = u32;
                $body
            }
            13 => {
                type $T = u64;
                $body
            }
            9 => {
                type $T = bool;
                $body
            }
            $o => $other,
        }
    };
}
