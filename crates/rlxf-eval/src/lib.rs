//! Evaluation metrics and statistics for rlxf.
//!
//! * Per-response metrics ([`Metric`]): VADER sentiment ([`vader`], a port of Python
//!   vaderSentiment 3.3.2 with parity tests), the transparent [`empathy`] score, [`refusal`]
//!   detection, length; KL to a reference model from per-token log-probs ([`kl`]); semantic
//!   similarity to reference supportive replies with the MiniLM sentence encoder ([`semantic`]).
//!   Judges and reward models plug in by implementing [`Metric`] or through [`PrecomputedMetric`].
//! * Set metrics ([`SetMetric`]): corpus distinct-1/2 ([`text`]) and embedding diversity.
//! * Statistics ([`stats`]): seeded percentile-bootstrap intervals for rates and means, paired
//!   bootstrap and sign-flip permutation tests, sample counts everywhere.
//! * Aggregation ([`Evaluator`], [`EvalResults`]): every metric per policy × context (tags from
//!   rlxf-data) and each policy against a baseline, in one serialisable struct for reports.
//!
//! ```
//! use rlxf_eval::{distinct_metrics, lexical_metrics, Evaluator, ResponseRecord};
//!
//! let record = |policy: &str, id: &str, response: &str| ResponseRecord {
//!     policy: policy.into(),
//!     prompt_id: id.into(),
//!     prompt: "\n\nHuman: I feel lonely lately.\n\nAssistant:".into(),
//!     response: response.into(),
//!     context: Some("emotional_support".into()),
//! };
//! let records = vec![
//!     record("sft", "p1", "Go outside."),
//!     record("dpo", "p1", "I'm sorry you're feeling lonely. You're not alone, and I'm here for you."),
//! ];
//! let results = Evaluator::new(lexical_metrics(), distinct_metrics())
//!     .with_baseline("sft")
//!     .evaluate(records)?;
//! let empathy = results.cell("dpo", "emotional_support", "empathy").unwrap();
//! assert_eq!(empathy.n, 1);
//! assert!(empathy.value.unwrap() > 0.8);
//! # Ok::<(), rlxf_eval::EvalError>(())
//! ```

pub mod aggregate;
pub mod empathy;
pub mod error;
pub mod kl;
pub mod metric;
pub mod refusal;
pub mod semantic;
pub mod stats;
pub mod text;
pub mod vader;

pub use aggregate::{
    ComparisonCell, EvalResults, Evaluator, ResultCell, ScoredRecords, ALL_CONTEXTS,
};
pub use empathy::{empathy_score, EmpathyScore};
pub use error::{EvalError, Result};
pub use kl::{kl_from_logprobs, kl_metric, kl_to_reference, KlEstimate};
pub use metric::{
    distinct_metrics, lexical_metrics, DistinctNMetric, EmpathyMetric, LengthMetric, Metric,
    MetricInfo, MetricKind, PrecomputedMetric, RefusalMetric, ResponseRecord, SentimentMetric,
    SetMetric, SetStatistic, DEFAULT_CONTEXT,
};
pub use refusal::RefusalDetector;
pub use semantic::{EmbeddingDiversityMetric, SupportSimilarityMetric, SUPPORTIVE_REFERENCES};
pub use stats::{
    bootstrap, bootstrap_mean, bootstrap_rate, paired_comparison, Estimate, PairedComparison,
    StatsConfig,
};
pub use text::{distinct_n, distinct_n_of_texts, tokens, word_count, DistinctN};
pub use vader::{SentimentScores, Vader};
