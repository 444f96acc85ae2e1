//! Embedding-based metrics with rlxf-model's [`SentenceEncoder`] (all-MiniLM-L6-v2 by default):
//!
//! * [`SupportSimilarityMetric`] — per reply, the cosine similarity to the *closest* of a set of
//!   reference empathetic / supportive replies ([`SUPPORTIVE_REFERENCES`], written for rlxf, or your
//!   own). High when the reply reads like support, whatever its exact words; it complements the
//!   phrase-based empathy score, which needs the exact markers.
//! * [`EmbeddingDiversityMetric`] — per set of replies, the mean cosine *distance* `1 - cos` over all
//!   pairs of different replies: 0 when every reply says the same thing, higher when they differ.
//!   It is a U-statistic, so it bootstraps: pairs of copies of the same reply in a resample are
//!   left out, as the original sample has no such pairs.

use std::sync::Arc;

use rlxf_model::SentenceEncoder;

use crate::error::{EvalError, Result};
use crate::metric::{Metric, MetricInfo, MetricKind, ResponseRecord, SetMetric, SetStatistic};

/// Reference supportive replies, written for rlxf: acknowledgement, validation, presence and a
/// pointer to help, across the seed's emotional contexts.
pub const SUPPORTIVE_REFERENCES: [&str; 10] = [
    "I'm really sorry you're going through this. It sounds incredibly hard, and it makes sense that you feel this way.",
    "You're not alone in this. Many people feel the same, and it's okay to ask for help.",
    "Thank you for telling me. I'm here to listen whenever you want to talk about it.",
    "That sounds painful. Would you like to talk about what's been weighing on you the most?",
    "It's completely understandable to feel overwhelmed. Be gentle with yourself and take it one step at a time.",
    "I'm so sorry for your loss. Grief takes time, and there's no right way to feel.",
    "If you ever feel unsafe, please reach out to someone you trust or a crisis line right away.",
    "Talking to a counselor or a doctor could really help, and you deserve that support.",
    "Your feelings are valid. It took courage to share this, and I'm glad you did.",
    "It sounds like you've been carrying a lot on your own. Is there someone close to you who could help?",
];

/// Cosine similarity of each reply to its nearest reference reply, in [-1, 1].
pub struct SupportSimilarityMetric {
    encoder: Arc<SentenceEncoder>,
    references: Vec<Vec<f32>>,
}

impl SupportSimilarityMetric {
    /// Compares replies with `references` (embedded once, here).
    pub fn new<S: AsRef<str>>(encoder: Arc<SentenceEncoder>, references: &[S]) -> Result<Self> {
        if references.is_empty() {
            return Err(EvalError::invalid_argument(
                "references",
                "at least one reference reply is needed",
            ));
        }
        let references = encoder.embed(references)?;
        Ok(Self {
            encoder,
            references,
        })
    }

    /// Compares replies with [`SUPPORTIVE_REFERENCES`].
    pub fn with_supportive_references(encoder: Arc<SentenceEncoder>) -> Result<Self> {
        Self::new(encoder, &SUPPORTIVE_REFERENCES)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

impl Metric for SupportSimilarityMetric {
    fn info(&self) -> MetricInfo {
        MetricInfo {
            name: "support_similarity".into(),
            kind: MetricKind::Mean,
            description: format!(
                "cosine similarity ({}) of the reply to the nearest reference supportive reply",
                self.encoder.name()
            ),
            higher_is_better: Some(true),
        }
    }

    fn score(&self, records: &[ResponseRecord]) -> Result<Vec<Option<f64>>> {
        let replies: Vec<&str> = records
            .iter()
            .map(|record| record.response.as_str())
            .collect();
        let embeddings = self.encoder.embed(&replies)?;
        // Embeddings have unit length, so the dot product is the cosine.
        Ok(embeddings
            .iter()
            .map(|reply| {
                let nearest = self
                    .references
                    .iter()
                    .map(|reference| dot(reply, reference))
                    .fold(f64::NEG_INFINITY, f64::max);
                Some(nearest)
            })
            .collect())
    }
}

/// Mean pairwise cosine distance between different replies of a set.
pub struct EmbeddingDiversityMetric {
    encoder: Arc<SentenceEncoder>,
}

impl EmbeddingDiversityMetric {
    pub fn new(encoder: Arc<SentenceEncoder>) -> Self {
        Self { encoder }
    }
}

impl SetMetric for EmbeddingDiversityMetric {
    fn info(&self) -> MetricInfo {
        MetricInfo {
            name: "embedding_diversity".into(),
            kind: MetricKind::Mean,
            description: format!(
                "mean cosine distance ({}) between pairs of different replies",
                self.encoder.name()
            ),
            higher_is_better: Some(true),
        }
    }

    fn prepare(&self, records: &[ResponseRecord]) -> Result<Box<dyn SetStatistic>> {
        let replies: Vec<&str> = records
            .iter()
            .map(|record| record.response.as_str())
            .collect();
        Ok(Box::new(DiversityStatistic {
            embeddings: self.encoder.embed(&replies)?,
        }))
    }
}

/// Unit-length embeddings of every record.
pub struct DiversityStatistic {
    embeddings: Vec<Vec<f32>>,
}

impl DiversityStatistic {
    pub fn new(embeddings: Vec<Vec<f32>>) -> Self {
        Self { embeddings }
    }
}

impl SetStatistic for DiversityStatistic {
    /// For unit vectors the sum of `e_p · e_q` over ordered pairs of positions `p != q` is
    /// `|Σ e|² - Σ |e|²`, which makes this O(m·d) instead of O(m²·d). Pairs of positions holding
    /// the same record (repeats of a bootstrap resample) are then taken out of both the sum and
    /// the pair count.
    fn value(&self, indices: &[usize]) -> f64 {
        let Some(first) = indices.first() else {
            return f64::NAN;
        };
        let dimension = self.embeddings[*first].len();
        let mut total = vec![0f64; dimension];
        let mut multiplicity = std::collections::HashMap::new();
        for &index in indices {
            for (sum, &x) in total.iter_mut().zip(&self.embeddings[index]) {
                *sum += f64::from(x);
            }
            *multiplicity.entry(index).or_insert(0u64) += 1;
        }
        let mut similarity_sum = total.iter().map(|x| x * x).sum::<f64>();
        let mut pairs = (indices.len() * (indices.len() - 1)) as f64;
        for (&index, &count) in &multiplicity {
            // count copies contribute count * count self-products, count of them with p == q.
            let self_product = dot(&self.embeddings[index], &self.embeddings[index]);
            similarity_sum -= (count * count) as f64 * self_product;
            pairs -= (count * (count - 1)) as f64;
        }
        if pairs == 0.0 {
            return f64::NAN;
        }
        1.0 - similarity_sum / pairs
    }

    fn bootstrappable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    /// Mean of `1 - cos` over pairs of positions holding different records, by brute force.
    fn brute_force(embeddings: &[Vec<f32>], indices: &[usize]) -> f64 {
        let (mut sum, mut pairs) = (0.0, 0.0);
        for (p, &i) in indices.iter().enumerate() {
            for (q, &j) in indices.iter().enumerate() {
                if p != q && i != j {
                    sum += 1.0 - dot(&embeddings[i], &embeddings[j]);
                    pairs += 1.0;
                }
            }
        }
        sum / pairs
    }

    #[test]
    fn closed_form_matches_brute_force_with_repeats() {
        let embeddings: Vec<Vec<f32>> = [
            [1.0, 0.0, 0.0],
            [0.6, 0.8, 0.0],
            [0.0, 0.3, 0.9],
            [-1.0, 0.2, 0.1],
        ]
        .iter()
        .map(|v| unit(v))
        .collect();
        let statistic = DiversityStatistic::new(embeddings.clone());
        for indices in [vec![0, 1, 2, 3], vec![0, 0, 1, 2, 2, 2], vec![3, 1, 3]] {
            let expected = brute_force(&embeddings, &indices);
            assert!(
                (statistic.value(&indices) - expected).abs() < 1e-6,
                "{indices:?}"
            );
        }
        // Orthogonal pair: distance exactly 1.
        assert!((statistic.value(&[0, 2]) - brute_force(&embeddings, &[0, 2])).abs() < 1e-6);
    }

    #[test]
    fn a_single_reply_has_no_pairs() {
        let statistic = DiversityStatistic::new(vec![unit(&[1.0, 1.0])]);
        assert!(statistic.value(&[0]).is_nan());
        assert!(statistic.value(&[0, 0, 0]).is_nan());
        assert!(statistic.value(&[]).is_nan());
    }
}
