//! Summary statistics of a pair set, as `rlxf data inspect` shows them.

use serde::Serialize;

use crate::context::ContextRules;
use crate::pair::PreferencePair;

/// Nearest-rank percentiles of a list of lengths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub min: usize,
    pub p10: usize,
    pub p25: usize,
    pub p50: usize,
    pub p75: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
    pub mean: f64,
}

impl Percentiles {
    /// `None` for an empty list. The p-th percentile is the smallest value with at least p% of the
    /// values at or below it (nearest rank), so every reported value occurs in the data.
    pub fn of(values: &[usize]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let rank = |p: f64| {
            let rank = (p / 100.0 * n as f64).ceil() as usize;
            sorted[rank.clamp(1, n) - 1]
        };
        Some(Percentiles {
            min: sorted[0],
            p10: rank(10.0),
            p25: rank(25.0),
            p50: rank(50.0),
            p75: rank(75.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted[n - 1],
            mean: sorted.iter().sum::<usize>() as f64 / n as f64,
        })
    }
}

/// Lengths of one text field, in characters and in whitespace-separated words.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LengthStats {
    pub chars: Percentiles,
    pub words: Percentiles,
}

impl LengthStats {
    fn of<'a>(texts: impl Iterator<Item = &'a str> + Clone) -> Option<Self> {
        let chars: Vec<usize> = texts.clone().map(|t| t.chars().count()).collect();
        let words: Vec<usize> = texts.map(|t| t.split_whitespace().count()).collect();
        Some(LengthStats {
            chars: Percentiles::of(&chars)?,
            words: Percentiles::of(&words)?,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pairs: usize,
    pub distinct_prompts: usize,
    /// Pairs whose two replies are identical (no preference signal).
    pub identical_replies: usize,
    /// Pairs with an empty (or whitespace-only) reply on either side.
    pub empty_replies: usize,
    /// Share of pairs whose chosen reply is longer (in chars) than the rejected one: far from 0.5
    /// means length alone predicts the preference.
    pub chosen_longer_share: Option<f64>,
    /// `None` when there are no pairs.
    pub prompt: Option<LengthStats>,
    pub chosen: Option<LengthStats>,
    pub rejected: Option<LengthStats>,
    /// Pairs per context (the pair's own tag, or the rules' tag when it has none), in the rules'
    /// priority order, then other tags alphabetically; contexts with no pair are left out.
    pub contexts: Vec<(String, usize)>,
}

impl Summary {
    pub fn of(pairs: &[PreferencePair], rules: &ContextRules) -> Self {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for pair in pairs {
            let tag = pair
                .context
                .as_deref()
                .unwrap_or_else(|| rules.tag(&pair.prompt));
            *counts.entry(tag.to_string()).or_default() += 1;
        }
        let mut contexts: Vec<(String, usize)> = rules
            .names()
            .into_iter()
            .filter_map(|name| counts.remove(name).map(|n| (name.to_string(), n)))
            .collect();
        contexts.extend(counts);
        let distinct_prompts = pairs
            .iter()
            .map(|p| p.prompt.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let chosen_longer = pairs
            .iter()
            .filter(|p| p.chosen.chars().count() > p.rejected.chars().count())
            .count();
        Summary {
            pairs: pairs.len(),
            distinct_prompts,
            identical_replies: pairs.iter().filter(|p| p.chosen == p.rejected).count(),
            empty_replies: pairs
                .iter()
                .filter(|p| p.chosen.trim().is_empty() || p.rejected.trim().is_empty())
                .count(),
            chosen_longer_share: (!pairs.is_empty())
                .then(|| chosen_longer as f64 / pairs.len() as f64),
            prompt: LengthStats::of(pairs.iter().map(|p| p.prompt.as_str())),
            chosen: LengthStats::of(pairs.iter().map(|p| p.chosen.as_str())),
            rejected: LengthStats::of(pairs.iter().map(|p| p.rejected.as_str())),
            contexts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_match_hand_computed_values() {
        // Sorted 1..=10: p10 -> rank 1 -> 1; p25 -> rank ceil(2.5)=3 -> 3; p50 -> rank 5 -> 5;
        // p75 -> rank ceil(7.5)=8 -> 8; p90 -> rank 9 -> 9; p99 -> rank ceil(9.9)=10 -> 10.
        let values = [7, 3, 10, 1, 5, 2, 9, 4, 8, 6];
        let p = Percentiles::of(&values).unwrap();
        assert_eq!(
            (p.min, p.p10, p.p25, p.p50, p.p75, p.p90, p.p99, p.max),
            (1, 1, 3, 5, 8, 9, 10, 10)
        );
        assert_eq!(p.mean, 5.5);
        assert_eq!(Percentiles::of(&[4]).unwrap().p10, 4);
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn summary_counts_lengths_contexts_and_degenerate_pairs() {
        let pair =
            |prompt: &str, chosen: &str, rejected: &str, context: Option<&str>| PreferencePair {
                id: String::new(),
                prompt: prompt.into(),
                chosen: chosen.into(),
                rejected: rejected.into(),
                context: context.map(str::to_string),
            };
        let pairs = vec![
            pair(
                "\n\nHuman: How far is the moon?\n\nAssistant:",
                " Far away.",
                " Far away.",
                None,
            ),
            pair(
                "\n\nHuman: I'm so lonely.\n\nAssistant:",
                " I'm here.",
                "",
                None,
            ),
            pair(
                "\n\nHuman: x\n\nAssistant:",
                " a longer one",
                " b",
                Some("custom"),
            ),
        ];
        let summary = Summary::of(&pairs, &ContextRules::embedded());
        assert_eq!(summary.pairs, 3);
        assert_eq!(summary.distinct_prompts, 3);
        assert_eq!(summary.identical_replies, 1);
        assert_eq!(summary.empty_replies, 1);
        assert_eq!(summary.chosen_longer_share, Some(2.0 / 3.0));
        assert_eq!(
            summary.contexts,
            vec![
                ("emotional_support".to_string(), 1),
                ("general".to_string(), 1),
                ("custom".to_string(), 1)
            ]
        );
        let chosen = summary.chosen.unwrap();
        // " Far away." 10 chars / 2 words, " I'm here." 10 / 2, " a longer one" 13 / 3.
        assert_eq!((chosen.chars.min, chosen.chars.max), (10, 13));
        assert_eq!((chosen.words.p50, chosen.words.max), (2, 3));
    }
}
