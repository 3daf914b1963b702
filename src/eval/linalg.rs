//! MatMul, Gemm, Einsum. f32 (and f16/bf16, computed in f32) accumulate in f32 like ONNX
//! Runtime; f64 in f64; integers wrap.

use ndarray::ArrayD;
use rayon::prelude::*;

use super::elementwise::dtype_err;
use super::tensor::{Elem, Num, arr, broadcast_shapes, flat};
use super::{Ctx, Result, TensorValue};

/// `c (m×n) += a (m×k) · b (k×n)`, all row-major and contiguous.
pub(crate) fn gemm_kernel<T: Num>(m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) {
    if n == 0 || m == 0 {
        return;
    }
    let row = |(i, crow): (usize, &mut [T])| {
        let arow = &a[i * k..(i + 1) * k];
        for (p, &aip) in arow.iter().enumerate() {
            let brow = &b[p * n..(p + 1) * n];
            for (cj, &bj) in crow.iter_mut().zip(brow) {
                *cj = cj.add(aip.mul(bj));
            }
        }
    };
    if (m as u128) * (n as u128) * (k as u128) > 1 << 18 && m > 1 {
        c.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        c.chunks_mut(n).enumerate().for_each(row);
    }
}

/// For each linear index of `out` (a broadcast batch shape), the linear index into `inp`.
pub(crate) fn bcast_index(out: &[usize], inp: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let off = out.len() - inp.len();
    let mut res = Vec::with_capacity(n);
    let mut istr = vec![0usize; out.len()];
    let mut s = 1usize;
    for i in (0..inp.len()).rev() {
        istr[off + i] = if inp[i] == 1 { 0 } else { s };
        s *= inp[i];
    }
    let mut idx = vec![0usize; out.len()];
    for _ in 0..n {
        res.push(idx.iter().zip(&istr).map(|(a, b)| a * b).sum());
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            if idx[d] < out[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    res
}

fn matmul_t<T: Num>(cx: &Ctx, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    let mut ash = a.shape().to_vec();
    let mut bsh = b.shape().to_vec();
    if ash.is_empty() || bsh.is_empty() {
        return Err(cx.err("MatMul operands must have rank >= 1"));
    }
    let a1 = ash.len() == 1;
    let b1 = bsh.len() == 1;
    if a1 {
        ash.insert(0, 1);
    }
    if b1 {
        bsh.push(1);
    }
    let (m, k) = (ash[ash.len() - 2], ash[ash.len() - 1]);
    let (k2, n) = (bsh[bsh.len() - 2], bsh[bsh.len() - 1]);
    if k != k2 {
        return Err(cx.err(format!(
            "inner dimensions differ: {:?} x {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let abat = &ash[..ash.len() - 2];
    let bbat = &bsh[..bsh.len() - 2];
    let obat = broadcast_shapes(&[abat, bbat]).ok_or_else(|| {
        cx.err(format!(
            "batch dims of {:?} and {:?} do not broadcast",
            a.shape(),
            b.shape()
        ))
    })?;
    let mut oshape = obat.clone();
    oshape.push(m);
    oshape.push(n);
    cx.check_alloc(&oshape, std::mem::size_of::<T>())?;
    let ai = bcast_index(&obat, abat);
    let bi = bcast_index(&obat, bbat);
    let af = flat(a);
    let bf = flat(b);
    let nb = ai.len();
    let mut out = vec![T::zero(); nb * m * n];
    for (z, cblk) in out.chunks_mut((m * n).max(1)).enumerate().take(nb) {
        let ab = &af[ai[z] * m * k..(ai[z] + 1) * m * k];
        let bb = &bf[bi[z] * k * n..(bi[z] + 1) * k * n];
        gemm_kernel(m, k, n, ab, bb, cblk);
    }
    let mut fshape = oshape;
    if b1 {
        fshape.pop();
    }
    if a1 {
        let l = fshape.len();
        fshape.remove(l - if b1 { 1 } else { 2 });
    }
    arr(&fshape, out)
}

/// Runs `f` on the operands in their compute type: f16/bf16 go through f32.
macro_rules! compute_num {
    ($cx:expr, $a:expr, $b:expr, $f:ident) => {{
        let (a, b) = ($a, $b);
        super::elementwise::same_dtype($cx, a, b)?;
        match (a, b) {
            (TensorValue::F16(x), TensorValue::F16(y)) => {
                let r = $f::<f32>($cx, &x.mapv(|v| v.to_f32()), &y.mapv(|v| v.to_f32()))?;
                Ok(TensorValue::F16(r.mapv(half::f16::from_f32)))
            }
            (TensorValue::BF16(x), TensorValue::BF16(y)) => {
                let r = $f::<f32>($cx, &x.mapv(|v| v.to_f32()), &y.mapv(|v| v.to_f32()))?;
                Ok(TensorValue::BF16(r.mapv(half::bf16::from_f32)))
            }
            _ => dispatch_num!(a, x, T => {
                let y = T::get(b).ok_or_else(|| $cx.err("dtype mismatch"))?;
                Ok(T::wrap($f::<T>($cx, x, y)?))
            }, o => Err(dtype_err($cx, o, "expects numeric inputs"))),
        }
    }};
}

pub(crate) fn matmul(cx: &Ctx) -> Result<TensorValue> {
    compute_num!(cx, cx.input(0)?, cx.input(1)?, matmul_t)
}

fn transpose2<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    for j in 0..c {
        for i in 0..r {
            out.push(v[i * c + j]);
        }
    }
    out
}

fn gemm_t<T: Num>(cx: &Ctx, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    if a.ndim() != 2 || b.ndim() != 2 {
        return Err(cx.err(format!(
            "A and B must be 2-D, got {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let ta = cx.attr_i_or("transA", 0)? != 0;
    let tb = cx.attr_i_or("transB", 0)? != 0;
    let alpha = cx.attr_f_or("alpha", 1.0)?;
    let (ar, ac) = (a.shape()[0], a.shape()[1]);
    let (br, bc) = (b.shape()[0], b.shape()[1]);
    let af = flat(a);
    let bf = flat(b);
    let (m, k, av) = if ta {
        (ac, ar, transpose2(&af, ar, ac))
    } else {
        (ar, ac, af.into_owned())
    };
    let (k2, n, bv) = if tb {
        (br, bc, transpose2(&bf, br, bc))
    } else {
        (br, bc, bf.into_owned())
    };
    let (k2, n) = if tb { (bc, br) } else { (k2, n) };
    if k != k2 {
        return Err(cx.err(format!(
            "inner dimensions differ: A {:?} (transA={ta}) and B {:?} (transB={tb})",
            a.shape(),
            b.shape()
        )));
    }
    cx.check_alloc(&[m, n], std::mem::size_of::<T>())?;
    let mut out = vec![T::zero(); m * n];
    gemm_kernel(m, k, n, &av, &bv, &mut out);
    let al = T::from_f64(alpha as f64);
    if alpha != 1.0 {
        for v in out.iter_mut() {
            *v = v.mul(al);
        }
    }
    arr(&[m, n], out)
}

pub(crate) fn gemm(cx: &Ctx) -> Result<TensorValue> {
    let ab = compute_num!(cx, cx.input(0)?, cx.input(1)?, gemm_t)?;
    let Some(c) = cx.opt_input(2) else {
        return Ok(ab);
    };
    let beta = cx.attr_f_or("beta", 1.0)?;
    super::elementwise::same_dtype(cx, &ab, c)?;
    let (m, n) = (ab.shape()[0], ab.shape()[1]);
    let ok = broadcast_shapes(&[&[m, n], c.shape()]).is_some_and(|s| s == [m, n]);
    if !ok {
        return Err(cx.err(format!(
            "C of shape {:?} does not broadcast to [{m}, {n}]",
            c.shape()
        )));
    }
    fn add_c<T: Num>(cx: &Ctx, y: &ArrayD<T>, c: &ArrayD<T>, beta: f32) -> Result<ArrayD<T>> {
        let b = T::from_f64(beta as f64);
        super::elementwise::zip2(cx, y, c, "", |p, q| {
            Some(p.add(if beta == 1.0 { *q } else { q.mul(b) }))
        })
    }
    match (&ab, c) {
        (TensorValue::F16(y), TensorValue::F16(cc)) => {
            let r = add_c::<f32>(cx, &y.mapv(|v| v.to_f32()), &cc.mapv(|v| v.to_f32()), beta)?;
            Ok(TensorValue::F16(r.mapv(half::f16::from_f32)))
        }
        (TensorValue::BF16(y), TensorValue::BF16(cc)) => {
            let r = add_c::<f32>(cx, &y.mapv(|v| v.to_f32()), &cc.mapv(|v| v.to_f32()), beta)?;
            Ok(TensorValue::BF16(r.mapv(half::bf16::from_f32)))
        }
        _ => dispatch_num!(&ab, y, T => {
            let cc = T::get(c).ok_or_else(|| cx.err("dtype mismatch"))?;
            Ok(T::wrap(add_c(cx, y, cc, beta)?))
        }, o => Err(dtype_err(cx, o, "expects numeric inputs"))),
    }
}

/// Einsum by direct iteration over all index combinations (computed in f64).
pub(crate) fn einsum(cx: &Ctx) -> Result<TensorValue> {
    let eq = cx
        .attr_s("equation")?
        .ok_or_else(|| cx.err("missing attribute 'equation'"))?;
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let ins: Vec<&TensorValue> = cx.inputs.iter().flatten().copied().collect();
    if ins.is_empty() {
        return Err(cx.err("needs at least one input"));
    }
    for t in &ins[1..] {
        super::elementwise::same_dtype(cx, ins[0], t)?;
    }
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ins.len() {
        return Err(cx.err(format!(
            "equation '{eq}' has {} operands, got {} inputs",
            terms.len(),
            ins.len()
        )));
    }
    // Expand each term into labels; ellipsis dims become labels '0'.. right-aligned.
    let mut ell_rank = 0usize;
    let mut parsed: Vec<(Vec<char>, bool)> = Vec::new();
    for (t, x) in terms.iter().zip(&ins) {
        let has_ell = t.contains("...");
        let letters: Vec<char> = t.replace("...", "").chars().collect();
        if letters.iter().any(|c| !c.is_ascii_alphabetic()) {
            return Err(cx.err(format!("invalid term '{t}' in equation '{eq}'")));
        }
        if letters.len() > x.rank() || (!has_ell && letters.len() != x.rank()) {
            return Err(cx.err(format!(
                "term '{t}' does not match input of shape {:?}",
                x.shape()
            )));
        }
        if has_ell {
            ell_rank = ell_rank.max(x.rank() - letters.len());
        }
        parsed.push((letters, has_ell));
    }
    let ell_labels: Vec<char> = (0..ell_rank)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    if ell_rank > 10 {
        return Err(cx.err("too many ellipsis dimensions"));
    }
    let mut op_labels: Vec<Vec<char>> = Vec::new();
    for ((t, (letters, has_ell)), x) in terms.iter().zip(&parsed).zip(&ins) {
        let mut v = Vec::new();
        if *has_ell {
            let e = x.rank() - letters.len();
            let pos = t.find("...").unwrap_or(0);
            let before = t[..pos].chars().count();
            v.extend_from_slice(&letters[..before]);
            v.extend_from_slice(&ell_labels[ell_rank - e..]);
            v.extend_from_slice(&letters[before..]);
        } else {
            v = letters.clone();
        }
        op_labels.push(v);
    }
    let mut sizes: std::collections::BTreeMap<char, usize> = Default::default();
    for (labels, x) in op_labels.iter().zip(&ins) {
        for (&l, &d) in labels.iter().zip(x.shape()) {
            let e = sizes.entry(l).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != 1 && d != *e {
                return Err(cx.err(format!("label '{l}' has sizes {e} and {d}")));
            }
        }
    }
    let out_labels: Vec<char> = match rhs {
        Some(r) => {
            let mut v = Vec::new();
            let pos = r.find("...");
            let letters: Vec<char> = r.replace("...", "").chars().collect();
            let before = pos.map(|p| r[..p].chars().count()).unwrap_or(letters.len());
            v.extend_from_slice(&letters[..before]);
            if pos.is_some() {
                v.extend_from_slice(&ell_labels);
            }
            v.extend_from_slice(&letters[before..]);
            for l in &v {
                if !sizes.contains_key(l) {
                    return Err(cx.err(format!("output label '{l}' does not appear in the inputs")));
                }
            }
            v
        }
        None => {
            let mut v: Vec<char> = ell_labels.clone();
            let mut counts: std::collections::BTreeMap<char, usize> = Default::default();
            for labels in &op_labels {
                for &l in labels {
                    if l.is_ascii_alphabetic() {
                        *counts.entry(l).or_default() += 1;
                    }
                }
            }
            v.extend(counts.into_iter().filter(|(_, c)| *c == 1).map(|(l, _)| l));
            v
        }
    };
    let sum_labels: Vec<char> = sizes
        .keys()
        .filter(|l| !out_labels.contains(l))
        .copied()
        .collect();
    let all: Vec<char> = out_labels.iter().chain(&sum_labels).copied().collect();
    let dims: Vec<usize> = all.iter().map(|l| sizes[l]).collect();
    let oshape: Vec<usize> = out_labels.iter().map(|l| sizes[l]).collect();
    cx.check_alloc(&oshape, 8)?;
    let n_out: usize = oshape.iter().product();
    let n_sum: usize = sum_labels.iter().map(|l| sizes[l]).product();
    if (n_out as u128) * (n_sum as u128) * (ins.len() as u128) > 1 << 28 {
        return Err(cx.err("equation too large for the reference evaluator"));
    }
    // per operand: for each axis, position in `all` and stride (0 when broadcasting a 1).
    let data: Vec<Vec<f64>> = ins.iter().map(|t| t.to_f64_vec()).collect();
    let mut plans: Vec<Vec<(usize, usize)>> = Vec::new();
    for (labels, x) in op_labels.iter().zip(&ins) {
        let sh = x.shape();
        let mut st = vec![0usize; sh.len()];
        let mut s = 1;
        for i in (0..sh.len()).rev() {
            st[i] = s;
            s *= sh[i];
        }
        plans.push(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let p = all.iter().position(|c| c == l).unwrap_or(0);
                    (p, if sh[i] == 1 { 0 } else { st[i] })
                })
                .collect(),
        );
    }
    let mut out = vec![0f64; n_out];
    let mut idx = vec![0usize; all.len()];
    let total = n_out * n_sum;
    for lin in 0..total {
        let mut prod = 1.0;
        for (plan, d) in plans.iter().zip(&data) {
            let off: usize = plan.iter().map(|&(p, s)| idx[p] * s).sum();
            prod *= d[off];
        }
        out[lin / n_sum.max(1)] += prod;
        for d in (0..all.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let res = TensorValue::F64(arr(&oshape, out)?);
    res.cast(ins[0].data_type())
        .map_err(|e| cx.err(e.to_string()))
}
