//! Fusion over lowered steps: an elementwise bias add and/or activation moves into the epilogue
//! of the MatMul/Gemm/Conv that feeds it, and chains of elementwise programs merge into one
//! kernel. A producer is only fused into its single reader, never when its buffer is a graph
//! output, so every intermediate that disappears had no other use.

use std::collections::{HashMap, HashSet};

use super::BufId;
use super::lower::{Activation, Data, Lowerer, Step, StepKind, Val};
use super::program::{Ins, Program, op};

/// Fuses in two sweeps over the steps (epilogues first, so a bias add goes into its matmul
/// rather than into an elementwise chain), keeping the use maps up to date as steps merge.
pub fn fuse(lw: &mut Lowerer, outputs: &[(String, Val)]) {
    let out_bufs: HashSet<BufId> = outputs
        .iter()
        .filter_map(|(_, v)| match v.data {
            Data::Gpu(b) => Some(b),
            Data::Const(_) => None,
        })
        .collect();
    let mut f = Fuser::new(std::mem::take(&mut lw.steps), out_bufs);
    f.epilogues();
    f.chains();
    lw.steps = f.steps.into_iter().flatten().collect();
}

struct Fuser {
    /// Steps by original index; `None` once merged into another.
    steps: Vec<Option<Step>>,
    writers: HashMap<BufId, Vec<usize>>,
    readers: HashMap<BufId, Vec<usize>>,
    outputs: HashSet<BufId>,
}

impl Fuser {
    fn new(steps: Vec<Step>, outputs: HashSet<BufId>) -> Self {
        let mut f = Fuser {
            steps: steps.into_iter().map(Some).collect(),
            writers: HashMap::new(),
            readers: HashMap::new(),
            outputs,
        };
        for i in 0..f.steps.len() {
            f.index(i);
        }
        f
    }

    fn step(&self, i: usize) -> &Step {
        self.steps[i].as_ref().expect("live step")
    }

    /// Records step `i`'s write and reads.
    fn index(&mut self, i: usize) {
        let s = self.step(i);
        let out = s.out();
        let mut r = s.reads();
        r.sort();
        r.dedup();
        self.writers.entry(out).or_default().push(i);
        for b in r {
            let e = self.readers.entry(b).or_default();
            if !e.contains(&i) {
                e.push(i);
            }
        }
    }

    /// Forgets step `i`'s write and reads.
    fn unindex(&mut self, i: usize) {
        let s = self.step(i);
        let out = s.out();
        let reads = s.reads();
        if let Some(w) = self.writers.get_mut(&out) {
            w.retain(|&k| k != i);
        }
        for b in reads {
            if let Some(r) = self.readers.get_mut(&b) {
                r.retain(|&k| k != i);
            }
        }
    }

    /// Replaces step `keep` by `merged` and drops step `gone`, joining their node lists.
    fn merge(&mut self, keep: usize, gone: usize, mut merged: Step) {
        self.unindex(keep);
        self.unindex(gone);
        let (first, second) = if keep < gone {
            (keep, gone)
        } else {
            (gone, keep)
        };
        let mut names = self.step(first).nodes.clone();
        names.extend(self.step(second).nodes.iter().cloned());
        merged.nodes = names;
        self.steps[gone] = None;
        self.steps[keep] = Some(merged);
        self.index(keep);
    }

    /// The single reader of `b` if there is exactly one and `b` is written once and is no output.
    fn sole_reader(&self, b: BufId) -> Option<usize> {
        if self.outputs.contains(&b) || self.writers.get(&b).map(|w| w.len()) != Some(1) {
            return None;
        }
        match self.readers.get(&b).map(|r| r.as_slice()) {
            Some([j]) => Some(*j),
            _ => None,
        }
    }

    fn epilogues(&mut self) {
        for i in 0..self.steps.len() {
            // a matmul/conv may take a bias add and then an activation
            for _ in 0..2 {
                if !self.epilogue(i) {
                    break;
                }
            }
        }
    }

    fn epilogue(&mut self, i: usize) -> bool {
        let Some(step) = self.steps[i].as_ref() else {
            return false;
        };
        if !matches!(step.kind, StepKind::MatMul(_) | StepKind::Conv(_)) {
            return false;
        }
        let out = step.out();
        let Some(j) = self.sole_reader(out) else {
            return false;
        };
        if j <= i {
            return false;
        }
        let StepKind::Elementwise(p) = &self.step(j).kind else {
            return false;
        };
        let p = p.clone();
        let written_before = |b: BufId| {
            self.writers
                .get(&b)
                .is_none_or(|w| w.iter().all(|&k| k < i))
        };
        let mut merged = self.step(i).clone();
        let fused = match &mut merged.kind {
            StepKind::MatMul(mm) => {
                let mut shape: Vec<usize> = mm.batch.iter().map(|d| d[0]).collect();
                shape.extend([mm.m, mm.n]);
                if p.shape != shape || mm.act != Activation::NONE {
                    return false;
                }
                if let Some(act) = activation_of(&p) {
                    mm.act = act;
                    true
                } else if let Some(k) = bias_add_of(&p, out) {
                    let o = &p.operands[k];
                    if mm.bias.is_some() || !written_before(o.buf) {
                        return false;
                    }
                    let r = shape.len();
                    mm.bias = Some((o.buf, o.strides[r - 2], o.strides[r - 1]));
                    for (d, dim) in mm.batch.iter_mut().enumerate() {
                        dim[3] = o.strides[d];
                    }
                    true
                } else {
                    false
                }
            }
            StepKind::Conv(cv) => {
                if cv.act != Activation::NONE {
                    return false;
                }
                if let Some(act) = activation_of(&p) {
                    cv.act = act;
                    true
                } else if let Some(k) = bias_add_of(&p, out) {
                    let o = &p.operands[k];
                    let per_channel = o.strides.len() >= 3
                        && o.strides[1] == 1
                        && o.strides.iter().enumerate().all(|(d, &s)| d == 1 || s == 0);
                    if cv.bias.is_some() || !per_channel || !written_before(o.buf) {
                        return false;
                    }
                    cv.bias = Some(o.buf);
                    cv.info[17] = 1;
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        if !fused {
            return false;
        }
        match &mut merged.kind {
            StepKind::MatMul(mm) => mm.out = p.out,
            StepKind::Conv(cv) => cv.out = p.out,
            _ => unreachable!(),
        }
        self.merge(i, j, merged);
        true
    }

    fn chains(&mut self) {
        for j in 0..self.steps.len() {
            // absorb producers until none fits
            while self.absorb_one(j) {}
        }
    }

    /// Merges one elementwise producer into elementwise step `j`; false if none fits.
    fn absorb_one(&mut self, j: usize) -> bool {
        let Some(Step {
            kind: StepKind::Elementwise(consumer),
            ..
        }) = self.steps[j].as_ref()
        else {
            return false;
        };
        for operand in consumer.operands.clone() {
            let b = operand.buf;
            if self.sole_reader(b) != Some(j) {
                continue;
            }
            let i = self.writers[&b][0];
            let Some(Step {
                kind: StepKind::Elementwise(producer),
                ..
            }) = self.steps[i].as_ref()
            else {
                continue;
            };
            let StepKind::Elementwise(consumer) = &self.step(j).kind else {
                unreachable!()
            };
            if let Some(merged) = consumer.absorb(producer, b) {
                let mut step = self.step(j).clone();
                step.kind = StepKind::Elementwise(merged);
                self.merge(j, i, step);
                return true;
            }
        }
        false
    }
}

/// The activation an elementwise program applies to its single input, if that is all it does.
fn activation_of(p: &Program) -> Option<Activation> {
    match p.ins.as_slice() {
        [Ins::Load(0), Ins::Op(code, args)] if args == &[0] && p.result == 1 => {
            let c = match *code {
                op::RELU => 1,
                op::TANH => 2,
                op::SIGMOID => 3,
                op::GELU_ERF => 4,
                op::GELU_TANH => 5,
                _ => return None,
            };
            Some(Activation {
                code: c,
                p0: 0.0,
                p1: 0.0,
            })
        }
        _ => None,
    }
}

/// If the program is `load(buf) + load(other)` (either order), the other operand's index.
fn bias_add_of(p: &Program, buf: BufId) -> Option<usize> {
    match p.ins.as_slice() {
        [Ins::Load(a), Ins::Load(b), Ins::Op(code, args)]
            if *code == op::ADD && p.result == 2 && (args == &[0, 1] || args == &[1, 0]) =>
        {
            let (x, other) = if p.operands[*a].buf == buf {
                (*a, *b)
            } else {
                (*b, *a)
            };
            (p.operands[x].buf == buf && p.operands[other].buf != buf && p.reads_in_order(x))
                .then_some(other)
        }
        _ => None,
    }
}
