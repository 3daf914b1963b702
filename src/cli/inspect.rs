//! `graft inspect`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use graft::ir::{Model, TensorData, dtype};
use onnx_protobuf::{TypeProto, type_proto};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// The model (.onnx, or .onnxtxt text).
    pub model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Port {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Serialize)]
struct DataFile {
    location: String,
    tensors: usize,
    bytes: u64,
}

#[derive(Serialize)]
struct Summary {
    file: String,
    ir_version: i64,
    opsets: BTreeMap<String, i64>,
    producer: String,
    inputs: Vec<Port>,
    /// Graph inputs that also have an initializer: a runtime may feed them or use the default
    /// (adapter weights inserted with `--as-inputs`, for example).
    inputs_with_defaults: Vec<Port>,
    outputs: Vec<Port>,
    nodes: usize,
    ops: BTreeMap<String, usize>,
    initializers: usize,
    parameters: u64,
    parameter_bytes: u64,
    external_data: Vec<DataFile>,
    functions: Vec<String>,
    metadata: BTreeMap<String, String>,
    /// Adapter-like low-rank branches (what `graft fold` would look at).
    adapters: Vec<Adapter>,
}

#[derive(Serialize)]
struct Adapter {
    down: String,
    up: String,
    rank: usize,
}

/// `float[1, 128]`-style text for a value type.
pub fn type_text(t: Option<&TypeProto>) -> String {
    let Some(t) = t else { return "?".into() };
    match &t.value {
        Some(type_proto::Value::TensorType(tt)) => {
            let mut s = dtype::name(tt.elem_type).to_string();
            if let Some(shape) = tt.shape.as_ref() {
                let dims: Vec<String> = shape
                    .dim
                    .iter()
                    .map(|d| {
                        if d.has_dim_value() {
                            d.dim_value().to_string()
                        } else if d.has_dim_param() {
                            d.dim_param().to_string()
                        } else {
                            "?".into()
                        }
                    })
                    .collect();
                s.push_str(&format!("[{}]", dims.join(", ")));
            }
            s
        }
        Some(type_proto::Value::SequenceType(_)) => "seq(...)".into(),
        Some(type_proto::Value::MapType(_)) => "map(...)".into(),
        Some(type_proto::Value::OptionalType(_)) => "optional(...)".into(),
        Some(type_proto::Value::SparseTensorType(_)) => "sparse_tensor(...)".into(),
        _ => "?".into(),
    }
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn summarize(path: &std::path::Path, m: &Model) -> Summary {
    let g = &m.graph;
    let mut ops = BTreeMap::new();
    for n in g.node_ids() {
        let node = g.node(n);
        let key = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}.{}", node.domain, node.op_type)
        };
        *ops.entry(key).or_insert(0) += 1;
    }
    let (parameters, parameter_bytes) = g.parameter_stats();
    let mut files: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (_, t) in g.initializers() {
        if let TensorData::External {
            file,
            length,
            spill: None,
            ..
        } = &t.data
        {
            let e = files.entry(file.location.clone()).or_default();
            e.0 += 1;
            e.1 += length;
        }
    }
    Summary {
        file: path.display().to_string(),
        ir_version: m.ir_version(),
        opsets: m
            .shell
            .opset_import
            .iter()
            .map(|o| {
                let d = if o.domain.is_empty() {
                    "ai.onnx".to_string()
                } else {
                    o.domain.clone()
                };
                (d, o.version)
            })
            .collect(),
        producer: format!("{} {}", m.shell.producer_name, m.shell.producer_version)
            .trim()
            .to_string(),
        inputs: g
            .inputs
            .iter()
            .filter(|p| g.value(p.value).initializer.is_none())
            .map(|p| Port {
                name: g.value(p.value).name.clone(),
                ty: type_text(p.info.type_.as_ref()),
            })
            .collect(),
        inputs_with_defaults: g
            .inputs
            .iter()
            .filter(|p| g.value(p.value).initializer.is_some())
            .map(|p| Port {
                name: g.value(p.value).name.clone(),
                ty: type_text(p.info.type_.as_ref()),
            })
            .collect(),
        outputs: g
            .outputs
            .iter()
            .map(|p| Port {
                name: g.value(p.value).name.clone(),
                ty: type_text(p.info.type_.as_ref()),
            })
            .collect(),
        nodes: g.node_count(),
        ops,
        initializers: g.initializers().count(),
        parameters,
        parameter_bytes,
        external_data: files
            .into_iter()
            .map(|(location, (tensors, bytes))| DataFile {
                location,
                tensors,
                bytes,
            })
            .collect(),
        functions: m
            .shell
            .functions
            .iter()
            .map(|f| format!("{}.{}", f.domain, f.name))
            .collect(),
        metadata: m
            .shell
            .metadata_props
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
        adapters: graft::rewrite::adapters::leftovers(g, &Default::default())
            .into_iter()
            .map(|l| Adapter {
                down: l.down,
                up: l.up,
                rank: l.rank,
            })
            .collect(),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let m = super::textio::load_any(&a.model)?;
    let s = summarize(&a.model, &m);
    let mut o = String::new();
    if a.json {
        super::emit(&(serde_json::to_string_pretty(&s)? + "\n"));
        return Ok(());
    }
    outln!(o, "model: {}", s.file);
    let opsets: Vec<String> = s.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    outln!(
        o,
        "  ir_version {}, opsets: {}{}",
        s.ir_version,
        opsets.join(", "),
        if s.producer.is_empty() {
            String::new()
        } else {
            format!(", producer: {}", s.producer)
        }
    );
    outln!(o, "inputs:");
    for p in &s.inputs {
        outln!(o, "  {}: {}", p.name, p.ty);
    }
    if !s.inputs_with_defaults.is_empty() {
        outln!(o, "inputs with default values (may be fed):");
        for p in &s.inputs_with_defaults {
            outln!(o, "  {}: {}", p.name, p.ty);
        }
    }
    outln!(o, "outputs:");
    for p in &s.outputs {
        outln!(o, "  {}: {}", p.name, p.ty);
    }
    outln!(o, "nodes: {}", s.nodes);
    let mut ops: Vec<(&String, &usize)> = s.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    outln!(o, "op histogram:");
    for (op, n) in ops {
        outln!(o, "  {op:<24} {n}");
    }
    outln!(
        o,
        "parameters: {} in {} initializers ({})",
        s.parameters,
        s.initializers,
        human_bytes(s.parameter_bytes)
    );
    if s.external_data.is_empty() {
        outln!(o, "external data: none");
    } else {
        outln!(o, "external data:");
        for f in &s.external_data {
            outln!(
                o,
                "  {}: {} tensors, {}",
                f.location,
                f.tensors,
                human_bytes(f.bytes)
            );
        }
    }
    if s.adapters.is_empty() {
        outln!(o, "adapter-like branches: none");
    } else {
        outln!(
            o,
            "adapter-like branches ({}; `graft fold` folds the linear ones):",
            s.adapters.len()
        );
        for a in &s.adapters {
            outln!(o, "  rank {}: {} -> {}", a.rank, a.down, a.up);
        }
    }
    if !s.functions.is_empty() {
        outln!(o, "functions: {}", s.functions.join(", "));
    }
    if !s.metadata.is_empty() {
        outln!(o, "metadata:");
        for (k, v) in &s.metadata {
            outln!(o, "  {k}: {v}");
        }
    }
    super::emit(&o);
    Ok(())
}
