//! Tests of the ONNX text format (`graft::text`): round trips in every weights mode,
//! field-for-field equality with the model, summaries, robustness against bad input, and
//! compatibility with onnx 1.23's own parser and printer (through Python, see
//! `tests/text_models/onnx_check.py`).
//!
//! The models are built by `tests/text_models/make_models.py`; `manifest.txt` lists them.
//! Python: `$GRAFT_PYTHON`, default `<CARGO_MANIFEST_DIR>/.venv/bin/python`. Without it the
//! Python checks print "SKIPPED" and pass, except under `CI=true`, where they fail.

use graft::text::{
    self, PrintOptions, WeightsMode, canonical, parse_graph, parse_model, placeholders,
    print_graph, print_model, summary_of,
};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, TensorProto};
use std::path::{Path, PathBuf};
use std::process::Command;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/text_models")
}

struct Case {
    file: String,
    flags: Vec<String>,
    model: ModelProto,
}

impl Case {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

fn cases() -> Vec<Case> {
    let manifest = std::fs::read_to_string(models_dir().join("manifest.txt")).unwrap();
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let file = parts.next().unwrap().to_string();
        let flags = parts
            .next()
            .unwrap_or("-")
            .split(',')
            .filter(|f| *f != "-")
            .map(String::from)
            .collect();
        let bytes = std::fs::read(models_dir().join(&file)).unwrap();
        let model = ModelProto::parse_from_bytes(&bytes).unwrap();
        out.push(Case { file, flags, model });
    }
    assert!(out.len() >= 8, "manifest lists too few models");
    out
}

fn modes() -> Vec<(&'static str, PrintOptions<'static>)> {
    vec![
        ("full", PrintOptions::full()),
        ("summary", PrintOptions::summary()),
        ("none", PrintOptions::no_weights()),
        (
            "summary-4-no-annotations",
            PrintOptions {
                weights: WeightsMode::Summary,
                full_limit: 4,
                content_hash: None,
                annotations: false,
            },
        ),
    ]
}

fn bytes(m: &ModelProto) -> Vec<u8> {
    m.write_to_bytes().unwrap()
}

/// Fails with a line diff of the two models' debug forms.
fn assert_same_model(a: &ModelProto, b: &ModelProto, what: &str) {
    if bytes(a) == bytes(b) {
        return;
    }
    let da = format!("{a:#?}");
    let db = format!("{b:#?}");
    let la: Vec<&str> = da.lines().collect();
    let lb: Vec<&str> = db.lines().collect();
    let mut msg = String::new();
    for i in 0..la.len().max(lb.len()) {
        let x = la.get(i).copied().unwrap_or("<end>");
        let y = lb.get(i).copied().unwrap_or("<end>");
        if x != y {
            msg = format!("first difference at debug line {i}:\n  left:  {x}\n  right: {y}");
            break;
        }
    }
    if msg.is_empty() {
        msg = "debug forms are equal but bytes differ (NaN payload or field order?)".into();
    }
    panic!("{what}: models differ\n{msg}");
}

#[test]
fn print_parse_print_is_identical_in_every_mode() {
    for case in cases() {
        for (name, opts) in modes() {
            let t1 = print_model(&case.model, &opts);
            let m2 =
                parse_model(&t1).unwrap_or_else(|e| panic!("{} ({name}): {e}\n{t1}", case.file));
            let t2 = print_model(&m2, &opts);
            assert_eq!(t1, t2, "{} ({name}): second print differs", case.file);
            // Printing is deterministic.
            assert_eq!(t1, print_model(&case.model, &opts));
            assert!(!t1.lines().any(|l| l.ends_with(' ')), "trailing space");
        }
    }
}

#[test]
fn full_round_trip_equals_model_field_for_field() {
    for case in cases() {
        let text = print_model(&case.model, &PrintOptions::full());
        let parsed = parse_model(&text).unwrap();
        assert_same_model(&parsed, &canonical(&case.model), &case.file);
        assert!(placeholders(&parsed).is_empty(), "{}", case.file);
    }
}

/// `canonical` only drops what the syntax cannot hold: check the ways it may differ.
#[test]
fn canonical_keeps_values() {
    for case in cases() {
        let c = canonical(&case.model);
        let g0 = case.model.graph.as_ref().unwrap();
        let g1 = c.graph.as_ref().unwrap();
        assert_eq!(g0.node.len(), g1.node.len());
        for (a, b) in g0.initializer.iter().zip(&g1.initializer) {
            assert_eq!(
                text::raw_bytes(a),
                text::raw_bytes(b),
                "{} {}",
                case.file,
                a.name
            );
        }
    }
}

#[test]
fn graph_alone_round_trips() {
    for case in cases() {
        let g = case.model.graph.as_ref().unwrap();
        let t = print_graph(g, &PrintOptions::full());
        let g2 = parse_graph(&t).unwrap_or_else(|e| panic!("{}: {e}\n{t}", case.file));
        assert_eq!(t, print_graph(&g2, &PrintOptions::full()));
        let c = canonical(&case.model);
        assert_eq!(
            g2.write_to_bytes().unwrap(),
            c.graph.as_ref().unwrap().write_to_bytes().unwrap()
        );
    }
}

fn large() -> ModelProto {
    cases()
        .into_iter()
        .find(|c| c.file == "large.onnx")
        .unwrap()
        .model
}

#[test]
fn summary_prints_placeholders() {
    let m = large();
    let text = print_model(&m, &PrintOptions::summary());
    // over the limit: summarised with the default hash
    assert!(
        text.contains(r#"float[64,32] big_w = ["graft.summary": "sha256:"#),
        "{text}"
    );
    assert!(text.contains(r#"float16[32] half_b = ["graft.summary": "sha256:"#));
    assert!(text.contains(r#"float[17] just_17 = ["graft.summary": "sha256:"#));
    // at the limit: in full
    assert!(text.contains("float[16] exactly_16 = {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}"));
    // tensor attributes too
    assert!(text.contains(r#"value: tensor = int64[100] kc_v = ["graft.summary": "sha256:"#));
    // external data without a callback: the reference
    assert!(text.contains(
        r#"float[1024,1024] ext_w = ["location": "weights.bin", "offset": "4096", "length": "4194304"]"#
    ));
    let parsed = parse_model(&text).unwrap();
    let g = parsed.graph.as_ref().unwrap();
    let big = g.initializer.iter().find(|t| t.name == "big_w").unwrap();
    let h = summary_of(big).unwrap();
    assert_eq!(h.len(), "sha256:".len() + 16);
    assert_eq!(big.dims, vec![64, 32]);
    assert!(big.float_data.is_empty() && big.raw_data.is_empty());
    // the default hash is the hash of the raw bytes, whatever field holds them
    let orig = m
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name == "big_w")
        .unwrap();
    assert_eq!(h, text::default_hash(orig));
    assert_eq!(
        h,
        text::default_hash(&text::canonical(&m).graph.as_ref().unwrap().initializer[0])
    );
    let ph = placeholders(&parsed);
    assert!(ph.iter().any(|p| p.contains("big_w")), "{ph:?}");
    assert!(ph.iter().any(|p| p.contains("\"value\"")), "{ph:?}");
    assert!(!ph.iter().any(|p| p.contains("ext_w")), "{ph:?}");
    assert!(summary_of(g.initializer.iter().find(|t| t.name == "ext_w").unwrap()).is_none());
}

#[test]
fn summary_uses_the_hash_callback() {
    let m = large();
    let cb = |t: &TensorProto| -> Option<String> {
        (t.name != "half_b").then(|| format!("blake3:{}", t.name))
    };
    let opts = PrintOptions {
        content_hash: Some(&cb),
        ..PrintOptions::summary()
    };
    let text = print_model(&m, &opts);
    assert!(text.contains(r#"big_w = ["graft.summary": "blake3:big_w"]"#));
    assert!(text.contains(r#"half_b = ["graft.summary": "sha256:"#));
    // external tensors use the callback when it answers
    assert!(text.contains(r#"ext_w = ["graft.summary": "blake3:ext_w"]"#));
    assert_eq!(print_model(&parse_model(&text).unwrap(), &opts), text);
}

#[test]
fn none_mode_omits_all_data() {
    let m = large();
    let text = print_model(&m, &PrintOptions::no_weights());
    assert!(text.contains(r#"float[16] exactly_16 = ["graft.summary": "omitted"]"#));
    assert!(text.contains(r#"float[1024,1024] ext_w = ["graft.summary": "omitted"]"#));
    assert!(!text.contains("sha256"));
    let parsed = parse_model(&text).unwrap();
    assert_eq!(parsed.graph.initializer.len(), m.graph.initializer.len());
    assert!(
        parsed
            .graph
            .initializer
            .iter()
            .all(|t| summary_of(t) == Some("omitted"))
    );
}

#[test]
fn annotations_carry_doc_strings_and_metadata() {
    let case = cases()
        .into_iter()
        .find(|c| c.file == "annotations.onnx")
        .unwrap();
    let text = print_model(&case.model, &PrintOptions::full());
    assert!(
        text.contains("   #! doc_string: \"relu doc\\x0aline 2\"\n   #! metadata_props: ["),
        "{text}"
    );
    assert!(text.contains("\"ns\": \"relu: Relu\"]\n   [relu] y = Relu (x)\n"));
    assert!(text.contains("#! graph doc_string: \"graph doc with \\\\x41 escape-looking text\""));
    assert!(text.contains("#! graph metadata_props: [\"k\": \"v\\x0d\\x0a\"]"));
    let parsed = parse_model(&text).unwrap();
    let n: &NodeProto = &parsed.graph.node[0];
    assert_eq!(n.doc_string, "relu doc\nline 2");
    assert_eq!(n.metadata_props.len(), 2);
    assert_eq!(
        parsed.graph.doc_string,
        "graph doc with \\x41 escape-looking text"
    );
    let plain = PrintOptions {
        annotations: false,
        ..PrintOptions::full()
    };
    assert!(!print_model(&case.model, &plain).contains("#!"));
}

#[test]
fn hand_written_text_parses() {
    let text = r#"
# a hand-written model; comments are skipped
<
  ir_version: 10,
  opset_import: ["" : 21, "com.microsoft": 1]
>
agraph (float[N, 128] X, float[128, 10] W = {1, 2}) => (float[N, 10] C)
<float[10] B = {0,0,0,0,0,0,0,0,0,1e-3}, int64 scalar = {3}, float[N,10] T>
{
    #! doc_string: "the matmul"
    [mm] T = MatMul(X, W)
    C = com.microsoft.FusedAdd <alpha = 1, beta: float = 2, modes = ["a", "b"], ks = [1, 2]> (T, B, ,)
    D = Foo(T) <g = sub () => (float z) { z = Constant <value_float = -inf> () }>
    E = Foo <e: ints = []> ("", X)
}
"#;
    let m = parse_model(text).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!(g.initializer.len(), 3);
    assert_eq!(g.initializer[0].name, "W");
    assert_eq!(g.input.len(), 2);
    assert_eq!(g.value_info.len(), 1);
    assert_eq!(g.node[0].name, "mm");
    assert_eq!(g.node[0].doc_string, "the matmul");
    let n = &g.node[1];
    assert_eq!(n.domain, "com.microsoft");
    assert_eq!(n.input, vec!["T", "B", ""]);
    let ty = |i: usize| n.attribute[i].type_.enum_value().unwrap();
    assert_eq!(ty(0), AttributeType::INT);
    assert_eq!(ty(1), AttributeType::FLOAT);
    assert_eq!(n.attribute[1].f, 2.0);
    assert_eq!(ty(2), AttributeType::STRINGS);
    assert_eq!(ty(3), AttributeType::INTS);
    assert_eq!(
        g.node[2].attribute[0].g.node[0].attribute[0].f,
        f32::NEG_INFINITY
    );
    assert_eq!(g.node[3].input, vec!["", "X"]);
}

#[test]
fn errors_carry_line_and_column() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "<ir_version: 10>\ng () => () {\n  y = Add(x\n}",
            4,
            1,
            "expected ')'",
        ),
        ("<ir_version: x>", 1, 14, "invalid number"),
        ("<bogus: 1> g () => () {}", 1, 2, "unknown model field"),
        (
            "g (float[2] x) => (y) {\n y = Foo <a: ints = [1, 2.5]> (x)\n}",
            2,
            25,
            "FLOAT",
        ),
        (
            "g () => () {\n #! doc_string: \"x\"\n}",
            2,
            4,
            "not followed by a node",
        ),
        (
            "g () => () <float[2] w = {1, 2, x}> {}",
            1,
            33,
            "invalid number",
        ),
        (
            "g () => () <int8[1] w = {3000000000}> {}",
            1,
            26,
            "out of int32 range",
        ),
        ("g () => () <float[1] w = {1e39}> {}", 1, 27, "out of range"),
        (
            "g () => () { y = F <s = \"abc> () }",
            1,
            25,
            "unterminated string",
        ),
        ("g (float[] x = {1}) => () {}", 1, 16, "needs a shape"),
        ("g () = > () {}", 1, 7, "expected '=>'"),
        (
            "g () => () {}\n<domain: \"d\">\nf (x) => (y) {\n",
            4,
            1,
            "end of input",
        ),
    ];
    for (text, line, col, msg) in cases {
        let e = parse_model(text).expect_err(text);
        assert!(
            e.line == *line && e.col == *col && e.message.contains(msg),
            "{text:?}: got {e} (wanted {line}:{col} {msg:?})"
        );
        assert_eq!(
            e.to_string(),
            format!("line {}, column {}: {}", e.line, e.col, e.message)
        );
    }
}

#[test]
fn never_panics_on_truncated_or_garbled_text() {
    let mut texts = Vec::new();
    for case in cases() {
        texts.push(print_model(&case.model, &PrintOptions::full()));
    }
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for t in &texts {
        // every truncation (on char boundaries), sampled for long texts
        let step = (t.len() / 400).max(1);
        for cut in (0..t.len()).step_by(step) {
            if t.is_char_boundary(cut) {
                let _ = parse_model(&t[..cut]);
                let _ = parse_graph(&t[..cut]);
            }
        }
        // byte mutations kept valid UTF-8
        let alphabet = b"<>[](){}=,:;@#!\"\\-.?0123456789eEabcxyz \n\t";
        for _ in 0..300 {
            let mut b = t.as_bytes().to_vec();
            for _ in 0..(1 + rnd() % 4) {
                let i = (rnd() as usize) % b.len();
                match rnd() % 3 {
                    0 => b[i] = alphabet[(rnd() as usize) % alphabet.len()],
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, alphabet[(rnd() as usize) % alphabet.len()]),
                }
            }
            if let Ok(s) = String::from_utf8(b) {
                let _ = parse_model(&s);
            }
        }
    }
    // garbage and hostile nesting
    for g in [
        "",
        "<",
        ">",
        "<>",
        "#!",
        "#! doc_string: \"",
        "\"",
        "\\",
        "g",
        "g (",
        "g () =",
        "g () =>",
        "g () => (",
        "g () => () {",
        "g () => () { [",
        "g () => () { y = ",
        "g () => () { y = F <",
        "g () => () { y = F <a = [",
        "g () => () { y = F <a = @",
        "g () => () <float[2] w = {",
        "g () => () <float[2] w = [\"a\":",
        "-",
        "-i",
        "1e",
        "g (seq(map(int64, seq(float[?,\"a\"]))) x) => () {}",
        "\u{feff}g () => () {}",
        "g () => () { y = F <a: graph = \"\" () => () {}> () }",
    ] {
        let _ = parse_model(g);
        let _ = parse_graph(g);
    }
    let deep_type = format!(
        "g ({}float{} x) => () {{}}",
        "seq(".repeat(100_000),
        ")".repeat(100_000)
    );
    assert!(
        parse_model(&deep_type)
            .unwrap_err()
            .message
            .contains("nesting")
    );
    let mut deep_graph = String::from("g () => () { y = F <a = ");
    for _ in 0..10_000 {
        deep_graph.push_str("h () => () { y = F <a = ");
    }
    assert!(
        parse_model(&deep_graph)
            .unwrap_err()
            .message
            .contains("nesting")
    );
    // deep but allowed nesting works
    let mut ok = String::from("g () => () { y = If (c) <then_branch: graph = ");
    for _ in 0..20 {
        ok.push_str("h () => () { y = If (c) <then_branch: graph = ");
    }
    ok.push_str("h () => () {}");
    for _ in 0..21 {
        ok.push_str("> }");
    }
    parse_model(&ok).unwrap();
}

#[test]
fn names_and_strings_escape() {
    let mut g = GraphProto {
        name: "float".into(),
        ..Default::default()
    };
    let n = NodeProto {
        name: "a b".into(),
        op_type: "Foo".into(),
        input: vec!["x.1".into(), "".into(), "seq".into()],
        output: vec!["\"q\"\\".into()],
        ..Default::default()
    };
    g.node.push(n);
    let m = ModelProto {
        graph: Some(g).into(),
        ..Default::default()
    };
    let t = print_model(&m, &PrintOptions::full());
    assert!(
        t.contains(r#"["a b"] "\"q\"\\" = Foo ("x.1", "", "seq")"#),
        "{t}"
    );
    assert_same_model(&parse_model(&t).unwrap(), &canonical(&m), "names");
}

// ----- compatibility with onnx (Python) -----

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("GRAFT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import onnx, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "python with onnx not found at {} (set GRAFT_PYTHON)",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED onnx compatibility checks: no python with onnx at {} (set GRAFT_PYTHON)",
        p.display()
    );
    None
}

fn work_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("graft-text-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_jobs(py: &Path, dir: &Path, jobs: &[String]) {
    let jf = dir.join("jobs.txt");
    std::fs::write(&jf, jobs.join("\n")).unwrap();
    let out = Command::new(py)
        .arg(models_dir().join("onnx_check.py"))
        .arg(&jf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What onnx.parser gives for a text graft parses: graft's extras removed (annotations),
/// and lists of graphs / tensors / type protos emptied (onnx 1.23's parser drops them).
fn as_onnx_parses(m: &ModelProto) -> ModelProto {
    fn graph(g: &mut GraphProto) {
        g.doc_string.clear();
        g.metadata_props.clear();
        for n in &mut g.node {
            node(n);
        }
    }
    fn node(n: &mut NodeProto) {
        n.doc_string.clear();
        n.metadata_props.clear();
        for a in &mut n.attribute {
            a.graphs.clear();
            a.tensors.clear();
            a.type_protos.clear();
            a.sparse_tensors.clear();
            if let Some(g) = a.g.as_mut() {
                graph(g);
            }
        }
    }
    let mut m = m.clone();
    if let Some(g) = m.graph.as_mut() {
        graph(g);
    }
    for f in &mut m.functions {
        f.metadata_props.clear();
        for n in &mut f.node {
            node(n);
        }
    }
    m
}

fn read_onnx_parse(pb: &Path) -> Result<ModelProto, String> {
    match std::fs::read(pb) {
        Ok(b) => Ok(ModelProto::parse_from_bytes(&b).unwrap()),
        Err(_) => Err(std::fs::read_to_string(pb.with_extension("pb.err"))
            .unwrap_or_else(|_| "no output".into())),
    }
}

#[test]
fn onnx_parser_reads_what_graft_prints() {
    let Some(py) = python() else { return };
    let dir = work_dir("graft-prints");
    let mut jobs = Vec::new();
    let mut expect = Vec::new();
    for case in cases() {
        if case.has("graft-only") {
            continue;
        }
        for (mode, opts) in modes() {
            let text = print_model(&case.model, &opts);
            let stem = format!("{}.{mode}", case.file);
            let txt = dir.join(format!("{stem}.txt"));
            let pb = dir.join(format!("{stem}.pb"));
            std::fs::write(&txt, &text).unwrap();
            jobs.push(format!("parse {} {}", txt.display(), pb.display()));
            expect.push((stem, text, pb));
        }
    }
    run_jobs(&py, &dir, &jobs);
    for (stem, text, pb) in expect {
        let onnx_model = read_onnx_parse(&pb)
            .unwrap_or_else(|e| panic!("onnx.parser rejects {stem}: {e}\n{text}"));
        let graft_model = parse_model(&text).unwrap();
        assert_same_model(&onnx_model, &as_onnx_parses(&graft_model), &stem);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn graft_parser_reads_what_onnx_prints() {
    let Some(py) = python() else { return };
    let dir = work_dir("onnx-prints");
    let mut jobs = Vec::new();
    let mut expect = Vec::new();
    for case in cases() {
        if case.has("graft-only") {
            continue;
        }
        let txt = dir.join(format!("{}.txt", case.file));
        let pb = dir.join(format!("{}.pb", case.file));
        jobs.push(format!(
            "print {} {}",
            models_dir().join(&case.file).display(),
            txt.display()
        ));
        jobs.push(format!("parse {} {}", txt.display(), pb.display()));
        expect.push((case, txt, pb));
    }
    run_jobs(&py, &dir, &jobs);
    let mut compared = 0;
    for (case, txt, pb) in expect {
        let text = std::fs::read_to_string(&txt).unwrap();
        match read_onnx_parse(&pb) {
            Ok(onnx_model) => {
                let graft_model = parse_model(&text).unwrap_or_else(|e| {
                    panic!("{}: graft rejects onnx's text: {e}\n{text}", case.file)
                });
                assert_same_model(&onnx_model, &as_onnx_parses(&graft_model), &case.file);
                compared += 1;
            }
            Err(e) => assert!(
                case.has("no-onnx-print"),
                "{}: onnx cannot parse its own text: {e}",
                case.file
            ),
        }
    }
    assert!(compared >= 7);
    let _ = std::fs::remove_dir_all(&dir);
}

/// graft prints every float and double exactly as onnx's printer (std::to_chars) does.
#[test]
fn float_formatting_matches_onnx() {
    let Some(py) = python() else { return };
    let dir = work_dir("floats");
    let (pbf, txt) = (dir.join("floats.onnx"), dir.join("floats.txt"));
    run_jobs(
        &py,
        &dir,
        &[format!("floats {} {}", pbf.display(), txt.display())],
    );
    let m = ModelProto::parse_from_bytes(&std::fs::read(&pbf).unwrap()).unwrap();
    let onnx_text = std::fs::read_to_string(&txt).unwrap();
    let ours = print_model(&m, &PrintOptions::full());
    let lists = |t: &str| -> Vec<String> {
        t.split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .filter(|s| s.len() > 100)
            .map(|s| s.to_string())
            .collect()
    };
    let (a, b) = (lists(&onnx_text), lists(&ours));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    for (la, lb) in a.iter().zip(&b) {
        let (va, vb): (Vec<&str>, Vec<&str>) = (la.split(',').collect(), lb.split(',').collect());
        assert_eq!(va.len(), vb.len());
        let diffs: Vec<_> = va
            .iter()
            .zip(&vb)
            .filter(|(x, y)| x != y)
            .take(10)
            .collect();
        assert!(diffs.is_empty(), "onnx vs graft: {diffs:?}");
    }
    let parsed = parse_model(&ours).unwrap();
    assert_same_model(&parsed, &canonical(&m), "floats");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hand-written texts in the forms onnx accepts parse to the same model in graft and onnx.
#[test]
fn onnx_and_graft_parse_hand_written_texts_alike() {
    let texts = [
        r#"<ir_version: 7, opset_import: ["": 13]> g (float[N] X) => (float[N] Y) { Y = Relu(X) }"#,
        r#"<ir_version: 8, opset_import: ["" : 18], producer_name: "x", model_version: -3>
           g (float[2] W = {1, 2}, float[M, "a b", ?] X) => (Y, float[] Z)
           <float[3] B = {-1e-3, 2E5, 1.}, float s = {-0}, int64[2] i = {-9223372036854775808, 9}, V>
           {
              Y = Foo <a = 1, b = 2.0, c = "s", d = [1, 2], e = [1.0], f = ["x", ""], t = float[2] {1, 2},
                       tp = float[N], u = seq(int64), n = nan, i: float = 3> (X, , W)
              Z = Bar (, X)
              = Baz ()
              [""] P, , Q = Qux ("", X,)
              R = com.ms.Op:ovl (X)
              S = Sub () <g = sg () => (float o) { o = Constant <value_float = -Infinity> () }>
           }"#,
        r#"<ir_version: 9, opset_import: ["": 21, "f": 1]> m (float x) => (float y) {
              y = f.F <a = 2> (x)
           }
           <domain: "f", opset_import: ["": 21], doc_string: "d">
           F <a, b = 1, c: floats = [], d: string = "q"> (float[N] x, y) => (float z, w) <int64 k> {
              w = Identity (y)
              z = Mul <alpha: int = @a> (x, y)
           }
           <opset_import: ["": 21], domain: "f">
           G (x) => (y) { y = Identity(x) }"#,
        r#"<ir_version: 10, opset_import: ["": 21]> g () => ()
           <float[2] w = {INF, -nan}, double[1] d = {1e-320}, float16[2] h = {15360, 65535},
            uint64[1] u = {18446744073709551615}, bool[3] b = {1, 0, 1}, string[0] e = {},
            float[4] ext = ["location": "a.bin", "offset": "0"], uint8[2] u8 = {}>
           { }"#,
        r#"g (float[2] "x y", "a", sparse_tensor(float[10]) s, optional(seq(uint8[2,?])) o) => () {}"#,
    ];
    let Some(py) = python() else { return };
    let dir = work_dir("hand-written");
    let mut jobs = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let txt = dir.join(format!("{i}.txt"));
        std::fs::write(&txt, t).unwrap();
        jobs.push(format!(
            "parse {} {}",
            txt.display(),
            dir.join(format!("{i}.pb")).display()
        ));
    }
    run_jobs(&py, &dir, &jobs);
    for (i, t) in texts.iter().enumerate() {
        let onnx_model = read_onnx_parse(&dir.join(format!("{i}.pb")))
            .unwrap_or_else(|e| panic!("text {i}: onnx rejects it: {e}"));
        let graft_model = parse_model(t).unwrap_or_else(|e| panic!("text {i}: {e}"));
        assert_same_model(
            &onnx_model,
            &as_onnx_parses(&graft_model),
            &format!("text {i}"),
        );
        // and graft prints it back to something that parses to the same model
        let again = parse_model(&print_model(&graft_model, &PrintOptions::full())).unwrap();
        assert_same_model(&again, &graft_model, &format!("text {i} reprinted"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
