//! Model surgery beyond folding: putting adapters into a graph (`graft insert`), applying a PEFT
//! checkpoint to an ONNX base (`graft apply`) and pulling a low-rank adapter out of a
//! fine-tune (`graft extract`).

pub mod apply;
pub mod emit;
pub mod extract;
pub mod insert;
pub mod params;
pub mod target;
