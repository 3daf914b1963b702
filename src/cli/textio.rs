//! Reading and writing models in either form (binary ONNX or ONNX text), `graft print` and
//! `graft convert`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use graft::ir::Model;
use graft::text::{PrintOptions, WeightsMode};

/// How printed text shows initializers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Weights {
    /// Every value in full (the text can be converted back to an identical model).
    Full,
    /// Tensors of more than 16 elements as a one-line summary: dtype, shape, content hash.
    Summary,
    /// No tensor data; names, types and shapes only.
    None,
}

#[derive(clap::Args)]
pub struct PrintArgs {
    /// The model (.onnx or .onnxtxt).
    pub model: PathBuf,
    /// How to show initializers.
    #[arg(long, value_enum, default_value_t = Weights::Summary)]
    pub weights: Weights,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The input (.onnx, or .onnxtxt / .txt for text).
    pub input: PathBuf,
    /// The output; its extension picks the format (.onnxtxt or .txt for text, else binary).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub write: super::opt::WriteArgs,
}

pub fn is_text_path(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("onnxtxt") | Some("txt")
    )
}

/// Loads a binary or text model (text by extension).
pub fn load_any(path: &Path) -> anyhow::Result<Model> {
    if !is_text_path(path) {
        return Ok(graft::onnx::load_model(path)?);
    }
    let text = std::fs::read_to_string(path).map_err(|e| graft::Error::io(path, e))?;
    let proto = graft::text::parse_model(&text)
        .map_err(|e| graft::Error::bad_model(path, e.to_string()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(graft::onnx::model_from_proto(proto, path, Some(&dir))?)
}

/// The model in ONNX text.
pub fn model_text(model: &Model, weights: Weights) -> graft::Result<String> {
    const LIMIT: usize = 16;
    let embed_limit = match weights {
        Weights::Full => None,
        Weights::Summary => Some(LIMIT as u64),
        Weights::None => Some(0),
    };
    let proto = graft::onnx::save::proto_for_print(model, embed_limit)?;
    let g = &model.graph;
    let hashes: HashMap<String, String> = g
        .initializers()
        .filter(|(_, t)| t.numel() > LIMIT as u64 || weights != Weights::Full)
        .filter_map(|(v, t)| {
            let name = &g.value(v).name;
            t.content_hash(name)
                .ok()
                .map(|h| (name.clone(), format!("sha256:{h}")))
        })
        .collect();
    let hash_fn = |t: &onnx_protobuf::TensorProto| hashes.get(&t.name).cloned();
    let opts = PrintOptions {
        weights: match weights {
            Weights::Full => WeightsMode::Full,
            Weights::Summary => WeightsMode::Summary,
            Weights::None => WeightsMode::None,
        },
        full_limit: LIMIT,
        content_hash: Some(&hash_fn),
        ..PrintOptions::default()
    };
    Ok(graft::text::print_model(&proto, &opts))
}

/// Writes text atomically (temporary file, then rename).
pub fn write_text_atomic(model: &Model, out: &Path) -> anyhow::Result<()> {
    let text = model_text(model, Weights::Full)?;
    write_atomic(out, text.as_bytes())
}

pub fn write_atomic(out: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".graft-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| graft::Error::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| graft::Error::io(out, e))?;
    tmp.persist(out)
        .map_err(|e| graft::Error::io(out, e.error))?;
    Ok(())
}

pub fn print(a: PrintArgs) -> anyhow::Result<()> {
    let model = load_any(&a.model)?;
    let text = model_text(&model, a.weights)?;
    match &a.output {
        Some(o) => write_atomic(o, text.as_bytes())?,
        None => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
        }
    }
    Ok(())
}

pub fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let model = load_any(&a.input)?;
    super::opt::save_any(model, &a.output, &a.input, &a.write)
}
