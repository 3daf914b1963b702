//! Never panic on user input: corrupted models (bytes flipped, truncated anywhere) and random
//! text are either loaded or refused with an error, and whatever loads survives the cleanup and
//! fold pipelines without a panic.

mod common;
use common::*;

/// Deterministic pseudo-random numbers (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn corrupted_models_never_panic() {
    let bytes = std::fs::read(repo().join("models/bert_lora/unmerged.ts.onnx")).unwrap();
    let path = std::path::Path::new("corrupt.onnx");
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut loaded = 0;
    for i in 0..300 {
        let mut b = bytes.clone();
        match i % 3 {
            0 => {
                for _ in 0..1 + rng.next() % 8 {
                    let at = (rng.next() as usize) % b.len();
                    b[at] ^= 1 << (rng.next() % 8);
                }
            }
            1 => b.truncate((rng.next() as usize) % b.len()),
            _ => {
                let at = (rng.next() as usize) % b.len();
                b[at] = (rng.next() & 0xff) as u8;
            }
        }
        let result = std::panic::catch_unwind(|| {
            let Ok(mut m) = graft::onnx::load_model_bytes(&b, path, None) else {
                return false;
            };
            let steps = graft::passes::parse_pipeline("fold").unwrap();
            let lookup = graft::passes::lookup;
            let mut d = graft::driver::Driver::new(&lookup);
            let _ = d.run(&mut m, &steps);
            let _ = graft::onnx::model_to_proto(m);
            true
        });
        match result {
            Ok(ok) => loaded += usize::from(ok),
            Err(_) => panic!("case {i}: graft panicked on a corrupted model"),
        }
    }
    eprintln!("robustness: {loaded} of 300 corrupted models still loaded; none panicked");
}

#[test]
fn random_text_never_panics() {
    let mut rng = Rng(42);
    let alphabet: Vec<char> = "<>{}()[],=:;\"'#@ \nabcxyz0123456789.-+efloat int64 graph"
        .chars()
        .collect();
    for _ in 0..500 {
        let n = (rng.next() % 200) as usize;
        let text: String = (0..n)
            .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
            .collect();
        let r = std::panic::catch_unwind(|| graft::text::parse_model(&text));
        assert!(r.is_ok(), "the text parser panicked on {text:?}");
    }
}

#[test]
fn corrupted_models_never_panic_the_wgsl_compiler() {
    let mut compiled = 0;
    let mut loaded = 0;
    for (k, model) in [
        "models/bert_lora/unmerged.ts.onnx",
        "models/cnn_conv_lora/unmerged.ts.onnx",
        "models/resnet_bn/unmerged.dynamo.onnx",
        "models/tinytl/unmerged.ts.onnx",
    ]
    .iter()
    .enumerate()
    {
        let bytes = std::fs::read(repo().join(model)).unwrap();
        let path = std::path::Path::new("corrupt.onnx");
        let mut rng = Rng(0x2545f4914f6cdd1d ^ k as u64);
        for i in 0..80 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % b.len();
                if i % 2 == 0 {
                    b[at] ^= 1 << (rng.next() % 8);
                } else {
                    b[at] = (rng.next() & 0xff) as u8;
                }
            }
            let result = std::panic::catch_unwind(|| {
                let Ok(m) = graft::onnx::load_model_bytes(&b, path, None) else {
                    return (false, false);
                };
                let opts = graft::codegen::CompileOptions::default();
                (true, graft::codegen::compile(&m, &opts).is_ok())
            });
            match result {
                Ok((l, c)) => {
                    loaded += usize::from(l);
                    compiled += usize::from(c);
                }
                Err(_) => {
                    panic!("{model} case {i}: the WGSL compiler panicked on a corrupted model")
                }
            }
        }
    }
    eprintln!("robustness: {loaded} corrupted models loaded, {compiled} compiled; none panicked");
    assert!(compiled > 0);
}

#[test]
fn random_attribute_values_never_panic_the_wgsl_compiler() {
    let mut rng = Rng(0xd1b54a32d192ed03);
    let mut refused = 0;
    for model in [
        "models/cnn_conv_lora/unmerged.ts.onnx",
        "models/bert_lora/unmerged.dynamo.onnx",
        "models/tinytl/unmerged.ts.onnx",
        "models/conv_lora_reflect/unmerged.ts.onnx",
    ] {
        let base = graft::onnx::load_model(&repo().join(model)).unwrap();
        for case in 0..60 {
            let mut m = base.clone();
            // one attribute of one node gets a random value
            let ids: Vec<_> = m
                .graph
                .node_ids()
                .filter(|&id| !m.graph.node(id).attrs.is_empty())
                .collect();
            let id = ids[(rng.next() as usize) % ids.len()];
            let node = m.graph.node_mut(id);
            let k = (rng.next() as usize) % node.attrs.len();
            let a = &mut node.attrs[k];
            let r = |rng: &mut Rng| (rng.next() % 80) as i64 - 8;
            if !a.ints.is_empty() {
                for v in a.ints.iter_mut() {
                    *v = r(&mut rng);
                }
            } else if a.type_.value() == onnx_protobuf::attribute_proto::AttributeType::INT as i32 {
                a.i = r(&mut rng);
            } else if a.type_.value() == onnx_protobuf::attribute_proto::AttributeType::FLOAT as i32
            {
                a.f = f32::from_bits(rng.next() as u32);
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                graft::codegen::compile(&m, &graft::codegen::CompileOptions::default()).is_ok()
            }));
            match result {
                Ok(ok) => refused += usize::from(!ok),
                Err(_) => {
                    panic!("{model} case {case}: the WGSL compiler panicked on random attributes")
                }
            }
        }
    }
    eprintln!("robustness: {refused} of 240 models with random attributes refused; none panicked");
}
