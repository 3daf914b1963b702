//! A model: one graph plus everything around it (opsets, metadata, functions), kept as loaded.

use std::path::PathBuf;

use onnx_protobuf::ModelProto;

use super::graph::Graph;

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub graph: Graph,
    /// The model as loaded, less its graph: ir_version, opset imports, producer, metadata,
    /// functions, training info and unknown fields survive a round trip unchanged.
    pub shell: ModelProto,
    /// Folder the model was loaded from (external data locations are relative to it).
    pub source_dir: Option<PathBuf>,
}

impl Model {
    pub fn ir_version(&self) -> i64 {
        self.shell.ir_version
    }

    /// The opset version imported for a domain ("" and "ai.onnx" are the same domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| {
            if d == "ai.onnx" {
                String::new()
            } else {
                d.to_string()
            }
        };
        let want = norm(domain);
        self.shell
            .opset_import
            .iter()
            .find(|o| norm(&o.domain) == want)
            .map(|o| o.version)
    }
}
