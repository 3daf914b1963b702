//! graft's intermediate representation: `Model` > `Graph` > `Node`/`Value`, with lazily held
//! `Tensor` data. See docs/architecture.md.

pub mod dtype;
pub mod graph;
pub mod model;
pub mod patch;
pub mod tensor;
pub mod verify;

pub use graph::{Graph, Node, NodeId, Port, Slot, Value, ValueId};
pub use model::Model;
pub use patch::Patch;
pub use tensor::{Tensor, TensorData};
pub use verify::verify;
