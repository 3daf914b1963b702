//! What the text form keeps of a model ([`canonical`]), and summary placeholders.

use super::SUMMARY_KEY;
use super::printer::attr_type;
use super::tensor::{self, Values};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, SparseTensorProto,
    TensorProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField, SpecialFields};

/// The `graft.summary` value of a placeholder tensor (one printed as a summary and parsed
/// back), or `None` for a real tensor. A model holding placeholders must not be written as
/// ONNX: its weights are gone.
pub fn summary_of(t: &TensorProto) -> Option<&str> {
    if !tensor::is_external(t) {
        return None;
    }
    t.external_data
        .iter()
        .find(|e| e.key == SUMMARY_KEY)
        .map(|e| e.value.as_str())
}

/// Where a model holds placeholder tensors (initializers and tensor attributes, in the main
/// graph, in subgraphs and in functions), as human-readable locations. Empty when the model
/// has all its data. A writer of ONNX files should refuse a model for which this is not empty.
pub fn placeholders(m: &ModelProto) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(g) = m.graph.as_ref() {
        graph_placeholders(g, &mut out);
    }
    for f in &m.functions {
        for n in &f.node {
            node_placeholders(n, &mut out);
        }
        for a in &f.attribute_proto {
            attr_placeholders(a, &f.name, &mut out);
        }
    }
    out
}

fn graph_placeholders(g: &GraphProto, out: &mut Vec<String>) {
    for t in &g.initializer {
        if summary_of(t).is_some() {
            out.push(format!("initializer {:?} of graph {:?}", t.name, g.name));
        }
    }
    for n in &g.node {
        node_placeholders(n, out);
    }
}

fn node_placeholders(n: &NodeProto, out: &mut Vec<String>) {
    let owner = if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    };
    for a in &n.attribute {
        attr_placeholders(a, &owner, out);
    }
}

fn attr_placeholders(a: &AttributeProto, owner: &str, out: &mut Vec<String>) {
    let mut ts: Vec<&TensorProto> = a.t.as_ref().into_iter().chain(a.tensors.iter()).collect();
    for s in a
        .sparse_tensor
        .as_ref()
        .into_iter()
        .chain(a.sparse_tensors.iter())
    {
        ts.extend(s.values.as_ref());
        ts.extend(s.indices.as_ref());
    }
    if ts.iter().any(|t| summary_of(t).is_some()) {
        out.push(format!("attribute {:?} of node {:?}", a.name, owner));
    }
    for g in a.g.as_ref().into_iter().chain(a.graphs.iter()) {
        graph_placeholders(g, out);
    }
}

/// The model as the text syntax holds it: what `parse_model(print_model(m, full))` gives
/// back, with annotations on. Differences from `m` are exactly what the text form loses:
/// `raw_data` is moved into the typed field `onnx.parser` fills; NaN payloads become the
/// default quiet NaN (sign kept); doc strings and metadata of tensors, value infos and
/// attributes, type and dimension denotations, tensor segments, sparse initializers,
/// quantization annotations, training info and unknown fields are dropped; an attribute keeps
/// only the field its type names.
pub fn canonical(m: &ModelProto) -> ModelProto {
    ModelProto {
        ir_version: m.ir_version,
        opset_import: m
            .opset_import
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o.special_fields = SpecialFields::default();
                o
            })
            .collect(),
        producer_name: m.producer_name.clone(),
        producer_version: m.producer_version.clone(),
        domain: m.domain.clone(),
        model_version: m.model_version,
        doc_string: m.doc_string.clone(),
        graph: MessageField::some(graph(m.graph.as_ref().unwrap_or(&GraphProto::default()))),
        metadata_props: entries(&m.metadata_props),
        training_info: Vec::new(),
        functions: m.functions.iter().map(function).collect(),
        special_fields: SpecialFields::default(),
    }
}

fn entries(
    e: &[onnx_protobuf::StringStringEntryProto],
) -> Vec<onnx_protobuf::StringStringEntryProto> {
    e.iter()
        .map(|kv| onnx_protobuf::StringStringEntryProto {
            key: kv.key.clone(),
            value: kv.value.clone(),
            special_fields: SpecialFields::default(),
        })
        .collect()
}

fn graph(g: &GraphProto) -> GraphProto {
    GraphProto {
        node: g.node.iter().map(node).collect(),
        name: g.name.clone(),
        initializer: g.initializer.iter().map(tensor).collect(),
        sparse_initializer: Vec::new(),
        doc_string: g.doc_string.clone(),
        input: g.input.iter().map(value_info).collect(),
        output: g.output.iter().map(value_info).collect(),
        value_info: g.value_info.iter().map(value_info).collect(),
        quantization_annotation: Vec::new(),
        metadata_props: entries(&g.metadata_props),
        special_fields: SpecialFields::default(),
    }
}

fn function(f: &FunctionProto) -> FunctionProto {
    FunctionProto {
        name: f.name.clone(),
        input: f.input.clone(),
        output: f.output.clone(),
        attribute: f.attribute.clone(),
        attribute_proto: f.attribute_proto.iter().map(attribute).collect(),
        node: f.node.iter().map(node).collect(),
        doc_string: f.doc_string.clone(),
        opset_import: f
            .opset_import
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o.special_fields = SpecialFields::default();
                o
            })
            .collect(),
        domain: f.domain.clone(),
        overload: f.overload.clone(),
        value_info: f.value_info.iter().map(value_info).collect(),
        metadata_props: entries(&f.metadata_props),
        special_fields: SpecialFields::default(),
    }
}

fn node(n: &NodeProto) -> NodeProto {
    NodeProto {
        input: n.input.clone(),
        output: n.output.clone(),
        name: n.name.clone(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
        overload: n.overload.clone(),
        attribute: n.attribute.iter().map(attribute).collect(),
        doc_string: n.doc_string.clone(),
        metadata_props: entries(&n.metadata_props),
        special_fields: SpecialFields::default(),
    }
}

fn attribute(a: &AttributeProto) -> AttributeProto {
    let ty = attr_type(a);
    let mut out = AttributeProto {
        name: a.name.clone(),
        type_: EnumOrUnknown::new(ty),
        ..Default::default()
    };
    if !a.ref_attr_name.is_empty() {
        out.ref_attr_name = a.ref_attr_name.clone();
        return out;
    }
    match ty {
        AttributeType::FLOAT => out.f = nan_f32(a.f),
        AttributeType::INT => out.i = a.i,
        AttributeType::STRING => out.s = a.s.clone(),
        AttributeType::TENSOR => {
            out.t = MessageField::some(tensor(a.t.as_ref().unwrap_or(&TensorProto::default())))
        }
        AttributeType::GRAPH => {
            out.g = MessageField::some(graph(a.g.as_ref().unwrap_or(&GraphProto::default())))
        }
        AttributeType::SPARSE_TENSOR => {
            out.sparse_tensor = MessageField::some(sparse(
                a.sparse_tensor
                    .as_ref()
                    .unwrap_or(&SparseTensorProto::default()),
            ))
        }
        AttributeType::TYPE_PROTO => {
            out.tp = MessageField::some(type_(a.tp.as_ref().unwrap_or(&TypeProto::default())))
        }
        AttributeType::FLOATS => out.floats = a.floats.iter().map(|f| nan_f32(*f)).collect(),
        AttributeType::INTS => out.ints = a.ints.clone(),
        AttributeType::STRINGS => out.strings = a.strings.clone(),
        AttributeType::TENSORS => out.tensors = a.tensors.iter().map(tensor).collect(),
        AttributeType::GRAPHS => out.graphs = a.graphs.iter().map(graph).collect(),
        AttributeType::SPARSE_TENSORS => {
            out.sparse_tensors = a.sparse_tensors.iter().map(sparse).collect()
        }
        AttributeType::TYPE_PROTOS => out.type_protos = a.type_protos.iter().map(type_).collect(),
        AttributeType::UNDEFINED => {}
    }
    out
}

fn sparse(s: &SparseTensorProto) -> SparseTensorProto {
    SparseTensorProto {
        values: MessageField::some(tensor(s.values.as_ref().unwrap_or(&TensorProto::default()))),
        indices: MessageField::some(tensor(
            s.indices.as_ref().unwrap_or(&TensorProto::default()),
        )),
        dims: s.dims.clone(),
        special_fields: SpecialFields::default(),
    }
}

fn nan_f32(f: f32) -> f32 {
    if f.is_nan() {
        if f.is_sign_negative() {
            -f32::NAN
        } else {
            f32::NAN
        }
    } else {
        f
    }
}

fn nan_f64(f: f64) -> f64 {
    if f.is_nan() {
        if f.is_sign_negative() {
            -f64::NAN
        } else {
            f64::NAN
        }
    } else {
        f
    }
}

/// The tensor as the text form holds it (data in the typed field `onnx.parser` fills).
pub fn tensor(t: &TensorProto) -> TensorProto {
    let mut out = TensorProto {
        dims: t.dims.clone(),
        data_type: t.data_type,
        name: t.name.clone(),
        ..Default::default()
    };
    if tensor::is_external(t) {
        out.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
        out.external_data = entries(&t.external_data);
        return out;
    }
    if let Some(v) = tensor::values(t) {
        let v = match v {
            Values::Float(x) => Values::Float(x.into_iter().map(nan_f32).collect()),
            Values::Double(x) => Values::Double(x.into_iter().map(nan_f64).collect()),
            v => v,
        };
        tensor::set_values(&mut out, v);
    }
    out
}

fn value_info(v: &ValueInfoProto) -> ValueInfoProto {
    ValueInfoProto {
        name: v.name.clone(),
        type_: match v.type_.as_ref() {
            Some(t) if t.value.is_some() => MessageField::some(type_(t)),
            _ => MessageField::none(),
        },
        ..Default::default()
    }
}

fn type_(t: &TypeProto) -> TypeProto {
    let shape = |s: &MessageField<onnx_protobuf::TensorShapeProto>| match s.as_ref() {
        None => MessageField::none(),
        Some(s) => MessageField::some(onnx_protobuf::TensorShapeProto {
            dim: s
                .dim
                .iter()
                .map(|d| onnx_protobuf::tensor_shape_proto::Dimension {
                    value: d.value.clone(),
                    ..Default::default()
                })
                .collect(),
            special_fields: SpecialFields::default(),
        }),
    };
    let opt = |t: &MessageField<TypeProto>| match t.as_ref() {
        None => MessageField::none(),
        Some(t) => MessageField::some(type_(t)),
    };
    let value = match &t.value {
        Some(type_proto::Value::TensorType(tt)) => {
            Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: tt.elem_type,
                shape: shape(&tt.shape),
                special_fields: SpecialFields::default(),
            }))
        }
        Some(type_proto::Value::SparseTensorType(tt)) => Some(type_proto::Value::SparseTensorType(
            type_proto::SparseTensor {
                elem_type: tt.elem_type,
                shape: shape(&tt.shape),
                special_fields: SpecialFields::default(),
            },
        )),
        Some(type_proto::Value::SequenceType(s)) => {
            Some(type_proto::Value::SequenceType(type_proto::Sequence {
                elem_type: opt(&s.elem_type),
                special_fields: SpecialFields::default(),
            }))
        }
        Some(type_proto::Value::OptionalType(s)) => {
            Some(type_proto::Value::OptionalType(type_proto::Optional {
                elem_type: opt(&s.elem_type),
                special_fields: SpecialFields::default(),
            }))
        }
        Some(type_proto::Value::MapType(m)) => Some(type_proto::Value::MapType(type_proto::Map {
            key_type: m.key_type,
            value_type: opt(&m.value_type),
            special_fields: SpecialFields::default(),
        })),
        _ => None,
    };
    TypeProto {
        value,
        ..Default::default()
    }
}
