//! Loading an ONNX file into the IR. Bad input gives one error naming the file and the node or
//! tensor; nothing panics on user input.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::{Message, ModelProto, TensorProto, TypeProto, type_proto};
use protobuf::CodedInputStream;

use super::external::Resolver;
use super::scope::node_captures;
use crate::error::{Error, Result};
use crate::ir::tensor::check_embedded;
use crate::ir::{Graph, Model, Node, Port, Tensor, TensorData};

/// Loads a model file. External data is resolved relative to the file's folder and mapped lazily.
pub fn load_model(path: &Path) -> Result<Model> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::bad_model(path, "is a folder, not an ONNX file"));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut stream = CodedInputStream::from_buf_read(&mut reader);
    let proto = ModelProto::parse_from(&mut stream).map_err(|e| {
        Error::bad_model(
            path,
            format!("not a valid ONNX protobuf file (truncated or corrupt?): {e}"),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    model_from_proto(proto, path, Some(&dir))
}

/// Parses a model from bytes (no external data allowed unless `dir` is given).
pub fn load_model_bytes(bytes: &[u8], path: &Path, dir: Option<&Path>) -> Result<Model> {
    let proto = ModelProto::parse_from_bytes(bytes).map_err(|e| {
        Error::bad_model(
            path,
            format!("not a valid ONNX protobuf file (truncated or corrupt?): {e}"),
        )
    })?;
    model_from_proto(proto, path, dir)
}

fn tensor_type(t: &TensorProto) -> TypeProto {
    let mut shape = onnx_protobuf::TensorShapeProto::new();
    for &d in &t.dims {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d);
        shape.dim.push(dim);
    }
    let tt = type_proto::Tensor {
        elem_type: t.data_type,
        shape: Some(shape).into(),
        ..Default::default()
    };
    TypeProto {
        value: Some(type_proto::Value::TensorType(tt)),
        ..Default::default()
    }
}

/// Converts a parsed ModelProto into the IR, validating it. `path` is used in messages; `dir` is
/// the folder external data is resolved against (`None` refuses external data).
pub fn model_from_proto(mut proto: ModelProto, path: &Path, dir: Option<&Path>) -> Result<Model> {
    let bad = |msg: String| Error::bad_model(path, msg);
    if proto.ir_version <= 0 {
        return Err(bad(
            "not an ONNX model: ir_version is missing (is this really a .onnx file?)".into(),
        ));
    }
    let Some(gp) = proto.graph.take() else {
        return Err(bad("not an ONNX model: it has no graph".into()));
    };
    let mut gp = gp;
    let mut g = Graph::default();
    let mut resolver = dir.map(Resolver::new);

    // Graph inputs.
    for info in std::mem::take(&mut gp.input) {
        if info.name.is_empty() {
            return Err(bad("a graph input has an empty name".into()));
        }
        if g.find_value(&info.name).is_some() {
            return Err(bad(format!(
                "graph input '{}' is declared twice",
                info.name
            )));
        }
        let v = g.value_by_name(&info.name);
        let val = g.value_mut(v);
        val.is_input = true;
        val.ty = info.type_.as_ref().cloned();
        g.inputs.push(Port { value: v, info });
    }

    // Initializers.
    for mut t in std::mem::take(&mut gp.initializer) {
        let name = t.name.clone();
        if name.is_empty() {
            return Err(bad("an initializer has an empty name".into()));
        }
        let v = g.value_by_name(&name);
        if g.value(v).initializer.is_some() {
            return Err(bad(format!("initializer '{name}' is defined twice")));
        }
        let is_external = t.data_location.enum_value() == Ok(DataLocation::EXTERNAL);
        let (dtype, dims, ty) = (t.data_type, t.dims.clone(), tensor_type(&t));
        let data = if let Some(hash) = crate::text::summary_of(&t) {
            // A summary printed by `graft print` and read back: the data is not here.
            TensorData::Placeholder {
                hash: hash.to_string(),
            }
        } else if is_external {
            let Some(r) = resolver.as_mut() else {
                return Err(bad(format!(
                    "tensor '{name}': external data is not allowed here"
                )));
            };
            let (file, offset, length) = r
                .resolve(&t)
                .map_err(|m| bad(format!("tensor '{name}': {m}")))?;
            let shell = TensorProto {
                doc_string: std::mem::take(&mut t.doc_string),
                metadata_props: std::mem::take(&mut t.metadata_props),
                special_fields: std::mem::take(&mut t.special_fields),
                ..Default::default()
            };
            TensorData::External {
                file,
                offset,
                length,
                shell: Arc::new(shell),
                spill: None,
            }
        } else {
            check_embedded(&name, &t).map_err(|e| bad(e.to_string()))?;
            TensorData::Embedded(Arc::new(t))
        };
        let val = g.value_mut(v);
        if val.ty.is_none() {
            val.ty = Some(ty);
        }
        val.initializer = Some(Tensor { dtype, dims, data });
        g.initializer_order.push(v);
    }

    // Sparse initializers stay in the shell; their names are defined values.
    for s in &gp.sparse_initializer {
        let name = s
            .values
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        if name.is_empty() {
            return Err(bad("a sparse initializer has no name".into()));
        }
        let v = g.value_by_name(&name);
        if g.value(v).initializer.is_some() || g.value(v).sparse {
            return Err(bad(format!("initializer '{name}' is defined twice")));
        }
        g.value_mut(v).sparse = true;
    }

    // Nodes.
    let nodes = std::mem::take(&mut gp.node);
    let count = nodes.len() as u64;
    for (idx, mut np) in nodes.into_iter().enumerate() {
        let mut node = Node {
            name: std::mem::take(&mut np.name),
            op_type: std::mem::take(&mut np.op_type),
            domain: std::mem::take(&mut np.domain),
            order: idx as u64 + 1,
            ..Default::default()
        };
        let label = node.label();
        for a in &np.attribute {
            if let Some(t) = a.t.as_ref()
                && t.data_location.enum_value() == Ok(DataLocation::EXTERNAL)
            {
                return Err(bad(format!(
                    "{label}: attribute '{}' holds a tensor with external data, which graft does not support",
                    a.name
                )));
            }
        }
        for name in node_captures(&np) {
            let v = g.value_by_name(&name);
            node.captures.push(v);
        }
        for i in std::mem::take(&mut np.input) {
            node.inputs.push(if i.is_empty() {
                None
            } else {
                Some(g.value_by_name(&i))
            });
        }
        for o in std::mem::take(&mut np.output) {
            if o.is_empty() {
                node.outputs.push(None);
                continue;
            }
            let v = g.value_by_name(&o);
            let val = g.value(v);
            if let Some((p, _)) = val.producer {
                return Err(bad(format!(
                    "{label}: output '{o}' is also produced by {}",
                    g.node(p).label()
                )));
            }
            if val.is_input || val.initializer.is_some() || val.sparse {
                return Err(bad(format!(
                    "{label}: output '{o}' is also a graph input or initializer"
                )));
            }
            if node.outputs.contains(&Some(v)) {
                return Err(bad(format!("{label}: output '{o}' is listed twice")));
            }
            node.outputs.push(Some(v));
        }
        node.attrs = std::mem::take(&mut np.attribute);
        node.shell = np;
        g.add_node(node).map_err(|e| bad(e.to_string()))?;
    }
    g.set_next_order(count);

    // Every use must be defined.
    for n in g.node_ids() {
        let node = g.node(n);
        for v in node.inputs.iter().flatten().chain(node.captures.iter()) {
            let val = g.value(*v);
            if !val.is_defined() {
                return Err(bad(format!(
                    "{} reads '{}', which is not a graph input, an initializer or any node's output",
                    node.label(),
                    val.name
                )));
            }
        }
    }

    // Graph outputs.
    for info in std::mem::take(&mut gp.output) {
        let Some(v) = g.find_value(&info.name) else {
            return Err(bad(format!(
                "graph output '{}' is not produced by any node",
                info.name
            )));
        };
        if !g.value(v).is_defined() {
            return Err(bad(format!(
                "graph output '{}' is not produced by any node",
                info.name
            )));
        }
        if g.outputs.iter().any(|p| p.value == v) {
            return Err(bad(format!(
                "graph output '{}' is declared twice",
                info.name
            )));
        }
        if g.value(v).ty.is_none() {
            g.value_mut(v).ty = info.type_.as_ref().cloned();
        }
        g.outputs.push(Port { value: v, info });
    }

    // value_info, kept in order.
    for info in std::mem::take(&mut gp.value_info) {
        let v = g.value_by_name(&info.name);
        if g.value(v).info.is_some() {
            continue;
        }
        if let Some(t) = info.type_.as_ref() {
            g.value_mut(v).ty = Some(t.clone());
        }
        g.value_mut(v).info = Some(info);
        g.value_info_order.push(v);
    }

    g.topo_order().map_err(|e| bad(e.to_string()))?;
    g.shell = gp;
    Ok(Model {
        graph: g,
        shell: proto,
        source_dir: dir.map(|d| d.to_path_buf()),
    })
}
