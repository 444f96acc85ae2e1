//! AI feedback for rlxf: an AI labeler decides which reply is better (RLAIF).
//!
//! - [`PairwiseLabeler`]: soft preference labels as in Lee et al. 2023 ("RLAIF vs. RLHF", arXiv
//!   2309.00267): a preamble, optional few-shot exemplars, the pair and an ending such as
//!   `Preferred Response=`; the label is the softmax over the log-probs of the tokens `1` and `2`.
//!   Every pair is judged in both orders and the two are averaged (position debiasing); both raw
//!   distributions are kept. Optional chain-of-thought writes a rationale first.
//! - [`DirectScorer`] (1–10, `Σ i·P(i)` rescaled to [−1, 1]), [`HarmlessnessJudge`] and
//!   [`WinRateJudge`] on the same machinery, for rewards and evaluation.
//! - Two [`Backend`]s: a local rlxf model ([`LocalBackend`]) and any OpenAI-compatible server
//!   ([`OpenAiBackend`], `/v1/completions` or `/v1/chat/completions` with log-probs; bounded
//!   concurrency, timeouts, retries with backoff and jitter). [`server`] is the other side: an
//!   OpenAI-compatible server over an rlxf model (`rlxf serve`).
//! - [`LabelCache`]: every answer is committed to SQLite as it arrives, so labeling resumes after a
//!   kill and reruns cost nothing. An [`Engine`] is a backend with its cache.
//! - [`audit()`]: agreement with human labels, position bias, length bias and self-preference, per
//!   context tag.
//!
//! ```no_run
//! use rlxf_feedback::{Engine, LabelCache, LocalBackend, PairwiseLabeler, PairwiseTemplate, ResponsePair};
//!
//! let backend = LocalBackend::load_dir("models/labeler".as_ref(), &rlxf_model::Device::Cpu)?;
//! let cache = LabelCache::open("labels.sqlite".as_ref())?;
//! let engine = Engine::new(Box::new(backend), Some(cache));
//! let labeler = PairwiseLabeler::new(PairwiseTemplate::builtin("harmless_detailed")?, None);
//! let pair = ResponsePair { prompt: "\n\nHuman: Hi\n\nAssistant:", a: " Hello!", b: " Go away." };
//! let labels = labeler.label(&engine, &[pair], &mut |_| {})?;
//! println!("P(A better) = {:.3}", labels[0].p_a);
//! # Ok::<(), rlxf_feedback::FeedbackError>(())
//! ```

pub mod audit;
pub mod backend;
pub mod cache;
pub mod choice_tokens;
pub mod config;
pub mod engine;
pub mod error;
pub mod local;
pub mod openai;
pub mod pairwise;
pub mod pointwise;
pub mod server;
pub mod template;

pub use audit::{audit, Audit, AuditItem, AuditStats, Side};
pub use backend::{Backend, ChoiceAnswer, CompletionParams};
pub use cache::{cache_key, AnswerKind, LabelCache};
pub use choice_tokens::ChoiceTokens;
pub use config::{BackendConfig, LabelerConfig, LocalConfig, PromptConfig};
pub use engine::{Engine, EngineStats};
pub use error::{FeedbackError, Result};
pub use local::LocalBackend;
pub use openai::{Endpoint, OpenAiBackend, OpenAiConfig};
pub use pairwise::{
    ChainOfThought, OrderJudgement, PairwiseLabeler, ResponsePair, SoftLabel, WinRate, WinRateJudge,
};
pub use pointwise::{
    DirectScore, DirectScorer, HarmlessnessJudge, HarmlessnessVerdict, PromptResponse,
};
pub use server::{CompletionServer, FaultPlan, RunningServer, ServedModel};
pub use template::{
    load_preamble, ChoiceQuery, PairExemplar, PairwiseTemplate, PointwiseTemplate, PromptFormat,
};
