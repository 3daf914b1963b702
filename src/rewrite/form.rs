//! Affine forms: a value written as `y = Σ_s s·M_s + c`, where each `s` is a source tensor (a
//! value that is not an affine function of anything simpler), `M_s` a linear map on the last
//! axis kept as a sum of factor chains (so low-rank products are never densified until they are
//! added to an existing dense weight), and `c` a constant bias broadcast onto the result.
//!
//! Everything is in "x·M" form: tokens are rows, a map takes `[.., d_in]` to `[.., d_out]`.
//! Parallel branches add (`M = ΣM_i`), sequential ones multiply in data order
//! (`x·M1·M2`), a per-feature output scale multiplies columns.

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn};

use super::linear::WeightRef;
use crate::ir::ValueId;

/// Reads a stored weight as an f64 matrix in x·M form (done only when a merge needs it).
pub type Loader<'a> = &'a dyn Fn(&WeightRef) -> Result<Arc<Array2<f64>>, FormError>;

/// One factor of a chain.
#[derive(Clone, Debug)]
pub enum Factor {
    /// A dense `[d_in, d_out]` matrix.
    Dense(Arc<Array2<f64>>),
    /// A weight still in the model's storage, read only if the merge needs its values (a
    /// base weight plus low-rank branches is streamed instead).
    Stored(WeightRef),
    /// A per-feature scale (a diagonal matrix).
    Diag(Arc<Array1<f64>>),
}

impl Factor {
    pub fn d_in(&self) -> usize {
        match self {
            Factor::Dense(m) => m.nrows(),
            Factor::Stored(w) => w.rows,
            Factor::Diag(v) => v.len(),
        }
    }
    pub fn d_out(&self) -> usize {
        match self {
            Factor::Dense(m) => m.ncols(),
            Factor::Stored(w) => w.cols,
            Factor::Diag(v) => v.len(),
        }
    }
    fn is_matrix(&self) -> bool {
        matches!(self, Factor::Dense(_) | Factor::Stored(_))
    }
}

/// `scale · F1 · F2 · …` (the identity when there are no factors).
#[derive(Clone, Debug)]
pub struct Term {
    pub scale: f64,
    pub factors: Vec<Factor>,
}

impl Term {
    pub fn identity() -> Self {
        Term {
            scale: 1.0,
            factors: Vec::new(),
        }
    }
    pub fn is_identity(&self) -> bool {
        self.factors.is_empty()
    }
    pub fn has_dense(&self) -> bool {
        self.factors.iter().any(|f| f.is_matrix())
    }
    pub fn d_in(&self) -> Option<usize> {
        self.factors.first().map(|f| f.d_in())
    }
    pub fn d_out(&self) -> Option<usize> {
        self.factors.last().map(|f| f.d_out())
    }
    /// The smallest inner dimension of the chain (the rank of a low-rank product).
    pub fn rank(&self) -> Option<usize> {
        let widths: Vec<usize> = self
            .factors
            .iter()
            .filter(|f| f.is_matrix())
            .map(|f| f.d_out())
            .collect();
        if widths.len() < 2 {
            return None;
        }
        widths[..widths.len() - 1].iter().copied().min()
    }
}

/// A low-rank product `L·R` kept as its two factors.
type LowRankPair = (Array2<f64>, Array2<f64>);

/// What a source's terms add up to, in the cheapest form that represents it exactly.
#[derive(Clone, Debug)]
pub enum Combined {
    /// `scale · x` (scale 1 means the source itself).
    Scaled(f64),
    /// `x ⊙ v` per feature.
    Diag(Array1<f64>),
    /// `x · M`.
    Dense(Array2<f64>),
    /// `x · (k·W + Σ s_i·L_i·R_i)`: a stored weight plus low-rank products, merged by streaming
    /// blocks of rows so the full matrix is never held in memory.
    Patched {
        base: WeightRef,
        scale: f64,
        pairs: Vec<(f64, Array2<f64>, Array2<f64>)>,
    },
}

impl Combined {
    /// `(d_in, d_out)` of a matrix result.
    pub fn dim(&self) -> Option<(usize, usize)> {
        match self {
            Combined::Dense(m) => Some(m.dim()),
            Combined::Patched { base, .. } => Some(base.dim()),
            _ => None,
        }
    }

    /// The merged matrix in full (loads the base weight of a patch).
    pub fn to_dense(&self, load: Loader) -> Result<Option<Array2<f64>>, FormError> {
        Ok(match self {
            Combined::Dense(m) => Some(m.clone()),
            Combined::Patched { base, scale, pairs } => {
                let w = load(base)?;
                let mut acc = w.mapv(|x| x * scale);
                for (k, l, r) in pairs {
                    ndarray::linalg::general_mat_mul(*k, l, r, 1.0, &mut acc);
                }
                Some(acc)
            }
            _ => None,
        })
    }
}

/// An input of a linear region.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A real-valued tensor, read along its last axis.
    Value(ValueId),
    /// Integer indices, read as one-hot rows: `Gather(T, ids)` is `onehot(ids)·T`, so lookup
    /// tables compose with the weights after them like any other dense factor.
    OneHot(ValueId),
}

impl Source {
    pub fn value(self) -> ValueId {
        match self {
            Source::Value(v) | Source::OneHot(v) => v,
        }
    }
}

/// `y = Σ_s s·M_s + c`.
#[derive(Clone, Debug, Default)]
pub struct Form {
    pub parts: BTreeMap<Source, Vec<Term>>,
    pub bias: Option<ArrayD<f64>>,
}

/// Why two forms or a form and a constant could not be combined.
pub type FormError = String;

fn matmul_last(a: &ArrayD<f64>, w: &Array2<f64>) -> Result<ArrayD<f64>, FormError> {
    let shape = a.shape().to_vec();
    let d = *shape.last().unwrap_or(&1);
    if a.ndim() == 0 || d != w.nrows() {
        // A scalar (or size-1 last axis) bias broadcasts over the features.
        if a.ndim() == 0 || d == 1 {
            let ones = Array2::<f64>::ones((1, w.nrows()));
            let lead: Vec<usize> = if a.ndim() == 0 {
                vec![]
            } else {
                shape[..shape.len() - 1].to_vec()
            };
            let rows = lead.iter().product::<usize>().max(1);
            let flat = a.to_shape((rows, 1)).map_err(|e| e.to_string())?.to_owned();
            let expanded = flat.dot(&ones);
            let out = expanded.dot(w);
            let mut new_shape = lead;
            new_shape.push(w.ncols());
            return out
                .into_shape_with_order(IxDyn(&new_shape))
                .map_err(|e| e.to_string());
        }
        return Err(format!(
            "bias has {d} features but the weight expects {}",
            w.nrows()
        ));
    }
    let rows = a.len() / d;
    let flat = a.to_shape((rows, d)).map_err(|e| e.to_string())?.to_owned();
    let out = flat.dot(w);
    let mut new_shape = shape;
    *new_shape.last_mut().expect("rank >= 1") = w.ncols();
    out.into_shape_with_order(IxDyn(&new_shape))
        .map_err(|e| e.to_string())
}

/// Applies `f` elementwise to `a` and `b` broadcast together (numpy rules).
fn broadcast_with(
    a: &ArrayD<f64>,
    b: &ArrayD<f64>,
    f: impl Fn(f64, f64) -> f64,
) -> Result<ArrayD<f64>, FormError> {
    let r = a.ndim().max(b.ndim());
    let pad = |x: &ArrayD<f64>| {
        let mut s = vec![1; r - x.ndim()];
        s.extend_from_slice(x.shape());
        s
    };
    let (sa, sb) = (pad(a), pad(b));
    let mut out = Vec::with_capacity(r);
    for (x, y) in sa.iter().zip(&sb) {
        out.push(match (x, y) {
            (x, y) if x == y => *x,
            (1, y) => *y,
            (x, 1) => *x,
            _ => {
                return Err(format!(
                    "shapes {:?} and {:?} do not broadcast",
                    a.shape(),
                    b.shape()
                ));
            }
        });
    }
    let av = a.to_shape(IxDyn(&sa)).map_err(|e| e.to_string())?;
    let bv = b.to_shape(IxDyn(&sb)).map_err(|e| e.to_string())?;
    let av = av.broadcast(IxDyn(&out)).ok_or("broadcast failed")?;
    let bv = bv.broadcast(IxDyn(&out)).ok_or("broadcast failed")?;
    Ok(ndarray::Zip::from(&av)
        .and(&bv)
        .map_collect(|x, y| f(*x, *y)))
}

fn broadcast_add(a: &ArrayD<f64>, b: &ArrayD<f64>) -> Result<ArrayD<f64>, FormError> {
    broadcast_with(a, b, |x, y| x + y)
}

fn broadcast_mul(a: &ArrayD<f64>, b: &ArrayD<f64>) -> Result<ArrayD<f64>, FormError> {
    broadcast_with(a, b, |x, y| x * y)
}

/// A per-feature vector from a constant whose every axis but the last has size 1: `None` when
/// the constant varies along another axis. A scalar (or size-1 last axis) gives `Some(None)`.
pub fn per_feature(v: &ArrayD<f64>) -> Option<Option<Array1<f64>>> {
    let s = v.shape();
    if s.is_empty() || v.len() == 1 {
        return Some(None);
    }
    if s[..s.len() - 1].iter().any(|&d| d != 1) {
        return None;
    }
    Some(Some(Array1::from_iter(v.iter().copied())))
}

impl Form {
    pub fn source(v: ValueId) -> Self {
        Self::of(Source::Value(v))
    }

    /// `Gather(table, ids)` along axis 0.
    pub fn lookup(ids: ValueId, table: &Arc<Array2<f64>>) -> Self {
        Self::lookup_factor(ids, Factor::Dense(table.clone()))
    }

    /// `Gather(table, ids)` for a table still in the model's storage.
    pub fn lookup_stored(ids: ValueId, table: &WeightRef) -> Self {
        Self::lookup_factor(ids, Factor::Stored(table.clone()))
    }

    fn lookup_factor(ids: ValueId, f: Factor) -> Self {
        let mut parts = BTreeMap::new();
        parts.insert(
            Source::OneHot(ids),
            vec![Term {
                scale: 1.0,
                factors: vec![f],
            }],
        );
        Form { parts, bias: None }
    }

    pub fn of(s: Source) -> Self {
        let mut parts = BTreeMap::new();
        parts.insert(s, vec![Term::identity()]);
        Form { parts, bias: None }
    }

    /// `y · W`.
    pub fn then_dense(mut self, w: &Arc<Array2<f64>>) -> Result<Self, FormError> {
        for terms in self.parts.values_mut() {
            for t in terms.iter_mut() {
                if let Some(d) = t.d_out()
                    && d != w.nrows()
                {
                    return Err(format!(
                        "a {d}-feature value meets a weight of {} rows",
                        w.nrows()
                    ));
                }
                t.factors.push(Factor::Dense(w.clone()));
            }
        }
        if let Some(b) = self.bias.take() {
            self.bias = Some(matmul_last(&b, w)?);
        }
        Ok(self)
    }

    /// `y · W` for a stored weight, read only if a bias has to pass through it.
    pub fn then_stored(mut self, w: &WeightRef, load: Loader) -> Result<Self, FormError> {
        for terms in self.parts.values_mut() {
            for t in terms.iter_mut() {
                if let Some(d) = t.d_out()
                    && d != w.rows
                {
                    return Err(format!(
                        "a {d}-feature value meets a weight of {} rows",
                        w.rows
                    ));
                }
                t.factors.push(Factor::Stored(w.clone()));
            }
        }
        if let Some(b) = self.bias.take() {
            self.bias = Some(matmul_last(&b, &*load(w)?)?);
        }
        Ok(self)
    }

    /// `y ⊙ v` with a per-feature (or scalar) constant `v`.
    pub fn then_scale(mut self, v: &ArrayD<f64>) -> Result<Self, FormError> {
        let pf = per_feature(v).ok_or("the scale varies along an axis other than the features")?;
        for terms in self.parts.values_mut() {
            for t in terms.iter_mut() {
                match &pf {
                    None => t.scale *= v.iter().next().copied().unwrap_or(1.0),
                    Some(vec) => {
                        if let Some(d) = t.d_out()
                            && d != vec.len()
                        {
                            return Err(format!(
                                "a {d}-feature value meets a scale of {} features",
                                vec.len()
                            ));
                        }
                        t.factors.push(Factor::Diag(Arc::new(vec.clone())));
                    }
                }
            }
        }
        if let Some(b) = self.bias.take() {
            self.bias = Some(broadcast_mul(&b, v)?);
        }
        Ok(self)
    }

    /// `y + c`.
    pub fn then_shift(mut self, c: &ArrayD<f64>) -> Result<Self, FormError> {
        self.bias = Some(match self.bias.take() {
            None => c.clone(),
            Some(b) => broadcast_add(&b, c)?,
        });
        Ok(self)
    }

    /// `self + sign · other`.
    pub fn plus(mut self, other: Form, sign: f64) -> Result<Self, FormError> {
        for (s, terms) in other.parts {
            let entry = self.parts.entry(s).or_default();
            for mut t in terms {
                t.scale *= sign;
                entry.push(t);
            }
        }
        if let Some(b) = other.bias {
            let b = b.mapv(|x| x * sign);
            self.bias = Some(match self.bias.take() {
                None => b,
                Some(a) => broadcast_add(&a, &b)?,
            });
        }
        Ok(self)
    }

    /// Input and output widths of a source's map, where the terms determine them.
    pub fn dims(terms: &[Term]) -> (Option<usize>, Option<usize>) {
        let d_in = terms.iter().find_map(|t| t.d_in());
        let d_out = terms.iter().find_map(|t| t.d_out());
        (d_in, d_out)
    }

    /// Adds up a source's terms in f64. `width` is the source's feature count, needed when the
    /// terms alone do not say it (identity terms next to dense ones always do).
    pub fn combine(
        terms: &[Term],
        width: Option<usize>,
        load: Loader,
    ) -> Result<Combined, FormError> {
        if terms.iter().all(|t| t.is_identity()) {
            return Ok(Combined::Scaled(terms.iter().map(|t| t.scale).sum()));
        }
        let (d_in, d_out) = Self::dims(terms);
        if !terms.iter().any(|t| t.has_dense()) {
            let d = d_in.or(width).ok_or("unknown feature width")?;
            let mut acc = Array1::<f64>::zeros(d);
            for t in terms {
                let mut v = Array1::<f64>::from_elem(d, t.scale);
                for f in &t.factors {
                    if let Factor::Diag(s) = f {
                        if s.len() != d {
                            return Err("scales of different widths meet".into());
                        }
                        v *= &**s;
                    }
                }
                acc += &v;
            }
            return Ok(Combined::Diag(acc));
        }
        let d_in = d_in.or(width).ok_or("unknown input width")?;
        let d_out = d_out.ok_or("unknown output width")?;
        let mismatch = |got: (usize, usize)| {
            format!(
                "branches map {d_in} features to {got:?} and {:?}",
                (d_in, d_out)
            )
        };
        // Start from the base weight (a term that is one full-size dense factor) with a single
        // pass, then add every other branch in place: a low-rank chain L·R goes through one
        // matrix product into the accumulator, never through a full-size temporary.
        let base = terms.iter().position(|t| {
            t.factors.len() == 1
                && t.factors[0].is_matrix()
                && (t.factors[0].d_in(), t.factors[0].d_out()) == (d_in, d_out)
        });
        // A stored base weight plus nothing but low-rank branches: keep it as a patch, merged
        // later by streaming rows.
        if let Some(i) = base
            && let Factor::Stored(w) = &terms[i].factors[0]
        {
            let mut pairs = Vec::new();
            let mut all_low_rank = true;
            for (j, t) in terms.iter().enumerate() {
                if j == i {
                    continue;
                }
                match Self::split_low_rank(t, d_in, load)? {
                    Some((l, r)) if (l.nrows(), r.ncols()) == (d_in, d_out) => {
                        pairs.push((t.scale, l, r))
                    }
                    _ => {
                        all_low_rank = false;
                        break;
                    }
                }
            }
            if all_low_rank {
                return Ok(Combined::Patched {
                    base: w.clone(),
                    scale: terms[i].scale,
                    pairs,
                });
            }
        }
        let mut acc = match base {
            Some(i) => {
                let m = match &terms[i].factors[0] {
                    Factor::Dense(m) => m.clone(),
                    Factor::Stored(w) => load(w)?,
                    Factor::Diag(_) => unreachable!("checked matrix"),
                };
                let k = terms[i].scale;
                if k == 1.0 {
                    Arc::try_unwrap(m).unwrap_or_else(|m| (*m).clone())
                } else {
                    m.mapv(|x| x * k)
                }
            }
            None => Array2::<f64>::zeros((d_in, d_out)),
        };
        for (i, t) in terms.iter().enumerate() {
            if Some(i) == base {
                continue;
            }
            if let Some((l, r)) = Self::split_low_rank(t, d_in, load)? {
                if (l.nrows(), r.ncols()) != (d_in, d_out) {
                    return Err(mismatch((l.nrows(), r.ncols())));
                }
                ndarray::linalg::general_mat_mul(t.scale, &l, &r, 1.0, &mut acc);
                continue;
            }
            let m = Self::chain(t, d_in, load)?;
            if m.dim() != (d_in, d_out) {
                return Err(mismatch(m.dim()));
            }
            acc.scaled_add(t.scale, &m);
        }
        Ok(Combined::Dense(acc))
    }

    /// A chain of two or more factors as `L·R` split at its narrowest point, both small;
    /// `None` for a single factor or no narrowing.
    fn split_low_rank(
        t: &Term,
        d_in: usize,
        load: Loader,
    ) -> Result<Option<LowRankPair>, FormError> {
        let Some(rank) = t.rank() else {
            return Ok(None);
        };
        let k = t.factors.len();
        if k < 2 {
            return Ok(None);
        }
        // The first factor whose output width is the rank ends L.
        let Some(cut) = t.factors[..k - 1].iter().position(|f| f.d_out() == rank) else {
            return Ok(None);
        };
        let left = Term {
            scale: 1.0,
            factors: t.factors[..=cut].to_vec(),
        };
        let right = Term {
            scale: 1.0,
            factors: t.factors[cut + 1..].to_vec(),
        };
        let l = Self::chain(&left, d_in, load)?;
        let r = Self::chain(&right, rank, load)?;
        if l.ncols() != r.nrows() {
            return Err("chain widths do not match".into());
        }
        Ok(Some((l, r)))
    }

    /// The dense product of a term's factors (left to right, so low-rank chains stay cheap).
    fn chain(t: &Term, d_in: usize, load: Loader) -> Result<Array2<f64>, FormError> {
        let mut cur: Option<Array2<f64>> = None;
        for f in &t.factors {
            let loaded;
            let f = match f {
                Factor::Stored(w) => {
                    loaded = Factor::Dense(load(w)?);
                    &loaded
                }
                other => other,
            };
            cur = Some(match (cur, f) {
                (None, Factor::Dense(m)) => (**m).clone(),
                (None, Factor::Diag(v)) => Array2::from_diag(&**v),
                (Some(c), Factor::Dense(m)) => {
                    if c.ncols() != m.nrows() {
                        return Err("chain widths do not match".into());
                    }
                    c.dot(&**m)
                }
                (_, Factor::Stored(_)) => unreachable!("stored factors are loaded above"),
                (Some(mut c), Factor::Diag(v)) => {
                    if c.ncols() != v.len() {
                        return Err("chain widths do not match".into());
                    }
                    for mut row in c.axis_iter_mut(Axis(0)) {
                        row *= &**v;
                    }
                    c
                }
            });
        }
        let m = cur.unwrap_or_else(|| Array2::eye(d_in));
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn lora_branch_adds_to_the_base_weight() {
        let x = ValueId(0);
        let w = Arc::new(array![[1.0, 2.0], [3.0, 4.0]]);
        let a = Arc::new(array![[1.0], [0.0]]);
        let b = Arc::new(array![[0.0, 10.0]]);
        let base = Form::source(x).then_dense(&w).unwrap();
        let lora = Form::source(x)
            .then_dense(&a)
            .unwrap()
            .then_dense(&b)
            .unwrap()
            .then_scale(&ArrayD::from_elem(IxDyn(&[]), 0.5))
            .unwrap();
        let y = base.plus(lora, 1.0).unwrap();
        let terms = &y.parts[&Source::Value(x)];
        assert_eq!(terms[1].rank(), Some(1));
        match Form::combine(terms, None, &|_| Err("no stored weights".into())).unwrap() {
            // W + 0.5 * A·B = [[1, 2+5], [3, 4]]
            Combined::Dense(m) => assert_eq!(m, array![[1.0, 7.0], [3.0, 4.0]]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bias_flows_through_weights_and_scales() {
        let x = ValueId(0);
        let w = Arc::new(array![[1.0, 2.0], [3.0, 4.0]]);
        let y = Form::source(x)
            .then_shift(&array![1.0, 1.0].into_dyn())
            .unwrap()
            .then_dense(&w)
            .unwrap()
            .then_scale(&array![2.0, 3.0].into_dyn())
            .unwrap();
        // (x + 1)·W·diag(2,3): bias = [1,1]·W = [4, 6], times [2,3] = [8, 18].
        assert_eq!(y.bias.unwrap(), array![8.0, 18.0].into_dyn());
        match Form::combine(&y.parts[&Source::Value(x)], None, &|_| {
            Err("no stored weights".into())
        })
        .unwrap()
        {
            Combined::Dense(m) => assert_eq!(m, array![[2.0, 6.0], [6.0, 12.0]]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scales_only_stay_diagonal_and_identities_stay_scalars() {
        let x = ValueId(3);
        let y = Form::source(x)
            .then_scale(&array![2.0, 3.0].into_dyn())
            .unwrap()
            .plus(Form::source(x), 1.0)
            .unwrap();
        match Form::combine(&y.parts[&Source::Value(x)], None, &|_| {
            Err("no stored weights".into())
        })
        .unwrap()
        {
            Combined::Diag(v) => assert_eq!(v, array![3.0, 4.0]),
            other => panic!("{other:?}"),
        }
        let z = Form::source(x).plus(Form::source(x), -1.0).unwrap();
        assert!(
            matches!(Form::combine(&z.parts[&Source::Value(x)], None, &|_| Err("no stored weights".into())).unwrap(), Combined::Scaled(s) if s == 0.0)
        );
    }

    #[test]
    fn mismatched_widths_are_errors_not_panics() {
        let x = ValueId(0);
        let w = Arc::new(Array2::<f64>::zeros((2, 3)));
        let v = Arc::new(Array2::<f64>::zeros((4, 3)));
        let f = Form::source(x).then_dense(&w).unwrap();
        assert!(f.then_dense(&v).is_err());
        assert!(per_feature(&Array2::<f64>::zeros((2, 3)).into_dyn()).is_none());
    }
}
