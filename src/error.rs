//! The library's error type. Every message names the file, node or tensor it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The input model (or text) is malformed or unsafe; `msg` names the node or tensor.
    #[error("{}: {msg}", path.display())]
    BadModel { path: PathBuf, msg: String },
    /// A tensor's data cannot be read or is inconsistent with its declaration.
    #[error("tensor '{tensor}': {msg}")]
    Tensor { tensor: String, msg: String },
    /// A graph invariant does not hold (found by the verifier or refused by an edit).
    #[error("invalid graph: {0}")]
    Graph(String),
    /// A pass failed; the graph is left as it was before the pass.
    #[error("pass '{pass}': {msg}")]
    Pass { pass: String, msg: String },
    /// The request itself is wrong (unknown pass name, bad pipeline syntax, unsafe output path).
    #[error("{0}")]
    Usage(String),
    /// The model cannot be compiled to WGSL (an unsupported op or form, named with its node).
    #[error("{0}")]
    Compile(String),
    /// The GPU runtime failed (no adapter, a device error, a plan that does not fit).
    #[error("gpu: {0}")]
    Gpu(String),
    /// Writing the output failed; nothing was left behind.
    #[error("{}: {msg}", path.display())]
    Save { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn bad_model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadModel {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }
    pub fn graph(msg: impl Into<String>) -> Self {
        Error::Graph(msg.into())
    }
}
