//! Finding the nodes an adapter can attach to, and the module each one belongs to.
//!
//! Exporters record the PyTorch module a node came from in different places: the TorchScript
//! exporter in the node name (`/m/encoder/layer.0/attention/self/query/MatMul`), the dynamo
//! exporter in the node's `pkg.torch.onnx.name_scopes` metadata (node names are `node_MatMul_58`).
//! Initializer names (`m.pooler.dense.weight`) survive for Gemm and Gather weights. A target's
//! *scope* is the dotted module path taken from the first of these that is present; patterns
//! (PEFT-style `target_modules` suffixes or `re:REGEX`) are matched against the scope and the
//! weight's name.

use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, ValueId};
use crate::rewrite::consts::{is_const, is_mergeable_float};

/// The kind of node an adapter attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetOp {
    /// `MatMul(x, M)` with a constant `M [d_in, d_out]`.
    MatMul,
    /// `Gemm(x, B, C)`; `trans_b` when B is stored `[d_out, d_in]`.
    Gemm { trans_b: bool },
    /// `Conv(x, W [C_out, C_in/g, k...])`.
    Conv { groups: usize },
    /// `Gather(E [vocab, dim], ids)` on axis 0: an embedding lookup.
    Gather,
}

impl TargetOp {
    pub fn name(self) -> &'static str {
        match self {
            TargetOp::MatMul => "MatMul",
            TargetOp::Gemm { .. } => "Gemm",
            TargetOp::Conv { .. } => "Conv",
            TargetOp::Gather => "Gather",
        }
    }
}

/// A node an adapter can be attached to.
#[derive(Clone, Debug)]
pub struct Target {
    pub node: NodeId,
    pub op: TargetOp,
    /// Dotted module path (`m.encoder.layer.0.attention.self.query`), or the node name when the
    /// exporter recorded none.
    pub scope: String,
    /// The activation input (`x`, or the ids of a Gather).
    pub input: ValueId,
    /// The constant weight (M, B, W or E).
    pub weight: ValueId,
    /// Weight dims as stored.
    pub weight_dims: Vec<usize>,
    /// Features in and out in x·M form: `[d_in, d_out]` (Conv: C_in·k… and C_out; Gather:
    /// vocab and dim).
    pub d_in: usize,
    pub d_out: usize,
    /// The node's own output.
    pub output: ValueId,
    /// The module's output: after a bias `Add` that directly follows a MatMul, else `output`.
    pub module_output: ValueId,
    /// The bias: Gemm's C or the constant of that following Add.
    pub bias: Option<ValueId>,
}

impl Target {
    /// Whether the target reads its features on the last axis (MatMul, Gemm, Gather) rather than
    /// on axis 1 (Conv).
    pub fn feature_last(&self) -> bool {
        !matches!(self.op, TargetOp::Conv { .. })
    }
}

fn is_standard(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

fn float_const_dims(g: &Graph, v: ValueId) -> Option<Vec<usize>> {
    if !is_const(g, v) {
        return None;
    }
    let t = g.constant(v)?;
    if !is_mergeable_float(t.dtype) || t.dims.iter().any(|&d| d <= 0) {
        return None;
    }
    Some(t.dims.iter().map(|&d| d as usize).collect())
}

/// The target at node `n`, if an adapter can attach there.
pub fn target_at(g: &Graph, n: NodeId) -> Option<Target> {
    let node = g.node(n);
    if !is_standard(&node.domain) {
        return None;
    }
    let input = |i: usize| node.inputs.get(i).copied().flatten();
    let output = node.outputs.first().copied().flatten()?;
    let (op, x, w, dims, d_in, d_out, bias) = match node.op_type.as_str() {
        "MatMul" => {
            let (x, w) = (input(0)?, input(1)?);
            if is_const(g, x) {
                return None;
            }
            let dims = float_const_dims(g, w).filter(|d| d.len() == 2)?;
            (TargetOp::MatMul, x, w, dims.clone(), dims[0], dims[1], None)
        }
        "Gemm" => {
            let (x, w) = (input(0)?, input(1)?);
            if is_const(g, x) || node.attr_int("transA").unwrap_or(0) != 0 {
                return None;
            }
            let dims = float_const_dims(g, w).filter(|d| d.len() == 2)?;
            let trans_b = node.attr_int("transB").unwrap_or(0) != 0;
            let (di, dout) = if trans_b {
                (dims[1], dims[0])
            } else {
                (dims[0], dims[1])
            };
            (TargetOp::Gemm { trans_b }, x, w, dims, di, dout, input(2))
        }
        "Conv" => {
            let (x, w) = (input(0)?, input(1)?);
            if is_const(g, x) {
                return None;
            }
            let dims = float_const_dims(g, w).filter(|d| d.len() >= 3)?;
            let groups = node.attr_int("group").unwrap_or(1).max(1) as usize;
            let per_out: usize = dims[1..].iter().product();
            (
                TargetOp::Conv { groups },
                x,
                w,
                dims.clone(),
                per_out,
                dims[0],
                input(2),
            )
        }
        "Gather" => {
            let (table, ids) = (input(0)?, input(1)?);
            if node.attr_int("axis").unwrap_or(0) != 0 || is_const(g, ids) {
                return None;
            }
            let dims = float_const_dims(g, table).filter(|d| d.len() == 2)?;
            (
                TargetOp::Gather,
                ids,
                table,
                dims.clone(),
                dims[0],
                dims[1],
                None,
            )
        }
        _ => return None,
    };
    let (module_output, bias) = match (op, bias) {
        (TargetOp::MatMul, _) => match following_bias(g, output, d_out) {
            Some((add_out, b)) => (add_out, Some(b)),
            None => (output, None),
        },
        (_, b) => (output, b),
    };
    Some(Target {
        node: n,
        op,
        scope: scope_of(g, n, w),
        input: x,
        weight: w,
        weight_dims: dims,
        d_in,
        d_out,
        output,
        module_output,
        bias,
    })
}

/// A MatMul's bias: its only consumer is an `Add` with a constant `[d_out]` vector.
fn following_bias(g: &Graph, out: ValueId, d_out: usize) -> Option<(ValueId, ValueId)> {
    if g.is_output(out) {
        return None;
    }
    let cons = g.consumer_nodes(out);
    let [add] = cons.as_slice() else {
        return None;
    };
    let node = g.node(*add);
    if node.op_type != "Add" || !is_standard(&node.domain) || node.inputs.len() != 2 {
        return None;
    }
    let other = node.inputs.iter().flatten().copied().find(|&v| v != out)?;
    let dims = float_const_dims(g, other)?;
    if dims.iter().product::<usize>() != d_out || dims.last() != Some(&d_out) {
        return None;
    }
    Some((node.outputs.first().copied().flatten()?, other))
}

/// The module path a node came from (see the module docs).
pub fn scope_of(g: &Graph, n: NodeId, weight: ValueId) -> String {
    let node = g.node(n);
    if let Some(s) = node
        .shell
        .metadata_props
        .iter()
        .find(|p| p.key == "pkg.torch.onnx.name_scopes")
        .and_then(|p| dynamo_scope(&p.value))
    {
        return s;
    }
    if let Some(s) = torchscript_scope(&node.name) {
        return s;
    }
    let wname = &g.value(weight).name;
    if let Some(s) = wname.strip_suffix(".weight")
        && !s.is_empty()
    {
        return s.to_string();
    }
    if !node.name.is_empty() {
        return node.name.clone();
    }
    wname.clone()
}

/// `"['', 'm', 'm.encoder', 'm.encoder.layer.0.attention.self.query', 'linear']"` → the deepest
/// module, `m.encoder.layer.0.attention.self.query` (the last entry names the operation).
fn dynamo_scope(list: &str) -> Option<String> {
    let items: Vec<&str> = list
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"'))
        .collect();
    if items.len() < 2 {
        return None;
    }
    let s = items[items.len() - 2];
    (!s.is_empty()).then(|| s.to_string())
}

/// `/m/encoder/layer.0/attention/self/query/MatMul` → `m.encoder.layer.0.attention.self.query`.
fn torchscript_scope(name: &str) -> Option<String> {
    let rest = name.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    // TorchScript writes a container's child as `blocks/blocks.0`: keep the longer name.
    let mut path: Vec<&str> = Vec::new();
    for p in &parts[..parts.len() - 1] {
        if let Some(prev) = path.last()
            && p.strip_prefix(prev)
                .is_some_and(|rest| rest.starts_with('.'))
        {
            path.pop();
        }
        path.push(p);
    }
    Some(path.join("."))
}

/// Every node an adapter can attach to, in graph order.
pub fn candidates(g: &Graph) -> Result<Vec<Target>> {
    Ok(g.topo_order()?
        .into_iter()
        .filter_map(|n| target_at(g, n))
        .collect())
}

/// A `--target` pattern: PEFT-style module-name suffixes or a regular expression.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// Matches a scope equal to one of these or ending in `.` + one of these.
    Suffixes(Vec<String>),
    /// Matches a scope (or weight name) the expression matches in full.
    Regex(regex::Regex),
}

impl Pattern {
    /// Parses `query,value` or `re:REGEX`.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(re) = s.strip_prefix("re:") {
            let full = format!("^(?:{re})$");
            return regex::Regex::new(&full)
                .map(Pattern::Regex)
                .map_err(|e| Error::Usage(format!("--target {s}: bad regular expression: {e}")));
        }
        let parts: Vec<String> = s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(Error::Usage(format!(
                "--target '{s}': give module-name suffixes (query,value) or re:REGEX"
            )));
        }
        Ok(Pattern::Suffixes(parts))
    }

    fn matches_name(&self, name: &str) -> bool {
        match self {
            Pattern::Suffixes(ps) => ps.iter().any(|p| suffix_match(name, p)),
            Pattern::Regex(re) => re.is_match(name),
        }
    }

    /// Whether the pattern selects this target (by scope, or by the weight's name with or
    /// without its `.weight` suffix).
    pub fn matches(&self, g: &Graph, t: &Target) -> bool {
        let w = &g.value(t.weight).name;
        self.matches_name(&t.scope)
            || self.matches_name(w)
            || w.strip_suffix(".weight")
                .is_some_and(|s| self.matches_name(s))
    }
}

/// `name` equals `suffix` or ends with `.suffix` (module-path boundary).
pub fn suffix_match(name: &str, suffix: &str) -> bool {
    name == suffix
        || name
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.'))
}

/// What a pattern selected.
#[derive(Debug, Default)]
pub struct Selection {
    pub chosen: Vec<Target>,
    /// Targets a `re:` pattern matched that the adapter cannot attach to, with the reason.
    pub skipped: Vec<(Target, String)>,
}

/// The targets a pattern selects among those `accept` allows. A suffix list must name only
/// targets the adapter can attach to (otherwise an error gives each reason); a `re:` pattern
/// skips the others and reports them. No match is an error naming the closest candidates.
pub fn select(
    g: &Graph,
    cands: &[Target],
    pattern_text: &str,
    accept: impl Fn(&Graph, &Target) -> std::result::Result<(), String>,
) -> Result<Selection> {
    let pattern = Pattern::parse(pattern_text)?;
    let mut sel = Selection::default();
    for t in cands.iter().filter(|t| pattern.matches(g, t)) {
        match accept(g, t) {
            Ok(()) => sel.chosen.push(t.clone()),
            Err(why) => sel.skipped.push((t.clone(), why)),
        }
    }
    if matches!(pattern, Pattern::Suffixes(_)) && !sel.skipped.is_empty() {
        let list: Vec<String> = sel
            .skipped
            .iter()
            .map(|(t, why)| format!("{} ({})", t.scope, why))
            .collect();
        return Err(Error::Usage(format!(
            "--target {pattern_text}: the adapter cannot attach to {}",
            list.join("; ")
        )));
    }
    if sel.chosen.is_empty() {
        let skipped = if sel.skipped.is_empty() {
            String::new()
        } else {
            format!(
                " (matched but unsupported: {})",
                sel.skipped
                    .iter()
                    .map(|(t, why)| format!("{}: {}", t.scope, why))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        return Err(Error::Usage(format!(
            "--target {pattern_text}: no MatMul/Gemm/Conv/Gather node with a constant weight \
             matches{skipped}; closest candidates: {}",
            closest(cands, pattern_text).join(", ")
        )));
    }
    Ok(sel)
}

/// Up to five candidate scopes nearest to `text` (by the edit distance of their last
/// components), for error messages.
pub fn closest(cands: &[Target], text: &str) -> Vec<String> {
    let want = text.trim_start_matches("re:");
    let mut scored: Vec<(usize, String)> = Vec::new();
    for t in cands {
        let tail = t.scope.rsplit('.').next().unwrap_or(&t.scope);
        let d = want
            .split(',')
            .map(|w| strsim::levenshtein(w.trim(), tail).min(strsim::levenshtein(w, &t.scope)))
            .min()
            .unwrap_or(usize::MAX);
        if !scored.iter().any(|(_, s)| *s == t.scope) {
            scored.push((d, t.scope.clone()));
        }
    }
    scored.sort();
    if scored.is_empty() {
        return vec![
            "(the model has no MatMul/Gemm/Conv/Gather node with a constant weight)".into(),
        ];
    }
    scored.into_iter().take(5).map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_from_exporter_conventions() {
        assert_eq!(
            dynamo_scope("['', 'm', 'm.encoder.layer.0.attention.self.query', 'linear_6']")
                .as_deref(),
            Some("m.encoder.layer.0.attention.self.query")
        );
        assert_eq!(dynamo_scope("['linear']"), None);
        assert_eq!(
            torchscript_scope("/m/encoder/layer.0/attention/self/query/MatMul").as_deref(),
            Some("m.encoder.layer.0.attention.self.query")
        );
        assert_eq!(
            torchscript_scope("/blocks/blocks.0/attn/qkv/MatMul").as_deref(),
            Some("blocks.0.attn.qkv")
        );
        assert_eq!(torchscript_scope("node_MatMul_58"), None);
        assert_eq!(torchscript_scope("/MatMul"), None);
    }

    #[test]
    fn suffixes_match_on_module_boundaries() {
        assert!(suffix_match(
            "m.encoder.layer.0.attention.self.query",
            "query"
        ));
        assert!(suffix_match("m.h.0.attn.c_attn", "attn.c_attn"));
        assert!(suffix_match("query", "query"));
        assert!(!suffix_match("m.subquery", "query"));
        let p = Pattern::parse("re:.*layer\\.1\\..*").unwrap();
        assert!(p.matches_name("m.encoder.layer.1.output.dense"));
        assert!(!p.matches_name("m.encoder.layer.0.output.dense"));
        assert!(Pattern::parse("re:(").is_err());
        assert!(Pattern::parse(" , ").is_err());
    }
}
