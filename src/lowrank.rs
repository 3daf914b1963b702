//! Truncated SVD of a weight delta for LoRA extraction (ADAPTERS.md §11).
//!
//! Given a delta `Δ = W_f − W_b` of shape `[m, n]` (`[out, in]`), [`truncate`]
//! returns the rank-`r` factors `B = U_r·diag(σ_r)` (`[m, r]`) and `A = V_rᵀ`
//! (`[r, n]`) of its truncated SVD (the PEFT `convert_to_lora` convention, with
//! the scale folded into `B`, so `lora_alpha = r` gives `s = 1`). By the
//! Eckart–Young–Mirsky theorem `B·A` is the best rank-`r` approximation of `Δ`
//! in both the Frobenius and the spectral norm.
//!
//! Two algorithms are used:
//!
//! * **Exact**: a full SVD when `min(m, n) ≤` [`EXACT_MAX_MIN_DIM`], or when
//!   the requested rank is more than `min(m, n) / `[`EXACT_RANK_FRACTION_DIV`].
//!   The matrix is first reduced by a Householder QR (LQ when wide) to a
//!   square `p × p` core, `p = min(m, n)`; the core's SVD is nalgebra's
//!   bidiagonal SVD when it passes a residual/orthogonality certificate, and
//!   otherwise a one-sided Jacobi SVD (nalgebra's SVD is unreliable on exactly
//!   low-rank inputs, which are common for deltas). Cost is `O(m·n·p)`; with
//!   `p` in the thousands this takes minutes.
//! * **Randomized** (Halko–Martinsson–Tropp range finder): a Gaussian test
//!   matrix `Ω [n, k]` with `k = r + `[`OVERSAMPLING`], `Y = Δ·Ω`,
//!   [`POWER_ITERATIONS`] power iterations with Householder re-orthonormalisation
//!   after every product, `Q = orth(Y)`, then an exact SVD of the small matrix
//!   `Qᵀ·Δ` (`[k, n]`) and `U = Q·Ũ`. The test matrix comes from a
//!   `ChaCha8Rng` seeded with the caller's seed, so results are deterministic.
//!
//! All large products go through ndarray's matrixmultiply backend, split into
//! fixed-size row blocks that run on the rayon pool; block sizes and reduction
//! orders do not depend on the number of threads, so neither do the results.
//!
//! Inputs are validated: empty matrices, NaN/±inf entries, `Fixed(0)` and
//! energy thresholds outside `(0, 1]` are reported as [`LowRankError`]s, never
//! as panics. Matrices whose magnitudes would overflow or underflow when
//! squared are rescaled by an exact power of two internally.

use nalgebra::DMatrix;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, ShapeBuilder, s};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Largest `min(m, n)` for which the exact SVD is always used.
pub const EXACT_MAX_MIN_DIM: usize = 256;

/// The exact SVD is also used when the rank needed exceeds
/// `min(m, n) / EXACT_RANK_FRACTION_DIV` (a randomized sketch would then be
/// neither much cheaper nor as accurate).
pub const EXACT_RANK_FRACTION_DIV: usize = 4;

/// Extra sketch columns beyond the target rank in the randomized path.
pub const OVERSAMPLING: usize = 10;

/// Number of power (subspace) iterations in the randomized path.
pub const POWER_ITERATIONS: usize = 2;

/// First sketch width tried by the randomized path under [`RankRule::Energy`];
/// it is doubled until the energy target is met within the accurate part of
/// the sketch (the first `k − OVERSAMPLING` values), or the exact SVD takes over.
pub const ENERGY_INITIAL_SKETCH: usize = 32;

/// Magnitudes outside `[SAFE_MIN_ABS, SAFE_MAX_ABS]` trigger an internal
/// power-of-two rescaling so that sums of squares neither overflow nor underflow.
const SAFE_MAX_ABS: f64 = 1e100;
const SAFE_MIN_ABS: f64 = 1e-100;

/// Rows handed to one rayon task in the blocked products and residual
/// (fixed, so results do not depend on the thread count).
const ROWS_PER_TASK: usize = 256;

/// How the rank `r` of the truncation is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankRule {
    /// Keep exactly `r` singular triplets. `Fixed(0)` is an error; an `r`
    /// larger than `min(m, n)` is clamped to `min(m, n)`.
    Fixed(usize),
    /// Keep the smallest `r` with `Σ_{i≤r} σ_i² ≥ τ·‖Δ‖_F²`, `τ ∈ (0, 1]`
    /// (PEFT `_find_cutoff_index`: the first index `k` whose cumulative energy
    /// ratio reaches `τ`, and `r = k + 1`). An all-zero delta gives `r = 0`.
    Energy(f64),
}

/// Which algorithm produced a [`LowRank`] (for reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Full SVD of the delta.
    Exact,
    /// Randomized range finder followed by an exact SVD of the projected matrix.
    Randomized,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Exact => "exact",
            Method::Randomized => "randomized",
        })
    }
}

/// A rank-`r` factorisation `Δ ≈ B·A` of a delta matrix `Δ [m, n]`.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `[m, r]` = `U_r·diag(σ_r)` (PEFT `lora_B` with the scale folded in).
    pub b: Array2<f64>,
    /// `[r, n]` = `V_rᵀ`, orthonormal rows (PEFT `lora_A`).
    pub a: Array2<f64>,
    /// The `r` kept singular values, in descending order.
    pub singular_values: Vec<f64>,
    /// `Σ_{i≤r} σ_i² / ‖Δ‖_F²` (with `‖Δ‖_F²` computed directly from the
    /// entries), clamped to `[0, 1]`; `1.0` for an all-zero delta.
    pub energy_kept: f64,
    /// `‖Δ − B·A‖_F / ‖Δ‖_F`, measured directly from the factors; `0.0` for an
    /// all-zero delta.
    pub rel_error: f64,
    /// The algorithm that was used.
    pub method: Method,
}

impl LowRank {
    /// The kept rank `r` (number of columns of `b`, rows of `a`).
    pub fn rank(&self) -> usize {
        self.singular_values.len()
    }

    /// The dense reconstruction `B·A` (`[m, n]`).
    pub fn product(&self) -> Array2<f64> {
        self.b.dot(&self.a)
    }
}

/// Errors reported by [`truncate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LowRankError {
    /// The delta has no entries.
    #[error("cannot factor an empty delta matrix of shape [{rows}, {cols}]")]
    Empty {
        /// Number of rows of the delta.
        rows: usize,
        /// Number of columns of the delta.
        cols: usize,
    },
    /// The delta contains NaN or ±inf (the first one in row-major order).
    #[error("delta contains a non-finite value {value} at [{row}, {col}]")]
    NonFinite {
        /// Row of the first non-finite entry.
        row: usize,
        /// Column of the first non-finite entry.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// `RankRule::Fixed(0)` was requested.
    #[error(
        "RankRule::Fixed(0) requested: a fixed rank must be at least 1 \
         (rank 0 only arises for an all-zero delta under RankRule::Energy)"
    )]
    ZeroRank,
    /// `RankRule::Energy(τ)` with `τ` not in `(0, 1]` (or NaN).
    #[error("energy threshold {0} is not in (0, 1]")]
    InvalidEnergy(f64),
    /// nalgebra's SVD did not converge within its iteration budget.
    #[error("SVD of a [{rows}, {cols}] matrix did not converge")]
    SvdNoConvergence {
        /// Rows of the matrix whose SVD failed.
        rows: usize,
        /// Columns of the matrix whose SVD failed.
        cols: usize,
    },
    /// The computation produced non-finite numbers from finite input.
    #[error("numerical failure in the low-rank factorisation: {0}")]
    Numerical(&'static str),
}

/// Truncated SVD of `delta` (`[m, n]`) into `B [m, r]` and `A [r, n]`.
///
/// `rule` selects `r` (see [`RankRule`]); `seed` seeds the Gaussian test
/// matrix of the randomized path (the exact path ignores it), so equal inputs
/// and seeds give bit-identical results.
///
/// An all-zero delta gives, under `Energy`, `r = 0` (`B [m, 0]`, `A [0, n]`);
/// under `Fixed(r)` a zero `B [m, r]` and the first `r` rows of the identity as
/// `A`. In both cases `energy_kept = 1` and `rel_error = 0`.
///
/// # Errors
/// [`LowRankError::Empty`] for a matrix with no entries,
/// [`LowRankError::NonFinite`] for NaN/inf entries, [`LowRankError::ZeroRank`]
/// for `Fixed(0)`, [`LowRankError::InvalidEnergy`] for `τ ∉ (0, 1]`, and
/// [`LowRankError::SvdNoConvergence`] / [`LowRankError::Numerical`] if the
/// linear algebra fails.
pub fn truncate(
    delta: ArrayView2<f64>,
    rule: RankRule,
    seed: u64,
) -> Result<LowRank, LowRankError> {
    match rule {
        RankRule::Fixed(0) => return Err(LowRankError::ZeroRank),
        RankRule::Energy(tau) if !(tau > 0.0 && tau <= 1.0) => {
            return Err(LowRankError::InvalidEnergy(tau));
        }
        _ => {}
    }
    let (m, n) = delta.dim();
    if m == 0 || n == 0 {
        return Err(LowRankError::Empty { rows: m, cols: n });
    }
    let min_dim = m.min(n);

    let stats = scan(delta)?;
    if stats.max_abs == 0.0 {
        return Ok(zero_result(m, n, rule));
    }

    // Rescale by an exact power of two when squares could overflow/underflow.
    let (scaled, unscale) = if stats.max_abs > SAFE_MAX_ABS || stats.max_abs < SAFE_MIN_ABS {
        let e = stats.max_abs.log2().floor() as i32;
        let (e1, e2) = (e / 2, e - e / 2);
        let (d1, d2) = (2f64.powi(-e1), 2f64.powi(-e2));
        let copy = delta.mapv(|x| x * d1 * d2);
        (Some(copy), Some((2f64.powi(e1), 2f64.powi(e2))))
    } else {
        (None, None)
    };
    let d: ArrayView2<'_, f64> = match &scaled {
        Some(c) => c.view(),
        None => delta.view(),
    };
    let total = if scaled.is_some() {
        sum_sq(d)
    } else {
        stats.sum_sq
    };
    if !total.is_finite() || total <= 0.0 {
        return Err(LowRankError::Numerical(
            "squared Frobenius norm is not a positive finite number",
        ));
    }

    let factors = match rule {
        RankRule::Fixed(r) => {
            let r = r.min(min_dim);
            if use_exact(min_dim, r) {
                exact_truncated(d, |_| r)?
            } else {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let k = (r + OVERSAMPLING).min(min_dim);
                randomized_truncated(d, k, r, &mut rng)?
            }
        }
        RankRule::Energy(tau) => energy_truncated(d, tau, total, seed)?,
    };
    let Factors {
        mut b,
        a,
        mut s,
        method,
    } = factors;

    let kept: f64 = s.iter().map(|x| x * x).sum();
    let energy_kept = (kept / total).clamp(0.0, 1.0);
    let err_sq = residual_sq(d, b.view(), a.view());
    let rel_error = (err_sq / total).sqrt();
    if !rel_error.is_finite() || !energy_kept.is_finite() {
        return Err(LowRankError::Numerical("non-finite error measure"));
    }

    if let Some((u1, u2)) = unscale {
        b.mapv_inplace(|x| x * u1 * u2);
        s.iter_mut().for_each(|x| *x = *x * u1 * u2);
        if b.iter().chain(s.iter()).any(|x| !x.is_finite()) {
            return Err(LowRankError::Numerical(
                "the factors overflow f64 at the input's magnitude",
            ));
        }
    }
    Ok(LowRank {
        b,
        a,
        singular_values: s,
        energy_kept,
        rel_error,
        method,
    })
}

/// Whether the exact SVD should be used for rank `r` of a matrix whose
/// smaller dimension is `min_dim`.
fn use_exact(min_dim: usize, r: usize) -> bool {
    min_dim <= EXACT_MAX_MIN_DIM || r * EXACT_RANK_FRACTION_DIV > min_dim
}

/// PEFT `_find_cutoff_index` + 1: the number of leading values whose
/// cumulative squared sum reaches `tau·total`; `None` if it never does.
fn energy_cutoff(s: &[f64], tau: f64, total: f64) -> Option<usize> {
    let mut cum = 0.0;
    for (k, x) in s.iter().enumerate() {
        cum += x * x;
        if cum / total >= tau {
            return Some(k + 1);
        }
    }
    None
}

/// Three SVD pieces: a left factor (scaled by σ), the singular values and a
/// right factor; the exact meaning is given by the function returning it.
type SvdParts = (Array2<f64>, Vec<f64>, Array2<f64>);

/// Truncated factors before the error measurement.
struct Factors {
    b: Array2<f64>,
    a: Array2<f64>,
    s: Vec<f64>,
    method: Method,
}

/// Result of the input scan.
struct Stats {
    max_abs: f64,
    sum_sq: f64,
}

/// Checks every entry is finite; returns the max |x| and Σ x².
fn scan(d: ArrayView2<f64>) -> Result<Stats, LowRankError> {
    let m = d.nrows();
    // Per row: (first non-finite (col, value), max |x|, Σ x²).
    type RowStats = (Option<(usize, f64)>, f64, f64);
    let per_row: Vec<RowStats> = (0..m)
        .into_par_iter()
        .map(|i| {
            let row = d.row(i);
            let mut bad = None;
            let mut max_abs = 0.0f64;
            let mut sq = 0.0;
            for (j, &x) in row.iter().enumerate() {
                if !x.is_finite() {
                    bad = Some((j, x));
                    break;
                }
                max_abs = max_abs.max(x.abs());
                sq += x * x;
            }
            (bad, max_abs, sq)
        })
        .collect();
    let mut stats = Stats {
        max_abs: 0.0,
        sum_sq: 0.0,
    };
    for (i, (bad, max_abs, sq)) in per_row.into_iter().enumerate() {
        if let Some((col, value)) = bad {
            return Err(LowRankError::NonFinite { row: i, col, value });
        }
        stats.max_abs = stats.max_abs.max(max_abs);
        stats.sum_sq += sq;
    }
    Ok(stats)
}

/// Σ x² over a (finite, safely scaled) matrix, deterministic order.
fn sum_sq(d: ArrayView2<f64>) -> f64 {
    let rows: Vec<f64> = (0..d.nrows())
        .into_par_iter()
        .map(|i| d.row(i).iter().map(|x| x * x).sum::<f64>())
        .collect();
    rows.iter().sum()
}

/// Result for an all-zero delta.
fn zero_result(m: usize, n: usize, rule: RankRule) -> LowRank {
    let r = match rule {
        RankRule::Fixed(r) => r.min(m.min(n)),
        RankRule::Energy(_) => 0,
    };
    LowRank {
        b: Array2::zeros((m, r)),
        a: Array2::from_shape_fn((r, n), |(i, j)| if i == j { 1.0 } else { 0.0 }),
        singular_values: vec![0.0; r],
        energy_kept: 1.0,
        rel_error: 0.0,
        method: Method::Exact,
    }
}

/// `a·b` via matrixmultiply, row blocks of `a` spread over the rayon pool.
fn par_dot(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    let (p, _) = a.dim();
    let k = b.ncols();
    let mut out = Array2::<f64>::zeros((p, k));
    if p == 0 || k == 0 {
        return out;
    }
    let chunk = ROWS_PER_TASK;
    let blocks: Vec<(usize, ArrayViewMut2<f64>)> = out
        .axis_chunks_iter_mut(Axis(0), chunk)
        .enumerate()
        .map(|(i, v)| (i * chunk, v))
        .collect();
    blocks.into_par_iter().for_each(|(start, mut blk)| {
        let rows = blk.nrows();
        general_mat_mul(
            1.0,
            &a.slice(s![start..start + rows, ..]),
            &b,
            0.0,
            &mut blk,
        );
    });
    out
}

/// `‖d − b·a‖_F²`, computed in row blocks without forming `b·a` in full.
fn residual_sq(d: ArrayView2<f64>, b: ArrayView2<f64>, a: ArrayView2<f64>) -> f64 {
    let m = d.nrows();
    let chunk = ROWS_PER_TASK;
    let starts: Vec<usize> = (0..m).step_by(chunk).collect();
    let parts: Vec<f64> = starts
        .into_par_iter()
        .map(|start| {
            let end = (start + chunk).min(m);
            let mut e = d.slice(s![start..end, ..]).to_owned();
            if b.ncols() > 0 {
                general_mat_mul(-1.0, &b.slice(s![start..end, ..]), &a, 1.0, &mut e);
            }
            e.iter().map(|x| x * x).sum::<f64>()
        })
        .collect();
    parts.iter().sum()
}

/// Copies an ndarray view into a column-major nalgebra matrix.
fn to_dmatrix(d: ArrayView2<f64>) -> DMatrix<f64> {
    let (m, n) = d.dim();
    DMatrix::from_fn(m, n, |i, j| d[[i, j]])
}

/// Converts a nalgebra matrix into an ndarray (Fortran layout, no reordering).
fn from_dmatrix(d: &DMatrix<f64>) -> Array2<f64> {
    let (m, n) = d.shape();
    Array2::from_shape_vec((m, n).f(), d.as_slice().to_vec())
        .expect("nalgebra storage is column-major with m·n entries")
}

/// Thin Householder QR of `a` (`[M, N]`, `M ≥ N`): `(Q [M, N], R [N, N])`.
fn qr_thin(a: ArrayView2<f64>) -> Result<(Array2<f64>, Array2<f64>), LowRankError> {
    debug_assert!(a.nrows() >= a.ncols());
    let qr = nalgebra::linalg::QR::new(to_dmatrix(a));
    let (q, r) = (qr.q(), qr.r());
    if q.iter().chain(r.iter()).any(|x| !x.is_finite()) {
        return Err(LowRankError::Numerical("non-finite QR factors"));
    }
    Ok((from_dmatrix(&q), from_dmatrix(&r)))
}

/// Orthonormal basis (thin Householder Q, `[m, k]`, `k ≤ m`) of the columns of `y`.
/// Householder QR stays orthonormal even when `y` is rank deficient.
fn orthonormalize(y: ArrayView2<f64>) -> Result<Array2<f64>, LowRankError> {
    Ok(qr_thin(y)?.0)
}

/// Certificate a nalgebra SVD of a `p × p` matrix must pass, entry-wise
/// and relative: `‖S − UΣVᵀ‖_F ≤ tol·‖S‖_F` and `|UᵀU − I|, |VᵀV − I| ≤ tol`
/// with `tol = max(16p, 256)·ε` (a backward-stable SVD lands inside: nalgebra
/// reaches ≈ 2.6·p·ε on a 512 × 512 Gaussian).
/// nalgebra's bidiagonal SVD is fast but returns wrong decompositions for
/// some (nearly) rank-deficient inputs (dimforge/nalgebra #1172, #983; seen
/// here on exactly rank-2/3 matrices); those are caught by this check and
/// redone with the one-sided Jacobi SVD.
fn svd_certificate_tol(p: usize) -> f64 {
    (16 * p).max(256) as f64 * f64::EPSILON
}

/// Maximum number of one-sided Jacobi sweeps.
const JACOBI_MAX_SWEEPS: usize = 80;

/// SVD of a square matrix `S [p, p]` with columns sorted by descending σ:
/// `(X = U·diag(σ) [p, p], σ, V [p, p])`, so that `S = X·Vᵀ`.
fn square_svd(s: ArrayView2<f64>) -> Result<SvdParts, LowRankError> {
    let (x, sigma, v) = match nalgebra_svd_checked(s) {
        Some(res) => res,
        None => jacobi_svd(s)?,
    };
    let p = sigma.len();
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&i, &j| sigma[j].total_cmp(&sigma[i]));
    let xs = Array2::from_shape_fn((p, p), |(i, c)| x[[i, order[c]]]);
    let vs = Array2::from_shape_fn((p, p), |(i, c)| v[[i, order[c]]]);
    let ss = order.iter().map(|&i| sigma[i]).collect();
    Ok((xs, ss, vs))
}

/// nalgebra's SVD of `s`, returned only if it passes the residual and
/// orthogonality certificate (unsorted, `(U·diag(σ), σ, V)`).
fn nalgebra_svd_checked(s: ArrayView2<f64>) -> Option<SvdParts> {
    let p = s.nrows();
    let max_iter = 1000usize.max(100 * p);
    let svd =
        nalgebra::SVD::try_new_unordered(to_dmatrix(s), true, true, f64::EPSILON * 5.0, max_iter)?;
    let sigma: Vec<f64> = svd.singular_values.iter().copied().collect();
    let u = from_dmatrix(svd.u.as_ref()?);
    let vt = from_dmatrix(svd.v_t.as_ref()?);
    if sigma
        .iter()
        .chain(u.iter())
        .chain(vt.iter())
        .any(|x| !x.is_finite())
        || sigma.iter().any(|&x| x < 0.0)
    {
        return None;
    }
    let mut x = u.clone();
    for (mut col, &sg) in x.axis_iter_mut(Axis(1)).zip(&sigma) {
        col.mapv_inplace(|e| e * sg);
    }
    let norm = s.iter().map(|e| e * e).sum::<f64>().sqrt();
    let mut resid = s.to_owned();
    general_mat_mul(-1.0, &x, &vt, 1.0, &mut resid);
    let resid = resid.iter().map(|e| e * e).sum::<f64>().sqrt();
    let orth_err = |g: Array2<f64>| {
        g.indexed_iter()
            .map(|((i, j), &e)| (e - if i == j { 1.0 } else { 0.0 }).abs())
            .fold(0.0f64, f64::max)
    };
    let tol = svd_certificate_tol(p);
    let ok =
        resid <= tol * norm && orth_err(u.t().dot(&u)) <= tol && orth_err(vt.dot(&vt.t())) <= tol;
    ok.then(|| (x, sigma, vt.t().to_owned()))
}

/// One-sided (Hestenes) Jacobi SVD of a square `s` (unsorted,
/// `(U·diag(σ), σ, V)`): columns of `X = S·V` are rotated pairwise until
/// mutually orthogonal; then `σ_i = ‖x_i‖` and `S = X·Vᵀ` holds to rounding.
/// Accurate even for rank-deficient inputs. Pairs are visited in round-robin
/// (tournament) order, so each round's `⌊p/2⌋` disjoint rotations run in
/// parallel; the result does not depend on the number of threads.
fn jacobi_svd(s: ArrayView2<f64>) -> Result<SvdParts, LowRankError> {
    let p = s.nrows();
    let mut x: Vec<Vec<f64>> = s.axis_iter(Axis(1)).map(|c| c.to_vec()).collect();
    let mut v: Vec<Vec<f64>> = (0..p)
        .map(|j| {
            let mut e = vec![0.0; p];
            e[j] = 1.0;
            e
        })
        .collect();
    let fro_sq: f64 = x.iter().map(|c| dot(c, c)).sum();
    // Pairs of columns that are both below this squared norm are left alone:
    // they are rounding noise (σ ≲ p·ε·‖S‖_F) and rotating them only costs time.
    let negligible = {
        let t = p as f64 * f64::EPSILON;
        t * t * fro_sq
    };
    let tol = f64::EPSILON * (p as f64).sqrt().max(1.0);
    // Round-robin schedule over an even number of slots (slot p is a dummy when p is odd).
    let slots = p + (p % 2);
    let mut ring: Vec<usize> = (0..slots).collect();
    let mut converged = p < 2;
    for _ in 0..JACOBI_MAX_SWEEPS {
        if converged {
            break;
        }
        let mut rotated = false;
        for _round in 0..slots.saturating_sub(1) {
            let pairs: Vec<(usize, usize)> = (0..slots / 2)
                .map(|k| {
                    let (i, j) = (ring[k], ring[slots - 1 - k]);
                    (i.min(j), i.max(j))
                })
                .filter(|&(_, j)| j < p)
                .collect();
            // (i, j, x_i, x_j, v_i, v_j), columns moved out for the parallel round.
            type Work = (usize, usize, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
            let mut work: Vec<Work> = pairs
                .iter()
                .map(|&(i, j)| {
                    (
                        i,
                        j,
                        std::mem::take(&mut x[i]),
                        std::mem::take(&mut x[j]),
                        std::mem::take(&mut v[i]),
                        std::mem::take(&mut v[j]),
                    )
                })
                .collect();
            let any = work
                .par_iter_mut()
                .map(|(_, _, xi, xj, vi, vj)| jacobi_pair(xi, xj, vi, vj, tol, negligible))
                .reduce(|| false, |a, b| a || b);
            rotated |= any;
            for (i, j, xi, xj, vi, vj) in work {
                x[i] = xi;
                x[j] = xj;
                v[i] = vi;
                v[j] = vj;
            }
            // Rotate every slot but the first one position.
            ring[1..].rotate_right(1);
        }
        converged = !rotated;
    }
    if !converged {
        return Err(LowRankError::SvdNoConvergence { rows: p, cols: p });
    }
    let sigma: Vec<f64> = x.iter().map(|c| dot(c, c).sqrt()).collect();
    let to_array = |cols: Vec<Vec<f64>>| {
        Array2::from_shape_vec((p, p).f(), cols.concat()).expect("p columns of length p")
    };
    let (xa, va) = (to_array(x), to_array(v));
    if xa
        .iter()
        .chain(va.iter())
        .chain(sigma.iter())
        .any(|e| !e.is_finite())
    {
        return Err(LowRankError::Numerical(
            "non-finite values in the Jacobi SVD",
        ));
    }
    Ok((xa, sigma, va))
}

/// One Jacobi rotation of the column pair `(x_i, x_j)` (and of `V`'s columns);
/// returns whether a rotation was applied.
fn jacobi_pair(
    xi: &mut [f64],
    xj: &mut [f64],
    vi: &mut [f64],
    vj: &mut [f64],
    tol: f64,
    negligible: f64,
) -> bool {
    let (a, b, c) = dot3(xi, xj);
    if c == 0.0 || (a <= negligible && b <= negligible) || c.abs() <= tol * (a.sqrt() * b.sqrt()) {
        return false;
    }
    let zeta = (b - a) / (2.0 * c);
    let t = zeta.signum() / (zeta.abs() + zeta.hypot(1.0));
    let cs = 1.0 / t.hypot(1.0);
    let sn = cs * t;
    rotate(xi, xj, cs, sn);
    rotate(vi, vj, cs, sn);
    true
}

/// `x·y` with independent partial sums (lets the compiler vectorise).
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..4 {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(a, b)| a * b).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `(‖x‖², ‖y‖², x·y)` in one pass.
fn dot3(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let (mut aa, mut bb, mut cc) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (p, q) in xc.zip(yc) {
        for l in 0..4 {
            aa[l] += p[l] * p[l];
            bb[l] += q[l] * q[l];
            cc[l] += p[l] * q[l];
        }
    }
    let sum = |v: [f64; 4]| (v[0] + v[1]) + (v[2] + v[3]);
    let (mut a, mut b, mut c) = (sum(aa), sum(bb), sum(cc));
    for (p, q) in xr.iter().zip(yr) {
        a += p * p;
        b += q * q;
        c += p * q;
    }
    (a, b, c)
}

/// Applies the plane rotation `[x_i, x_j] ← [c·x_i − s·x_j, s·x_i + c·x_j]`.
fn rotate(xi: &mut [f64], xj: &mut [f64], c: f64, s: f64) {
    for (ei, ej) in xi.iter_mut().zip(xj.iter_mut()) {
        let (a, b) = (*ei, *ej);
        *ei = c * a - s * b;
        *ej = s * a + c * b;
    }
}

/// Thin SVD of `d [m, n]` through a QR (or LQ) reduction to a square
/// `p × p` core, `p = min(m, n)`. `keep(σ_sorted)` chooses how many triplets
/// to materialise. Returns `(U_r·diag(σ_r) [m, r], σ_all (p, descending),
/// V_rᵀ [r, n])`.
fn thin_svd(
    d: ArrayView2<f64>,
    keep: impl FnOnce(&[f64]) -> usize,
) -> Result<SvdParts, LowRankError> {
    let (m, n) = d.dim();
    if m >= n {
        // d = Q·R, R = X·Vᵀ ⇒ d = (Q·X)·Vᵀ.
        let (q, r) = qr_thin(d)?;
        let (x, s_all, v) = square_svd(r.view())?;
        let k = keep(&s_all).min(s_all.len());
        let us = par_dot(q.view(), x.slice(s![.., ..k]));
        let vt = v.slice(s![.., ..k]).t().as_standard_layout().into_owned();
        Ok((us, s_all, vt))
    } else {
        // dᵀ = Q·R ⇒ d = Rᵀ·Qᵀ, Rᵀ = X·Vᵀ ⇒ d = X·(Q·V)ᵀ.
        let (q, r) = qr_thin(d.t())?;
        let (x, s_all, v) = square_svd(r.t())?;
        let k = keep(&s_all).min(s_all.len());
        let us = x.slice(s![.., ..k]).as_standard_layout().into_owned();
        let vt = par_dot(q.view(), v.slice(s![.., ..k]))
            .t()
            .as_standard_layout()
            .into_owned();
        Ok((us, s_all, vt))
    }
}

/// Builds `Factors` from `U_r·diag(σ_r)`, all sorted σ and `V_rᵀ`.
fn factors(us: Array2<f64>, s_all: &[f64], vt: Array2<f64>, method: Method) -> Factors {
    let r = us.ncols();
    Factors {
        b: us,
        a: vt,
        s: s_all[..r].to_vec(),
        method,
    }
}

/// Exact truncated SVD; `rank(σ_sorted)` chooses `r`.
fn exact_truncated(
    d: ArrayView2<f64>,
    rank: impl FnOnce(&[f64]) -> usize,
) -> Result<Factors, LowRankError> {
    let (us, s_all, vt) = thin_svd(d, rank)?;
    Ok(factors(us, &s_all, vt, Method::Exact))
}

/// Randomized SVD with sketch width `k`: `(U_r·diag(σ_r) [m, r], σ (k), V_rᵀ [r, n])`,
/// keeping the first `keep(σ)` triplets.
fn randomized_svd(
    d: ArrayView2<f64>,
    k: usize,
    rng: &mut ChaCha8Rng,
    keep: impl FnOnce(&[f64]) -> usize,
) -> Result<SvdParts, LowRankError> {
    let n = d.ncols();
    let omega = Array2::<f64>::from_shape_simple_fn((n, k), || rng.sample(StandardNormal));
    let mut q = orthonormalize(par_dot(d, omega.view()).view())?;
    for _ in 0..POWER_ITERATIONS {
        let z = orthonormalize(par_dot(d.t(), q.view()).view())?;
        q = orthonormalize(par_dot(d, z.view()).view())?;
    }
    // Small matrix Qᵀ·Δ ([k, n]), formed as (Δᵀ·Q)ᵀ so the product is row-blocked.
    let bt = par_dot(d.t(), q.view());
    let (us_small, s_all, vt) = thin_svd(bt.t(), keep)?;
    // Δ ≈ Q·(Qᵀ·Δ) = (Q·Ũ_r·Σ_r)·V_rᵀ.
    let us = par_dot(q.view(), us_small.view());
    Ok((us, s_all, vt))
}

/// Randomized truncated SVD of fixed rank `r` with sketch width `k ≥ r`.
fn randomized_truncated(
    d: ArrayView2<f64>,
    k: usize,
    r: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Factors, LowRankError> {
    let (us, s_all, vt) = randomized_svd(d, k, rng, |_| r)?;
    Ok(factors(us, &s_all, vt, Method::Randomized))
}

/// Energy rule: exact for small matrices, otherwise randomized with a
/// doubling sketch until the target energy is reached within the accurate
/// part of the sketch, falling back to the exact SVD when the rank needed
/// exceeds the randomized regime.
fn energy_truncated(
    d: ArrayView2<f64>,
    tau: f64,
    total: f64,
    seed: u64,
) -> Result<Factors, LowRankError> {
    let min_dim = d.nrows().min(d.ncols());
    let exact = |d: ArrayView2<f64>| {
        exact_truncated(d, |s| {
            // PEFT convention: total energy from the singular values themselves,
            // so τ = 1 always has a cut-off.
            let total_sv: f64 = s.iter().map(|x| x * x).sum();
            energy_cutoff(s, tau, total_sv).unwrap_or(s.len()).max(1)
        })
    };
    if min_dim <= EXACT_MAX_MIN_DIM {
        return exact(d);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut k = ENERGY_INITIAL_SKETCH;
    loop {
        let usable = k - OVERSAMPLING;
        if use_exact(min_dim, usable) || k >= min_dim {
            return exact(d);
        }
        let mut found = None;
        let (us, s_all, vt) = randomized_svd(d, k, &mut rng, |s| {
            found = energy_cutoff(&s[..usable], tau, total);
            found.unwrap_or(0)
        })?;
        if found.is_some() {
            return Ok(factors(us, &s_all, vt, Method::Randomized));
        }
        k *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    fn gaussian(m: usize, n: usize, rng: &mut ChaCha8Rng) -> Array2<f64> {
        Array2::from_shape_simple_fn((m, n), || rng.sample(StandardNormal))
    }

    /// Random matrix with orthonormal columns, `[m, k]`.
    fn random_orthonormal(m: usize, k: usize, rng: &mut ChaCha8Rng) -> Array2<f64> {
        orthonormalize(gaussian(m, k, rng).view()).unwrap()
    }

    /// `U·diag(s)·Vᵀ` with random orthonormal factors.
    fn with_spectrum(m: usize, n: usize, s: &[f64], seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let u = random_orthonormal(m, s.len(), &mut rng);
        let v = random_orthonormal(n, s.len(), &mut rng);
        let us = &u * &Array1::from(s.to_vec());
        us.dot(&v.t())
    }

    fn low_rank(m: usize, n: usize, r: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        gaussian(m, r, &mut rng).dot(&gaussian(r, n, &mut rng))
    }

    fn fro(a: &Array2<f64>) -> f64 {
        a.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    fn reference_singular_values(d: &Array2<f64>) -> Vec<f64> {
        let mut s: Vec<f64> = to_dmatrix(d.view())
            .singular_values()
            .iter()
            .copied()
            .collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s
    }

    fn assert_shapes(lr: &LowRank, m: usize, n: usize, r: usize) {
        assert_eq!(lr.b.dim(), (m, r));
        assert_eq!(lr.a.dim(), (r, n));
        assert_eq!(lr.singular_values.len(), r);
        assert!(lr.singular_values.windows(2).all(|w| w[0] >= w[1]));
    }

    fn assert_orthonormal_rows(a: &Array2<f64>, tol: f64) {
        let g = a.dot(&a.t());
        for ((i, j), &x) in g.indexed_iter() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((x - want).abs() < tol, "A·Aᵀ[{i},{j}] = {x}");
        }
    }

    #[test]
    fn exactly_low_rank_exact_path() {
        let d = low_rank(300, 200, 5, 1);
        let lr = truncate(d.view(), RankRule::Fixed(5), 0).unwrap();
        assert_eq!(lr.method, Method::Exact);
        assert_shapes(&lr, 300, 200, 5);
        assert!(lr.rel_error < 1e-10, "rel_error {}", lr.rel_error);
        let diff = fro(&(&d - &lr.product())) / fro(&d);
        assert!(diff < 1e-10, "reconstruction {diff}");
        assert!((lr.energy_kept - 1.0).abs() < 1e-12);
        assert_orthonormal_rows(&lr.a, 1e-10);
    }

    #[test]
    fn exactly_low_rank_randomized_path() {
        let d = low_rank(600, 500, 5, 2);
        let lr = truncate(d.view(), RankRule::Fixed(5), 7).unwrap();
        assert_eq!(lr.method, Method::Randomized);
        assert_shapes(&lr, 600, 500, 5);
        assert!(lr.rel_error < 1e-8, "rel_error {}", lr.rel_error);
        let diff = fro(&(&d - &lr.product())) / fro(&d);
        assert!(diff < 1e-8, "reconstruction {diff}");
        assert_orthonormal_rows(&lr.a, 1e-10);
        // Wide orientation too.
        let dt = d.t().to_owned();
        let lr = truncate(dt.view(), RankRule::Fixed(5), 7).unwrap();
        assert_eq!(lr.method, Method::Randomized);
        assert!(lr.rel_error < 1e-8, "rel_error {}", lr.rel_error);
    }

    #[test]
    fn eckart_young_exact_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let d = gaussian(80, 60, &mut rng);
        let s_ref = reference_singular_values(&d);
        let total: f64 = s_ref.iter().map(|x| x * x).sum();
        for r in [1, 2, 5, 10, 30, 59, 60] {
            let lr = truncate(d.view(), RankRule::Fixed(r), 0).unwrap();
            assert_eq!(lr.method, Method::Exact);
            assert_shapes(&lr, 80, 60, r);
            let tail: f64 = s_ref[r..].iter().map(|x| x * x).sum();
            let want = (tail / total).sqrt();
            assert!(
                (lr.rel_error - want).abs() < 1e-9,
                "r={r}: {} vs {want}",
                lr.rel_error
            );
            for (got, want) in lr.singular_values.iter().zip(&s_ref) {
                assert!((got - want).abs() <= 1e-9 * want, "σ {got} vs {want}");
            }
            let head: f64 = s_ref[..r].iter().map(|x| x * x).sum();
            assert!((lr.energy_kept - head / total).abs() < 1e-9);
        }
    }

    #[test]
    fn randomized_matches_exact_on_decaying_spectrum() {
        let s: Vec<f64> = (0..400).map(|i| 0.8f64.powi(i)).collect();
        let d = with_spectrum(500, 400, &s, 4);
        let s_ref = reference_singular_values(&d);
        let total: f64 = s_ref.iter().map(|x| x * x).sum();
        for r in [1, 10, 20] {
            let lr = truncate(d.view(), RankRule::Fixed(r), 11).unwrap();
            assert_eq!(lr.method, Method::Randomized);
            assert_shapes(&lr, 500, 400, r);
            for (i, (got, want)) in lr.singular_values.iter().zip(&s_ref).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-6 * want,
                    "r={r} σ_{i}: {got} vs {want}"
                );
            }
            let want = (s_ref[r..].iter().map(|x| x * x).sum::<f64>() / total).sqrt();
            assert!(
                (lr.rel_error - want).abs() <= 1e-6 * want,
                "r={r}: {} vs {want}",
                lr.rel_error
            );
        }
    }

    /// Expected rank from the designed spectrum, computed independently.
    fn expected_energy_rank(s: &[f64], tau: f64) -> usize {
        let sq: Vec<f64> = s.iter().map(|x| x * x).collect();
        let total: f64 = sq.iter().sum();
        let mut cum = 0.0;
        for (k, e) in sq.iter().enumerate() {
            cum += e;
            if cum / total >= tau {
                return k + 1;
            }
        }
        s.len()
    }

    #[test]
    fn energy_rule_exact_path_known_spectrum() {
        // σ = 4, 2, 1, 0.5, ...: energies 16, 4, 1, 0.25, ... (total ≈ 21.333).
        let s: Vec<f64> = (0..12).map(|i| 4.0 * 0.5f64.powi(i)).collect();
        let d = with_spectrum(50, 40, &s, 5);
        // Hand check of the convention: cum ratios 0.75, 0.9375, 0.984, 0.996…
        assert_eq!(expected_energy_rank(&s, 0.75), 1);
        assert_eq!(expected_energy_rank(&s, 0.9), 2);
        assert_eq!(expected_energy_rank(&s, 0.95), 3);
        for tau in [0.1, 0.5, 0.75, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999] {
            let want = expected_energy_rank(&s, tau);
            let lr = truncate(d.view(), RankRule::Energy(tau), 0).unwrap();
            assert_eq!(lr.method, Method::Exact);
            assert_eq!(lr.rank(), want, "τ={tau}");
            assert_shapes(&lr, 50, 40, want);
            assert!(lr.energy_kept >= tau - 1e-12);
            let total: f64 = s.iter().map(|x| x * x).sum();
            let head: f64 = s[..want].iter().map(|x| x * x).sum();
            assert!((lr.energy_kept - head / total).abs() < 1e-10);
            assert!((lr.rel_error - (1.0 - head / total).sqrt()).abs() < 1e-7);
        }
        let lr = truncate(d.view(), RankRule::Energy(1.0), 0).unwrap();
        assert!(lr.rank() >= 10 && lr.rank() <= 40, "rank {}", lr.rank());
        assert!(lr.rel_error < 1e-6);
    }

    #[test]
    fn energy_rule_randomized_path_known_spectrum() {
        // Fast decay: first sketch suffices.
        let s: Vec<f64> = (0..300).map(|i| 4.0 * 0.5f64.powi(i)).collect();
        let d = with_spectrum(600, 400, &s, 6);
        for tau in [0.5, 0.9, 0.99, 0.999999] {
            let want = expected_energy_rank(&s, tau);
            let lr = truncate(d.view(), RankRule::Energy(tau), 1).unwrap();
            assert_eq!(lr.method, Method::Randomized);
            assert_eq!(lr.rank(), want, "τ={tau}");
        }
        // Slower decay: σ_i = 0.9^i, τ = 0.999 needs r = 33 > the first sketch's
        // usable 22 values, so the sketch doubles once (k = 64).
        let s: Vec<f64> = (0..200).map(|i| 0.9f64.powi(i)).collect();
        let d = with_spectrum(600, 400, &s, 7);
        let want = expected_energy_rank(&s, 0.999);
        assert!(
            want > ENERGY_INITIAL_SKETCH - OVERSAMPLING,
            "test needs a doubled sketch, want {want}"
        );
        let lr = truncate(d.view(), RankRule::Energy(0.999), 1).unwrap();
        assert_eq!(lr.method, Method::Randomized);
        assert_eq!(lr.rank(), want);
        assert!(lr.energy_kept >= 0.999);
        assert!((lr.rel_error - (1.0 - lr.energy_kept).sqrt()).abs() < 1e-8);
        for (got, want) in lr.singular_values.iter().zip(&s) {
            assert!((got - want).abs() <= 1e-8 * want, "σ {got} vs {want}");
        }
    }

    #[test]
    fn energy_rule_flat_spectrum_falls_back_to_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let d = gaussian(300, 280, &mut rng);
        let s_ref = reference_singular_values(&d);
        let want = expected_energy_rank(&s_ref, 0.9);
        assert!(want * EXACT_RANK_FRACTION_DIV > 280);
        let lr = truncate(d.view(), RankRule::Energy(0.9), 0).unwrap();
        assert_eq!(lr.method, Method::Exact);
        assert_eq!(lr.rank(), want);
    }

    #[test]
    fn zero_delta() {
        let d = Array2::<f64>::zeros((7, 5));
        let lr = truncate(d.view(), RankRule::Energy(0.9), 0).unwrap();
        assert_shapes(&lr, 7, 5, 0);
        assert_eq!(lr.energy_kept, 1.0);
        assert_eq!(lr.rel_error, 0.0);
        let lr = truncate(d.view(), RankRule::Fixed(3), 0).unwrap();
        assert_shapes(&lr, 7, 5, 3);
        assert!(lr.b.iter().all(|&x| x == 0.0));
        assert_orthonormal_rows(&lr.a, 0.0 + 1e-15);
        assert_eq!(lr.rel_error, 0.0);
        let lr = truncate(d.view(), RankRule::Fixed(99), 0).unwrap();
        assert_eq!(lr.rank(), 5);
    }

    #[test]
    fn non_finite_input_is_an_error() {
        let mut d = low_rank(6, 4, 2, 9);
        d[[3, 2]] = f64::NAN;
        d[[5, 0]] = f64::INFINITY;
        match truncate(d.view(), RankRule::Fixed(2), 0) {
            Err(LowRankError::NonFinite {
                row: 3,
                col: 2,
                value,
            }) => assert!(value.is_nan()),
            other => panic!("unexpected {other:?}"),
        }
        d[[3, 2]] = 0.0;
        assert!(matches!(
            truncate(d.view(), RankRule::Energy(0.5), 0),
            Err(LowRankError::NonFinite { row: 5, col: 0, value }) if value == f64::INFINITY
        ));
        let err = truncate(d.view(), RankRule::Energy(0.5), 0).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
    }

    #[test]
    fn bad_rules_and_empty_are_errors() {
        let d = low_rank(6, 4, 2, 10);
        assert_eq!(
            truncate(d.view(), RankRule::Fixed(0), 0).unwrap_err(),
            LowRankError::ZeroRank
        );
        for tau in [0.0, -0.5, 1.0 + 1e-12, f64::INFINITY] {
            assert_eq!(
                truncate(d.view(), RankRule::Energy(tau), 0).unwrap_err(),
                LowRankError::InvalidEnergy(tau)
            );
        }
        assert!(matches!(
            truncate(d.view(), RankRule::Energy(f64::NAN), 0),
            Err(LowRankError::InvalidEnergy(t)) if t.is_nan()
        ));
        for (m, n) in [(0, 4), (4, 0), (0, 0)] {
            let e = Array2::<f64>::zeros((m, n));
            assert_eq!(
                truncate(e.view(), RankRule::Fixed(1), 0).unwrap_err(),
                LowRankError::Empty { rows: m, cols: n }
            );
        }
    }

    #[test]
    fn rank_above_min_dim_is_clamped() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let d = gaussian(7, 4, &mut rng);
        let lr = truncate(d.view(), RankRule::Fixed(10), 0).unwrap();
        assert_shapes(&lr, 7, 4, 4);
        assert!(lr.rel_error < 1e-13, "rel_error {}", lr.rel_error);
        let lr = truncate(d.t(), RankRule::Fixed(usize::MAX), 0).unwrap();
        assert_shapes(&lr, 4, 7, 4);
        assert!(lr.rel_error < 1e-13);
    }

    #[test]
    fn vector_shapes() {
        let row = Array2::from_shape_fn((1, 9), |(_, j)| j as f64 - 3.5);
        let col = row.t().to_owned();
        for (d, m, n) in [(&row, 1, 9), (&col, 9, 1)] {
            for rule in [
                RankRule::Fixed(1),
                RankRule::Fixed(3),
                RankRule::Energy(0.5),
                RankRule::Energy(1.0),
            ] {
                let lr = truncate(d.view(), rule, 0).unwrap();
                assert_shapes(&lr, m, n, 1);
                assert!(lr.rel_error < 1e-14, "{rule:?}: {}", lr.rel_error);
                assert!((lr.singular_values[0] - fro(d)).abs() < 1e-12);
                assert!((lr.product() - d).iter().all(|x| x.abs() < 1e-13));
            }
        }
        let one = Array2::from_elem((1, 1), -2.5);
        let lr = truncate(one.view(), RankRule::Fixed(1), 0).unwrap();
        assert!((lr.product()[[0, 0]] + 2.5).abs() < 1e-15);
        assert_eq!(lr.singular_values, vec![2.5]);
    }

    #[test]
    fn extreme_magnitudes_are_rescaled() {
        let d = low_rank(40, 30, 3, 12);
        let base = truncate(d.view(), RankRule::Fixed(2), 0).unwrap();
        for scale in [1e250, 1e-250, 1e-305] {
            let ds = d.mapv(|x| x * scale);
            let lr = truncate(ds.view(), RankRule::Fixed(2), 0).unwrap();
            assert!(
                (lr.rel_error - base.rel_error).abs() < 1e-10,
                "scale {scale:e}: {} vs {}",
                lr.rel_error,
                base.rel_error
            );
            for (a, b) in lr.singular_values.iter().zip(&base.singular_values) {
                assert!(
                    (a / scale - b).abs() < 1e-9 * b,
                    "scale {scale}: {a} vs {b}"
                );
            }
            assert!(lr.b.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn randomized_is_deterministic_and_accepts_strided_views() {
        let s: Vec<f64> = (0..300).map(|i| 0.6f64.powi(i)).collect();
        let d = with_spectrum(400, 300, &s, 13);
        let a = truncate(d.view(), RankRule::Fixed(8), 42).unwrap();
        let b = truncate(d.view(), RankRule::Fixed(8), 42).unwrap();
        assert_eq!(a.method, Method::Randomized);
        assert_eq!(a.b, b.b);
        assert_eq!(a.a, b.a);
        assert_eq!(a.singular_values, b.singular_values);
        // Another seed and a transposed (non-standard layout) view agree on the product.
        let c = truncate(d.t(), RankRule::Fixed(8), 43).unwrap();
        let diff = fro(&(&a.product() - &c.product().t())) / fro(&a.product());
        assert!(diff < 1e-8, "diff {diff}");
    }

    /// Checks `d = X·Vᵀ` with orthonormal `V`, mutually orthogonal columns of
    /// `X` whose norms are the (descending) σ — i.e. a genuine SVD.
    fn assert_is_svd(d: ArrayView2<f64>, x: &Array2<f64>, s: &[f64], v: &Array2<f64>, tol: f64) {
        let norm = d.iter().map(|e| e * e).sum::<f64>().sqrt();
        let resid = (&d - &x.dot(&v.t()))
            .iter()
            .map(|e| e * e)
            .sum::<f64>()
            .sqrt();
        assert!(resid <= tol * norm, "residual {resid:e} vs ‖d‖ {norm:e}");
        assert_orthonormal_rows(&v.t().to_owned(), tol);
        let g = x.t().dot(x);
        for ((i, j), &e) in g.indexed_iter() {
            let want = if i == j { s[i] * s[i] } else { 0.0 };
            assert!(
                (e - want).abs() <= tol * norm * norm,
                "XᵀX[{i},{j}] = {e:e}, want {want:e}"
            );
        }
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn svd_core_is_accurate_on_rank_deficient_inputs() {
        // Exactly low-rank squares are where nalgebra's bidiagonal SVD can go
        // wrong; whatever branch square_svd takes, the result must be an SVD.
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        for p in [2usize, 5, 10, 30, 60, 120] {
            for rank in [1usize, 2, 3, p / 2, p] {
                for _ in 0..4 {
                    let d = gaussian(p, rank, &mut rng).dot(&gaussian(rank, p, &mut rng)) * 0.2216;
                    let (x, s, v) = square_svd(d.view()).unwrap();
                    assert_is_svd(d.view(), &x, &s, &v, 1e-12);
                    let (x, s, v) = jacobi_svd(d.view()).unwrap();
                    let mut sorted = s.clone();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    let norm = fro(&d);
                    let resid = fro(&(&d - &x.dot(&v.t())));
                    assert!(resid <= 1e-13 * norm, "jacobi residual {resid:e}");
                    assert_orthonormal_rows(&v.t().to_owned(), 1e-13);
                    assert_eq!(
                        sorted.iter().filter(|&&e| e > 1e-10 * norm).count(),
                        rank.min(p)
                    );
                }
            }
        }
    }

    #[test]
    fn jacobi_recovers_designed_spectrum() {
        let s = [5.0, 3.0, 3.0, 1e-3, 1e-9, 0.0, 0.0];
        let d = with_spectrum(7, 7, &s, 15);
        let (x, sig, v) = jacobi_svd(d.view()).unwrap();
        let mut sorted = sig.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (got, want) in sorted.iter().zip(&s) {
            assert!((got - want).abs() <= 1e-14 * 5.0, "σ {got} vs {want}");
        }
        let resid = fro(&(&d - &x.dot(&v.t())));
        assert!(resid < 1e-14 * fro(&d));
    }

    #[test]
    fn thin_svd_handles_both_orientations() {
        let s = [2.0, 1.0, 0.5, 0.0];
        for (m, n) in [(9, 4), (4, 9), (30, 7), (7, 30)] {
            let d = with_spectrum(m, n, &s, 16);
            let (us, sig, vt) = thin_svd(d.view(), |_| 3).unwrap();
            assert_eq!(us.dim(), (m, 3));
            assert_eq!(vt.dim(), (3, n));
            assert_eq!(sig.len(), m.min(n));
            for (got, want) in sig.iter().zip(&s) {
                assert!((got - want).abs() < 1e-14, "{m}x{n}: σ {got} vs {want}");
            }
            let diff = fro(&(&d - &us.dot(&vt)));
            assert!(diff < 1e-14, "{m}x{n}: {diff:e}");
            assert_orthonormal_rows(&vt, 1e-14);
        }
    }
}
