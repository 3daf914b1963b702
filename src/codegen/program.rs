//! Elementwise programs: a fused chain of elementwise ONNX nodes as a register program that
//! `shaders/elementwise.wgsl` interprets, plus the bookkeeping fusion needs (operands with their
//! broadcast strides, SSA instructions, register allocation at encode time).

use super::BufId;

/// Opcodes shared with `shaders/elementwise.wgsl` (the numbers are the contract).
pub mod op {
    pub const LOAD: u32 = 0;
    pub const CONST: u32 = 1;
    pub const MOV: u32 = 2;
    pub const NEG: u32 = 10;
    pub const ABS: u32 = 11;
    pub const EXP: u32 = 12;
    pub const LOG: u32 = 13;
    pub const SQRT: u32 = 14;
    pub const RECIP: u32 = 15;
    pub const TANH: u32 = 16;
    pub const SIGMOID: u32 = 17;
    pub const ERF: u32 = 18;
    pub const RELU: u32 = 19;
    pub const FLOOR: u32 = 20;
    pub const CEIL: u32 = 21;
    pub const ROUND: u32 = 22;
    pub const SIN: u32 = 23;
    pub const COS: u32 = 24;
    pub const TAN: u32 = 25;
    pub const ASIN: u32 = 26;
    pub const ACOS: u32 = 27;
    pub const ATAN: u32 = 28;
    pub const SINH: u32 = 29;
    pub const COSH: u32 = 30;
    pub const ASINH: u32 = 31;
    pub const ACOSH: u32 = 32;
    pub const ATANH: u32 = 33;
    pub const SIGN: u32 = 34;
    pub const GELU_ERF: u32 = 35;
    pub const GELU_TANH: u32 = 36;
    pub const SOFTPLUS: u32 = 37;
    pub const ISNAN: u32 = 38;
    pub const ISINF_POS: u32 = 39;
    pub const ISINF_NEG: u32 = 40;
    pub const ADD: u32 = 50;
    pub const SUB: u32 = 51;
    pub const MUL: u32 = 52;
    pub const DIV: u32 = 53;
    pub const POW: u32 = 54;
    pub const MIN: u32 = 55;
    pub const MAX: u32 = 56;
    pub const FMOD: u32 = 57;
    pub const PYMOD: u32 = 58;
    pub const EQ: u32 = 60;
    pub const LT: u32 = 61;
    pub const LE: u32 = 62;
    pub const GT: u32 = 63;
    pub const GE: u32 = 64;
    pub const IADD: u32 = 70;
    pub const ISUB: u32 = 71;
    pub const IMUL: u32 = 72;
    pub const IDIV: u32 = 73;
    pub const IPYMOD: u32 = 74;
    pub const IFMOD: u32 = 75;
    pub const IMIN: u32 = 76;
    pub const IMAX: u32 = 77;
    pub const INEG: u32 = 78;
    pub const IABS: u32 = 79;
    pub const ISIGN: u32 = 80;
    pub const IPOW: u32 = 81;
    pub const IEQ: u32 = 85;
    pub const ILT: u32 = 86;
    pub const ILE: u32 = 87;
    pub const IGT: u32 = 88;
    pub const IGE: u32 = 89;
    pub const AND: u32 = 90;
    pub const OR: u32 = 91;
    pub const XOR: u32 = 92;
    pub const NOT: u32 = 93;
    pub const BAND: u32 = 94;
    pub const BOR: u32 = 95;
    pub const BXOR: u32 = 96;
    pub const BNOT: u32 = 97;
    pub const SHL: u32 = 98;
    pub const SHR: u32 = 99;
    pub const F2I: u32 = 100;
    pub const I2F: u32 = 101;
    pub const F2B: u32 = 102;
    pub const I2B: u32 = 103;
    pub const F16ROUND: u32 = 104;
    pub const BF16ROUND: u32 = 105;
    pub const WRAP_U8: u32 = 106;
    pub const WRAP_I8: u32 = 107;
    pub const WRAP_U16: u32 = 108;
    pub const WRAP_I16: u32 = 109;
    pub const SELECT: u32 = 110;
}

/// Registers in the kernel (`var r: array<vec4<u32>, 16>` in the shader).
pub const REGISTERS: usize = 16;
/// Instruction slots of the `specialised` entry point of `elementwise.wgsl` (OP0..OP23 and
/// friends).
pub const SLOTS: usize = 24;
/// Opcodes the `specialised` entry point implements (`execute4_fast` in `elementwise.wgsl`),
/// besides LOAD, CONST, MOV.
pub const SPECIALISABLE: &[u32] = &[
    op::NEG,
    op::ABS,
    op::EXP,
    op::LOG,
    op::SQRT,
    op::RECIP,
    op::TANH,
    op::SIGMOID,
    op::ERF,
    op::RELU,
    op::GELU_ERF,
    op::GELU_TANH,
    op::ADD,
    op::SUB,
    op::MUL,
    op::DIV,
    op::MIN,
    op::MAX,
    op::EQ,
    op::LT,
    op::LE,
    op::GT,
    op::GE,
    op::IADD,
    op::ISUB,
    op::IMUL,
    op::IMIN,
    op::IMAX,
    op::IEQ,
    op::ILT,
    op::ILE,
    op::IGT,
    op::IGE,
    op::AND,
    op::OR,
    op::NOT,
    op::I2F,
    op::I2B,
    op::SELECT,
];
/// Input bindings of the elementwise kernel.
pub const MAX_OPERANDS: usize = 4;
/// Info words per dispatch (the shader's `array<vec4<u32>, 64>`).
pub const INFO_WORDS: usize = 256;

/// A tensor read by a program: its buffer and its element strides in the output's coordinates
/// (0 where it broadcasts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operand {
    pub buf: BufId,
    pub strides: Vec<usize>,
}

/// One SSA instruction; `Op` arguments are indices of earlier instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ins {
    Load(usize),
    Const(u32),
    Op(u32, Vec<usize>),
}

/// A fused elementwise computation producing one contiguous output of `shape`.
#[derive(Debug, Clone)]
pub struct Program {
    pub shape: Vec<usize>,
    pub operands: Vec<Operand>,
    pub ins: Vec<Ins>,
    pub result: usize,
    pub out: BufId,
}

/// Contiguous (row-major) element strides of a shape.
pub fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Strides that read a tensor of shape `from` (contiguous) at the coordinates of `to`, by
/// numpy broadcasting; `None` if `from` does not broadcast to `to`.
pub fn broadcast_strides(from: &[usize], to: &[usize]) -> Option<Vec<usize>> {
    if from.len() > to.len() {
        return None;
    }
    let own = contiguous(from);
    let lead = to.len() - from.len();
    let mut out = vec![0usize; to.len()];
    for (d, &extent) in from.iter().enumerate() {
        if extent == to[lead + d] {
            out[lead + d] = if extent == 1 { 0 } else { own[d] };
        } else if extent != 1 {
            return None;
        }
    }
    Some(out)
}

/// Numpy-style broadcast of several shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let lead = rank - s.len();
        for (d, &e) in s.iter().enumerate() {
            let o = &mut out[lead + d];
            if *o == 1 {
                *o = e;
            } else if e != 1 && e != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// Builds a program instruction by instruction.
pub struct Builder {
    pub prog: Program,
}

impl Builder {
    pub fn new(shape: Vec<usize>, out: BufId) -> Self {
        Builder {
            prog: Program {
                shape,
                operands: Vec::new(),
                ins: Vec::new(),
                result: 0,
                out,
            },
        }
    }

    /// Loads an operand (deduplicated by buffer and strides).
    pub fn load(&mut self, operand: Operand) -> usize {
        let k = match self.prog.operands.iter().position(|o| *o == operand) {
            Some(k) => k,
            None => {
                self.prog.operands.push(operand);
                self.prog.operands.len() - 1
            }
        };
        self.push(Ins::Load(k))
    }

    pub fn constant(&mut self, bits: u32) -> usize {
        self.push(Ins::Const(bits))
    }

    pub fn f32(&mut self, v: f32) -> usize {
        self.constant(v.to_bits())
    }

    pub fn op(&mut self, code: u32, args: &[usize]) -> usize {
        self.push(Ins::Op(code, args.to_vec()))
    }

    fn push(&mut self, ins: Ins) -> usize {
        self.prog.ins.push(ins);
        self.prog.ins.len() - 1
    }

    pub fn finish(mut self, result: usize) -> Program {
        self.prog.result = result;
        self.prog
    }
}

impl Program {
    /// Registers needed at the widest point, after allocation by last use.
    pub fn registers(&self) -> usize {
        self.allocate().1
    }

    /// Assigns a physical register to every instruction, reusing a register once its value's
    /// last reader has run. Returns the assignment and the number of registers used.
    fn allocate(&self) -> (Vec<usize>, usize) {
        let n = self.ins.len();
        let mut last_use = vec![0usize; n];
        for (i, ins) in self.ins.iter().enumerate() {
            if let Ins::Op(_, args) = ins {
                for &a in args {
                    last_use[a] = i;
                }
            }
        }
        last_use[self.result] = usize::MAX;
        let mut free: Vec<usize> = Vec::new();
        let mut next = 0usize;
        let mut reg = vec![0usize; n];
        for i in 0..n {
            // release the arguments whose last reader is this instruction before choosing the
            // destination: the interpreter reads all arguments before writing
            if let Ins::Op(_, args) = &self.ins[i] {
                let mut seen = Vec::new();
                for &a in args {
                    if last_use[a] == i && !seen.contains(&a) {
                        seen.push(a);
                        free.push(reg[a]);
                    }
                }
            }
            reg[i] = match free.pop() {
                Some(r) => r,
                None => {
                    next += 1;
                    next - 1
                }
            };
            // a value nobody reads frees its register at once
            if last_use[i] == 0 && i != self.result {
                free.push(reg[i]);
            }
        }
        (reg, next)
    }

    /// Info words for `shaders/elementwise.wgsl`, given the operand buffers' element bases
    /// (always 0 today) and the output base.
    pub fn encode(&self) -> Vec<u32> {
        let (reg, _) = self.allocate();
        let (shape, strides) = self.coalesced();
        let rank = shape.len();
        let n: usize = self.shape.iter().product();
        let own = contiguous(&shape);
        let in_order = strides
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == own)
            .fold(0u32, |m, (k, _)| m | (1 << k));
        let mut w = vec![
            n as u32,
            rank as u32,
            self.operands.len() as u32,
            self.ins.len() as u32,
            reg[self.result] as u32,
            0,
            in_order,
            0,
        ];
        w.extend(shape.iter().map(|&d| d as u32));
        for s in &strides {
            w.push(0);
            w.extend(s.iter().map(|&x| x as u32));
        }
        for (i, ins) in self.ins.iter().enumerate() {
            w.extend(self.words(i, ins, &reg));
        }
        w
    }

    /// The output shape with size-1 dimensions dropped and neighbours merged wherever every
    /// operand steps through them as one (so kernels decompose fewer coordinates), and each
    /// operand's strides over it.
    pub fn coalesced(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let mut shape: Vec<usize> = Vec::new();
        let mut strides: Vec<Vec<usize>> = vec![Vec::new(); self.operands.len()];
        for (d, &e) in self.shape.iter().enumerate() {
            if e == 1 {
                continue;
            }
            let mergeable = !shape.is_empty()
                && self
                    .operands
                    .iter()
                    .zip(&strides)
                    .all(|(o, s)| *s.last().unwrap() == o.strides[d] * e);
            if mergeable {
                *shape.last_mut().unwrap() *= e;
                for (o, s) in self.operands.iter().zip(strides.iter_mut()) {
                    *s.last_mut().unwrap() = o.strides[d];
                }
            } else {
                shape.push(e);
                for (o, s) in self.operands.iter().zip(strides.iter_mut()) {
                    s.push(o.strides[d]);
                }
            }
        }
        if shape.is_empty() {
            shape.push(1);
            for s in strides.iter_mut() {
                s.push(0);
            }
        }
        (shape, strides)
    }

    /// The pipeline-overridable constants that spell the program out (COUNT, RESULT and, per
    /// instruction slot, OPi, Di, Ai, Bi, Ci), after register allocation.
    pub fn overrides(&self) -> Vec<(String, f64)> {
        let (reg, _) = self.allocate();
        let mut o = vec![
            ("COUNT".to_string(), self.ins.len() as f64),
            ("RESULT".to_string(), reg[self.result] as f64),
        ];
        for (i, ins) in self.ins.iter().enumerate() {
            for (name, v) in ["OP", "D", "A", "B", "C"]
                .iter()
                .zip(self.words(i, ins, &reg))
            {
                o.push((format!("{name}{i}"), v as f64));
            }
        }
        o
    }

    /// The five words of instruction `i`: opcode, destination, three arguments.
    fn words(&self, i: usize, ins: &Ins, reg: &[usize]) -> [u32; 5] {
        let d = reg[i] as u32;
        match ins {
            Ins::Load(k) => [op::LOAD, d, *k as u32, 0, 0],
            Ins::Const(bits) => [op::CONST, d, *bits, 0, 0],
            Ins::Op(code, args) => {
                let a = |j: usize| args.get(j).map(|&x| reg[x] as u32).unwrap_or(0);
                [*code, d, a(0), a(1), a(2)]
            }
        }
    }

    /// Whether the `specialised` entry point of `elementwise.wgsl` can run this program.
    pub fn specialisable(&self) -> bool {
        self.ins.len() <= SLOTS
            && self.ins.iter().all(|i| match i {
                Ins::Op(code, _) => *code == op::MOV || SPECIALISABLE.contains(code),
                _ => true,
            })
    }

    /// Info words this program would take.
    pub fn info_len(&self) -> usize {
        8 + self.shape.len() * (1 + self.operands.len()) + self.operands.len() + 5 * self.ins.len()
    }

    /// Whether the program fits the kernel: operands, registers and info words.
    pub fn fits(&self) -> bool {
        self.operands.len() <= MAX_OPERANDS
            && self.shape.len() <= 8
            && self.info_len() <= INFO_WORDS
            && self.registers() <= REGISTERS
    }

    /// Whether operand `k` reads its buffer exactly in output order.
    pub fn reads_in_order(&self, k: usize) -> bool {
        let o = &self.operands[k];
        let c = contiguous(&self.shape);
        o.strides
            .iter()
            .zip(&c)
            .zip(&self.shape)
            .all(|((&s, &cs), &e)| e == 1 || s == cs)
    }

    /// Substitutes `producer` (which writes buffer `buf` in this program's shape and order) for
    /// every load of `buf`. `None` if some load of `buf` is not in output order.
    pub fn absorb(&self, producer: &Program, buf: BufId) -> Option<Program> {
        if producer.shape != self.shape {
            return None;
        }
        let reads: Vec<usize> = (0..self.operands.len())
            .filter(|&k| self.operands[k].buf == buf)
            .collect();
        if reads.is_empty() || reads.iter().any(|&k| !self.reads_in_order(k)) {
            return None;
        }
        let mut b = Builder::new(self.shape.clone(), self.out);
        // the producer's instructions first
        let mut pmap = Vec::with_capacity(producer.ins.len());
        for ins in &producer.ins {
            let id = match ins {
                Ins::Load(k) => b.load(producer.operands[*k].clone()),
                Ins::Const(c) => b.constant(*c),
                Ins::Op(code, args) => {
                    let a: Vec<usize> = args.iter().map(|&x| pmap[x]).collect();
                    b.op(*code, &a)
                }
            };
            pmap.push(id);
        }
        let produced = pmap[producer.result];
        let mut cmap = Vec::with_capacity(self.ins.len());
        for ins in &self.ins {
            let id = match ins {
                Ins::Load(k) if self.operands[*k].buf == buf => produced,
                Ins::Load(k) => b.load(self.operands[*k].clone()),
                Ins::Const(c) => b.constant(*c),
                Ins::Op(code, args) => {
                    let a: Vec<usize> = args.iter().map(|&x| cmap[x]).collect();
                    b.op(*code, &a)
                }
            };
            cmap.push(id);
        }
        let merged = b.finish(cmap[self.result]);
        merged.fits().then_some(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_strides_follow_numpy() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), Some(vec![0, 1, 0]));
        assert_eq!(broadcast_strides(&[4], &[2, 3, 4]), Some(vec![0, 0, 1]));
        assert_eq!(broadcast_strides(&[2], &[2, 3]), None);
        assert_eq!(
            broadcast_shapes(&[&[2, 1, 4], &[3, 1]]),
            Some(vec![2, 3, 4])
        );
        assert_eq!(broadcast_shapes(&[&[2], &[3]]), None);
    }

    #[test]
    fn the_specialised_kernel_implements_exactly_the_specialisable_ops() {
        let src = crate::codegen::shaders::source("elementwise").unwrap();
        let body = &src[src.find("fn execute4_fast(").unwrap()..];
        let body = &body[..body.find("\n}\n").unwrap()];
        let mut cases: Vec<u32> = body
            .split("case ")
            .skip(1)
            .map(|c| c[..c.find('u').unwrap()].parse().unwrap())
            .collect();
        cases.sort();
        let mut want = SPECIALISABLE.to_vec();
        want.sort();
        assert_eq!(cases, want);
    }

    #[test]
    fn coalescing_merges_dimensions_every_operand_walks_as_one() {
        let mut b = Builder::new(vec![2, 3, 1, 4], BufId(0));
        // same shape: one dimension
        let x = b.load(Operand {
            buf: BufId(1),
            strides: vec![12, 4, 0, 1],
        });
        // a bias over the last axis: broadcast over the first two
        let c = b.load(Operand {
            buf: BufId(2),
            strides: vec![0, 0, 0, 1],
        });
        let s = b.op(op::ADD, &[x, c]);
        let p = b.finish(s);
        let (shape, strides) = p.coalesced();
        assert_eq!(shape, vec![6, 4]);
        assert_eq!(strides, vec![vec![4, 1], vec![0, 1]]);
        // the in-order mask marks the first operand only
        assert_eq!(p.encode()[6], 0b01);
    }

    #[test]
    fn registers_are_reused_after_last_use() {
        let mut b = Builder::new(vec![4], BufId(0));
        let mut acc = b.load(Operand {
            buf: BufId(1),
            strides: vec![1],
        });
        for _ in 0..20 {
            let c = b.f32(1.0);
            acc = b.op(op::ADD, &[acc, c]);
        }
        let p = b.finish(acc);
        assert!(p.registers() <= 2, "{}", p.registers());
        let w = p.encode();
        assert_eq!(w[3] as usize, p.ins.len());
        // 41 instructions fit the interpreter's info words but not the specialised kernel
        assert!(p.fits());
        assert!(!p.specialisable());
        let o = p.overrides();
        assert_eq!(o[0], ("COUNT".to_string(), 41.0));
    }

    #[test]
    fn absorbing_a_producer_replaces_its_loads() {
        let x = Operand {
            buf: BufId(1),
            strides: vec![1],
        };
        let mut b = Builder::new(vec![4], BufId(2));
        let l = b.load(x.clone());
        let e = b.op(op::EXP, &[l]);
        let producer = b.finish(e);
        let mut c = Builder::new(vec![4], BufId(3));
        let a = c.load(Operand {
            buf: BufId(2),
            strides: vec![1],
        });
        let a2 = c.load(Operand {
            buf: BufId(2),
            strides: vec![1],
        });
        let m = c.op(op::MUL, &[a, a2]);
        let consumer = c.finish(m);
        let merged = consumer.absorb(&producer, BufId(2)).unwrap();
        assert_eq!(merged.operands, vec![x]);
        assert_eq!(merged.out, BufId(3));
        // a broadcast read cannot be absorbed
        let mut c = Builder::new(vec![4], BufId(3));
        let a = c.load(Operand {
            buf: BufId(2),
            strides: vec![0],
        });
        let consumer = c.finish(a);
        assert!(consumer.absorb(&producer, BufId(2)).is_none());
    }
}
