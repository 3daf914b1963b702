//! Timing of `graft::lowrank::truncate` (plain `harness = false` bench; no criterion).
//!
//! Run with `cargo bench --bench lowrank`. Each case is timed 5 times and the
//! median is printed.

use std::time::Instant;

use graft::lowrank::{RankRule, truncate};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const RUNS: usize = 5;

fn gaussian(m: usize, n: usize, rng: &mut ChaCha8Rng) -> Array2<f64> {
    Array2::from_shape_simple_fn((m, n), || rng.sample(StandardNormal))
}

/// Exact rank-`r` matrix (normalised to unit-size entries) plus `noise`·N(0,1).
fn low_rank_plus_noise(m: usize, n: usize, r: usize, noise: f64, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut d = gaussian(m, r, &mut rng).dot(&gaussian(r, n, &mut rng)) / (r as f64).sqrt();
    let e = gaussian(m, n, &mut rng);
    d.scaled_add(noise, &e);
    d
}

fn bench(name: &str, d: &Array2<f64>, rule: RankRule) {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = None;
    for run in 0..RUNS {
        let t = Instant::now();
        let lr = truncate(d.view(), rule, run as u64).expect("truncate failed");
        times.push(t.elapsed().as_secs_f64());
        last = Some(lr);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let lr = last.unwrap();
    println!(
        "{name:<44} median {:>8.3} s  (min {:.3}, max {:.3})  method={} r={} rel_error={:.3e} energy={:.6}",
        times[RUNS / 2],
        times[0],
        times[RUNS - 1],
        lr.method,
        lr.rank(),
        lr.rel_error,
        lr.energy_kept
    );
}

fn main() {
    let d = low_rank_plus_noise(4096, 4096, 16, 1e-3, 1);
    bench(
        "4096x4096 rank16+1e-3 noise, Fixed(16)",
        &d,
        RankRule::Fixed(16),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let d = gaussian(4096, 4096, &mut rng);
    bench("4096x4096 gaussian, Fixed(16)", &d, RankRule::Fixed(16));
    let d = low_rank_plus_noise(4096, 4096, 16, 1e-3, 3);
    bench(
        "4096x4096 rank16+1e-3 noise, Energy(0.99)",
        &d,
        RankRule::Energy(0.99),
    );
    let d = low_rank_plus_noise(1024, 4096, 32, 1e-3, 4);
    bench(
        "1024x4096 rank32+1e-3 noise, Fixed(32)",
        &d,
        RankRule::Fixed(32),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let d = gaussian(512, 512, &mut rng);
    bench(
        "512x512 gaussian, Fixed(16) (randomized)",
        &d,
        RankRule::Fixed(16),
    );
    bench(
        "512x512 gaussian, Fixed(200) (exact path)",
        &d,
        RankRule::Fixed(200),
    );
    let d = gaussian(4096, 256, &mut rng);
    bench(
        "4096x256 gaussian, Fixed(16) (exact path)",
        &d,
        RankRule::Fixed(16),
    );
    let d = low_rank_plus_noise(256, 256, 8, 0.0, 6);
    bench(
        "256x256 exact rank 8, Energy(0.99) (exact)",
        &d,
        RankRule::Energy(0.99),
    );
}
