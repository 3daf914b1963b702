//! The printer. Layout follows `onnx.printer` (three-space indentation, one node per line),
//! except that the initializer / value-info list of a graph prints one entry per line and no
//! line ends in a space, so that golden files diff well.

use super::number::{fmt_f32, push_f32, push_f64};
use super::tensor::{self, Values};
use super::{OMITTED, PrintOptions, SUMMARY_KEY, WeightsMode};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    SparseTensorProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use std::fmt::Write;

const STEP: usize = 3;

pub struct Printer<'o, 'a> {
    opts: &'o PrintOptions<'a>,
    out: String,
}

/// Whether `s` is an identifier of the syntax: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Identifiers that start a type (and so cannot stand unquoted for a value name where a
/// type may come first).
pub fn is_type_keyword(s: &str) -> bool {
    tensor::type_code(s).is_some()
        || matches!(s, "seq" | "map" | "optional" | "sparse_tensor" | "opaque")
}

/// Appends `s` as a quoted string literal. `\` and `"` are escaped with a backslash (as onnx
/// does); bytes that are not UTF-8 and ASCII control characters other than tab, LF and CR
/// print as `\xHH` (a graft extension); in comments, CR and LF print as `\x0d`, `\x0a` too.
pub fn push_quoted(out: &mut String, s: &[u8], in_comment: bool) {
    out.push('"');
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' | '"' => {
                    out.push('\\');
                    out.push(c);
                }
                '\n' | '\r' if in_comment => out.push_str(&format!("\\x{:02x}", c as u32)),
                '\t' | '\n' | '\r' => out.push(c),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                _ => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
}

impl<'o, 'a> Printer<'o, 'a> {
    pub fn new(opts: &'o PrintOptions<'a>) -> Self {
        Printer {
            opts,
            out: String::new(),
        }
    }

    fn push(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn indent(&mut self, n: usize) {
        for _ in 0..n {
            self.out.push(' ');
        }
    }

    fn quoted(&mut self, s: &[u8]) {
        push_quoted(&mut self.out, s, false);
    }

    fn quoted_comment(&mut self, s: &[u8]) {
        push_quoted(&mut self.out, s, true);
    }

    /// A value / node / graph name: bare when it is an identifier that is not a type keyword.
    fn id(&mut self, s: &str) {
        if is_identifier(s) && !is_type_keyword(s) {
            self.push(s);
        } else {
            self.quoted(s.as_bytes());
        }
    }

    fn id_list(&mut self, ids: &[String]) {
        for (i, s) in ids.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.id(s);
        }
    }

    fn entries(&mut self, e: &[StringStringEntryProto], in_comment: bool) {
        self.push("[");
        for (i, kv) in e.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            push_quoted(&mut self.out, kv.key.as_bytes(), in_comment);
            self.push(": ");
            push_quoted(&mut self.out, kv.value.as_bytes(), in_comment);
        }
        self.push("]");
    }

    fn opsets(&mut self, o: &[OperatorSetIdProto]) {
        self.push("[");
        for (i, op) in o.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.quoted(op.domain.as_bytes());
            self.push(" : ");
            self.push(&op.version.to_string());
        }
        self.push("]");
    }

    pub fn model(mut self, m: &ModelProto) -> String {
        self.push("<\n");
        let mut kv: Vec<(&str, String)> = Vec::new();
        kv.push(("ir_version", m.ir_version.to_string()));
        let mut p = Printer::new(self.opts);
        p.opsets(&m.opset_import);
        kv.push(("opset_import", p.out));
        let q = |key: &'static str, v: &str, kv: &mut Vec<(&str, String)>| {
            if !v.is_empty() {
                let mut s = String::new();
                push_quoted(&mut s, v.as_bytes(), false);
                kv.push((key, s));
            }
        };
        q("producer_name", &m.producer_name, &mut kv);
        q("producer_version", &m.producer_version, &mut kv);
        q("domain", &m.domain, &mut kv);
        if m.model_version != 0 {
            kv.push(("model_version", m.model_version.to_string()));
        }
        q("doc_string", &m.doc_string, &mut kv);
        if !m.metadata_props.is_empty() {
            let mut p = Printer::new(self.opts);
            p.entries(&m.metadata_props, false);
            kv.push(("metadata_props", p.out));
        }
        for (i, (k, v)) in kv.iter().enumerate() {
            self.indent(STEP);
            self.push(k);
            self.push(": ");
            self.push(v);
            self.push(if i + 1 < kv.len() { ",\n" } else { "\n" });
        }
        self.push(">\n");
        let empty = GraphProto::default();
        self.graph(m.graph.as_ref().unwrap_or(&empty), 0);
        self.push("\n");
        for f in &m.functions {
            self.push("\n");
            self.function(f);
            self.push("\n");
        }
        self.out
    }

    pub fn graph_alone(mut self, g: &GraphProto) -> String {
        self.graph(g, 0);
        self.push("\n");
        self.out
    }

    /// Prints a graph starting at the current position; `ind` is the indentation of the line
    /// the graph starts on (its nodes are indented one step more).
    fn graph(&mut self, g: &GraphProto, ind: usize) {
        self.id(&g.name);
        self.push(" (");
        for (i, vi) in g.input.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.value_info(vi);
        }
        self.push(") => (");
        for (i, vi) in g.output.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.value_info(vi);
        }
        self.push(")");
        if g.initializer.is_empty() && g.value_info.is_empty() {
            self.push(" {\n");
        } else {
            self.push("\n");
            self.indent(ind + STEP);
            self.push("<\n");
            let n = g.initializer.len() + g.value_info.len();
            let mut k = 0;
            for t in &g.initializer {
                k += 1;
                self.indent(ind + 2 * STEP);
                self.initializer(t);
                self.push(if k < n { ",\n" } else { "\n" });
            }
            for vi in &g.value_info {
                k += 1;
                self.indent(ind + 2 * STEP);
                self.value_info(vi);
                self.push(if k < n { ",\n" } else { "\n" });
            }
            self.indent(ind + STEP);
            self.push(">\n");
            self.indent(ind);
            self.push("{\n");
        }
        if self.opts.annotations {
            if !g.doc_string.is_empty() {
                self.indent(ind + STEP);
                self.push("#! graph doc_string: ");
                self.quoted_comment(g.doc_string.as_bytes());
                self.push("\n");
            }
            if !g.metadata_props.is_empty() {
                self.indent(ind + STEP);
                self.push("#! graph metadata_props: ");
                self.entries(&g.metadata_props, true);
                self.push("\n");
            }
        }
        for n in &g.node {
            self.node(n, ind + STEP);
        }
        self.indent(ind);
        self.push("}");
    }

    fn function(&mut self, f: &FunctionProto) {
        self.push("<\n");
        self.indent(STEP);
        self.push("domain: ");
        self.quoted(f.domain.as_bytes());
        self.push(",\n");
        if !f.overload.is_empty() {
            self.indent(STEP);
            self.push("overload: ");
            self.quoted(f.overload.as_bytes());
            self.push(",\n");
        }
        if !f.doc_string.is_empty() {
            self.indent(STEP);
            self.push("doc_string: ");
            self.quoted(f.doc_string.as_bytes());
            self.push(",\n");
        }
        self.indent(STEP);
        self.push("opset_import: ");
        self.opsets(&f.opset_import);
        self.push("\n>\n");
        self.id(&f.name);
        self.push(" ");
        if !f.attribute.is_empty() || !f.attribute_proto.is_empty() {
            self.push("<");
            let mut first = true;
            for a in &f.attribute {
                if !first {
                    self.push(", ");
                }
                first = false;
                self.id(a);
            }
            for a in &f.attribute_proto {
                if !first {
                    self.push(", ");
                }
                first = false;
                self.attribute(a, 0);
            }
            self.push("> ");
        }
        self.push("(");
        self.id_list(&f.input);
        self.push(") => (");
        self.id_list(&f.output);
        self.push(")");
        if !f.value_info.is_empty() {
            self.push("\n");
            self.indent(STEP);
            self.push("<\n");
            for (i, vi) in f.value_info.iter().enumerate() {
                self.indent(2 * STEP);
                self.value_info(vi);
                self.push(if i + 1 < f.value_info.len() {
                    ",\n"
                } else {
                    "\n"
                });
            }
            self.indent(STEP);
            self.push(">");
        }
        self.push("\n{\n");
        if self.opts.annotations && !f.metadata_props.is_empty() {
            self.indent(STEP);
            self.push("#! function metadata_props: ");
            self.entries(&f.metadata_props, true);
            self.push("\n");
        }
        for n in &f.node {
            self.node(n, STEP);
        }
        self.push("}");
    }

    fn node(&mut self, n: &NodeProto, ind: usize) {
        if self.opts.annotations {
            if !n.doc_string.is_empty() {
                self.indent(ind);
                self.push("#! doc_string: ");
                self.quoted_comment(n.doc_string.as_bytes());
                self.push("\n");
            }
            if !n.metadata_props.is_empty() {
                self.indent(ind);
                self.push("#! metadata_props: ");
                self.entries(&n.metadata_props, true);
                self.push("\n");
            }
        }
        self.indent(ind);
        if !n.name.is_empty() {
            self.push("[");
            self.id(&n.name);
            self.push("] ");
        }
        self.id_list(&n.output);
        if !n.output.is_empty() {
            self.push(" ");
        }
        self.push("= ");
        if !n.domain.is_empty() {
            self.push(&n.domain);
            self.push(".");
        }
        self.push(&n.op_type);
        if !n.overload.is_empty() {
            self.push(":");
            self.push(&n.overload);
        }
        let has_subgraph = n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        if !has_subgraph && !n.attribute.is_empty() {
            self.attributes(&n.attribute, ind);
        }
        self.push(" (");
        self.id_list(&n.input);
        self.push(")");
        if has_subgraph {
            self.attributes(&n.attribute, ind);
        }
        self.push("\n");
    }

    fn attributes(&mut self, attrs: &[AttributeProto], ind: usize) {
        self.push(" <");
        for (i, a) in attrs.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.attribute(a, ind);
        }
        self.push(">");
    }

    fn attribute(&mut self, a: &AttributeProto, ind: usize) {
        let ty = attr_type(a);
        if is_identifier(&a.name) {
            self.push(&a.name);
        } else {
            self.quoted(a.name.as_bytes());
        }
        self.push(": ");
        self.push(attr_type_name(ty));
        self.push(" = ");
        if !a.ref_attr_name.is_empty() {
            self.push("@");
            let r = a.ref_attr_name.clone();
            self.id(&r);
            return;
        }
        match ty {
            AttributeType::FLOAT => self.push(&fmt_f32(a.f)),
            AttributeType::INT => self.push(&a.i.to_string()),
            AttributeType::STRING => self.quoted(&a.s),
            AttributeType::TENSOR => {
                let empty = TensorProto::default();
                self.attr_tensor(a.t.as_ref().unwrap_or(&empty));
            }
            AttributeType::GRAPH => {
                let empty = GraphProto::default();
                self.graph(a.g.as_ref().unwrap_or(&empty), ind);
            }
            AttributeType::SPARSE_TENSOR => {
                let empty = SparseTensorProto::default();
                self.sparse(a.sparse_tensor.as_ref().unwrap_or(&empty));
            }
            AttributeType::TYPE_PROTO => {
                let empty = TypeProto::default();
                self.type_proto(a.tp.as_ref().unwrap_or(&empty));
            }
            AttributeType::FLOATS => {
                self.push("[");
                for (i, f) in a.floats.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.push(&fmt_f32(*f));
                }
                self.push("]");
            }
            AttributeType::INTS => {
                self.push("[");
                for (i, v) in a.ints.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.push(&v.to_string());
                }
                self.push("]");
            }
            AttributeType::STRINGS => {
                self.push("[");
                for (i, s) in a.strings.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.quoted(s);
                }
                self.push("]");
            }
            AttributeType::TENSORS => {
                self.push("[");
                for (i, t) in a.tensors.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.attr_tensor(t);
                }
                self.push("]");
            }
            AttributeType::GRAPHS => {
                self.push("[");
                for (i, g) in a.graphs.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.graph(g, ind);
                }
                self.push("]");
            }
            AttributeType::SPARSE_TENSORS => {
                self.push("[");
                for (i, s) in a.sparse_tensors.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.sparse(s);
                }
                self.push("]");
            }
            AttributeType::TYPE_PROTOS => {
                self.push("[");
                for (i, t) in a.type_protos.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.type_proto(t);
                }
                self.push("]");
            }
            AttributeType::UNDEFINED => self.push("0"),
        }
    }

    /// graft's own syntax for a sparse tensor (onnx's printer and parser have none):
    /// `sparse(<values tensor>, <indices tensor>, [dims])`.
    fn sparse(&mut self, s: &SparseTensorProto) {
        let empty = TensorProto::default();
        self.push("sparse(");
        self.attr_tensor(s.values.as_ref().unwrap_or(&empty));
        self.push(", ");
        self.attr_tensor(s.indices.as_ref().unwrap_or(&empty));
        self.push(", [");
        for (i, d) in s.dims.iter().enumerate() {
            if i > 0 {
                self.push(",");
            }
            self.push(&d.to_string());
        }
        self.push("])");
    }

    fn value_info(&mut self, vi: &ValueInfoProto) {
        if let Some(t) = vi.type_.as_ref()
            && t.value.is_some()
        {
            self.type_proto(t);
            self.push(" ");
        }
        self.id(&vi.name);
    }

    fn shape(&mut self, s: &TensorShapeProto) {
        self.push("[");
        for (i, d) in s.dim.iter().enumerate() {
            if i > 0 {
                self.push(",");
            }
            match &d.value {
                Some(dimension::Value::DimValue(v)) => self.push(&v.to_string()),
                Some(dimension::Value::DimParam(p)) => {
                    if is_identifier(p) {
                        self.push(p)
                    } else {
                        self.quoted(p.as_bytes())
                    }
                }
                _ => self.push("?"),
            }
        }
        self.push("]");
    }

    fn tensor_type(&mut self, elem: i32, shape: Option<&TensorShapeProto>) {
        self.push(tensor::type_name(elem));
        match shape {
            None => self.push("[]"),
            Some(s) if !s.dim.is_empty() => self.shape(s),
            Some(_) => {}
        }
    }

    fn type_proto(&mut self, t: &TypeProto) {
        match &t.value {
            Some(type_proto::Value::TensorType(tt)) => {
                self.tensor_type(tt.elem_type, tt.shape.as_ref())
            }
            Some(type_proto::Value::SequenceType(s)) => {
                self.push("seq(");
                if let Some(e) = s.elem_type.as_ref() {
                    self.type_proto(e);
                }
                self.push(")");
            }
            Some(type_proto::Value::MapType(m)) => {
                self.push("map(");
                self.push(tensor::type_name(m.key_type));
                self.push(", ");
                if let Some(v) = m.value_type.as_ref() {
                    self.type_proto(v);
                }
                self.push(")");
            }
            Some(type_proto::Value::OptionalType(o)) => {
                self.push("optional(");
                if let Some(e) = o.elem_type.as_ref() {
                    self.type_proto(e);
                }
                self.push(")");
            }
            Some(type_proto::Value::SparseTensorType(s)) => {
                self.push("sparse_tensor(");
                self.tensor_type(s.elem_type, s.shape.as_ref());
                self.push(")");
            }
            _ => {}
        }
    }

    fn tensor_decl(&mut self, t: &TensorProto) {
        self.push(tensor::type_name(t.data_type));
        if !t.dims.is_empty() {
            self.push("[");
            for (i, d) in t.dims.iter().enumerate() {
                if i > 0 {
                    self.push(",");
                }
                self.push(&d.to_string());
            }
            self.push("]");
        }
    }

    /// The data part of a tensor: `{...}`, or an external-data / summary list `[...]`.
    /// Returns whether it printed a list (`[...]`), which needs a `=` before it in attributes.
    fn tensor_data_is_list(&self, t: &TensorProto) -> bool {
        self.summary_value(t).is_some() || tensor::is_external(t)
    }

    /// The `graft.summary` value to print for `t`, if it is to be summarised.
    fn summary_value(&self, t: &TensorProto) -> Option<String> {
        if tensor::is_external(t) {
            // Placeholders and external references print as they are, except in None mode.
            if self.opts.weights == WeightsMode::None && super::summary_of(t) != Some(OMITTED) {
                return Some(OMITTED.to_string());
            }
            if self.opts.weights == WeightsMode::Summary
                && super::summary_of(t).is_none()
                && tensor::element_count(t) > self.opts.full_limit as u64
                && let Some(f) = self.opts.content_hash
                && let Some(h) = f(t)
            {
                return Some(h);
            }
            return None;
        }
        match self.opts.weights {
            WeightsMode::Full => None,
            WeightsMode::None => Some(OMITTED.to_string()),
            WeightsMode::Summary => {
                let n = tensor::element_count(t).max(tensor::value_count(t));
                if n <= self.opts.full_limit as u64 {
                    return None;
                }
                Some(
                    self.opts
                        .content_hash
                        .and_then(|f| f(t))
                        .unwrap_or_else(|| tensor::default_hash(t)),
                )
            }
        }
    }

    fn tensor_data(&mut self, t: &TensorProto) {
        if let Some(h) = self.summary_value(t) {
            self.push("[");
            self.quoted(SUMMARY_KEY.as_bytes());
            self.push(": ");
            self.quoted(h.as_bytes());
            self.push("]");
            return;
        }
        if tensor::is_external(t) {
            self.entries(&t.external_data, false);
            return;
        }
        match tensor::values(t) {
            Some(Values::String(v)) => {
                self.push("{");
                for (i, s) in v.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.quoted(s);
                }
                self.push("}");
            }
            Some(v) => {
                self.push("{");
                let out = &mut self.out;
                match v {
                    Values::Int32(x) => join(out, &x, push_display),
                    Values::Int64(x) => join(out, &x, push_display),
                    Values::Uint64(x) => join(out, &x, push_display),
                    Values::Float(x) => join(out, &x, |o, v| push_f32(o, *v)),
                    Values::Double(x) => join(out, &x, |o, v| push_f64(o, *v)),
                    Values::String(_) => {}
                }
                self.push("}");
            }
            None => self.push("{}"),
        }
    }

    fn initializer(&mut self, t: &TensorProto) {
        self.tensor_decl(t);
        self.push(" ");
        self.id(&t.name);
        self.push(" = ");
        self.tensor_data(t);
    }

    fn attr_tensor(&mut self, t: &TensorProto) {
        self.tensor_decl(t);
        if !t.name.is_empty() {
            self.push(" ");
            self.id(&t.name);
        }
        if self.tensor_data_is_list(t) {
            self.push(" = ");
        } else {
            self.push(" ");
        }
        self.tensor_data(t);
    }
}

/// The attribute's type; `UNDEFINED` (and unknown codes) are inferred from the fields set.
pub fn attr_type(a: &AttributeProto) -> AttributeType {
    match a.type_.enum_value() {
        Ok(AttributeType::UNDEFINED) | Err(_) => {}
        Ok(t) => return t,
    }
    if a.t.is_some() {
        AttributeType::TENSOR
    } else if a.g.is_some() {
        AttributeType::GRAPH
    } else if a.sparse_tensor.is_some() {
        AttributeType::SPARSE_TENSOR
    } else if a.tp.is_some() {
        AttributeType::TYPE_PROTO
    } else if !a.floats.is_empty() {
        AttributeType::FLOATS
    } else if !a.ints.is_empty() {
        AttributeType::INTS
    } else if !a.strings.is_empty() {
        AttributeType::STRINGS
    } else if !a.tensors.is_empty() {
        AttributeType::TENSORS
    } else if !a.graphs.is_empty() {
        AttributeType::GRAPHS
    } else if !a.sparse_tensors.is_empty() {
        AttributeType::SPARSE_TENSORS
    } else if !a.type_protos.is_empty() {
        AttributeType::TYPE_PROTOS
    } else if !a.s.is_empty() {
        AttributeType::STRING
    } else if a.f != 0.0 {
        AttributeType::FLOAT
    } else {
        AttributeType::INT
    }
}

pub fn attr_type_name(t: AttributeType) -> &'static str {
    match t {
        AttributeType::FLOAT => "float",
        AttributeType::INT => "int",
        AttributeType::STRING => "string",
        AttributeType::TENSOR => "tensor",
        AttributeType::GRAPH => "graph",
        AttributeType::SPARSE_TENSOR => "sparse_tensor",
        AttributeType::TYPE_PROTO => "type_proto",
        AttributeType::FLOATS => "floats",
        AttributeType::INTS => "ints",
        AttributeType::STRINGS => "strings",
        AttributeType::TENSORS => "tensors",
        AttributeType::GRAPHS => "graphs",
        AttributeType::SPARSE_TENSORS => "sparse_tensors",
        AttributeType::TYPE_PROTOS => "type_protos",
        AttributeType::UNDEFINED => "int",
    }
}

fn join<T>(out: &mut String, xs: &[T], f: impl Fn(&mut String, &T)) {
    for (i, x) in xs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        f(out, x);
    }
}

fn push_display(out: &mut String, v: &impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}
