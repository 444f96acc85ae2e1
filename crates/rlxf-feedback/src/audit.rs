//! The labeler audit: how far an AI labeler can be trusted, overall and per context tag.
//!
//! - **Agreement** with the human labels: the fraction of pairs where the position-debiased label
//!   prefers the human-chosen reply (`p_chosen > 0.5`; an exact tie counts one half).
//! - **Position bias rate**: the fraction of pairs where both orders prefer the same *position*, so
//!   the two judgements contradict each other about the replies; plus the fraction of single-order
//!   judgements that prefer Response 1 (0.5 for an unbiased labeler).
//! - **Length bias**: the Pearson correlation, over pairs, between `p_chosen` and the length
//!   difference `len(chosen) − len(rejected)` in characters (positive: longer replies are
//!   preferred), and the fraction of unequal-length pairs where the longer reply is preferred.
//! - **Self-preference**, for pairs where one reply is known to be the labeler's own: how often the
//!   labeler prefers its own reply, next to how often the humans chose it.
//!
//! Every rate comes with the count it is computed over; a rate with nothing to compute it over is
//! `None` (`null` in JSON), never a made-up number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pairwise::{hard_preference, SoftLabel};

/// Which reply of a human-labeled pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Chosen,
    Rejected,
}

/// One labeled pair as the audit sees it. The label's reply A is `chosen`, B is `rejected`.
#[derive(Debug, Clone, Copy)]
pub struct AuditItem<'a> {
    pub label: &'a SoftLabel,
    pub context: &'a str,
    pub chosen: &'a str,
    pub rejected: &'a str,
    /// Which reply the labeler itself wrote, when known.
    pub own: Option<Side>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthBias {
    /// Pearson correlation of `p_chosen` with the length difference; `None` when either is
    /// constant or there are fewer than two pairs.
    pub correlation: Option<f64>,
    /// Pairs whose replies differ in length.
    pub n_unequal: usize,
    /// Among those, the fraction where the longer reply is preferred.
    pub longer_preferred_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfPreference {
    /// Pairs where one reply is the labeler's own.
    pub n: usize,
    /// Fraction of those where the labeler prefers its own reply.
    pub own_preferred_rate: Option<f64>,
    /// Mean probability the labeler gives its own reply.
    pub mean_p_own: Option<f64>,
    /// Fraction where the humans chose the labeler's reply: the baseline to compare against.
    pub human_chose_own_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditStats {
    /// Pairs audited.
    pub n: usize,
    pub agreement: Option<f64>,
    pub mean_p_chosen: Option<f64>,
    pub position_bias_rate: Option<f64>,
    /// Fraction of single-order judgements (two per pair, ties left out) preferring Response 1.
    pub first_position_rate: Option<f64>,
    /// Single-order judgements with a strict preference.
    pub n_position_judgements: usize,
    pub length_bias: LengthBias,
    pub self_preference: SelfPreference,
    /// Mean probability mass on the answer tokens: low values mean the labels rest on tokens the
    /// labeler rarely produces.
    pub mean_choice_mass: Option<f64>,
    /// Pairs whose prompt was cut to fit the labeler's context (either order).
    pub truncated: usize,
    /// Pairs where a server's top log-probs missed an answer token (either order).
    pub bounded: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub overall: AuditStats,
    /// The same statistics per context tag.
    pub by_context: BTreeMap<String, AuditStats>,
}

/// Audits `items` overall and per context tag.
pub fn audit(items: &[AuditItem<'_>]) -> Audit {
    let mut groups: BTreeMap<String, Vec<AuditItem<'_>>> = BTreeMap::new();
    for item in items {
        groups
            .entry(item.context.to_string())
            .or_default()
            .push(*item);
    }
    Audit {
        overall: stats(items),
        by_context: groups
            .into_iter()
            .map(|(context, group)| (context, stats(&group)))
            .collect(),
    }
}

fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values
        .into_iter()
        .fold((0.0, 0usize), |(sum, count), v| (sum + v, count + 1));
    (count > 0).then(|| sum / count as f64)
}

/// Pearson correlation; `None` for fewer than two points or a constant variable.
pub fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    assert_eq!(xs.len(), ys.len(), "paired samples");
    let mean_x = mean(xs.iter().copied())?;
    let mean_y = mean(ys.iter().copied())?;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        let (dx, dy) = (x - mean_x, y - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    (xs.len() >= 2 && sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

fn reply_length(text: &str) -> f64 {
    text.trim().chars().count() as f64
}

fn stats(items: &[AuditItem<'_>]) -> AuditStats {
    let p_chosen: Vec<f64> = items.iter().map(|item| item.label.p_a).collect();
    let judgements: Vec<u8> = items
        .iter()
        .flat_map(|item| {
            [
                item.label.a_first.preferred_position(),
                item.label.b_first.preferred_position(),
            ]
        })
        .flatten()
        .collect();
    let length_differences: Vec<f64> = items
        .iter()
        .map(|item| reply_length(item.chosen) - reply_length(item.rejected))
        .collect();
    let longer_preferred: Vec<f64> = items
        .iter()
        .zip(&length_differences)
        .filter(|(_, &difference)| difference != 0.0)
        .map(|(item, &difference)| {
            let p_longer = if difference > 0.0 {
                item.label.p_a
            } else {
                item.label.p_b()
            };
            hard_preference(p_longer)
        })
        .collect();
    let own: Vec<(f64, bool)> = items
        .iter()
        .filter_map(|item| {
            item.own.map(|side| match side {
                Side::Chosen => (item.label.p_a, true),
                Side::Rejected => (item.label.p_b(), false),
            })
        })
        .collect();
    let orders = |item: &AuditItem<'_>| [item.label.a_first.clone(), item.label.b_first.clone()];
    AuditStats {
        n: items.len(),
        agreement: mean(p_chosen.iter().map(|&p| hard_preference(p))),
        mean_p_chosen: mean(p_chosen.iter().copied()),
        position_bias_rate: mean(
            items
                .iter()
                .map(|item| f64::from(u8::from(item.label.same_position_preferred()))),
        ),
        first_position_rate: mean(judgements.iter().map(|&p| f64::from(u8::from(p == 1)))),
        n_position_judgements: judgements.len(),
        length_bias: LengthBias {
            correlation: pearson(&p_chosen, &length_differences),
            n_unequal: longer_preferred.len(),
            longer_preferred_rate: mean(longer_preferred.iter().copied()),
        },
        self_preference: SelfPreference {
            n: own.len(),
            own_preferred_rate: mean(own.iter().map(|&(p, _)| hard_preference(p))),
            mean_p_own: mean(own.iter().map(|&(p, _)| p)),
            human_chose_own_rate: mean(own.iter().map(|&(_, chosen)| f64::from(u8::from(chosen)))),
        },
        mean_choice_mass: mean(
            items
                .iter()
                .flat_map(|item| orders(item).map(|order| order.choice_mass)),
        ),
        truncated: items
            .iter()
            .filter(|item| orders(item).iter().any(|order| order.truncated))
            .count(),
        bounded: items
            .iter()
            .filter(|item| orders(item).iter().any(|order| !order.bounded.is_empty()))
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairwise::OrderJudgement;

    fn order(p1: f64) -> OrderJudgement {
        OrderJudgement {
            probs: [p1, 1.0 - p1],
            logprobs: [p1.ln(), (1.0 - p1).ln()],
            choice_mass: 0.5,
            bounded: Vec::new(),
            truncated: false,
            rationale: None,
        }
    }

    /// A label from the two raw first-position probabilities.
    fn label(a_first_p1: f64, b_first_p1: f64) -> SoftLabel {
        SoftLabel {
            p_a: 0.5 * (a_first_p1 + (1.0 - b_first_p1)),
            a_first: order(a_first_p1),
            b_first: order(b_first_p1),
        }
    }

    #[test]
    fn hand_computed_audit() {
        // Pair 1: prefers chosen in both orders (consistent). p_a = (0.8 + 0.7) / 2 = 0.75.
        // Pair 2: prefers position 1 in both orders (position bias). p_a = (0.9 + 0.4) / 2 = 0.65.
        // Pair 3: prefers rejected consistently. p_a = (0.2 + 0.1) / 2 = 0.15.
        // Pair 4: prefers position 2 in both orders. p_a = (0.2 + 0.6) / 2 = 0.4.
        let labels = [
            label(0.8, 0.3),
            label(0.9, 0.6),
            label(0.2, 0.9),
            label(0.2, 0.4),
        ];
        let replies = [
            ("abcd", "ab"),
            ("a", "abc"),
            ("abc", "abc"),
            ("ab", "abcde"),
        ];
        let contexts = ["x", "x", "y", "y"];
        let owns = [Some(Side::Chosen), Some(Side::Rejected), None, None];
        let items: Vec<AuditItem<'_>> = (0..4)
            .map(|i| AuditItem {
                label: &labels[i],
                context: contexts[i],
                chosen: replies[i].0,
                rejected: replies[i].1,
                own: owns[i],
            })
            .collect();
        let audit = audit(&items);
        let overall = &audit.overall;
        assert_eq!(overall.n, 4);
        assert_eq!(overall.agreement, Some(0.5));
        assert!((overall.mean_p_chosen.unwrap() - 0.4875).abs() < 1e-12);
        assert_eq!(overall.position_bias_rate, Some(0.5));
        // Preferred positions: (1,2), (1,1), (2,1), (2,2): 4 of 8 are position 1.
        assert_eq!(overall.first_position_rate, Some(0.5));
        assert_eq!(overall.n_position_judgements, 8);
        // Length differences 2, -2, 0, -3 against p_a 0.75, 0.65, 0.15, 0.4 (numpy.corrcoef).
        let expected = 0.258_589_556_226_390_46;
        assert!((overall.length_bias.correlation.unwrap() - expected).abs() < 1e-12);
        // Unequal pairs: 1 (longer = chosen, p 0.75 → 1), 2 (longer = rejected, p_b 0.35 → 0),
        // 4 (longer = rejected, p_b 0.6 → 1).
        assert_eq!(overall.length_bias.n_unequal, 3);
        assert!((overall.length_bias.longer_preferred_rate.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Own replies: pair 1 chosen (p 0.75, preferred), pair 2 rejected (p_b 0.35, not).
        let own = &overall.self_preference;
        assert_eq!(own.n, 2);
        assert_eq!(own.own_preferred_rate, Some(0.5));
        assert!((own.mean_p_own.unwrap() - 0.55).abs() < 1e-12);
        assert_eq!(own.human_chose_own_rate, Some(0.5));
        assert_eq!(overall.mean_choice_mass, Some(0.5));

        let x = &audit.by_context["x"];
        assert_eq!(
            (x.n, x.agreement, x.position_bias_rate),
            (2, Some(1.0), Some(0.5))
        );
        let y = &audit.by_context["y"];
        assert_eq!((y.n, y.agreement), (2, Some(0.0)));
        assert_eq!(y.self_preference.n, 0);
        assert_eq!(y.self_preference.own_preferred_rate, None);
        // Two points always correlate perfectly (p rises as the difference rises: 0 → −3 pairs
        // with 0.15 → 0.4, a negative slope).
        assert!((y.length_bias.correlation.unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn undefined_statistics_are_none() {
        assert_eq!(pearson(&[1.0], &[2.0]), None);
        assert_eq!(pearson(&[1.0, 1.0], &[2.0, 3.0]), None);
        let empty = audit(&[]);
        assert_eq!(empty.overall.n, 0);
        assert_eq!(empty.overall.agreement, None);
        assert!(empty.by_context.is_empty());
    }
}
