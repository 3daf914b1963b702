//! graft: a compiler-style graph rewriter for ONNX model surgery.
//!
//! Layers, top to bottom (each depends only on the ones below): `cli` (in the binary), `driver`
//! (pass manager), `passes` (one file per pass, in the top-level `passes/` folder), `rewrite`,
//! `eval` (CPU reference kernels), `ir`, `onnx` and `text` (formats).

pub mod codegen;
pub mod error;
pub mod eval;
pub mod ir;
pub mod lowrank;
pub mod onnx;
pub mod text;
pub mod verify;

pub use error::{Error, Result};
pub mod driver;
#[path = "../passes/mod.rs"]
pub mod passes;
pub mod peft;
pub mod rewrite;
pub mod runtime;
pub mod surgery;
