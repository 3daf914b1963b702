//! ONNX textual syntax: a printer and a parser for `onnx_protobuf::ModelProto`.
//!
//! The syntax is the one `onnx.printer.to_text` prints and `onnx.parser.parse_model` reads
//! (onnx 1.23), with three additions that the onnx parser accepts as they are:
//!
//! * large initializers in [`WeightsMode::Summary`] print as an external-data reference whose
//!   only key is `graft.summary` (see [`SUMMARY_KEY`]); parsing gives back a placeholder
//!   tensor without data ([`summary_of`], [`placeholders`]);
//! * fields the syntax has no place for (node doc strings and metadata, graph doc string and
//!   metadata, function metadata) print as `#!` annotation comments, which onnx skips;
//! * function doc strings, attribute defaults and value infos, which onnx's printer drops,
//!   are printed in the syntax onnx's parser reads.
//!
//! The full grammar, the summary syntax and the list of what the syntax cannot hold are in
//! `docs/text-format.md`.

mod canon;
mod number;
mod parser;
mod printer;
mod tensor;

pub use canon::{canonical, placeholders, summary_of};
pub use number::{fmt_f32, fmt_f64};
pub use tensor::{default_hash, raw_bytes};

use onnx_protobuf::{GraphProto, ModelProto, TensorProto};

/// The key of the external-data entry that marks a summarised (data-less) tensor.
pub const SUMMARY_KEY: &str = "graft.summary";

/// The `graft.summary` value of tensors printed in [`WeightsMode::None`].
pub const OMITTED: &str = "omitted";

/// How initializer and tensor-attribute data is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsMode {
    /// Every value in full.
    Full,
    /// Tensors with more than `full_limit` elements print as a placeholder carrying a
    /// content hash; smaller ones in full.
    Summary,
    /// No tensor data at all: every tensor prints as a placeholder (`"graft.summary":
    /// "omitted"`), still declaring name, element type and shape.
    None,
}

/// A callback giving the content hash printed for a summarised tensor.
pub type HashFn<'a> = &'a dyn Fn(&TensorProto) -> Option<String>;

/// Printer options.
#[derive(Clone, Copy)]
pub struct PrintOptions<'a> {
    /// How tensor data is printed.
    pub weights: WeightsMode,
    /// In `Summary` mode, tensors with at most this many elements print in full.
    pub full_limit: usize,
    /// The content hash of a summarised tensor; `None` (or a callback answering `None`)
    /// uses [`default_hash`] (`sha256:` + 16 hex digits of the raw little-endian bytes),
    /// and, for external-data tensors, prints their external-data reference instead.
    pub content_hash: Option<HashFn<'a>>,
    /// Print `#!` annotation comments for fields the ONNX syntax has no place for (node
    /// doc strings and metadata, graph doc string and metadata, function metadata).
    pub annotations: bool,
}

impl Default for PrintOptions<'_> {
    /// `Summary` with a limit of 16 elements, default hashes, annotations on.
    fn default() -> Self {
        PrintOptions {
            weights: WeightsMode::Summary,
            full_limit: 16,
            content_hash: None,
            annotations: true,
        }
    }
}

impl PrintOptions<'_> {
    /// Everything in full (lossless for what the syntax covers).
    pub fn full() -> Self {
        PrintOptions {
            weights: WeightsMode::Full,
            ..Default::default()
        }
    }
    /// Large tensors summarised (the default).
    pub fn summary() -> Self {
        Self::default()
    }
    /// No tensor data.
    pub fn no_weights() -> Self {
        PrintOptions {
            weights: WeightsMode::None,
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for PrintOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrintOptions")
            .field("weights", &self.weights)
            .field("full_limit", &self.full_limit)
            .field("content_hash", &self.content_hash.map(|_| "<fn>"))
            .field("annotations", &self.annotations)
            .finish()
    }
}

/// A parse error with its 1-based line and column (in characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {col}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Prints a model in the ONNX textual syntax.
pub fn print_model(m: &ModelProto, opts: &PrintOptions) -> String {
    printer::Printer::new(opts).model(m)
}

/// Prints a graph alone (`name (inputs) => (outputs) <initializers, value infos> {nodes}`).
pub fn print_graph(g: &GraphProto, opts: &PrintOptions) -> String {
    printer::Printer::new(opts).graph_alone(g)
}

/// Parses a model in the ONNX textual syntax.
pub fn parse_model(text: &str) -> Result<ModelProto, ParseError> {
    parser::Parser::new(text).model()
}

/// Parses a graph alone (what [`print_graph`] prints).
pub fn parse_graph(text: &str) -> Result<GraphProto, ParseError> {
    parser::Parser::new(text).graph_alone()
}
