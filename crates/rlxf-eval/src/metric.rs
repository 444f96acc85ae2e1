//! The metric interface and the built-in lexical metrics.
//!
//! A [`Metric`] scores responses one value each; a [`SetMetric`] scores a *set* of responses (a
//! policy's replies in one context), such as corpus distinct-n or embedding diversity. Both take
//! batches so that model-based metrics (a reward model, an AI judge from `rlxf-feedback`, the
//! sentence encoder) can run their model once per batch. A judge plugs in by implementing
//! [`Metric`] — pointwise harmlessness as a [`MetricKind::Rate`], a reward score as a
//! [`MetricKind::Mean`] — or, when its scores were computed elsewhere (a label cache, the KL stage
//! of a run), through [`PrecomputedMetric`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::empathy::empathy_score;
use crate::error::{EvalError, Result};
use crate::refusal::RefusalDetector;
use crate::text::{distinct_n, tokens, word_count};
use crate::vader::Vader;

/// The context tag used for records without one (rlxf-data's fallback tag).
pub const DEFAULT_CONTEXT: &str = "general";

/// One generated response to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// The policy (method, model, seed...) that produced the response.
    pub policy: String,
    /// Id of the evaluation prompt; responses of different policies to the same prompt share it,
    /// which is what paired comparisons pair on.
    pub prompt_id: String,
    /// The prompt in HH transcript form (ending with `"\n\nAssistant:"`), as in rlxf-data.
    pub prompt: String,
    /// The reply text as a person reads it.
    pub response: String,
    /// Context tag (rlxf-data's `ContextRules`); `None` counts as [`DEFAULT_CONTEXT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

impl ResponseRecord {
    pub fn context(&self) -> &str {
        self.context.as_deref().unwrap_or(DEFAULT_CONTEXT)
    }

    /// The user's last message: the final human turn of the prompt, trimmed.
    pub fn user_message(&self) -> Option<&str> {
        rlxf_data::hh::human_turns(&self.prompt)
            .last()
            .map(|turn| turn.trim())
            .filter(|turn| !turn.is_empty())
    }

    /// `policy/prompt_id`, how errors name a record.
    pub fn key(&self) -> String {
        format!("{}/{}", self.policy, self.prompt_id)
    }
}

/// How a metric's values aggregate and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Values are 0 or 1, or one half for a tie (as win rates count ties); the aggregate is a
    /// rate.
    Rate,
    /// Any finite values; the aggregate is a mean.
    Mean,
}

/// Name, kind and a one-line description, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricInfo {
    pub name: String,
    pub kind: MetricKind,
    pub description: String,
    /// True when higher values are better (for report arrows); `None` when neither is.
    pub higher_is_better: Option<bool>,
}

/// A per-response metric.
pub trait Metric {
    fn info(&self) -> MetricInfo;

    /// One value per record, in order; `None` where the metric does not apply (for instance a
    /// judge that could not parse its own verdict). Rate metrics return 0 or 1.
    fn score(&self, records: &[ResponseRecord]) -> Result<Vec<Option<f64>>>;
}

/// A metric of a set of responses, computed from per-response features so that bootstrap
/// resamples (index lists, with repeats) can be evaluated without recomputing them.
pub trait SetMetric {
    fn info(&self) -> MetricInfo;

    /// Features of `records`, from which [`SetStatistic::value`] evaluates any sub-multiset.
    fn prepare(&self, records: &[ResponseRecord]) -> Result<Box<dyn SetStatistic>>;
}

pub trait SetStatistic {
    /// The statistic on the records at `indices` (repeats allowed); non-finite when undefined.
    fn value(&self, indices: &[usize]) -> f64;

    /// Whether bootstrap resampling gives an interval with the intended meaning. Statistics that
    /// depend on the number of *distinct* items (distinct-n) are biased by the repeats of a
    /// resample and report the point value only.
    fn bootstrappable(&self) -> bool;
}

fn info(
    name: &str,
    kind: MetricKind,
    description: &str,
    higher_is_better: Option<bool>,
) -> MetricInfo {
    MetricInfo {
        name: name.to_string(),
        kind,
        description: description.to_string(),
        higher_is_better,
    }
}

/// VADER compound score of the response, in [-1, 1].
pub struct SentimentMetric;

impl Metric for SentimentMetric {
    fn info(&self) -> MetricInfo {
        info(
            "sentiment",
            MetricKind::Mean,
            "VADER compound sentiment of the reply, -1 (negative) to 1 (positive)",
            None,
        )
    }

    fn score(&self, records: &[ResponseRecord]) -> Result<Vec<Option<f64>>> {
        let vader = Vader::embedded();
        Ok(records
            .iter()
            .map(|record| Some(vader.compound(&record.response)))
            .collect())
    }
}

/// The lexicon-and-alignment empathy score (see [`crate::empathy`]), in [0, 1].
pub struct EmpathyMetric;

impl Metric for EmpathyMetric {
    fn info(&self) -> MetricInfo {
        info(
            "empathy",
            MetricKind::Mean,
            "acknowledgement, validation and support markers plus tone alignment with the user, 0 to 1",
            Some(true),
        )
    }

    fn score(&self, records: &[ResponseRecord]) -> Result<Vec<Option<f64>>> {
        Ok(records
            .iter()
            .map(|record| Some(empathy_score(&record.response, record.user_message()).score))
            .collect())
    }
}

/// 1 when the response matches a refusal pattern (see [`crate::refusal`]).
pub struct RefusalMetric;

impl Metric for RefusalMetric {
    fn info(&self) -> MetricInfo {
        info(
            "refusal",
            MetricKind::Rate,
            "share of replies that refuse",
            None,
        )
    }

    fn score(&self, records: &[ResponseRecord]) -> Result<Vec<Option<f64>>> {
        let detector = RefusalDetector::standard();
        Ok(records
            .iter()
            .map(|record| Some(f64::from(u8::from(detector.is_refusal(&record.response)))))
            .collect())
    }
}

/// Number of words in the response.
pub struct LengthMetric;

impl Metric for LengthMetric {
    fn info(&self) -> MetricInfo {
        info("length_words", MetricKind::Mean, "words per reply", None)
    }

    fn score(&self, records: &[ResponseRecord]) -> Result<Vec<Option<f64>>> {
        Ok(records
            .iter()
            .map(|record| Some(word_count(&record.response) as f64))
            .collect())
    }
}

/// Scores computed elsewhere (a judge's label cache, the KL stage of a run), looked up by policy
/// and prompt id. Records without a score get `None` unless `required`, which makes a missing one
/// an error.
pub struct PrecomputedMetric {
    info: MetricInfo,
    values: HashMap<(String, String), f64>,
    required: bool,
}

impl PrecomputedMetric {
    /// `values` maps `(policy, prompt_id)` to the value.
    pub fn new(info: MetricInfo, values: HashMap<(String, String), f64>, required: bool) -> Self {
        Self {
            info,
            values,
            required,
        }
    }
}

impl Metric for PrecomputedMetric {
    fn info(&self) -> MetricInfo {
        self.info.clone()
    }

    fn score(&self, records: &[ResponseRecord]) -> Result<Vec<Option<f64>>> {
        records
            .iter()
            .map(|record| {
                let key = (record.policy.clone(), record.prompt_id.clone());
                match self.values.get(&key) {
                    Some(&value) => Ok(Some(value)),
                    None if self.required => Err(EvalError::InvalidRecord {
                        record: record.key(),
                        field: self.info.name.clone(),
                        reason: "no precomputed value for this policy and prompt".into(),
                    }),
                    None => Ok(None),
                }
            })
            .collect()
    }
}

/// Corpus distinct-n of a set of replies (Li et al. 2016): distinct n-grams / all n-grams.
pub struct DistinctNMetric {
    pub n: usize,
}

struct DistinctNStatistic {
    n: usize,
    tokens: Vec<Vec<String>>,
}

impl SetStatistic for DistinctNStatistic {
    fn value(&self, indices: &[usize]) -> f64 {
        distinct_n(indices.iter().map(|&i| self.tokens[i].as_slice()), self.n)
            .ratio()
            .unwrap_or(f64::NAN)
    }

    fn bootstrappable(&self) -> bool {
        false
    }
}

impl SetMetric for DistinctNMetric {
    fn info(&self) -> MetricInfo {
        info(
            &format!("distinct_{}", self.n),
            MetricKind::Mean,
            &format!(
                "distinct {}-grams / all {}-grams over the replies",
                self.n, self.n
            ),
            Some(true),
        )
    }

    fn prepare(&self, records: &[ResponseRecord]) -> Result<Box<dyn SetStatistic>> {
        if self.n == 0 {
            return Err(EvalError::invalid_argument("n", "distinct-n needs n >= 1"));
        }
        Ok(Box::new(DistinctNStatistic {
            n: self.n,
            tokens: records
                .iter()
                .map(|record| tokens(&record.response))
                .collect(),
        }))
    }
}

/// The built-in model-free metrics: sentiment, empathy, refusal, length.
pub fn lexical_metrics() -> Vec<Box<dyn Metric>> {
    vec![
        Box::new(SentimentMetric),
        Box::new(EmpathyMetric),
        Box::new(RefusalMetric),
        Box::new(LengthMetric),
    ]
}

/// Corpus distinct-1 and distinct-2.
pub fn distinct_metrics() -> Vec<Box<dyn SetMetric>> {
    vec![
        Box::new(DistinctNMetric { n: 1 }),
        Box::new(DistinctNMetric { n: 2 }),
    ]
}
