//! Writing the IR back to ONNX. Untouched tensors keep their bytes; external data is streamed
//! from the input file (never held in memory); writes are atomic (temporary files renamed into
//! place), so on any error no output file is left behind.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{
    GraphProto, Message, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
};

use super::external::check_relative_location;
use crate::error::{Error, Result};
use crate::ir::{Model, Tensor, TensorData};

/// Protobuf messages cannot exceed 2 GiB; keep a margin for everything that is not weights.
const PROTOBUF_LIMIT: u64 = (2u64 << 30) - (64 << 20);
/// Tensors smaller than this stay embedded even when external data is written.
pub const DEFAULT_EXTERNAL_THRESHOLD: u64 = 1024;
const ALIGN: u64 = 64;

/// Where tensor data goes.
#[derive(Clone, Debug, Default)]
pub enum ExternalMode {
    /// Tensors that were external stay external (in `<output>.data`); embedded ones stay
    /// embedded unless the file would pass the 2 GiB protobuf limit.
    #[default]
    Auto,
    /// Every tensor of at least the threshold size goes to this file (relative to the output).
    File(String),
    /// Every tensor embedded in the .onnx file (an error if that passes the 2 GiB limit).
    Embed,
}

#[derive(Clone, Debug)]
pub struct SaveOptions {
    pub external: ExternalMode,
    pub threshold: u64,
    /// Files that must not be overwritten (the input model and its data files), canonical.
    pub protected: Vec<PathBuf>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            external: ExternalMode::Auto,
            threshold: DEFAULT_EXTERNAL_THRESHOLD,
            protected: Vec::new(),
        }
    }
}

/// A tensor as an embedded TensorProto (reads external data into memory).
fn embed(name: String, t: Tensor) -> Result<TensorProto> {
    let mut p = match t.data {
        TensorData::Embedded(p) => Arc::try_unwrap(p).unwrap_or_else(|a| (*a).clone()),
        TensorData::Raw(b) => TensorProto {
            dims: t.dims.clone(),
            data_type: t.dtype,
            raw_data: Arc::try_unwrap(b).unwrap_or_else(|a| (*a).clone()),
            ..Default::default()
        },
        TensorData::External { ref shell, .. } => {
            let bytes = t.bytes(&name)?.into_owned();
            let mut p = (**shell).clone();
            p.dims = t.dims.clone();
            p.data_type = t.dtype;
            p.raw_data = bytes;
            p
        }
        TensorData::Rows { .. } => TensorProto {
            dims: t.dims.clone(),
            data_type: t.dtype,
            raw_data: t.bytes(&name)?.into_owned(),
            ..Default::default()
        },
        TensorData::Placeholder { .. } => {
            return Err(Error::tensor(
                &name,
                "has no data (it came from a weight summary); cannot write it as ONNX",
            ));
        }
    };
    p.name = name;
    Ok(p)
}

/// Builds the ModelProto, consuming the model. `place` turns each initializer into its proto.
fn build(
    model: Model,
    place: &mut dyn FnMut(String, Tensor) -> Result<TensorProto>,
) -> Result<ModelProto> {
    let Model {
        mut graph,
        mut shell,
        ..
    } = model;
    let order = graph.topo_order()?;
    let mut gp: GraphProto = std::mem::take(&mut graph.shell);
    let name_of = |g: &crate::ir::Graph, v: Option<crate::ir::ValueId>| {
        v.map(|v| g.value(v).name.clone()).unwrap_or_default()
    };
    for n in order {
        let node = graph.node(n);
        let mut np: NodeProto = node.shell.clone();
        np.name = node.name.clone();
        np.op_type = node.op_type.clone();
        np.domain = node.domain.clone();
        np.input = node.inputs.iter().map(|&v| name_of(&graph, v)).collect();
        np.output = node.outputs.iter().map(|&v| name_of(&graph, v)).collect();
        np.attribute = node.attrs.clone();
        gp.node.push(np);
    }
    for port in &graph.inputs {
        let mut info = port.info.clone();
        info.name = graph.value(port.value).name.clone();
        gp.input.push(info);
    }
    for port in &graph.outputs {
        let mut info = port.info.clone();
        info.name = graph.value(port.value).name.clone();
        gp.output.push(info);
    }
    for &v in &graph.value_info_order {
        let val = graph.value(v);
        if !val.is_defined() {
            continue;
        }
        if let Some(info) = &val.info {
            let mut info = info.clone();
            info.name = val.name.clone();
            if let Some(t) = &val.ty {
                info.type_ = Some(t.clone()).into();
            }
            gp.value_info.push(info);
        }
    }
    let inits: Vec<_> = graph.initializer_order.clone();
    for v in inits {
        let name = graph.value(v).name.clone();
        if let Some(t) = graph.value_mut(v).initializer.take() {
            gp.initializer.push(place(name, t)?);
        }
    }
    shell.graph = Some(gp).into();
    Ok(shell)
}

/// The model as a ModelProto with every tensor embedded (for tests and small models).
pub fn model_to_proto(model: Model) -> Result<ModelProto> {
    build(model, &mut embed)
}

/// A copy of the model as a ModelProto for printing: tensors with at most `embed_limit`
/// elements (all, if `None`) are embedded; larger ones keep dtype and dims but no data.
pub fn proto_for_print(model: &Model, embed_limit: Option<u64>) -> Result<ModelProto> {
    build(model.clone(), &mut |name, t| {
        if embed_limit.is_none_or(|l| t.numel() <= l)
            || matches!(t.data, TensorData::Placeholder { .. })
        {
            if let TensorData::Placeholder { .. } = t.data {
                return Ok(TensorProto {
                    name,
                    dims: t.dims,
                    data_type: t.dtype,
                    ..Default::default()
                });
            }
            embed(name, t)
        } else {
            Ok(TensorProto {
                name,
                dims: t.dims,
                data_type: t.dtype,
                ..Default::default()
            })
        }
    })
}

fn is_protected(path: &Path, protected: &[PathBuf]) -> bool {
    match path.canonicalize() {
        Ok(c) => protected.contains(&c),
        Err(_) => false,
    }
}

/// Writes `model` to `out` atomically. See `ExternalMode` for where tensor data goes.
pub fn save_model(model: Model, out: &Path, opts: &SaveOptions) -> Result<()> {
    let save_err = |msg: String| Error::Save {
        path: out.to_path_buf(),
        msg,
    };
    let file_name = out
        .file_name()
        .ok_or_else(|| save_err("the output path has no file name".into()))?
        .to_string_lossy()
        .to_string();
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        return Err(save_err(format!(
            "the output folder {} does not exist",
            out_dir.display()
        )));
    }
    if is_protected(out, &opts.protected) {
        return Err(Error::Usage(format!(
            "refusing to overwrite the input {} (use --in-place to allow it)",
            out.display()
        )));
    }

    // Decide which tensors go external.
    let force_all = matches!(opts.external, ExternalMode::File(_));
    let embed_all = matches!(opts.external, ExternalMode::Embed);
    let mut external: std::collections::HashSet<crate::ir::ValueId> = Default::default();
    let mut embedded_total = 0u64;
    let mut candidates = Vec::new();
    for (v, t) in model.graph.initializers() {
        let len = t.byte_len().unwrap_or(0);
        if (t.is_external() && !embed_all) || (force_all && len >= opts.threshold) {
            external.insert(v);
        } else {
            embedded_total += len;
            if len >= opts.threshold {
                candidates.push((len, v));
            }
        }
    }
    if embedded_total > PROTOBUF_LIMIT && embed_all {
        return Err(save_err(format!(
            "{embedded_total} bytes of weights cannot be embedded (protobuf's limit is 2 GiB); write external data instead"
        )));
    }
    if embedded_total > PROTOBUF_LIMIT {
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (len, v) in candidates {
            if embedded_total <= PROTOBUF_LIMIT {
                break;
            }
            external.insert(v);
            embedded_total -= len;
        }
    }

    let location = match &opts.external {
        ExternalMode::File(l) => l.clone(),
        ExternalMode::Auto | ExternalMode::Embed => format!("{file_name}.data"),
    };
    let mut data: Option<(tempfile::NamedTempFile, PathBuf, u64)> = None;
    let rel = check_relative_location(&location)
        .map_err(|m| Error::Usage(format!("--external-data: {m}")))?;
    if !external.is_empty() {
        let data_path = out_dir.join(&rel);
        let data_dir = data_path.parent().unwrap_or(&out_dir).to_path_buf();
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
        let (cd, co) = (
            data_dir
                .canonicalize()
                .map_err(|e| Error::io(&data_dir, e))?,
            out_dir.canonicalize().map_err(|e| Error::io(&out_dir, e))?,
        );
        if !cd.starts_with(&co) {
            return Err(Error::Usage(format!(
                "external data location '{location}' would leave the output folder"
            )));
        }
        if is_protected(&data_path, &opts.protected) {
            return Err(Error::Usage(format!(
                "refusing to overwrite the input's data file {} (use --in-place to allow it)",
                data_path.display()
            )));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".graft-")
            .suffix(".tmp")
            .tempfile_in(&data_dir)
            .map_err(|e| Error::io(&data_dir, e))?;
        data = Some((tmp, data_path, 0));
    }

    let ids: std::collections::HashMap<String, bool> = model
        .graph
        .initializers()
        .map(|(v, _)| (model.graph.value(v).name.clone(), external.contains(&v)))
        .collect();
    let proto = {
        let data = &mut data;
        let location = location.clone();
        build(model, &mut |name, t| {
            if !ids.get(&name).copied().unwrap_or(false) {
                return embed(name, t);
            }
            let (tmp, path, pos) = data.as_mut().expect("data file opened");
            let len = t.byte_len().ok_or_else(|| {
                Error::tensor(&name, "has no fixed-size element type; cannot be external")
            })?;
            let pad = (ALIGN - *pos % ALIGN) % ALIGN;
            let f = tmp.as_file_mut();
            if pad > 0 {
                f.write_all(&vec![0u8; pad as usize])
                    .map_err(|e| Error::io(&*path, e))?;
                *pos += pad;
            }
            let offset = *pos;
            let mut shell = match &t.data {
                TensorData::External {
                    file,
                    offset: src_off,
                    length,
                    shell,
                    ..
                } => {
                    let mut src = &file.file;
                    src.seek(SeekFrom::Start(*src_off))
                        .map_err(|e| Error::io(&file.path, e))?;
                    let copied = std::io::copy(&mut std::io::Read::take(src, *length), f)
                        .map_err(|e| Error::io(&*path, e))?;
                    if copied != *length {
                        return Err(Error::tensor(
                            &name,
                            format!("external data file {} ended early", file.path.display()),
                        ));
                    }
                    (**shell).clone()
                }
                TensorData::Rows {
                    rows,
                    row_bytes,
                    rows_of,
                    ..
                } => {
                    // Computed rows go straight into the output, a few MiB at a time; the next
                    // block is computed while the previous one is written.
                    let step = ((4 << 20) / (*row_bytes).max(1)).max(1);
                    let total = *rows;
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>>>(2);
                    let rowgen = rows_of.clone();
                    std::thread::scope(|sc| -> Result<()> {
                        sc.spawn(move || {
                            let mut r0 = 0;
                            while r0 < total {
                                let r1 = (r0 + step).min(total);
                                let block = (rowgen.0)(r0, r1);
                                let failed = block.is_err();
                                if tx.send(block).is_err() || failed {
                                    break;
                                }
                                r0 = r1;
                            }
                        });
                        for block in rx {
                            f.write_all(&block?).map_err(|e| Error::io(&*path, e))?;
                        }
                        Ok(())
                    })?;
                    TensorProto::default()
                }
                _ => {
                    let bytes = t.bytes(&name)?;
                    f.write_all(&bytes).map_err(|e| Error::io(&*path, e))?;
                    let mut p = match &t.data {
                        TensorData::Embedded(p) => (**p).clone(),
                        _ => TensorProto::default(),
                    };
                    p.raw_data.clear();
                    p.float_data.clear();
                    p.int32_data.clear();
                    p.int64_data.clear();
                    p.double_data.clear();
                    p.uint64_data.clear();
                    p
                }
            };
            *pos += len;
            shell.name = name;
            shell.dims = t.dims.clone();
            shell.data_type = t.dtype;
            shell.data_location = DataLocation::EXTERNAL.into();
            shell.external_data = vec![
                entry("location", &location),
                entry("offset", &offset.to_string()),
                entry("length", &len.to_string()),
            ];
            Ok(shell)
        })?
    };

    let missing = crate::text::placeholders(&proto);
    if !missing.is_empty() {
        return Err(save_err(format!(
            "{} has no data (it was read from a weight summary); print with --weights full to keep weights",
            missing.join(", ")
        )));
    }
    let size = proto.compute_size();
    if size > (2u64 << 30) - 1 {
        return Err(save_err(format!(
            "the model proto would be {size} bytes, over protobuf's 2 GiB limit"
        )));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".graft-")
        .suffix(".tmp")
        .tempfile_in(&out_dir)
        .map_err(|e| Error::io(&out_dir, e))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        proto
            .write_to_writer(&mut w)
            .map_err(|e| save_err(format!("cannot serialize: {e}")))?;
        w.flush().map_err(|e| Error::io(out, e))?;
    }
    let mut data_written: Option<PathBuf> = None;
    if let Some((tmp_data, path, _)) = data {
        tmp_data
            .persist(&path)
            .map_err(|e| Error::io(&path, e.error))?;
        data_written = Some(path);
    }
    if let Err(e) = tmp.persist(out) {
        if let Some(p) = data_written {
            let _ = std::fs::remove_file(p);
        }
        return Err(Error::io(out, e.error));
    }
    Ok(())
}

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

/// Saves to an in-memory byte vector (every tensor embedded).
pub fn model_to_bytes(model: Model) -> Result<Vec<u8>> {
    let p = model_to_proto(model)?;
    p.write_to_bytes()
        .map_err(|e| Error::graph(format!("cannot serialize: {e}")))
}

#[allow(dead_code)]
fn _assert_file_is_send(_: File) {}
