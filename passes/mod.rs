//! graft's passes, one file each. Each pass's doc comment says what it rewrites, when it refuses
//! and why it is sound; docs/passes.md is generated from these comments (a test keeps it in sync).

use crate::driver::Pass;

pub mod constant_fold;
pub mod cse;
pub mod dce;
pub mod eliminate_identity;
pub mod fold_conv;
pub mod fold_linear;
pub mod shape_infer;

/// Every pass, in the order `graft passes` lists them.
pub fn all() -> &'static [&'static dyn Pass] {
    &[
        &dce::Dce,
        &eliminate_identity::EliminateIdentity,
        &cse::Cse,
        &shape_infer::ShapeInfer,
        &constant_fold::ConstantFold,
        &fold_linear::FoldLinear,
        &fold_conv::FoldConv,
    ]
}

/// Looks a pass up by name.
pub fn lookup(name: &str) -> Option<&'static dyn Pass> {
    all().iter().copied().find(|p| p.name() == name)
}

/// Named pipelines usable in `--passes`.
pub const NAMED_PIPELINES: &[(&str, &str, &str)] = &[
    (
        "cleanup",
        "fixpoint(eliminate-identity,constant-fold,cse,dce)",
        "remove identities, fold constants, merge duplicates and drop dead code until nothing changes",
    ),
    (
        "fold",
        "shape-infer,cleanup,fixpoint(fold-linear,fold-conv,cleanup)",
        "fold every linear adapter and BatchNorm into the base weights (what `graft fold` runs)",
    ),
];

pub fn named_pipeline(name: &str) -> Option<&'static str> {
    NAMED_PIPELINES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, body, _)| *body)
}

/// Parses a `--passes` pipeline against this registry.
pub fn parse_pipeline(text: &str) -> crate::Result<Vec<crate::driver::Step>> {
    crate::driver::pipeline::parse(text, &|n| lookup(n).is_some(), &named_pipeline)
}
