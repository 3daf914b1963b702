//! Elementwise ONNX ops as program instructions (see [`super::program`]).

use crate::ir::dtype::code;

use super::lower::{Data, Lowerer, Res, Storage, Val, storage_of};
use super::program::{Builder, Operand, broadcast_shapes, broadcast_strides, op};

/// Ops lowered here.
pub const OPS: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "BitShift",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "Div",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "IsInf",
    "IsNaN",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "Max",
    "Mean",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "PRelu",
    "Reciprocal",
    "Relu",
    "Round",
    "Selu",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Where",
    "Xor",
];

/// A value being computed: its register and whether it is f32.
#[derive(Clone, Copy)]
struct R {
    reg: usize,
    float: bool,
}

impl Lowerer<'_> {
    /// Lowers the current elementwise node into a one-node program.
    pub fn lower_elementwise(&mut self, op_type: &str) -> Res<()> {
        let node = self.cur();
        let mut ins: Vec<Val> = Vec::new();
        // CastLike's second input only names the type
        let count = if op_type == "CastLike" {
            1
        } else {
            node.inputs.len()
        };
        for i in 0..count {
            match self.opt(i)? {
                Some(v) => ins.push(v),
                None if op_type == "Clip" => ins.push(Val {
                    shape: vec![],
                    dtype: 0,
                    data: Data::Gpu(super::BufId(usize::MAX)),
                }),
                None => return Err(self.invalid(format!("input {i} is missing"))),
            }
        }
        let present: Vec<&Val> = ins.iter().filter(|v| v.dtype != 0).collect();
        if present.is_empty() {
            return Err(self.invalid("no inputs"));
        }
        let shapes: Vec<&[usize]> = present.iter().map(|v| v.shape.as_slice()).collect();
        let shape = broadcast_shapes(&shapes).ok_or_else(|| {
            self.invalid(format!("input shapes {shapes:?} do not broadcast together"))
        })?;
        let out_dtype = self.ew_out_dtype(op_type, &ins)?;
        let out = self.out_buf(0, &shape, out_dtype)?;
        let mut b = Builder::new(shape.clone(), out);
        let mut regs = Vec::new();
        for v in &ins {
            if v.dtype == 0 {
                regs.push(None);
                continue;
            }
            regs.push(Some(self.operand(&mut b, v, &shape)?));
        }
        let result = self.emit_ew(&mut b, op_type, &regs, out_dtype)?;
        let prog = b.finish(result);
        if !prog.fits() {
            return Err(self.unsupported(format!(
                "{} tensor inputs exceed the elementwise kernel's {} bindings",
                prog.operands.len(),
                super::program::MAX_OPERANDS
            )));
        }
        self.push(super::lower::StepKind::Elementwise(prog));
        Ok(())
    }

    /// Loads a value into the program: scalars as immediates, tensors through their buffer.
    fn operand(&mut self, b: &mut Builder, v: &Val, shape: &[usize]) -> Res<R> {
        let float = storage_of(v.dtype) == Some(Storage::F32);
        if storage_of(v.dtype).is_none() {
            return Err(self.unsupported(format!(
                "element type {} has no GPU storage",
                crate::ir::dtype::name(v.dtype)
            )));
        }
        if let Some(t) = v.konst()
            && v.numel() == 1
        {
            let words = super::lower::to_words(t).map_err(|m| self.unsupported(m))?;
            let bits = u32::from_le_bytes([words[0], words[1], words[2], words[3]]);
            return Ok(R {
                reg: b.constant(bits),
                float,
            });
        }
        let strides = broadcast_strides(&v.shape, shape)
            .ok_or_else(|| self.invalid("input does not broadcast to the output"))?;
        let buf = self.buf(v)?;
        Ok(R {
            reg: b.load(Operand { buf, strides }),
            float,
        })
    }

    fn ew_out_dtype(&self, op_type: &str, ins: &[Val]) -> Res<i32> {
        Ok(match op_type {
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or"
            | "Xor" | "Not" | "IsNaN" | "IsInf" => code::BOOL,
            "Cast" => {
                let to = self.attr_i("to", 0) as i32;
                if storage_of(to).is_none() {
                    return Err(self.unsupported(format!(
                        "Cast to {} has no GPU storage",
                        crate::ir::dtype::name(to)
                    )));
                }
                to
            }
            "CastLike" => self.req(1)?.dtype,
            "Where" => ins[1].dtype,
            _ => ins[0].dtype,
        })
    }

    fn emit_ew(
        &self,
        b: &mut Builder,
        op_type: &str,
        regs: &[Option<R>],
        out_dtype: i32,
    ) -> Res<usize> {
        let x = regs[0].ok_or_else(|| self.invalid("first input is missing"))?;
        let arg = |i: usize| -> Res<R> {
            regs.get(i)
                .copied()
                .flatten()
                .ok_or_else(|| self.invalid(format!("input {i} is missing")))
        };
        let f = x.float;
        let alpha = self.attr_f("alpha", f32::NAN);
        let r = match op_type {
            "Abs" if f => b.op(op::ABS, &[x.reg]),
            "Neg" if f => b.op(op::NEG, &[x.reg]),
            "Abs" | "Neg" => {
                let code = if op_type == "Abs" { op::IABS } else { op::INEG };
                let r = b.op(code, &[x.reg]);
                self.wrap_int(b, r, out_dtype)
            }
            "Sign" => b.op(if f { op::SIGN } else { op::ISIGN }, &[x.reg]),
            "Relu" => {
                if f {
                    b.op(op::RELU, &[x.reg])
                } else {
                    let z = b.constant(0);
                    b.op(op::IMAX, &[x.reg, z])
                }
            }
            "Exp" | "Log" | "Sqrt" | "Reciprocal" | "Tanh" | "Sigmoid" | "Erf" | "Floor"
            | "Ceil" | "Round" | "Sin" | "Cos" | "Tan" | "Asin" | "Acos" | "Atan" | "Sinh"
            | "Cosh" | "Asinh" | "Acosh" | "Atanh" | "Softplus" => {
                if !f {
                    return Err(self.unsupported(format!("{op_type} on integer tensors")));
                }
                let code = match op_type {
                    "Exp" => op::EXP,
                    "Log" => op::LOG,
                    "Sqrt" => op::SQRT,
                    "Reciprocal" => op::RECIP,
                    "Tanh" => op::TANH,
                    "Sigmoid" => op::SIGMOID,
                    "Erf" => op::ERF,
                    "Floor" => op::FLOOR,
                    "Ceil" => op::CEIL,
                    "Round" => op::ROUND,
                    "Sin" => op::SIN,
                    "Cos" => op::COS,
                    "Tan" => op::TAN,
                    "Asin" => op::ASIN,
                    "Acos" => op::ACOS,
                    "Atan" => op::ATAN,
                    "Sinh" => op::SINH,
                    "Cosh" => op::COSH,
                    "Asinh" => op::ASINH,
                    "Acosh" => op::ACOSH,
                    "Atanh" => op::ATANH,
                    _ => op::SOFTPLUS,
                };
                b.op(code, &[x.reg])
            }
            "Gelu" => {
                let approx = self.attr_s("approximate", "none");
                let code = match approx.as_str() {
                    "none" => op::GELU_ERF,
                    "tanh" => op::GELU_TANH,
                    other => return Err(self.unsupported(format!("approximate='{other}'"))),
                };
                b.op(code, &[x.reg])
            }
            "IsNaN" => b.op(op::ISNAN, &[x.reg]),
            "IsInf" => {
                let pos = self.attr_i("detect_positive", 1) != 0;
                let neg = self.attr_i("detect_negative", 1) != 0;
                let p = b.op(op::ISINF_POS, &[x.reg]);
                let n = b.op(op::ISINF_NEG, &[x.reg]);
                match (pos, neg) {
                    (true, true) => b.op(op::OR, &[p, n]),
                    (true, false) => p,
                    (false, true) => n,
                    (false, false) => b.constant(0),
                }
            }
            "Not" => b.op(op::NOT, &[x.reg]),
            "BitwiseNot" => b.op(op::BNOT, &[x.reg]),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Max" | "Min" | "Sum" | "Mean" => {
                if regs.len() == 1 {
                    // a single-input Max/Min/Sum/Mean is its input
                    b.op(op::MOV, &[x.reg])
                } else {
                    if op_type == "Pow" && !f && arg(1)?.float {
                        // an integer base with a float exponent: computed in f32, truncated
                        let xf = b.op(op::I2F, &[x.reg]);
                        let p = b.op(op::POW, &[xf, arg(1)?.reg]);
                        let r = b.op(op::F2I, &[p]);
                        return Ok(self.wrap_int(b, r, out_dtype));
                    }
                    let mut acc = x.reg;
                    let code = self.binary_code(op_type, f)?;
                    for i in 1..regs.len() {
                        let y = arg(i)?;
                        let yr = if op_type == "Pow" && f && !y.float {
                            b.op(op::I2F, &[y.reg])
                        } else {
                            y.reg
                        };
                        acc = b.op(code, &[acc, yr]);
                    }
                    if op_type == "Mean" {
                        let n = b.f32(regs.len() as f32);
                        acc = b.op(op::DIV, &[acc, n]);
                    }
                    // narrow integer types wrap as their own arithmetic does
                    if f {
                        acc
                    } else {
                        self.wrap_int(b, acc, out_dtype)
                    }
                }
            }
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" => {
                let y = arg(1)?;
                let code = match (op_type, f) {
                    ("Equal", true) => op::EQ,
                    ("Less", true) => op::LT,
                    ("LessOrEqual", true) => op::LE,
                    ("Greater", true) => op::GT,
                    ("GreaterOrEqual", true) => op::GE,
                    ("Equal", false) => op::IEQ,
                    ("Less", false) => op::ILT,
                    ("LessOrEqual", false) => op::ILE,
                    ("Greater", false) => op::IGT,
                    _ => op::IGE,
                };
                b.op(code, &[x.reg, y.reg])
            }
            "And" | "Or" | "Xor" | "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" => {
                let y = arg(1)?;
                let code = match op_type {
                    "And" => op::AND,
                    "Or" => op::OR,
                    "Xor" => op::XOR,
                    "BitwiseAnd" => op::BAND,
                    "BitwiseOr" => op::BOR,
                    _ => op::BXOR,
                };
                b.op(code, &[x.reg, y.reg])
            }
            "BitShift" => {
                let y = arg(1)?;
                let dir = self.attr_s("direction", "");
                let code = match dir.as_str() {
                    "LEFT" => op::SHL,
                    "RIGHT" => op::SHR,
                    _ => return Err(self.invalid("direction must be LEFT or RIGHT")),
                };
                let r = b.op(code, &[x.reg, y.reg]);
                self.wrap_int(b, r, out_dtype)
            }
            "Where" => {
                let a = arg(1)?;
                let c = arg(2)?;
                b.op(op::SELECT, &[x.reg, a.reg, c.reg])
            }
            "Cast" | "CastLike" => self.cast(b, x, out_dtype)?,
            "Clip" => {
                let mut acc = x.reg;
                let (mx, mn) = (op_code_minmax(f, true), op_code_minmax(f, false));
                if let Some(lo) = regs.get(1).copied().flatten() {
                    acc = b.op(mx, &[acc, lo.reg]);
                } else if let Some(lo) = self.cur().attr_float("min") {
                    let c = b.f32(lo);
                    acc = b.op(op::MAX, &[acc, c]);
                }
                if let Some(hi) = regs.get(2).copied().flatten() {
                    acc = b.op(mn, &[acc, hi.reg]);
                } else if let Some(hi) = self.cur().attr_float("max") {
                    let c = b.f32(hi);
                    acc = b.op(op::MIN, &[acc, c]);
                }
                acc
            }
            "PRelu" => {
                let slope = arg(1)?;
                let z = b.f32(0.0);
                let neg = b.op(op::LT, &[x.reg, z]);
                let scaled = b.op(op::MUL, &[x.reg, slope.reg]);
                b.op(op::SELECT, &[neg, scaled, x.reg])
            }
            "LeakyRelu" => {
                let a = b.f32(if alpha.is_nan() { 0.01 } else { alpha });
                let z = b.f32(0.0);
                let neg = b.op(op::LT, &[x.reg, z]);
                let scaled = b.op(op::MUL, &[x.reg, a]);
                b.op(op::SELECT, &[neg, scaled, x.reg])
            }
            "ThresholdedRelu" => {
                let a = b.f32(if alpha.is_nan() { 1.0 } else { alpha });
                let gt = b.op(op::GT, &[x.reg, a]);
                let z = b.f32(0.0);
                b.op(op::SELECT, &[gt, x.reg, z])
            }
            "Elu" | "Celu" | "Selu" => {
                let a = if alpha.is_nan() {
                    if op_type == "Selu" { 1.673_263_2 } else { 1.0 }
                } else {
                    alpha
                };
                let z = b.f32(0.0);
                let neg = b.op(op::LT, &[x.reg, z]);
                let one = b.f32(1.0);
                let av = b.f32(a);
                let e = if op_type == "Celu" {
                    let d = b.op(op::DIV, &[x.reg, av]);
                    b.op(op::EXP, &[d])
                } else {
                    b.op(op::EXP, &[x.reg])
                };
                let em1 = b.op(op::SUB, &[e, one]);
                let ne = b.op(op::MUL, &[av, em1]);
                let r = b.op(op::SELECT, &[neg, ne, x.reg]);
                if op_type == "Selu" {
                    let g = b.f32(self.attr_f("gamma", 1.050_701));
                    b.op(op::MUL, &[r, g])
                } else {
                    r
                }
            }
            "HardSigmoid" | "HardSwish" => {
                let (a, beta) = if op_type == "HardSwish" {
                    (1.0 / 6.0, 0.5)
                } else {
                    (
                        if alpha.is_nan() { 0.2 } else { alpha },
                        self.attr_f("beta", 0.5),
                    )
                };
                let av = b.f32(a);
                let bv = b.f32(beta);
                let t = b.op(op::MUL, &[x.reg, av]);
                let t = b.op(op::ADD, &[t, bv]);
                let z = b.f32(0.0);
                let one = b.f32(1.0);
                let t = b.op(op::MAX, &[t, z]);
                let t = b.op(op::MIN, &[t, one]);
                if op_type == "HardSwish" {
                    b.op(op::MUL, &[x.reg, t])
                } else {
                    t
                }
            }
            "Softsign" => {
                let a = b.op(op::ABS, &[x.reg]);
                let one = b.f32(1.0);
                let d = b.op(op::ADD, &[a, one]);
                b.op(op::DIV, &[x.reg, d])
            }
            "Mish" => {
                let sp = b.op(op::SOFTPLUS, &[x.reg]);
                let t = b.op(op::TANH, &[sp]);
                b.op(op::MUL, &[x.reg, t])
            }
            other => return Err(self.unsupported(format!("op {other}"))),
        };
        Ok(r)
    }

    fn binary_code(&self, op_type: &str, float: bool) -> Res<u32> {
        Ok(match (op_type, float) {
            ("Add" | "Sum" | "Mean", true) => op::ADD,
            ("Sub", true) => op::SUB,
            ("Mul", true) => op::MUL,
            ("Div", true) => op::DIV,
            ("Pow", true) => op::POW,
            ("Max", true) => op::MAX,
            ("Min", true) => op::MIN,
            ("Mod", true) => {
                if self.attr_i("fmod", 0) != 0 {
                    op::FMOD
                } else {
                    op::PYMOD
                }
            }
            ("Add" | "Sum", false) => op::IADD,
            ("Sub", false) => op::ISUB,
            ("Mul", false) => op::IMUL,
            ("Div", false) => op::IDIV,
            ("Pow", false) => op::IPOW,
            ("Max", false) => op::IMAX,
            ("Min", false) => op::IMIN,
            ("Mod", false) => {
                if self.attr_i("fmod", 0) != 0 {
                    op::IFMOD
                } else {
                    op::IPYMOD
                }
            }
            (other, _) => return Err(self.unsupported(format!("{other} on these types"))),
        })
    }

    fn wrap_int(&self, b: &mut Builder, r: usize, dtype: i32) -> usize {
        match dtype {
            code::UINT8 => b.op(op::WRAP_U8, &[r]),
            code::INT8 => b.op(op::WRAP_I8, &[r]),
            code::UINT16 => b.op(op::WRAP_U16, &[r]),
            code::INT16 => b.op(op::WRAP_I16, &[r]),
            _ => r,
        }
    }

    fn cast(&self, b: &mut Builder, x: R, to: i32) -> Res<usize> {
        let to_float = storage_of(to) == Some(Storage::F32);
        Ok(match (x.float, to_float, to) {
            (true, true, code::FLOAT16) => b.op(op::F16ROUND, &[x.reg]),
            (true, true, code::BFLOAT16) => b.op(op::BF16ROUND, &[x.reg]),
            (true, true, _) => b.op(op::MOV, &[x.reg]),
            (true, false, code::BOOL) => b.op(op::F2B, &[x.reg]),
            (true, false, _) => {
                let r = b.op(op::F2I, &[x.reg]);
                self.wrap_int(b, r, to)
            }
            (false, true, _) => {
                let r = b.op(op::I2F, &[x.reg]);
                match to {
                    code::FLOAT16 => b.op(op::F16ROUND, &[r]),
                    code::BFLOAT16 => b.op(op::BF16ROUND, &[r]),
                    _ => r,
                }
            }
            (false, false, code::BOOL) => b.op(op::I2B, &[x.reg]),
            (false, false, _) => self.wrap_int(b, x.reg, to),
        })
    }
}

fn op_code_minmax(float: bool, max: bool) -> u32 {
    match (float, max) {
        (true, true) => op::MAX,
        (true, false) => op::MIN,
        (false, true) => op::IMAX,
        (false, false) => op::IMIN,
    }
}
