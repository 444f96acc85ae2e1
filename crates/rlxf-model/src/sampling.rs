//! Choosing the next token from a row of logits: greedy, temperature, top-k and top-p (nucleus)
//! filtering, seeded sampling, and the log-probability of a token under the raw distribution.
//!
//! Plain `f32` slices in, `f64` arithmetic inside: a vocabulary row is small enough that this is
//! cheaper than a round trip through tensors, and it keeps the math easy to check by hand.

use rand::Rng;

use crate::fused_ops;

/// How tokens are filtered before sampling. `temperature == 0` means greedy (the filters are then
/// irrelevant); the filters apply in the Hugging Face order: temperature, then top-k, then top-p
/// on the distribution renormalised after top-k.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
}

/// `log_softmax(logits)[id]`, computed stably (max subtracted before exponentiating).
pub fn log_softmax_at(logits: &[f32], id: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (f64::from(logits[id]) - f64::from(max) - sum_exp_below(logits, max).ln()) as f32
}

/// `Σ e^(logit - max)` through the `f32` exponential of [`fused_ops::exp_f32`] (2.5e-7 relative
/// error): each block of logits is exponentiated into a buffer (a loop that vectorises, unlike
/// one that also accumulates), summed in eight `f32` lanes of eight terms, and the blocks' sums
/// are added in `f64`. libm's `f64` `exp` per logit took 6% of a batch-8 GPT-Neo generation step
/// (a row of 50,257 logits per generated token).
fn sum_exp_below(logits: &[f32], max: f32) -> f64 {
    const LANES: usize = 8;
    let mut exps = [0f32; LANES * LANES];
    logits
        .chunks(exps.len())
        .map(|block| {
            let exps = &mut exps[..block.len()];
            for (exp, &logit) in exps.iter_mut().zip(block) {
                *exp = fused_ops::exp_f32(logit - max);
            }
            let mut lanes = [0f32; LANES];
            let mut rows = exps.chunks_exact(LANES);
            for row in rows.by_ref() {
                for (lane, &exp) in lanes.iter_mut().zip(row) {
                    *lane += exp;
                }
            }
            let tail: f32 = rows.remainder().iter().sum();
            lanes.iter().map(|&lane| f64::from(lane)).sum::<f64>() + f64::from(tail)
        })
        .sum()
}

/// Index of the largest logit; the lowest index wins a tie, so greedy decoding is deterministic.
/// NaNs are never the largest (0 when every logit is NaN).
pub fn argmax(logits: &[f32]) -> usize {
    // Two passes that vectorise (the maximum, then its first position) instead of one
    // compare-and-branch per logit.
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    logits.iter().position(|&logit| logit == max).unwrap_or(0)
}

/// The tokens that survive temperature, top-k and top-p, with their renormalised probabilities,
/// in increasing id order (a canonical order, so the same seed picks the same token whether or
/// not a filter happened to remove nothing). Requires `params.temperature > 0`.
///
/// Neither filter sorts the whole vocabulary: top-k is a linear-time partial selection, and top-p
/// sorts only a growing head of the distribution until it holds `top_p` of the mass.
pub fn filtered_distribution(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f64)> {
    let scaled: Vec<f64> = logits
        .iter()
        .map(|&logit| logit as f64 / params.temperature)
        .collect();
    // Descending by scaled logit, ties broken by lower id: a total order, so selection is
    // deterministic.
    let by_logit_desc = |a: &u32, b: &u32| {
        scaled[*b as usize]
            .total_cmp(&scaled[*a as usize])
            .then(a.cmp(b))
    };

    let mut candidates: Vec<u32> = (0..logits.len() as u32).collect();
    if let Some(k) = params.top_k.filter(|&k| k < candidates.len()) {
        candidates.select_nth_unstable_by(k - 1, by_logit_desc);
        candidates.truncate(k);
    }
    if let Some(top_p) = params.top_p.filter(|&p| p < 1.0) {
        let keep = nucleus_size(&mut candidates, &scaled, top_p, by_logit_desc);
        candidates.truncate(keep);
    }
    let probs = softmax_over(&scaled, &candidates);

    let mut distribution: Vec<(u32, f64)> = candidates.into_iter().zip(probs).collect();
    distribution.sort_unstable_by_key(|&(id, _)| id);
    distribution
}

/// Reorders `candidates` so that the smallest set of most likely tokens whose mass (under the
/// softmax over all candidates) reaches `top_p` comes first, and returns its size. A token is kept
/// while the mass of the tokens before it is below `top_p`, so the most likely token always
/// survives. Only a head of 64, 256, 1024, ... candidates is ever sorted.
fn nucleus_size(
    candidates: &mut [u32],
    scaled: &[f64],
    top_p: f64,
    by_logit_desc: impl Fn(&u32, &u32) -> std::cmp::Ordering + Copy,
) -> usize {
    let max = candidates
        .iter()
        .map(|&id| scaled[id as usize])
        .fold(f64::NEG_INFINITY, f64::max);
    let normaliser: f64 = candidates
        .iter()
        .map(|&id| (scaled[id as usize] - max).exp())
        .sum();
    let mut head = candidates.len().min(64);
    loop {
        if head < candidates.len() {
            candidates.select_nth_unstable_by(head - 1, by_logit_desc);
        }
        candidates[..head].sort_unstable_by(by_logit_desc);
        let mut mass_before = 0.0;
        for (rank, &id) in candidates[..head].iter().enumerate() {
            if mass_before >= top_p {
                return rank;
            }
            mass_before += (scaled[id as usize] - max).exp() / normaliser;
        }
        if head == candidates.len() {
            return head;
        }
        head = (head * 4).min(candidates.len());
    }
}

/// Softmax of `scaled` restricted to `candidates`, in the candidates' order.
fn softmax_over(scaled: &[f64], candidates: &[u32]) -> Vec<f64> {
    let max = candidates
        .iter()
        .map(|&id| scaled[id as usize])
        .fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = candidates
        .iter()
        .map(|&id| (scaled[id as usize] - max).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|exp| exp / sum).collect()
}

/// Draws a token from `distribution` (probabilities summing to 1) with one uniform draw.
pub fn sample(distribution: &[(u32, f64)], rng: &mut impl Rng) -> u32 {
    let draw: f64 = rng.random();
    let mut cumulative = 0.0;
    for &(id, prob) in distribution {
        cumulative += prob;
        if draw < cumulative {
            return id;
        }
    }
    // Rounding can leave the cumulative sum a hair under 1.
    distribution.last().map(|&(id, _)| id).unwrap_or(0)
}

/// The next token for one row of logits: argmax when greedy, else a seeded draw from the filtered
/// distribution.
pub fn next_token(logits: &[f32], params: &SamplingParams, rng: &mut impl Rng) -> u32 {
    if params.temperature == 0.0 {
        return argmax(logits) as u32;
    }
    sample(&filtered_distribution(logits, params), rng)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    /// Logits whose softmax is exactly `probs`.
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|&p| p.ln() as f32).collect()
    }

    fn params(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
        }
    }

    fn assert_distribution(actual: &[(u32, f64)], expected: &[(u32, f64)]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (&(id, prob), &(want_id, want_prob)) in actual.iter().zip(expected) {
            assert_eq!(id, want_id, "{actual:?} vs {expected:?}");
            assert!(
                (prob - want_prob).abs() < 1e-6,
                "{actual:?} vs {expected:?}"
            );
        }
    }

    // Ids 1, 3, 0, 2 hold probabilities 0.5, 0.25, 0.15, 0.10 (shuffled so ids != ranks).
    const PROBS: [f64; 4] = [0.15, 0.5, 0.10, 0.25];

    #[test]
    fn unfiltered_distribution_is_the_softmax() {
        let dist = filtered_distribution(&logits_of(&PROBS), &params(1.0, None, None));
        assert_distribution(&dist, &[(0, 0.15), (1, 0.5), (2, 0.10), (3, 0.25)]);
    }

    #[test]
    fn temperature_raises_probabilities_to_one_over_t() {
        // softmax(log p / T) = p^(1/T) / sum p^(1/T)
        let t = 2.0;
        let powered: Vec<f64> = PROBS.iter().map(|p| p.powf(1.0 / t)).collect();
        let sum: f64 = powered.iter().sum();
        let expected: Vec<(u32, f64)> = powered
            .iter()
            .enumerate()
            .map(|(id, p)| (id as u32, p / sum))
            .collect();
        let dist = filtered_distribution(&logits_of(&PROBS), &params(t, None, None));
        assert_distribution(&dist, &expected);
    }

    #[test]
    fn top_k_keeps_the_k_most_likely_renormalised() {
        let dist = filtered_distribution(&logits_of(&PROBS), &params(1.0, Some(2), None));
        assert_distribution(&dist, &[(1, 0.5 / 0.75), (3, 0.25 / 0.75)]);
        let all = filtered_distribution(&logits_of(&PROBS), &params(1.0, Some(10), None));
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn top_p_keeps_the_smallest_head_reaching_p() {
        let logits = logits_of(&PROBS);
        // Mass before each token in rank order: 0, 0.5, 0.75, 0.9.
        let dist = filtered_distribution(&logits, &params(1.0, None, Some(0.7)));
        assert_distribution(&dist, &[(1, 0.5 / 0.75), (3, 0.25 / 0.75)]);
        let dist = filtered_distribution(&logits, &params(1.0, None, Some(0.5)));
        assert_distribution(&dist, &[(1, 1.0)]);
        let dist = filtered_distribution(&logits, &params(1.0, None, Some(0.76)));
        assert_distribution(&dist, &[(0, 0.15 / 0.9), (1, 0.5 / 0.9), (3, 0.25 / 0.9)]);
    }

    #[test]
    fn top_p_applies_to_the_distribution_left_by_top_k() {
        // After top-3: 0.5/0.9, 0.25/0.9, 0.15/0.9; mass before rank 2 is 0.833 >= 0.8.
        let dist = filtered_distribution(&logits_of(&PROBS), &params(1.0, Some(3), Some(0.8)));
        assert_distribution(&dist, &[(1, 0.5 / 0.75), (3, 0.25 / 0.75)]);
    }

    #[test]
    fn partial_selection_matches_a_full_sort_on_a_large_vocabulary() {
        // Scrambled, distinct logits over 5,000 ids so the nucleus needs several head growths.
        let vocab = 5000u32;
        let logits: Vec<f32> = (0..vocab)
            .map(|id| ((id * 7919) % vocab) as f32 * -0.002)
            .collect();
        for (top_k, top_p) in [
            (None, Some(0.5)),
            (Some(3000), Some(0.9)),
            (Some(17), None),
            (None, Some(0.01)),
        ] {
            let dist = filtered_distribution(&logits, &params(0.7, top_k, top_p));
            // Reference: sort everything, cut, renormalise.
            let mut order: Vec<u32> = (0..vocab).collect();
            order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
            order.truncate(top_k.unwrap_or(order.len()));
            let weights: Vec<f64> = order
                .iter()
                .map(|&id| (logits[id as usize] as f64 / 0.7).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            let mut kept = Vec::new();
            let mut mass_before = 0.0;
            for (&id, &weight) in order.iter().zip(&weights) {
                if top_p.is_some_and(|p| mass_before >= p) {
                    break;
                }
                mass_before += weight / total;
                kept.push((id, weight));
            }
            let kept_total: f64 = kept.iter().map(|&(_, w)| w).sum();
            let mut expected: Vec<(u32, f64)> =
                kept.iter().map(|&(id, w)| (id, w / kept_total)).collect();
            expected.sort_by_key(|&(id, _)| id);
            assert_distribution(&dist, &expected);
        }
    }

    #[test]
    fn log_softmax_and_argmax_by_hand() {
        let logits = [0.0f32, 3f32.ln(), 3f32.ln()];
        // softmax = [1/7, 3/7, 3/7]
        assert!((log_softmax_at(&logits, 0) - (1.0f32 / 7.0).ln()).abs() < 1e-6);
        assert!((log_softmax_at(&logits, 2) - (3.0f32 / 7.0).ln()).abs() < 1e-6);
        assert_eq!(argmax(&logits), 1, "ties go to the lowest id");
        assert_eq!(
            argmax(&[f32::NAN, 1.0, 3.0, f32::NAN, 3.0]),
            2,
            "NaNs never win"
        );
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(
            next_token(
                &logits,
                &params(0.0, None, None),
                &mut ChaCha20Rng::seed_from_u64(0)
            ),
            1
        );
    }

    #[test]
    fn log_softmax_over_a_vocabulary_equals_the_f64_definition() {
        // A GPT-2-sized row spread over 40 nats, and a short one whose largest logit is in the
        // ragged tail after the 8-lane loop.
        let vocabulary: Vec<f32> = (0..50_257u32)
            .map(|id| ((id * 7919) % 50_257) as f32 * 8e-4 - 30.0)
            .collect();
        let short = [0.5f32, -1.0, 0.0, 2.0, -3.0, 1.0, 0.25, -0.5, 4.0];
        for logits in [&vocabulary[..], &short] {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
            for id in [0, 1, 3, logits.len() / 2, logits.len() - 1] {
                let expected = (logits[id] as f64 - max - sum.ln()) as f32;
                let got = log_softmax_at(logits, id);
                // Within one unit in the last place of the f32 result.
                assert!(
                    (got - expected).abs() <= f32::EPSILON * expected.abs(),
                    "id {id} of {}: {got} vs {expected}",
                    logits.len()
                );
            }
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let distribution = [(4u32, 0.2), (9, 0.5), (11, 0.3)];
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let draws = 40_000;
        let mut counts = [0usize; 3];
        for _ in 0..draws {
            let id = sample(&distribution, &mut rng);
            counts[distribution.iter().position(|&(d, _)| d == id).unwrap()] += 1;
        }
        for (count, &(_, prob)) in counts.iter().zip(&distribution) {
            // 4 standard deviations of a binomial proportion at n = 40,000 is under 0.01.
            assert!(
                (*count as f64 / draws as f64 - prob).abs() < 0.01,
                "{counts:?}"
            );
        }
    }
}
