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
