//! Frequentist checks of the statistics on simulated data with known truth: percentile bootstrap
//! intervals must cover the true rate / mean / paired difference about 95% of the time, and the
//! sign-flip test must reject a true null about 5% of the time and a real shift almost always.
//! Every simulation is seeded, so the outcomes are fixed; the bounds are wide enough (about four
//! Monte Carlo standard errors) that they would hold for any seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlxf_eval::{bootstrap_mean, bootstrap_rate, paired_comparison, StatsConfig};

const DATASETS: usize = 1000;
/// Bootstrap resamples per interval: enough for stable 2.5% and 97.5% quantiles, few enough to keep
/// a thousand intervals fast.
const RESAMPLES: usize = 500;

fn config(seed: u64, resamples: usize) -> StatsConfig {
    StatsConfig {
        resamples,
        permutations: 1000,
        level: 0.95,
        seed,
    }
}

fn assert_coverage(name: &str, covered: usize, trials: usize, low: f64, high: f64) {
    let coverage = covered as f64 / trials as f64;
    println!("{name}: coverage {coverage:.3} over {trials} simulated datasets");
    assert!(
        (low..=high).contains(&coverage),
        "{name}: coverage {coverage} outside [{low}, {high}]"
    );
}

#[test]
fn rate_intervals_cover_the_true_rate() {
    let true_rate = 0.3;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut covered = 0;
    for dataset in 0..DATASETS {
        let outcomes: Vec<bool> = (0..120).map(|_| rng.random::<f64>() < true_rate).collect();
        let estimate = bootstrap_rate(&outcomes, &config(dataset as u64, RESAMPLES)).unwrap();
        assert_eq!(estimate.n, 120);
        covered += usize::from(estimate.covers(true_rate));
    }
    assert_coverage("rate 0.3, n=120", covered, DATASETS, 0.92, 0.98);
}

#[test]
fn mean_intervals_cover_the_true_mean_of_skewed_data() {
    // Exponential with mean 2: skewed like lengths or reward scores.
    let true_mean = 2.0;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut covered = 0;
    for dataset in 0..DATASETS {
        let values: Vec<f64> = (0..150)
            .map(|_| -true_mean * (1.0 - rng.random::<f64>()).ln())
            .collect();
        let estimate =
            bootstrap_mean(&values, &config(10_000 + dataset as u64, RESAMPLES)).unwrap();
        covered += usize::from(estimate.covers(true_mean));
    }
    assert_coverage("exponential mean 2, n=150", covered, DATASETS, 0.92, 0.98);
}

/// Paired scores: an item effect shared by both policies plus independent noise, and a true
/// difference `shift` between the policies.
fn paired_scores(rng: &mut ChaCha8Rng, n: usize, shift: f64) -> (Vec<f64>, Vec<f64>) {
    (0..n)
        .map(|_| {
            let item = rng.random::<f64>() * 4.0;
            let noise = |rng: &mut ChaCha8Rng| rng.random::<f64>() - 0.5;
            (item + shift + noise(rng), item + noise(rng))
        })
        .unzip()
}

#[test]
fn paired_difference_intervals_cover_the_true_difference() {
    let shift = 0.1;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let trials = 500;
    let mut covered = 0;
    for trial in 0..trials {
        let (treatment, baseline) = paired_scores(&mut rng, 80, shift);
        let comparison = paired_comparison(
            &treatment,
            &baseline,
            &config(20_000 + trial as u64, RESAMPLES),
        )
        .unwrap();
        assert_eq!(comparison.n, 80);
        covered += usize::from(comparison.difference.covers(shift));
    }
    assert_coverage("paired difference 0.1, n=80", covered, trials, 0.91, 0.98);
}

#[test]
fn sign_flip_test_holds_its_level_under_the_null_and_detects_a_shift() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let trials = 400;
    let rejections = |rng: &mut ChaCha8Rng, shift: f64, seed_base: u64| {
        (0..trials)
            .filter(|&trial| {
                let (treatment, baseline) = paired_scores(rng, 40, shift);
                let stats = config(seed_base + trial as u64, 200);
                paired_comparison(&treatment, &baseline, &stats)
                    .unwrap()
                    .p_value
                    <= 0.05
            })
            .count() as f64
            / trials as f64
    };
    let false_positive_rate = rejections(&mut rng, 0.0, 30_000);
    println!("sign-flip test: rejection rate under the null {false_positive_rate:.3}");
    assert!(
        (0.02..=0.08).contains(&false_positive_rate),
        "{false_positive_rate}"
    );
    // The per-pair difference has noise sd sqrt(2/12) ~ 0.41, so over 40 pairs a shift of 0.25 is
    // ~3.9 standard errors: a z-test would have power ~0.98.
    let power = rejections(&mut rng, 0.25, 40_000);
    println!("sign-flip test: power at shift 0.25 {power:.3}");
    assert!(power >= 0.9, "{power}");
}

#[test]
fn exact_and_sampled_p_values_agree() {
    // 12 pairs: 4,096 sign patterns, enumerated with 5,000 permutations allowed and sampled with
    // 4,000.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (treatment, baseline) = paired_scores(&mut rng, 12, 0.2);
    let exact = paired_comparison(
        &treatment,
        &baseline,
        &StatsConfig {
            permutations: 5000,
            ..config(0, 200)
        },
    )
    .unwrap();
    let sampled = paired_comparison(
        &treatment,
        &baseline,
        &StatsConfig {
            permutations: 4000,
            ..config(0, 200)
        },
    )
    .unwrap();
    assert!(exact.exact && !sampled.exact);
    // Monte Carlo standard error at p ~ 0.1 with 4,000 draws is ~0.005.
    assert!(
        (exact.p_value - sampled.p_value).abs() < 0.02,
        "{} vs {}",
        exact.p_value,
        sampled.p_value
    );
}
