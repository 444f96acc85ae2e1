//! Uncertainty for every number rlxf reports: percentile bootstrap confidence intervals for means
//! and rates, and paired tests (bootstrap CI of the mean difference, sign-flip permutation test) for
//! differences between policies evaluated on the same prompts. Everything is seeded, and every
//! result carries its sample count.
//!
//! The percentile interval (Efron & Tibshirani 1993, ch. 13) is the plain one: resample with
//! replacement, recompute the statistic, take the `(1 - level) / 2` and `(1 + level) / 2`
//! quantiles (linear interpolation between order statistics, NumPy's default). Its coverage on
//! simulated data with a known rate and a known mean is tested in `tests/statistics.rs`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// How bootstrap intervals and permutation tests are computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Bootstrap resamples per interval.
    pub resamples: usize,
    /// Random sign flips per permutation test (exact enumeration when `2^n` is not larger).
    pub permutations: usize,
    /// Confidence level of the intervals, in (0, 1).
    pub level: f64,
    pub seed: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            resamples: 2000,
            permutations: 10_000,
            level: 0.95,
            seed: 0,
        }
    }
}

impl StatsConfig {
    /// Checks the level is in (0, 1) and the resample counts are positive.
    pub fn validate(&self) -> Result<()> {
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(EvalError::invalid_argument(
                "level",
                format!("{} is not in (0, 1)", self.level),
            ));
        }
        if self.resamples == 0 || self.permutations == 0 {
            return Err(EvalError::invalid_argument(
                "resamples",
                "bootstrap resamples and permutations must be at least 1",
            ));
        }
        Ok(())
    }

    /// The same settings with a seed derived from `self.seed` and `key`, so each group of an
    /// aggregation draws its own stream no matter in which order groups are computed.
    pub fn keyed(&self, key: &str) -> Self {
        Self {
            seed: stable_hash(self.seed, key),
            ..*self
        }
    }
}

/// FNV-1a over the seed's bytes and the key: stable across platforms and Rust versions, unlike
/// `std`'s hasher.
fn stable_hash(seed: u64, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.to_le_bytes().iter().chain(key.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A point estimate with its confidence interval and sample count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Number of observations the estimate is computed from.
    pub n: usize,
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub level: f64,
}

impl Estimate {
    /// True when `truth` lies inside the closed interval.
    pub fn covers(&self, truth: f64) -> bool {
        self.ci_low <= truth && truth <= self.ci_high
    }
}

/// The `q`-quantile of sorted data, interpolating linearly between order statistics (NumPy's
/// default `linear` method, R's type 7).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of an empty sample");
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let fraction = position - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * fraction
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn require_finite(argument: &'static str, values: &[f64]) -> Result<()> {
    if values.is_empty() {
        return Err(EvalError::invalid_argument(argument, "the sample is empty"));
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(EvalError::invalid_argument(
            argument,
            format!("value {index} is {}", values[index]),
        ));
    }
    Ok(())
}

/// Percentile bootstrap interval of any statistic of a sample of `n` items: `statistic` receives
/// the indices of one resample (with repetitions) and returns the statistic on it. `point` is the
/// statistic on the full sample. Resamples whose statistic is not finite (for instance a set-level
/// metric undefined on a degenerate resample) are left out of the quantiles.
pub fn bootstrap(
    n: usize,
    point: f64,
    config: &StatsConfig,
    mut statistic: impl FnMut(&[usize]) -> f64,
) -> Result<Estimate> {
    config.validate()?;
    if n == 0 {
        return Err(EvalError::invalid_argument("sample", "the sample is empty"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut indices = vec![0usize; n];
    let mut replicates = Vec::with_capacity(config.resamples);
    for _ in 0..config.resamples {
        for slot in indices.iter_mut() {
            *slot = rng.random_range(0..n);
        }
        let value = statistic(&indices);
        if value.is_finite() {
            replicates.push(value);
        }
    }
    if replicates.is_empty() {
        return Err(EvalError::invalid_argument(
            "statistic",
            "no bootstrap resample gave a finite value",
        ));
    }
    replicates.sort_by(f64::total_cmp);
    let tail = (1.0 - config.level) / 2.0;
    Ok(Estimate {
        n,
        value: point,
        ci_low: quantile_sorted(&replicates, tail),
        ci_high: quantile_sorted(&replicates, 1.0 - tail),
        level: config.level,
    })
}

/// Mean with its percentile bootstrap interval.
pub fn bootstrap_mean(values: &[f64], config: &StatsConfig) -> Result<Estimate> {
    require_finite("values", values)?;
    bootstrap(values.len(), mean(values), config, |indices| {
        indices.iter().map(|&i| values[i]).sum::<f64>() / indices.len() as f64
    })
}

/// Rate of `true` outcomes with its percentile bootstrap interval.
pub fn bootstrap_rate(outcomes: &[bool], config: &StatsConfig) -> Result<Estimate> {
    let values: Vec<f64> = outcomes
        .iter()
        .map(|&hit| f64::from(u8::from(hit)))
        .collect();
    bootstrap_mean(&values, config)
}

/// A difference between two policies on the same items (`treatment - baseline`, per item).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    /// Number of pairs.
    pub n: usize,
    /// Mean of `treatment - baseline` with its paired bootstrap interval.
    pub difference: Estimate,
    /// Two-sided p-value of the sign-flip permutation test of "no difference".
    pub p_value: f64,
    /// True when the p-value enumerated all `2^n` sign patterns rather than sampling them.
    pub exact: bool,
}

/// Compares paired observations: the bootstrap resamples pairs (keeping each item's two scores
/// together), and the permutation test flips the sign of each difference at random, which is
/// exact under the null that the two policies' scores are exchangeable within each item.
pub fn paired_comparison(
    treatment: &[f64],
    baseline: &[f64],
    config: &StatsConfig,
) -> Result<PairedComparison> {
    if treatment.len() != baseline.len() {
        return Err(EvalError::invalid_argument(
            "baseline",
            format!(
                "{} treatment scores but {} baseline scores; paired tests need one pair per item",
                treatment.len(),
                baseline.len()
            ),
        ));
    }
    require_finite("treatment", treatment)?;
    require_finite("baseline", baseline)?;
    let differences: Vec<f64> = treatment.iter().zip(baseline).map(|(t, b)| t - b).collect();
    let difference = bootstrap_mean(&differences, config)?;
    let (p_value, exact) = sign_flip_p_value(&differences, config);
    Ok(PairedComparison {
        n: differences.len(),
        difference,
        p_value,
        exact,
    })
}

/// Two-sided sign-flip p-value of `mean(differences) = 0`. Enumerates all sign patterns when there
/// are no more than `config.permutations` of them; otherwise samples them and returns the unbiased
/// Monte Carlo estimate `(hits + 1) / (samples + 1)` (Phipson & Smyth 2010), never 0.
fn sign_flip_p_value(differences: &[f64], config: &StatsConfig) -> (f64, bool) {
    let n = differences.len();
    let observed = differences.iter().sum::<f64>().abs();
    // Sums equal to the observed one up to rounding count as "at least as extreme".
    let tolerance = 1e-9 * differences.iter().map(|d| d.abs()).sum::<f64>();
    let extreme = |signs: &mut dyn FnMut(usize) -> bool| {
        let flipped: f64 = (0..n)
            .map(|i| {
                if signs(i) {
                    -differences[i]
                } else {
                    differences[i]
                }
            })
            .sum();
        flipped.abs() >= observed - tolerance
    };
    if n < 63 && (1u64 << n) <= config.permutations as u64 {
        let patterns = 1u64 << n;
        let hits = (0..patterns)
            .filter(|pattern| extreme(&mut |i| pattern >> i & 1 == 1))
            .count();
        return (hits as f64 / patterns as f64, true);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(stable_hash(config.seed, "sign-flip"));
    let hits = (0..config.permutations)
        .filter(|_| extreme(&mut |_| rng.random::<bool>()))
        .count();
    ((hits + 1) as f64 / (config.permutations + 1) as f64, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0, 0.25, 0.5, 0.9, 1]) = [1, 1.75, 2.5, 3.7, 4]
        let sorted = [1.0, 2.0, 3.0, 4.0];
        let expected = [(0.0, 1.0), (0.25, 1.75), (0.5, 2.5), (0.9, 3.7), (1.0, 4.0)];
        for (q, value) in expected {
            assert!((quantile_sorted(&sorted, q) - value).abs() < 1e-12, "q={q}");
        }
    }

    #[test]
    fn two_point_sample_interval_spans_the_bootstrap_support() {
        // Resample means of {0, 1} are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
        // 97.5% quantiles are 0 and 1.
        let estimate = bootstrap_mean(&[0.0, 1.0], &StatsConfig::default()).unwrap();
        assert_eq!((estimate.n, estimate.value), (2, 0.5));
        assert_eq!((estimate.ci_low, estimate.ci_high), (0.0, 1.0));
    }

    #[test]
    fn constant_sample_has_a_zero_width_interval() {
        let estimate = bootstrap_rate(&[true; 7], &StatsConfig::default()).unwrap();
        assert_eq!(
            (estimate.value, estimate.ci_low, estimate.ci_high),
            (1.0, 1.0, 1.0)
        );
    }

    #[test]
    fn exact_sign_flip_p_value_matches_hand_enumeration() {
        // differences 1, 2, 3: of the 8 sign patterns only +++ and --- reach |sum| >= 6.
        let comparison =
            paired_comparison(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0], &StatsConfig::default()).unwrap();
        assert!(comparison.exact);
        assert_eq!(comparison.p_value, 0.25);
        assert_eq!(comparison.difference.value, 2.0);
        // differences 1, -1, 2 (sum 2): the eight sign patterns give sums 2, -2, 4, 0, 0, -4, 2, -2;
        // six of them reach |sum| >= 2.
        let comparison =
            paired_comparison(&[1.0, -1.0, 2.0], &[0.0, 0.0, 0.0], &StatsConfig::default())
                .unwrap();
        assert_eq!(comparison.p_value, 0.75);
    }

    #[test]
    fn sampled_p_value_is_never_zero_and_seeded() {
        let treatment: Vec<f64> = (0..40).map(|i| 1.0 + (i % 3) as f64).collect();
        let baseline = vec![0.0; 40];
        let config = StatsConfig::default();
        let first = paired_comparison(&treatment, &baseline, &config).unwrap();
        assert!(!first.exact);
        assert_eq!(first.p_value, 1.0 / (config.permutations + 1) as f64);
        assert_eq!(
            first,
            paired_comparison(&treatment, &baseline, &config).unwrap()
        );
    }

    #[test]
    fn bad_arguments_are_reported() {
        let config = StatsConfig::default();
        assert!(bootstrap_mean(&[], &config).is_err());
        assert!(bootstrap_mean(&[1.0, f64::NAN], &config).is_err());
        assert!(paired_comparison(&[1.0], &[1.0, 2.0], &config).is_err());
        let bad_level = StatsConfig {
            level: 1.0,
            ..config
        };
        assert!(bootstrap_mean(&[1.0], &bad_level).is_err());
    }

    #[test]
    fn keyed_seeds_differ_per_key_and_are_stable() {
        let config = StatsConfig::default();
        assert_ne!(config.keyed("a").seed, config.keyed("b").seed);
        // FNV-1a 64 of eight zero bytes then "a", computed in Python.
        assert_eq!(config.keyed("a").seed, 16574479430979678636);
    }
}
