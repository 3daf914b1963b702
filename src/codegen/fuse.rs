//! Fusion over lowered steps: an elementwise bias add and/or activation moves into the epilogue
//! of the MatMul/Gemm/Conv that feeds it, and chains of elementwise programs merge into one
//! kernel. A producer is only fused into its single reader, never when its buffer is a graph
//! output, so every intermediate that disappears had no other use.

use std::collections::HashMap;

use super::BufId;
use super::lower::{Activation, Data, Lowerer, StepKind, Val};
use super::program::{Ins, Program, op};

/// Fuses until nothing changes.
pub fn fuse(lw: &mut Lowerer, outputs: &[(String, Val)]) {
    let out_bufs: Vec<BufId> = outputs
        .iter()
        .filter_map(|(_, v)| match v.data {
            Data::Gpu(b) => Some(b),
            Data::Const(_) => None,
        })
        .collect();
    loop {
        let changed = fuse_epilogues(lw, &out_bufs) || fuse_chains(lw, &out_bufs);
        if !changed {
            break;
        }
    }
}

/// For each buffer: the steps that write it and the steps that read it.
fn uses(lw: &Lowerer) -> (HashMap<BufId, Vec<usize>>, HashMap<BufId, Vec<usize>>) {
    let mut writers: HashMap<BufId, Vec<usize>> = HashMap::new();
    let mut readers: HashMap<BufId, Vec<usize>> = HashMap::new();
    for (i, s) in lw.steps.iter().enumerate() {
        writers.entry(s.out()).or_default().push(i);
        let mut r = s.reads();
        r.sort();
        r.dedup();
        for b in r {
            readers.entry(b).or_default().push(i);
        }
    }
    (writers, readers)
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

fn remove_step(lw: &mut Lowerer, producer: usize, consumer: usize, keep: usize) {
    let drop = if keep == producer { consumer } else { producer };
    let mut names = lw.steps[producer].nodes.clone();
    names.extend(lw.steps[consumer].nodes.clone());
    lw.steps[keep].nodes = names;
    lw.steps.remove(drop);
}

fn fuse_epilogues(lw: &mut Lowerer, out_bufs: &[BufId]) -> bool {
    let (writers, readers) = uses(lw);
    for i in 0..lw.steps.len() {
        let out = lw.steps[i].out();
        if out_bufs.contains(&out) || writers.get(&out).map(|w| w.len()) != Some(1) {
            continue;
        }
        let Some(rs) = readers.get(&out) else {
            continue;
        };
        if rs.len() != 1 || rs[0] <= i {
            continue;
        }
        let j = rs[0];
        let StepKind::Elementwise(p) = lw.steps[j].kind.clone() else {
            continue;
        };
        // the consumer reads nothing but `out` and possibly one bias
        let written_before = |b: BufId| writers.get(&b).is_none_or(|w| w.iter().all(|&k| k < i));
        let fused = match &mut lw.steps[i].kind {
            StepKind::MatMul(mm) => {
                let mut shape: Vec<usize> = mm.batch.iter().map(|d| d[0]).collect();
                shape.extend([mm.m, mm.n]);
                if p.shape != shape || mm.act != Activation::NONE {
                    continue;
                }
                if let Some(act) = activation_of(&p) {
                    mm.act = act;
                    true
                } else if let Some(k) = bias_add_of(&p, out) {
                    let o = &p.operands[k];
                    if mm.bias.is_some() || !written_before(o.buf) {
                        continue;
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
                    continue;
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
                        continue;
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
        if fused {
            match &mut lw.steps[i].kind {
                StepKind::MatMul(mm) => mm.out = p.out,
                StepKind::Conv(cv) => cv.out = p.out,
                _ => unreachable!(),
            }
            remove_step(lw, i, j, i);
            return true;
        }
    }
    false
}

fn fuse_chains(lw: &mut Lowerer, out_bufs: &[BufId]) -> bool {
    let (writers, readers) = uses(lw);
    for j in 0..lw.steps.len() {
        let StepKind::Elementwise(consumer) = &lw.steps[j].kind else {
            continue;
        };
        for operand in consumer.operands.clone() {
            let b = operand.buf;
            if out_bufs.contains(&b) {
                continue;
            }
            let Some(w) = writers.get(&b) else {
                continue;
            };
            if w.len() != 1 || readers.get(&b).map(|r| r.as_slice()) != Some(&[j]) {
                continue;
            }
            let i = w[0];
            let StepKind::Elementwise(producer) = &lw.steps[i].kind else {
                continue;
            };
            let StepKind::Elementwise(consumer) = &lw.steps[j].kind else {
                unreachable!()
            };
            if let Some(merged) = consumer.absorb(producer, b) {
                lw.steps[j].kind = StepKind::Elementwise(merged);
                remove_step(lw, i, j, j);
                return true;
            }
        }
    }
    false
}
