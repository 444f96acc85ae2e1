//! Choosing and splitting pairs: dedupe by prompt, token-length budget, seeded shuffle, cap and
//! train/validation/test split. Every step is deterministic given its inputs and seed.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{DataError, Result};
use crate::pair::PreferencePair;

/// Fractions of the data for train, validation and test; they sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SplitRatios {
    pub train: f64,
    pub validation: f64,
    pub test: f64,
}

impl Default for SplitRatios {
    fn default() -> Self {
        SplitRatios {
            train: 0.8,
            validation: 0.1,
            test: 0.1,
        }
    }
}

impl FromStr for SplitRatios {
    type Err = DataError;

    /// Parses `train,validation,test`, e.g. `0.8,0.1,0.1`.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |message: String| DataError::Option {
            option: "split",
            message: format!(
                "`{text}`: {message} (expected train,validation,test, e.g. 0.8,0.1,0.1)"
            ),
        };
        let parts = text
            .split(',')
            .map(|part| {
                part.trim()
                    .parse::<f64>()
                    .map_err(|e| bad(format!("`{part}`: {e}")))
            })
            .collect::<Result<Vec<f64>>>()?;
        let [train, validation, test] = parts[..] else {
            return Err(bad(format!("{} values given, need 3", parts.len())));
        };
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(bad("fractions must be finite and not negative".into()));
        }
        let sum = train + validation + test;
        if (sum - 1.0).abs() > 1e-6 {
            return Err(bad(format!("fractions sum to {sum}, not 1")));
        }
        Ok(SplitRatios {
            train,
            validation,
            test,
        })
    }
}

impl fmt::Display for SplitRatios {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.train, self.validation, self.test)
    }
}

/// The three parts of a split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Splits {
    pub train: Vec<PreferencePair>,
    pub validation: Vec<PreferencePair>,
    pub test: Vec<PreferencePair>,
}

/// Keeps the first pair of every distinct prompt, in order; returns the kept pairs and how many
/// were dropped. Deduping by prompt keeps one prompt from landing in both train and test.
pub fn dedupe_by_prompt(pairs: Vec<PreferencePair>) -> (Vec<PreferencePair>, usize) {
    let before = pairs.len();
    let mut seen = HashSet::new();
    let kept: Vec<PreferencePair> = pairs
        .into_iter()
        .filter(|pair| seen.insert(pair.prompt.clone()))
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// Keeps the pairs whose prompt + chosen and prompt + rejected both fit in `max_tokens`, counted by
/// `count_tokens` (the model's tokenizer, which lives outside this crate); returns the kept pairs
/// and how many were dropped.
pub fn filter_by_token_length(
    pairs: Vec<PreferencePair>,
    max_tokens: usize,
    count_tokens: impl Fn(&str) -> usize,
) -> (Vec<PreferencePair>, usize) {
    let before = pairs.len();
    let fits = |reply: &str, prompt: &str| count_tokens(&format!("{prompt}{reply}")) <= max_tokens;
    let kept: Vec<PreferencePair> = pairs
        .into_iter()
        .filter(|pair| fits(&pair.chosen, &pair.prompt) && fits(&pair.rejected, &pair.prompt))
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// Shuffles the pairs with `seed`, keeps at most `max_samples` of them (a random subset, not the
/// head of the file), and cuts the rest into train / validation / test at the rounded cumulative
/// fractions. Returns the splits and how many pairs the cap left out.
pub fn shuffle_cap_split(
    mut pairs: Vec<PreferencePair>,
    seed: u64,
    max_samples: Option<usize>,
    ratios: SplitRatios,
) -> (Splits, usize) {
    pairs.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let capped_out = max_samples.map_or(0, |max| pairs.len().saturating_sub(max));
    pairs.truncate(pairs.len() - capped_out);
    let n = pairs.len();
    let boundary = |fraction: f64| ((n as f64 * fraction).round() as usize).min(n);
    let train_end = boundary(ratios.train);
    let validation_end = boundary(ratios.train + ratios.validation).max(train_end);
    let test = pairs.split_off(validation_end);
    let validation = pairs.split_off(train_end);
    (
        Splits {
            train: pairs,
            validation,
            test,
        },
        capped_out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: usize, prompt: &str) -> PreferencePair {
        PreferencePair {
            id: format!("p{i}"),
            prompt: prompt.to_string(),
            chosen: " yes".into(),
            rejected: " no".into(),
            context: None,
        }
    }

    fn pairs(n: usize) -> Vec<PreferencePair> {
        (0..n).map(|i| pair(i, &format!("prompt {i}"))).collect()
    }

    fn ids(pairs: &[PreferencePair]) -> Vec<&str> {
        pairs.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn parses_and_checks_split_ratios() {
        let ratios: SplitRatios = "0.8, 0.1,0.1".parse().unwrap();
        assert_eq!(
            (ratios.train, ratios.validation, ratios.test),
            (0.8, 0.1, 0.1)
        );
        for bad in [
            "0.8,0.1",
            "0.8,0.1,0.2",
            "1.2,-0.1,-0.1",
            "a,b,c",
            "0.5,0.5,0,0",
            "NaN,0,1",
        ] {
            assert!(bad.parse::<SplitRatios>().is_err(), "{bad}");
        }
    }

    #[test]
    fn split_sizes_follow_the_rounded_cumulative_fractions() {
        let ratios = SplitRatios::default();
        let (splits, capped) = shuffle_cap_split(pairs(25), 7, None, ratios);
        // 25 * 0.8 = 20; 25 * 0.9 = 22.5 rounds to 23 -> 20 / 3 / 2.
        assert_eq!(
            (
                splits.train.len(),
                splits.validation.len(),
                splits.test.len(),
                capped
            ),
            (20, 3, 2, 0)
        );
        let mut all: Vec<&str> = [&splits.train, &splits.validation, &splits.test]
            .iter()
            .flat_map(|part| ids(part))
            .collect();
        all.sort();
        let mut expected: Vec<String> = (0..25).map(|i| format!("p{i}")).collect();
        expected.sort();
        assert_eq!(all, expected, "every pair lands in exactly one split");
    }

    #[test]
    fn same_seed_same_split_other_seed_other_order() {
        let ratios = SplitRatios::default();
        let (a, _) = shuffle_cap_split(pairs(50), 3, Some(30), ratios);
        let (b, _) = shuffle_cap_split(pairs(50), 3, Some(30), ratios);
        let (c, _) = shuffle_cap_split(pairs(50), 4, Some(30), ratios);
        assert_eq!(a, b);
        assert_ne!(ids(&a.train), ids(&c.train));
    }

    #[test]
    fn cap_keeps_a_random_subset() {
        let (splits, capped) = shuffle_cap_split(pairs(100), 1, Some(10), SplitRatios::default());
        assert_eq!(capped, 90);
        assert_eq!(
            splits.train.len() + splits.validation.len() + splits.test.len(),
            10
        );
        let heads = splits.train.iter().filter(|p| p.id.len() == 2).count();
        assert!(
            heads < 8,
            "the cap must not simply keep the first pairs of the file"
        );
    }

    #[test]
    fn dedupe_keeps_the_first_pair_of_each_prompt() {
        let input = vec![
            pair(0, "a"),
            pair(1, "b"),
            pair(2, "a"),
            pair(3, "c"),
            pair(4, "b"),
        ];
        let (kept, dropped) = dedupe_by_prompt(input);
        assert_eq!(ids(&kept), vec!["p0", "p1", "p3"]);
        assert_eq!(dropped, 2);
    }

    #[test]
    fn token_filter_counts_prompt_plus_each_reply() {
        let mut long_rejected = pair(1, "four words of prompt");
        long_rejected.rejected = " a b c".into();
        let input = vec![pair(0, "four words of prompt"), long_rejected];
        let words = |text: &str| text.split_whitespace().count();
        // p0: 4 + 1 words each way; p1: rejected gives 4 + 3 = 7.
        let (kept, dropped) = filter_by_token_length(input, 5, words);
        assert_eq!((ids(&kept), dropped), (vec!["p0"], 1));
    }
}
