//! Adapter parameters in x·M form and how `graft insert` initialises them.
//!
//! Every adapter is described against the target's weight in x·M form (`M [d_in, d_out]`, see
//! ADAPTERS.md §1.1), whatever layout the node stores it in; emission converts to the node's
//! layout. That keeps one formula per adapter kind for MatMul, both Gemm layouts, Conv (where
//! `d_in` is `C_in·k…`) and Gather (where `d_in` is the vocabulary).

use ndarray::{Array1, Array2, Axis};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::target::{Target, TargetOp};
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::rewrite::consts::const_f64;

/// Which adapter `graft insert` builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Low-rank update `x·A·B·s` added to the output (LoRA, rsLoRA, PiSSA).
    Lora,
    /// LoRA with a per-output magnitude: `c ⊙ (x·M + s·x·A·B) + b`, `c = m / ‖M + s·A·B‖`.
    Dora,
    /// A learned per-feature scale on the output or the input.
    Ia3,
    /// A linear (ZeroI2V-style) adapter `x + (x·D₁ + b₁)·D₂ + b₂` before or after the target;
    /// dense `x + x·D + b` when the rank reaches the feature width.
    Linear,
    /// A Houlsby bottleneck `y + Relu(y·D₁ + b₁)·D₂ + b₂` after the target. Not foldable.
    Bottleneck,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Lora => "lora",
            Kind::Dora => "dora",
            Kind::Ia3 => "ia3",
            Kind::Linear => "linear",
            Kind::Bottleneck => "bottleneck",
        }
    }
}

/// Which side of the target an IA3 vector scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    Output,
    Input,
}

/// Where a linear adapter sits relative to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Position {
    Before,
    After,
}

/// How new adapter weights start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// The adapter is the identity: LoRA/DoRA B = 0 (A Kaiming-uniform; on embeddings A = 0 and
    /// B normal, as PEFT does), IA3 = 1, linear and bottleneck up-projections = 0. Outputs are
    /// unchanged.
    Zeros,
    /// Every weight random and non-zero, from this seed (deterministic).
    Random(u64),
    /// PiSSA: A and B from the top singular triplets of the base weight, which keeps the
    /// residual `M − s·A·B`.
    Pissa,
}

impl Init {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "zeros" => Ok(Init::Zeros),
            "pissa" => Ok(Init::Pissa),
            _ => match s.strip_prefix("random:").map(str::parse::<u64>) {
                Some(Ok(seed)) => Ok(Init::Random(seed)),
                _ => Err(Error::Usage(format!(
                    "--init {s}: expected zeros, random:SEED (an integer) or pissa"
                ))),
            },
        }
    }
}

/// One adapter's parameters, x·M form.
#[derive(Clone, Debug)]
pub enum Params {
    /// `Δ = s · x·A·B (+ s·bias)`; with `magnitude`, DoRA.
    Lora {
        a: Array2<f64>,
        b: Array2<f64>,
        scale: f64,
        bias: Option<Array1<f64>>,
        magnitude: Option<Array1<f64>>,
    },
    Ia3 {
        l: Array1<f64>,
        side: Side,
    },
    /// `x + chain(x)`, each layer `h·D + b`; two layers form a bottleneck.
    Linear {
        layers: Vec<(Array2<f64>, Array1<f64>)>,
        position: Position,
        relu: bool,
    },
}

/// What `graft insert` was asked for.
#[derive(Clone, Debug)]
pub struct Spec {
    pub kind: Kind,
    pub rank: usize,
    pub alpha: f64,
    pub rslora: bool,
    pub init: Init,
    pub side: Side,
    pub position: Position,
}

impl Spec {
    /// The LoRA scale: alpha / r, or alpha / √r for rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.rank as f64;
        if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}

impl Spec {
    /// Whether this adapter can attach to `t` so that it folds back exactly (bottleneck:
    /// whether it can attach at all); the reason when not.
    pub fn accepts(&self, g: &Graph, t: &Target) -> std::result::Result<(), String> {
        let conv_ok = || -> std::result::Result<(), String> {
            let node = g.node(t.node);
            if let TargetOp::Conv { groups } = t.op
                && groups != 1
            {
                return Err(format!(
                    "Conv with group={groups}: a LoRA A factor would mix channel groups"
                ));
            }
            if node
                .attr_ints("dilations")
                .is_some_and(|d| d.iter().any(|&x| x != 1))
            {
                return Err("dilated Conv: PEFT's LoRA A does not take the dilation".into());
            }
            Ok(())
        };
        match (self.kind, t.op) {
            (Kind::Lora, TargetOp::Conv { .. }) => conv_ok(),
            (Kind::Lora, _) => Ok(()),
            (Kind::Dora, TargetOp::MatMul | TargetOp::Gemm { .. }) => Ok(()),
            (Kind::Dora, op) => Err(format!(
                "DoRA is supported on MatMul and Gemm, not {}",
                op.name()
            )),
            (Kind::Ia3, TargetOp::Gather) if self.side == Side::Input => {
                Err("IA3 on the input of an embedding lookup would scale ids".into())
            }
            (Kind::Ia3, _) => Ok(()),
            (Kind::Linear | Kind::Bottleneck, TargetOp::MatMul | TargetOp::Gemm { .. }) => Ok(()),
            (Kind::Linear | Kind::Bottleneck, op) => Err(format!(
                "{} adapters attach to MatMul and Gemm, not {}",
                self.kind.name(),
                op.name()
            )),
        }
    }
}

/// The target's weight in x·M form `[d_in, d_out]` (Conv: `[C_in·k…, C_out]`).
pub fn weight_xm(g: &Graph, t: &Target) -> Result<Array2<f64>> {
    let name = &g.value(t.weight).name;
    let w = const_f64(g, t.weight).ok_or_else(|| Error::tensor(name, "cannot read the weight"))?;
    let flat = w
        .into_shape_with_order((
            t.weight_dims[0],
            t.weight_dims[1..].iter().product::<usize>(),
        ))
        .map_err(|e| Error::tensor(name, e.to_string()))?;
    Ok(match t.op {
        TargetOp::MatMul | TargetOp::Gemm { trans_b: false } | TargetOp::Gather => flat,
        TargetOp::Gemm { trans_b: true } | TargetOp::Conv { .. } => {
            flat.reversed_axes().as_standard_layout().to_owned()
        }
    })
}

/// Column norms of `m` (one per output feature).
pub fn column_norms(m: &Array2<f64>) -> Array1<f64> {
    m.map_axis(Axis(0), |c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
}

/// The width of the features the adapter reads (`Side::Input`) or writes.
fn side_width(t: &Target, side: Side) -> Result<usize> {
    match (side, t.op) {
        (Side::Output, _) => Ok(t.d_out),
        (Side::Input, TargetOp::Gather) => Err(Error::Usage(format!(
            "IA3 on the input side of an embedding lookup ({}) scales ids, which is not \
             defined; use --side output",
            t.scope
        ))),
        (Side::Input, TargetOp::Conv { groups }) => Ok(t.weight_dims[1] * groups),
        (Side::Input, _) => Ok(t.d_in),
    }
}

struct Rand(Option<ChaCha8Rng>);

impl Rand {
    fn normal(&mut self, std: f64) -> f64 {
        match &mut self.0 {
            Some(r) => {
                let z: f64 = r.sample(StandardNormal);
                z * std
            }
            None => 0.0,
        }
    }
}

/// Kaiming-uniform values in ±1/√fan_in (PyTorch's default for Linear, as PEFT uses for A).
fn kaiming(rng: &mut ChaCha8Rng, rows: usize, cols: usize, fan_in: usize) -> Array2<f64> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-bound..bound))
}

/// Initial parameters for one target. `index` makes each target's random stream distinct.
/// Returns the parameters and, for PiSSA, the residual base weight (x·M form) to store.
pub fn initial(
    g: &Graph,
    t: &Target,
    spec: &Spec,
    index: usize,
) -> Result<(Params, Option<Array2<f64>>)> {
    let seed = match spec.init {
        Init::Random(s) => s,
        _ => 0,
    };
    let stream = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64 + 1);
    let mut base_rng = ChaCha8Rng::seed_from_u64(stream);
    let mut rnd = Rand(match spec.init {
        Init::Random(_) => Some(ChaCha8Rng::seed_from_u64(stream ^ 0x5EED)),
        _ => None,
    });
    let r = spec.rank;
    if r == 0 {
        return Err(Error::Usage("--rank must be at least 1".into()));
    }

    match spec.kind {
        Kind::Lora | Kind::Dora => {
            if r > t.d_in.max(t.d_out) {
                return Err(Error::Usage(format!(
                    "--rank {r} is larger than both of '{}''s dimensions ({} in, {} out)",
                    t.scope, t.d_in, t.d_out
                )));
            }
            let m = weight_xm(g, t)?;
            let w_std = (m.iter().map(|x| x * x).sum::<f64>() / m.len().max(1) as f64)
                .sqrt()
                .max(1e-3);
            let s = spec.scale();
            let (a, b, residual) = match spec.init {
                Init::Pissa => {
                    let (a, b, res) = pissa(&m, r, s, &g.value(t.weight).name)?;
                    (a, b, Some(res))
                }
                // PEFT starts an embedding's LoRA the other way round: A = 0, B ~ N(0, 1).
                Init::Zeros if t.op == TargetOp::Gather => {
                    let a = Array2::zeros((t.d_in, r));
                    let b = Array2::from_shape_fn((r, t.d_out), |_| {
                        let z: f64 = base_rng.sample(StandardNormal);
                        z
                    });
                    (a, b, None)
                }
                _ => {
                    let a = kaiming(&mut base_rng, t.d_in, r, t.d_in);
                    let b = Array2::from_shape_fn((r, t.d_out), |_| rnd.normal(w_std));
                    (a, b, None)
                }
            };
            let magnitude = (spec.kind == Kind::Dora).then(|| {
                let source = residual.as_ref().unwrap_or(&m);
                let full = source + &(a.dot(&b) * s);
                let mut n = column_norms(&full);
                if let Init::Random(_) = spec.init {
                    n.mapv_inplace(|v| v * (1.0 + rnd.normal(0.1)));
                }
                n
            });
            Ok((
                Params::Lora {
                    a,
                    b,
                    scale: s,
                    bias: None,
                    magnitude,
                },
                residual,
            ))
        }
        Kind::Ia3 => {
            if spec.init == Init::Pissa {
                return Err(Error::Usage(
                    "--init pissa applies to lora and dora only".into(),
                ));
            }
            let n = side_width(t, spec.side)?;
            let l = Array1::from_shape_fn(n, |_| 1.0 + rnd.normal(0.1));
            Ok((Params::Ia3 { l, side: spec.side }, None))
        }
        Kind::Linear | Kind::Bottleneck => {
            if spec.init == Init::Pissa {
                return Err(Error::Usage(
                    "--init pissa applies to lora and dora only".into(),
                ));
            }
            if !matches!(t.op, TargetOp::MatMul | TargetOp::Gemm { .. }) {
                return Err(Error::Usage(format!(
                    "a {} adapter needs a MatMul or Gemm target; '{}' is a {}",
                    spec.kind.name(),
                    t.scope,
                    t.op.name()
                )));
            }
            let position = if spec.kind == Kind::Bottleneck {
                Position::After
            } else {
                spec.position
            };
            let d = match position {
                Position::Before => t.d_in,
                Position::After => t.d_out,
            };
            let small = 0.1 / (d as f64).sqrt();
            let layers = if spec.kind == Kind::Linear && r >= d {
                vec![(
                    Array2::from_shape_fn((d, d), |_| rnd.normal(small)),
                    Array1::from_shape_fn(d, |_| rnd.normal(0.01)),
                )]
            } else {
                let h = r.min(d);
                vec![
                    (
                        kaiming(&mut base_rng, d, h, d),
                        Array1::from_shape_fn(h, |_| rnd.normal(0.01)),
                    ),
                    (
                        Array2::from_shape_fn((h, d), |_| rnd.normal(small)),
                        Array1::from_shape_fn(d, |_| rnd.normal(0.01)),
                    ),
                ]
            };
            Ok((
                Params::Linear {
                    layers,
                    position,
                    relu: spec.kind == Kind::Bottleneck,
                },
                None,
            ))
        }
    }
}

/// PiSSA (ADAPTERS.md §4) in x·M form: `M = U·diag(σ)·Vᵀ`, `A = U_r·diag(√(σ_r/s))`,
/// `B = diag(√(σ_r/s))·V_rᵀ`, residual `M − s·A·B`.
fn pissa(
    m: &Array2<f64>,
    r: usize,
    s: f64,
    name: &str,
) -> Result<(Array2<f64>, Array2<f64>, Array2<f64>)> {
    if s <= 0.0 {
        return Err(Error::Usage("--init pissa needs a positive --alpha".into()));
    }
    let lr = crate::lowrank::truncate(m.view(), crate::lowrank::RankRule::Fixed(r), 0)
        .map_err(|e| Error::tensor(name, format!("PiSSA SVD: {e}")))?;
    let k = lr.singular_values.len();
    let mut a = lr.b.clone(); // U·Σ
    let mut b = lr.a.clone(); // Vᵀ
    for (j, &sigma) in lr.singular_values.iter().enumerate() {
        let root = (sigma / s).sqrt();
        // U·Σ·(1/√(σ s)) = U·√(σ/s)
        let inv = if sigma > 0.0 { root / sigma } else { 0.0 };
        a.column_mut(j).mapv_inplace(|x| x * inv);
        b.row_mut(j).mapv_inplace(|x| x * root);
    }
    if k < r {
        // A rank-deficient weight: pad with zero columns/rows so the adapter keeps rank r.
        let mut a2 = Array2::zeros((a.nrows(), r));
        a2.slice_mut(ndarray::s![.., ..k]).assign(&a);
        let mut b2 = Array2::zeros((r, b.ncols()));
        b2.slice_mut(ndarray::s![..k, ..]).assign(&b);
        a = a2;
        b = b2;
    }
    let residual = m - &(a.dot(&b) * s);
    Ok((a, b, residual))
}
