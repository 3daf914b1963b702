//! The parser: a recursive-descent reader of the ONNX textual syntax, following the
//! grammar of onnx's own `OnnxParser` (onnx/defs/parser.cc), plus graft's `#!` annotation
//! comments and sparse-tensor attribute values. It never panics: every malformed input is a
//! [`ParseError`] with a line and a column.

use super::ParseError;
use super::printer::is_type_keyword;
use super::tensor::{self, Field};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto;
use onnx_protobuf::{
    AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    SparseTensorProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};

/// Nesting limit for graphs, types and attribute values, so that hostile input cannot
/// overflow the stack.
const MAX_DEPTH: usize = 64;

type Result<T> = std::result::Result<T, ParseError>;

enum Literal {
    Int(String),
    Float(String),
    Str(Vec<u8>),
}

/// An annotation comment (`#! ...`) waiting to be attached.
struct Pending {
    pos: usize,
    end: usize,
}

/// Where annotations may attach besides nodes.
enum Owner<'g> {
    Graph(&'g mut GraphProto),
    Function(&'g mut FunctionProto),
}

pub struct Parser<'t> {
    src: &'t str,
    b: &'t [u8],
    pos: usize,
    end: usize,
    pending: Vec<Pending>,
    depth: usize,
    in_comment: bool,
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn is_singleton(t: AttributeType) -> bool {
    matches!(
        t,
        AttributeType::FLOAT
            | AttributeType::INT
            | AttributeType::STRING
            | AttributeType::TENSOR
            | AttributeType::GRAPH
            | AttributeType::SPARSE_TENSOR
            | AttributeType::TYPE_PROTO
    )
}

fn to_singleton(t: AttributeType) -> AttributeType {
    match t {
        AttributeType::FLOATS => AttributeType::FLOAT,
        AttributeType::INTS => AttributeType::INT,
        AttributeType::STRINGS => AttributeType::STRING,
        AttributeType::TENSORS => AttributeType::TENSOR,
        AttributeType::GRAPHS => AttributeType::GRAPH,
        AttributeType::SPARSE_TENSORS => AttributeType::SPARSE_TENSOR,
        AttributeType::TYPE_PROTOS => AttributeType::TYPE_PROTO,
        t => t,
    }
}

fn to_list(t: AttributeType) -> AttributeType {
    match t {
        AttributeType::FLOAT => AttributeType::FLOATS,
        AttributeType::INT => AttributeType::INTS,
        AttributeType::STRING => AttributeType::STRINGS,
        AttributeType::TENSOR => AttributeType::TENSORS,
        AttributeType::GRAPH => AttributeType::GRAPHS,
        AttributeType::SPARSE_TENSOR => AttributeType::SPARSE_TENSORS,
        AttributeType::TYPE_PROTO => AttributeType::TYPE_PROTOS,
        t => t,
    }
}

fn attr_type_code(name: &str) -> Option<AttributeType> {
    Some(match name {
        "float" => AttributeType::FLOAT,
        "int" => AttributeType::INT,
        "string" => AttributeType::STRING,
        "tensor" => AttributeType::TENSOR,
        "graph" => AttributeType::GRAPH,
        "sparse_tensor" => AttributeType::SPARSE_TENSOR,
        "type_proto" => AttributeType::TYPE_PROTO,
        "floats" => AttributeType::FLOATS,
        "ints" => AttributeType::INTS,
        "strings" => AttributeType::STRINGS,
        "tensors" => AttributeType::TENSORS,
        "graphs" => AttributeType::GRAPHS,
        "sparse_tensors" => AttributeType::SPARSE_TENSORS,
        "type_protos" => AttributeType::TYPE_PROTOS,
        _ => return None,
    })
}

fn is_float_word(w: &str) -> bool {
    let l = w.to_ascii_lowercase();
    l == "inf" || l == "infinity" || l == "nan"
}

fn attr_ty(a: &AttributeProto) -> AttributeType {
    a.type_.enum_value().unwrap_or(AttributeType::UNDEFINED)
}

impl<'t> Parser<'t> {
    pub fn new(src: &'t str) -> Self {
        Parser {
            src,
            b: src.as_bytes(),
            // a byte-order mark is skipped
            pos: if src.starts_with('\u{feff}') { 3 } else { 0 },
            end: src.len(),
            pending: Vec::new(),
            depth: 0,
            in_comment: false,
        }
    }

    // ----- positions and errors -----

    fn line_col(&self, pos: usize) -> (usize, usize) {
        let pos = pos.min(self.b.len());
        let mut line = 1;
        let mut col = 1;
        for &c in &self.b[..pos] {
            if c == b'\n' {
                line += 1;
                col = 1;
            } else if c & 0xC0 != 0x80 {
                col += 1;
            }
        }
        (line, col)
    }

    fn err_at<T>(&self, pos: usize, msg: impl Into<String>) -> Result<T> {
        let (line, col) = self.line_col(pos);
        Err(ParseError {
            line,
            col,
            message: msg.into(),
        })
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T> {
        self.err_at(self.pos, msg)
    }

    /// Describes what is at the cursor, for error messages.
    fn found(&self) -> String {
        if self.pos >= self.end {
            return "end of input".into();
        }
        let rest = &self.src.get(self.pos..self.end).unwrap_or("");
        match rest.chars().next() {
            Some(c) => format!("{c:?}"),
            None => "end of input".into(),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("nesting deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // ----- characters -----

    fn cur(&self) -> Option<u8> {
        if self.pos < self.end {
            self.b.get(self.pos).copied()
        } else {
            None
        }
    }

    fn skip_ws(&mut self) {
        loop {
            while let Some(c) = self.cur() {
                if is_space(c) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            if self.cur() != Some(b'#') {
                return;
            }
            let start = self.pos;
            let mut e = start;
            while e < self.end && self.b[e] != b'\n' {
                e += 1;
            }
            if !self.in_comment && self.b.get(start + 1) == Some(&b'!') && start + 1 < e {
                self.pending.push(Pending {
                    pos: start + 2,
                    end: e,
                });
            }
            self.pos = e;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.cur()
    }

    fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    fn matches(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.matches(c) {
            Ok(())
        } else {
            self.err(format!("expected '{}', found {}", c as char, self.found()))
        }
    }

    /// `=>` (no space allowed between the two characters).
    fn expect_arrow(&mut self) -> Result<()> {
        self.expect(b'=')?;
        if self.cur() == Some(b'>') {
            self.pos += 1;
            Ok(())
        } else {
            self.err(format!("expected '=>', found {}", self.found()))
        }
    }

    // ----- tokens -----

    fn ident_opt(&mut self) -> &'t str {
        self.skip_ws();
        let start = self.pos;
        if let Some(c) = self.cur()
            && (c.is_ascii_alphabetic() || c == b'_')
        {
            self.pos += 1;
            while let Some(c) = self.cur() {
                if c.is_ascii_alphanumeric() || c == b'_' {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        self.src.get(start..self.pos).unwrap_or("")
    }

    fn peek_ident(&mut self) -> &'t str {
        let save = self.pos;
        let id = self.ident_opt();
        self.pos = save;
        id
    }

    fn ident(&mut self) -> Result<String> {
        let id = self.ident_opt();
        if id.is_empty() {
            return self.err(format!("expected an identifier, found {}", self.found()));
        }
        Ok(id.to_string())
    }

    fn string_bytes(&mut self) -> Result<Vec<u8>> {
        self.skip_ws();
        let start = self.pos;
        if self.cur() != Some(b'"') {
            return self.err(format!("expected a string, found {}", self.found()));
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.cur() else {
                return self.err_at(start, "unterminated string literal");
            };
            self.pos += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(e) = self.cur() else {
                        return self.err_at(start, "unterminated string literal");
                    };
                    if e == b'x' {
                        let h = self
                            .b
                            .get(self.pos + 1..self.pos + 3)
                            .filter(|_| self.pos + 3 <= self.end);
                        if let Some(h) = h
                            && h.iter().all(|c| c.is_ascii_hexdigit())
                            && let Ok(v) =
                                u8::from_str_radix(std::str::from_utf8(h).unwrap_or("x"), 16)
                        {
                            out.push(v);
                            self.pos += 3;
                            continue;
                        }
                    }
                    out.push(e);
                    self.pos += 1;
                }
                _ => out.push(c),
            }
        }
    }

    fn string(&mut self) -> Result<String> {
        let pos = self.pos;
        let b = self.string_bytes()?;
        match String::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(_) => self.err_at(pos, "string is not valid UTF-8"),
        }
    }

    fn quotable_ident(&mut self) -> Result<String> {
        if self.peek() == Some(b'"') {
            self.string()
        } else {
            self.ident()
        }
    }

    /// An optional (quotable) identifier in an id list; `found` follows onnx: an empty name
    /// followed by a comma counts.
    fn id_in_list(&mut self) -> Result<Option<String>> {
        if self.peek() == Some(b'"') {
            return Ok(Some(self.string()?));
        }
        let id = self.ident_opt();
        if !id.is_empty() || self.peek() == Some(b',') {
            Ok(Some(id.to_string()))
        } else {
            Ok(None)
        }
    }

    fn id_list(&mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let Some(first) = self.id_in_list()? else {
            return Ok(out);
        };
        out.push(first);
        while self.matches(b',') {
            match self.id_in_list()? {
                Some(id) => out.push(id),
                None => break,
            }
        }
        Ok(out)
    }

    fn literal(&mut self) -> Result<Literal> {
        let c = self.peek();
        if c == Some(b'"') {
            return Ok(Literal::Str(self.string_bytes()?));
        }
        let start = self.pos;
        if c == Some(b'-') {
            self.pos += 1;
        }
        match self.cur() {
            Some(c) if c.is_ascii_alphabetic() => {
                let ws = self.pos;
                while let Some(c) = self.cur() {
                    if c.is_ascii_alphabetic() {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                let word = self.src.get(ws..self.pos).unwrap_or("");
                if is_float_word(word) && !self.cur().is_some_and(|c| c.is_ascii_digit()) {
                    Ok(Literal::Float(
                        self.src.get(start..self.pos).unwrap_or("").to_string(),
                    ))
                } else {
                    self.err_at(start, format!("invalid number {word:?}"))
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let mut float = false;
                while let Some(c) = self.cur() {
                    if c.is_ascii_digit() {
                        self.pos += 1;
                    } else if c == b'.' && !float {
                        float = true;
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                if matches!(self.cur(), Some(b'e' | b'E')) {
                    float = true;
                    self.pos += 1;
                    if matches!(self.cur(), Some(b'+' | b'-')) {
                        self.pos += 1;
                    }
                    while self.cur().is_some_and(|c| c.is_ascii_digit()) {
                        self.pos += 1;
                    }
                }
                let text = self.src.get(start..self.pos).unwrap_or("").to_string();
                Ok(if float {
                    Literal::Float(text)
                } else {
                    Literal::Int(text)
                })
            }
            _ => self.err_at(start, format!("expected a value, found {}", self.found())),
        }
    }

    fn to_i64(&self, text: &str, pos: usize) -> Result<i64> {
        text.parse::<i64>()
            .or_else(|_| self.err_at(pos, format!("integer {text} out of range")))
    }

    fn to_f64(&self, text: &str, pos: usize) -> Result<f64> {
        let (neg, body) = match text.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, text),
        };
        let v = if body.eq_ignore_ascii_case("nan") {
            f64::NAN
        } else if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
            f64::INFINITY
        } else {
            match body.parse::<f64>() {
                Ok(v) if v.is_finite() => v,
                Ok(_) => return self.err_at(pos, format!("number {text} out of range")),
                Err(_) => return self.err_at(pos, format!("invalid number {text}")),
            }
        };
        Ok(if neg { -v } else { v })
    }

    fn to_f32(&self, text: &str, pos: usize) -> Result<f32> {
        let (neg, body) = match text.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, text),
        };
        let v = if body.eq_ignore_ascii_case("nan") {
            f32::NAN
        } else if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
            f32::INFINITY
        } else {
            match body.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                Ok(_) => return self.err_at(pos, format!("number {text} out of range for float")),
                Err(_) => return self.err_at(pos, format!("invalid number {text}")),
            }
        };
        Ok(if neg { -v } else { v })
    }

    fn int(&mut self) -> Result<i64> {
        self.skip_ws();
        let pos = self.pos;
        match self.literal()? {
            Literal::Int(t) => self.to_i64(&t, pos),
            _ => self.err_at(pos, "expected an integer"),
        }
    }

    fn entries(&mut self, out: &mut Vec<StringStringEntryProto>) -> Result<()> {
        self.expect(b'[')?;
        if self.matches(b']') {
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.string()?;
            out.push(StringStringEntryProto {
                key,
                value,
                ..Default::default()
            });
            if !self.matches(b',') {
                break;
            }
        }
        self.expect(b']')
    }

    fn opsets(&mut self, out: &mut Vec<OperatorSetIdProto>) -> Result<()> {
        self.expect(b'[')?;
        if self.matches(b']') {
            return Ok(());
        }
        loop {
            let domain = self.string()?;
            self.expect(b':')?;
            let version = self.int()?;
            out.push(OperatorSetIdProto {
                domain,
                version,
                ..Default::default()
            });
            if !self.matches(b',') {
                break;
            }
        }
        self.expect(b']')
    }

    // ----- model, graph, function -----

    pub fn model(mut self) -> Result<ModelProto> {
        let mut m = ModelProto::default();
        if self.matches(b'<') {
            loop {
                let kpos = self.pos;
                let key = self.ident()?;
                self.expect(b':')?;
                match key.as_str() {
                    "ir_version" => m.ir_version = self.int()?,
                    "opset_import" => self.opsets(&mut m.opset_import)?,
                    "producer_name" => m.producer_name = self.string()?,
                    "producer_version" => m.producer_version = self.string()?,
                    "domain" => m.domain = self.string()?,
                    "model_version" => m.model_version = self.int()?,
                    "doc_string" => m.doc_string = self.string()?,
                    "metadata_props" => self.entries(&mut m.metadata_props)?,
                    _ => return self.err_at(kpos, format!("unknown model field {key:?}")),
                }
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b'>')?;
        }
        m.graph = MessageField::some(self.graph()?);
        while !self.at_end() {
            let f = self.function()?;
            m.functions.push(f);
        }
        self.no_pending()?;
        Ok(m)
    }

    pub fn graph_alone(mut self) -> Result<GraphProto> {
        let g = self.graph()?;
        if !self.at_end() {
            return self.err(format!("expected end of input, found {}", self.found()));
        }
        self.no_pending()?;
        Ok(g)
    }

    fn no_pending(&mut self) -> Result<()> {
        if let Some(p) = self.pending.first() {
            return self.err_at(p.pos - 2, "'#!' annotation outside a node list");
        }
        Ok(())
    }

    fn graph(&mut self) -> Result<GraphProto> {
        self.enter()?;
        let name = self.quotable_ident()?;
        let g = self.graph_rest(name);
        self.leave();
        g
    }

    fn graph_rest(&mut self, name: String) -> Result<GraphProto> {
        let mut g = GraphProto {
            name,
            ..Default::default()
        };
        if self.matches(b'(') && !self.matches(b')') {
            loop {
                let vi = self.value_info()?;
                if self.matches(b'=') {
                    let t = self.tensor_value(&vi)?;
                    g.initializer.push(t);
                }
                g.input.push(vi);
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b')')?;
        }
        self.expect_arrow()?;
        self.expect(b'(')?;
        if !self.matches(b')') {
            loop {
                let vi = self.value_info()?;
                g.output.push(vi);
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b')')?;
        }
        if self.matches(b'<') && !self.matches(b'>') {
            loop {
                let vi = self.value_info()?;
                if self.matches(b'=') {
                    let t = self.tensor_value(&vi)?;
                    g.initializer.push(t);
                } else {
                    g.value_info.push(vi);
                }
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b'>')?;
        }
        let mut nodes = Vec::new();
        self.node_list(&mut nodes, Owner::Graph(&mut g))?;
        g.node = nodes;
        Ok(g)
    }

    fn function(&mut self) -> Result<FunctionProto> {
        let mut f = FunctionProto::default();
        if self.matches(b'<') {
            loop {
                let kpos = self.pos;
                let key = self.ident()?;
                self.expect(b':')?;
                match key.as_str() {
                    "opset_import" => self.opsets(&mut f.opset_import)?,
                    "doc_string" => f.doc_string = self.string()?,
                    "domain" => f.domain = self.string()?,
                    "overload" => f.overload = self.string()?,
                    _ => return self.err_at(kpos, format!("unknown function field {key:?}")),
                }
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b'>')?;
        }
        f.name = self.quotable_ident()?;
        if self.matches(b'<') {
            loop {
                let id = self.quotable_ident()?;
                if matches!(self.peek(), Some(b':' | b'=')) {
                    let a = self.attribute_rest(id)?;
                    f.attribute_proto.push(a);
                } else {
                    f.attribute.push(id);
                }
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b'>')?;
        }
        let mut vis = Vec::new();
        f.input = self.function_io(&mut vis)?;
        self.expect_arrow()?;
        f.output = self.function_io(&mut vis)?;
        if self.matches(b'<') && !self.matches(b'>') {
            loop {
                vis.push(self.value_info()?);
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b'>')?;
        }
        f.value_info = vis;
        let mut nodes = Vec::new();
        self.node_list(&mut nodes, Owner::Function(&mut f))?;
        f.node = nodes;
        Ok(f)
    }

    fn function_io(&mut self, vis: &mut Vec<ValueInfoProto>) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        self.expect(b'(')?;
        if self.matches(b')') {
            return Ok(ids);
        }
        loop {
            if self.next_is_type() {
                let ty = self.type_proto()?;
                let name = self.quotable_ident()?;
                vis.push(ValueInfoProto {
                    name: name.clone(),
                    type_: MessageField::some(ty),
                    ..Default::default()
                });
                ids.push(name);
            } else {
                ids.push(self.quotable_ident()?);
            }
            if !self.matches(b',') {
                break;
            }
        }
        self.expect(b')')?;
        Ok(ids)
    }

    // ----- annotations -----

    fn node_list(&mut self, nodes: &mut Vec<NodeProto>, mut owner: Owner) -> Result<()> {
        self.skip_ws();
        self.no_pending()?;
        self.expect(b'{')?;
        loop {
            self.skip_ws();
            let pending = std::mem::take(&mut self.pending);
            let mut node_doc: Option<String> = None;
            let mut node_meta: Vec<StringStringEntryProto> = Vec::new();
            let mut first_node_ann: Option<usize> = None;
            for p in pending {
                let (scope, key, doc, meta) = self.annotation(&p)?;
                match (scope.as_str(), key.as_str(), &mut owner) {
                    ("", "doc_string", _) => {
                        first_node_ann.get_or_insert(p.pos);
                        node_doc = doc;
                    }
                    ("", "metadata_props", _) => {
                        first_node_ann.get_or_insert(p.pos);
                        node_meta.extend(meta);
                    }
                    ("graph", "doc_string", Owner::Graph(g)) => {
                        g.doc_string = doc.unwrap_or_default()
                    }
                    ("graph", "metadata_props", Owner::Graph(g)) => g.metadata_props.extend(meta),
                    ("function", "doc_string", Owner::Function(f)) => {
                        f.doc_string = doc.unwrap_or_default()
                    }
                    ("function", "metadata_props", Owner::Function(f)) => {
                        f.metadata_props.extend(meta)
                    }
                    _ => {
                        return self.err_at(
                            p.pos,
                            format!("'#! {scope} {key}' annotation does not belong here"),
                        );
                    }
                }
            }
            if self.matches(b'}') {
                if let Some(p) = first_node_ann {
                    return self.err_at(p, "node annotation not followed by a node");
                }
                return Ok(());
            }
            if self.cur().is_none() {
                return self.err("expected '}' or a node, found end of input");
            }
            let mut n = self.node()?;
            if let Some(d) = node_doc {
                n.doc_string = d;
            }
            n.metadata_props.extend(node_meta);
            nodes.push(n);
        }
    }

    /// Parses `[graph|function] (doc_string: "..." | metadata_props: [...])`.
    #[allow(clippy::type_complexity)]
    fn annotation(
        &mut self,
        p: &Pending,
    ) -> Result<(String, String, Option<String>, Vec<StringStringEntryProto>)> {
        let (save_pos, save_end) = (self.pos, self.end);
        self.pos = p.pos;
        self.end = p.end;
        self.in_comment = true;
        let r = (|| {
            let mut scope = String::new();
            let mut key = self.ident()?;
            if key == "graph" || key == "function" {
                scope = key;
                key = self.ident()?;
            }
            self.expect(b':')?;
            let mut doc = None;
            let mut meta = Vec::new();
            match key.as_str() {
                "doc_string" => doc = Some(self.string()?),
                "metadata_props" => self.entries(&mut meta)?,
                _ => return self.err_at(p.pos, format!("unknown annotation {key:?}")),
            }
            if !self.at_end() {
                return self.err(format!("unexpected {} in annotation", self.found()));
            }
            Ok((scope, key, doc, meta))
        })();
        self.pos = save_pos;
        self.end = save_end;
        self.in_comment = false;
        r
    }

    // ----- nodes and attributes -----

    fn node(&mut self) -> Result<NodeProto> {
        let mut n = NodeProto::default();
        if self.matches(b'[') {
            if self.peek() == Some(b'"') {
                n.name = self.string()?;
            } else {
                n.name = self.ident_opt().to_string();
            }
            self.expect(b']')?;
        }
        n.output = self.id_list()?;
        self.expect(b'=')?;
        let mut id = self.ident_opt().to_string();
        let mut domain = String::new();
        while self.matches(b'.') {
            if !domain.is_empty() {
                domain.push('.');
            }
            domain.push_str(&id);
            id = self.ident()?;
        }
        n.domain = domain;
        n.op_type = id;
        if self.matches(b':') {
            n.overload = self.ident()?;
        }
        if self.peek() == Some(b'<') {
            n.attribute = self.attribute_list()?;
        }
        self.expect(b'(')?;
        n.input = self.id_list()?;
        self.expect(b')')?;
        if n.attribute.is_empty() && self.peek() == Some(b'<') {
            n.attribute = self.attribute_list()?;
        }
        Ok(n)
    }

    fn attribute_list(&mut self) -> Result<Vec<AttributeProto>> {
        let mut out = Vec::new();
        self.expect(b'<')?;
        loop {
            let name = self.quotable_ident()?;
            out.push(self.attribute_rest(name)?);
            if !self.matches(b',') {
                break;
            }
        }
        self.expect(b'>')?;
        Ok(out)
    }

    fn attribute_rest(&mut self, name: String) -> Result<AttributeProto> {
        let mut a = AttributeProto {
            name,
            ..Default::default()
        };
        let mut declared = AttributeType::UNDEFINED;
        if self.matches(b':') {
            let tpos = self.pos;
            let t = self.ident()?;
            match attr_type_code(&t) {
                Some(t) => declared = t,
                None => return self.err_at(tpos, format!("unknown attribute type {t:?}")),
            }
            a.type_ = EnumOrUnknown::new(declared);
        }
        self.expect(b'=')?;
        if self.peek() == Some(b'[') {
            let lpos = self.pos;
            self.pos += 1;
            if self.matches(b']') {
                if declared == AttributeType::UNDEFINED {
                    return self.err_at(lpos, "an empty list needs a type annotation");
                }
                if is_singleton(declared) {
                    return self.err_at(lpos, "a single-valued attribute cannot be a list");
                }
                return Ok(a);
            }
            let expected = to_singleton(declared);
            let mut elem = AttributeType::UNDEFINED;
            loop {
                let vpos = self.pos;
                let v = self.attribute_value(expected)?;
                let vt = attr_ty(&v);
                if elem != AttributeType::UNDEFINED && vt != elem {
                    return self.err_at(vpos, "list elements of different types");
                }
                if !v.ref_attr_name.is_empty() {
                    return self.err_at(vpos, "attribute reference inside a list");
                }
                elem = vt;
                match vt {
                    AttributeType::INT => a.ints.push(v.i),
                    AttributeType::FLOAT => a.floats.push(v.f),
                    AttributeType::STRING => a.strings.push(v.s),
                    AttributeType::TENSOR => a.tensors.push(v.t.unwrap_or_default()),
                    AttributeType::GRAPH => a.graphs.push(v.g.unwrap_or_default()),
                    AttributeType::SPARSE_TENSOR => {
                        a.sparse_tensors.push(v.sparse_tensor.unwrap_or_default())
                    }
                    AttributeType::TYPE_PROTO => a.type_protos.push(v.tp.unwrap_or_default()),
                    _ => return self.err_at(vpos, "invalid list element"),
                }
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b']')?;
            a.type_ = EnumOrUnknown::new(to_list(elem));
        } else {
            let v = self.attribute_value(declared)?;
            let name = std::mem::take(&mut a.name);
            a = v;
            a.name = name;
            if declared != AttributeType::UNDEFINED && a.ref_attr_name.is_empty() {
                a.type_ = EnumOrUnknown::new(declared);
            }
        }
        Ok(a)
    }

    /// One attribute value; `expected` is the declared (singular) type or UNDEFINED.
    fn attribute_value(&mut self, expected: AttributeType) -> Result<AttributeProto> {
        self.enter()?;
        let r = self.attribute_value_inner(expected);
        self.leave();
        r
    }

    fn attribute_value_inner(&mut self, expected: AttributeType) -> Result<AttributeProto> {
        let mut a = AttributeProto::default();
        let c = self.peek();
        let vpos = self.pos;
        let set = |a: &mut AttributeProto, t: AttributeType| a.type_ = EnumOrUnknown::new(t);
        if c.is_some_and(|c| c.is_ascii_alphabetic() || c == b'_') {
            let word = self.peek_ident();
            if expected == AttributeType::GRAPH {
                a.g = MessageField::some(self.graph()?);
                set(&mut a, AttributeType::GRAPH);
            } else if word == "sparse"
                && matches!(
                    expected,
                    AttributeType::SPARSE_TENSOR | AttributeType::UNDEFINED
                )
            {
                a.sparse_tensor = MessageField::some(self.sparse()?);
                set(&mut a, AttributeType::SPARSE_TENSOR);
            } else if self.next_is_type() {
                let ty = self.type_proto()?;
                let n = self.peek();
                let tensor_follows = matches!(n, Some(b'{' | b'=' | b'"'))
                    || n.is_some_and(|c| c.is_ascii_alphabetic() || c == b'_');
                if tensor_follows {
                    let name = if self.peek() == Some(b'"') {
                        self.string()?
                    } else {
                        self.ident_opt().to_string()
                    };
                    self.matches(b'=');
                    let mut t = self.tensor_data(&ty)?;
                    t.name = name;
                    a.t = MessageField::some(t);
                    set(&mut a, AttributeType::TENSOR);
                } else {
                    a.tp = MessageField::some(ty);
                    set(&mut a, AttributeType::TYPE_PROTO);
                }
            } else if is_float_word(word) {
                let pos = self.pos;
                let Literal::Float(t) = self.literal()? else {
                    return self.err_at(pos, "expected a number");
                };
                a.f = self.to_f32(&t, pos)?;
                set(&mut a, AttributeType::FLOAT);
            } else {
                a.g = MessageField::some(self.graph()?);
                set(&mut a, AttributeType::GRAPH);
            }
        } else if self.matches(b'@') {
            a.ref_attr_name = self.quotable_ident()?;
            a.type_ = EnumOrUnknown::new(expected);
            return Ok(a);
        } else if c == Some(b'"') && expected == AttributeType::GRAPH {
            a.g = MessageField::some(self.graph()?);
            set(&mut a, AttributeType::GRAPH);
        } else {
            match self.literal()? {
                Literal::Int(t) => {
                    if expected == AttributeType::FLOAT {
                        a.f = self.to_f32(&t, vpos)?;
                        set(&mut a, AttributeType::FLOAT);
                    } else {
                        a.i = self.to_i64(&t, vpos)?;
                        set(&mut a, AttributeType::INT);
                    }
                }
                Literal::Float(t) => {
                    a.f = self.to_f32(&t, vpos)?;
                    set(&mut a, AttributeType::FLOAT);
                }
                Literal::Str(s) => {
                    a.s = s;
                    set(&mut a, AttributeType::STRING);
                }
            }
        }
        let got = attr_ty(&a);
        if expected != AttributeType::UNDEFINED && expected != got {
            return self.err_at(
                vpos,
                format!("expected a value of type {expected:?}, found {got:?}"),
            );
        }
        Ok(a)
    }

    /// `sparse(<values tensor>, <indices tensor>, [dims])` (graft's own syntax).
    fn sparse(&mut self) -> Result<SparseTensorProto> {
        let _ = self.ident()?;
        self.expect(b'(')?;
        let values = self.standalone_tensor()?;
        self.expect(b',')?;
        let indices = self.standalone_tensor()?;
        self.expect(b',')?;
        self.expect(b'[')?;
        let mut dims = Vec::new();
        if !self.matches(b']') {
            loop {
                dims.push(self.int()?);
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b']')?;
        }
        self.expect(b')')?;
        Ok(SparseTensorProto {
            values: MessageField::some(values),
            indices: MessageField::some(indices),
            dims,
            ..Default::default()
        })
    }

    /// `type [name] [=] data`, as in a tensor attribute.
    fn standalone_tensor(&mut self) -> Result<TensorProto> {
        let ty = self.type_proto()?;
        let name = if self.peek() == Some(b'"') {
            self.string()?
        } else {
            self.ident_opt().to_string()
        };
        self.matches(b'=');
        let mut t = self.tensor_data(&ty)?;
        t.name = name;
        Ok(t)
    }

    // ----- types and values -----

    fn next_is_type(&mut self) -> bool {
        is_type_keyword(self.peek_ident())
    }

    fn value_info(&mut self) -> Result<ValueInfoProto> {
        let mut vi = ValueInfoProto::default();
        if self.next_is_type() {
            vi.type_ = MessageField::some(self.type_proto()?);
        }
        vi.name = self.quotable_ident()?;
        Ok(vi)
    }

    fn type_proto(&mut self) -> Result<TypeProto> {
        self.enter()?;
        let r = self.type_proto_inner();
        self.leave();
        r
    }

    fn tensor_shape(&mut self) -> Result<MessageField<TensorShapeProto>> {
        let mut shape = TensorShapeProto::default();
        if self.matches(b'[') {
            if self.matches(b']') {
                return Ok(MessageField::none());
            }
            loop {
                let mut d = Dimension::default();
                if self.matches(b'?') {
                } else if self.peek() == Some(b'"') {
                    d.value = Some(dimension::Value::DimParam(self.string()?));
                } else {
                    let id = self.ident_opt();
                    if !id.is_empty() {
                        d.value = Some(dimension::Value::DimParam(id.to_string()));
                    } else {
                        d.value = Some(dimension::Value::DimValue(self.int()?));
                    }
                }
                shape.dim.push(d);
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b']')?;
        }
        Ok(MessageField::some(shape))
    }

    fn elem_type(&mut self) -> Result<i32> {
        let pos = self.pos;
        let id = self.ident()?;
        match tensor::type_code(&id) {
            Some(c) => Ok(c),
            None => self.err_at(pos, format!("unknown element type {id:?}")),
        }
    }

    fn type_proto_inner(&mut self) -> Result<TypeProto> {
        self.skip_ws();
        let pos = self.pos;
        let id = self.ident()?;
        let value = if let Some(code) = tensor::type_code(&id) {
            type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: code,
                shape: self.tensor_shape()?,
                ..Default::default()
            })
        } else {
            match id.as_str() {
                "seq" => {
                    self.expect(b'(')?;
                    let e = self.type_proto()?;
                    self.expect(b')')?;
                    type_proto::Value::SequenceType(type_proto::Sequence {
                        elem_type: MessageField::some(e),
                        ..Default::default()
                    })
                }
                "optional" => {
                    self.expect(b'(')?;
                    let e = self.type_proto()?;
                    self.expect(b')')?;
                    type_proto::Value::OptionalType(type_proto::Optional {
                        elem_type: MessageField::some(e),
                        ..Default::default()
                    })
                }
                "map" => {
                    self.expect(b'(')?;
                    let key_type = self.elem_type()?;
                    self.expect(b',')?;
                    let v = self.type_proto()?;
                    self.expect(b')')?;
                    type_proto::Value::MapType(type_proto::Map {
                        key_type,
                        value_type: MessageField::some(v),
                        ..Default::default()
                    })
                }
                "sparse_tensor" => {
                    self.expect(b'(')?;
                    let elem_type = self.elem_type()?;
                    let shape = self.tensor_shape()?;
                    self.expect(b')')?;
                    type_proto::Value::SparseTensorType(type_proto::SparseTensor {
                        elem_type,
                        shape,
                        ..Default::default()
                    })
                }
                "opaque" => return self.err_at(pos, "opaque types are not supported"),
                _ => return self.err_at(pos, format!("unknown type {id:?}")),
            }
        };
        Ok(TypeProto {
            value: Some(value),
            ..Default::default()
        })
    }

    /// `= data` after a value info: an initializer named like the value.
    fn tensor_value(&mut self, vi: &ValueInfoProto) -> Result<TensorProto> {
        let empty = TypeProto::default();
        let mut t = self.tensor_data(vi.type_.as_ref().unwrap_or(&empty))?;
        t.name = vi.name.clone();
        Ok(t)
    }

    /// Tensor data (`{...}`, `[external data]` or nothing) for a tensor of type `ty`.
    fn tensor_data(&mut self, ty: &TypeProto) -> Result<TensorProto> {
        self.skip_ws();
        let Some(type_proto::Value::TensorType(tt)) = &ty.value else {
            return self.err("a tensor value needs a tensor type");
        };
        let Some(shape) = tt.shape.as_ref() else {
            return self.err("a tensor value needs a shape (not '[]')");
        };
        let mut t = TensorProto {
            data_type: tt.elem_type,
            ..Default::default()
        };
        for d in &shape.dim {
            match d.value {
                Some(dimension::Value::DimValue(v)) => t.dims.push(v),
                _ => return self.err("a tensor value needs numeric dimensions"),
            }
        }
        if self.matches(b'{') {
            if self.matches(b'}') {
                return Ok(t);
            }
            let field = tensor::field_of(t.data_type);
            loop {
                self.skip_ws();
                let pos = self.pos;
                match field {
                    Some(Field::String) => t.string_data.push(self.string_bytes()?),
                    Some(f) => {
                        let lit = self.literal()?;
                        let (text, is_int) = match lit {
                            Literal::Int(s) => (s, true),
                            Literal::Float(s) => (s, false),
                            Literal::Str(_) => return self.err_at(pos, "expected a number"),
                        };
                        match f {
                            Field::Int32 { .. }
                            | Field::Six
                            | Field::Int64
                            | Field::Uint64 { .. }
                                if !is_int =>
                            {
                                return self.err_at(pos, "expected an integer");
                            }
                            Field::Int32 { .. } | Field::Six => {
                                let v = self.to_i64(&text, pos)?;
                                match i32::try_from(v) {
                                    Ok(v) => t.int32_data.push(v),
                                    Err(_) => {
                                        return self.err_at(pos, format!("{v} out of int32 range"));
                                    }
                                }
                            }
                            Field::Int64 => t.int64_data.push(self.to_i64(&text, pos)?),
                            Field::Uint64 { .. } => match text.parse::<u64>() {
                                Ok(v) => t.uint64_data.push(v),
                                Err(_) => {
                                    return self.err_at(pos, format!("{text} out of uint64 range"));
                                }
                            },
                            Field::Float => t.float_data.push(self.to_f32(&text, pos)?),
                            Field::Double => t.double_data.push(self.to_f64(&text, pos)?),
                            Field::String => {}
                        }
                    }
                    None => {
                        return self.err_at(pos, "no data syntax for this element type");
                    }
                }
                if !self.matches(b',') {
                    break;
                }
            }
            self.expect(b'}')?;
        } else if self.peek() == Some(b'[') {
            t.data_location = EnumOrUnknown::new(DataLocation::EXTERNAL);
            self.entries(&mut t.external_data)?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PrintOptions, parse_model, print_model};

    const SAMPLE: &str = r#"<
   ir_version: 10,
   opset_import: ["" : 21, "local" : 1],
   metadata_props: ["a": "b"]
>
g (float[N,?,"a b"] x, seq(map(int64, optional(float[]))) s) => (float y)
   <
      float[2] w = {1.5,-nan},
      string[1] t = {"q\"\\"},
      float[4] big = ["graft.summary": "sha256:0011223344556677"],
      float[2] v
   >
{
   #! graph doc_string: "doc"
   #! doc_string: "node\x0adoc"
   [n0] y, "" = local.F:ov <a: ints = [1, -2], b: float = inf, t: tensor = int8[2] {-1,2}, tp: type_proto = seq(float), e: strings = []> (x, "", w)
   z = If (c) <then_branch: graph = th () => (float z) {
      z = Constant <value: sparse_tensor = sparse(float[1] {1}, int64[1] {0}, [4])> ()
   }, else_branch: graph = el () => () {}>
}

<
   domain: "local",
   doc_string: "f",
   opset_import: ["" : 21]
>
F <a, b: int = 1> (float[N] x, y) => (z)
   <
      float t
   >
{
   #! function metadata_props: ["k": "v"]
   z = Foo <a: int = @a> (x, y)
}
"#;

    #[test]
    fn sample_round_trips() {
        let m = parse_model(SAMPLE).unwrap();
        let t = print_model(&m, &PrintOptions::full());
        let m2 = parse_model(&t).unwrap();
        // bytes, not PartialEq: the model holds a NaN
        use onnx_protobuf::Message;
        assert_eq!(m.write_to_bytes().unwrap(), m2.write_to_bytes().unwrap());
        assert_eq!(m.functions[0].metadata_props.len(), 1);
        assert_eq!(m.graph.node[0].doc_string, "node\ndoc");
        assert_eq!(t, print_model(&m2, &PrintOptions::full()));
    }

    #[test]
    fn no_panic_on_prefixes_and_mutations() {
        let b = SAMPLE.as_bytes();
        for cut in 0..b.len() {
            if let Ok(s) = std::str::from_utf8(&b[..cut]) {
                let _ = parse_model(s);
            }
        }
        let mut seed: u32 = 7;
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let mut v = b.to_vec();
            let i = seed as usize % v.len();
            let alphabet = b"<>[](){}=,:@#!\"\\-.?09eaz \n";
            v[i] = alphabet[(seed >> 8) as usize % alphabet.len()];
            if let Ok(s) = String::from_utf8(v) {
                let _ = parse_model(&s);
            }
        }
    }
}
