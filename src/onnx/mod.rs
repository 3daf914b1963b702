//! ONNX protobuf <-> IR: loading (with safe, lazy external data), saving (atomic, with external
//! data when needed) and scope analysis for subgraphs.

pub mod external;
pub mod load;
pub mod save;
pub mod scope;

pub use load::{load_model, load_model_bytes, model_from_proto};
pub use save::{ExternalMode, SaveOptions, model_to_proto, save_model};
