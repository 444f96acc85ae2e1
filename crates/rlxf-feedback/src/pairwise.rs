//! Pairwise preference labels (Lee et al. 2023, "RLAIF vs. RLHF", arXiv 2309.00267) and the
//! pairwise win-rate judge built on them.
//!
//! Every pair is judged in **both orders**: once with reply A shown as "Response 1", once with B
//! shown first. Each order gives a distribution over the positions (softmax of the log-probs of
//! `1` and `2` after the ending); the swapped one is mapped back to (A, B) and the two are averaged,
//! which cancels any preference the labeler has for a position. Both raw distributions are kept,
//! so the audit can measure that position bias.

use serde::{Deserialize, Serialize};

use crate::backend::{ChoiceAnswer, CompletionParams};
use crate::engine::Engine;
use crate::error::{FeedbackError, Result};
use crate::template::{ChoiceQuery, PairwiseTemplate};

/// Two replies to one prompt. Neither is privileged: the labeler sees them in both orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePair<'a> {
    /// The conversation so far (HH transcript form, ending with `\n\nAssistant:`).
    pub prompt: &'a str,
    pub a: &'a str,
    pub b: &'a str,
}

/// What the labeler answered for one order of presentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderJudgement {
    /// `[P(Response 1 is better), P(Response 2 is better)]`, positions as shown in this order.
    pub probs: [f64; 2],
    /// Log-probs of the tokens `1` and `2` under the full next-token distribution.
    pub logprobs: [f64; 2],
    /// `P(1) + P(2)` under the full distribution: how much the labeler follows the answer format.
    pub choice_mass: f64,
    /// Answers a server did not list among its top log-probs (their log-prob is a bound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounded: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The chain-of-thought rationale the answer was conditioned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

impl OrderJudgement {
    fn new(answer: ChoiceAnswer, rationale: Option<String>) -> Result<Self> {
        let distribution = answer.distribution();
        let (&[p1, p2], &[lp1, lp2]) = (distribution.as_slice(), answer.logprobs.as_slice()) else {
            return Err(FeedbackError::Backend(format!(
                "expected log-probs for 2 answers, got {}",
                answer.logprobs.len()
            )));
        };
        Ok(Self {
            probs: [p1, p2],
            logprobs: [lp1, lp2],
            choice_mass: answer.choice_mass(),
            bounded: answer.bounded,
            truncated: answer.truncated,
            rationale,
        })
    }

    /// 1 or 2 when one position has the higher probability, `None` on an exact tie.
    pub fn preferred_position(&self) -> Option<u8> {
        match self.probs[0].partial_cmp(&self.probs[1]) {
            Some(std::cmp::Ordering::Greater) => Some(1),
            Some(std::cmp::Ordering::Less) => Some(2),
            _ => None,
        }
    }
}

/// A position-debiased soft preference label for a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoftLabel {
    /// Probability that A is the better reply: the mean of `a_first.probs[0]` and
    /// `b_first.probs[1]`.
    pub p_a: f64,
    /// The judgement with A shown as Response 1.
    pub a_first: OrderJudgement,
    /// The judgement with B shown as Response 1 (its `probs` are by position, so `probs[1]` is A).
    pub b_first: OrderJudgement,
}

impl SoftLabel {
    pub fn p_b(&self) -> f64 {
        1.0 - self.p_a
    }

    /// True when both orders prefer the same *position*, i.e. the two judgements contradict each
    /// other about the replies: the signature of position bias.
    pub fn same_position_preferred(&self) -> bool {
        match (
            self.a_first.preferred_position(),
            self.b_first.preferred_position(),
        ) {
            (Some(first), Some(second)) => first == second,
            _ => false,
        }
    }
}

/// The two presentations of a pair: query 2i shows pair i as (A, B), query 2i + 1 as (B, A).
fn orders<'a>(pair: &ResponsePair<'a>) -> [(&'a str, &'a str); 2] {
    [(pair.a, pair.b), (pair.b, pair.a)]
}

/// Chain-of-thought: the labeler first writes a rationale greedily, then answers with it in view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainOfThought {
    pub max_new_tokens: usize,
}

/// The pairwise labeler: a template and, optionally, chain-of-thought.
#[derive(Debug, Clone)]
pub struct PairwiseLabeler {
    template: PairwiseTemplate,
    chain_of_thought: Option<ChainOfThought>,
}

impl PairwiseLabeler {
    pub fn new(template: PairwiseTemplate, chain_of_thought: Option<ChainOfThought>) -> Self {
        Self {
            template,
            chain_of_thought,
        }
    }

    pub fn template(&self) -> &PairwiseTemplate {
        &self.template
    }

    /// Backend answers needed per pair (two orders, times two with chain-of-thought): the unit of
    /// `progress` in [`Self::label`].
    pub fn answers_per_pair(&self) -> usize {
        if self.chain_of_thought.is_some() {
            4
        } else {
            2
        }
    }

    /// Labels every pair (see the module docs). `progress` receives counts of backend answers as
    /// they become available, [`Self::answers_per_pair`] per pair in all.
    pub fn label(
        &self,
        engine: &Engine,
        pairs: &[ResponsePair<'_>],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<SoftLabel>> {
        let rationales: Vec<Option<String>> = match self.chain_of_thought {
            Some(cot) => {
                let queries: Vec<ChoiceQuery> = pairs
                    .iter()
                    .flat_map(|pair| {
                        orders(pair).map(|(first, second)| {
                            self.template.rationale_query(pair.prompt, first, second)
                        })
                    })
                    .collect();
                let params = CompletionParams {
                    max_new_tokens: cot.max_new_tokens,
                    stop: vec![self.template.ending().to_string(), "\n\n".to_string()],
                };
                engine
                    .complete(&queries, &params, progress)?
                    .into_iter()
                    .map(|text| Some(text.trim().to_string()))
                    .collect()
            }
            None => vec![None; pairs.len() * 2],
        };
        let queries: Vec<ChoiceQuery> = pairs
            .iter()
            .enumerate()
            .flat_map(|(index, pair)| {
                let rationales = &rationales;
                orders(pair)
                    .into_iter()
                    .enumerate()
                    .map(move |(order, (first, second))| {
                        let rationale = rationales[2 * index + order].as_deref();
                        self.template.query(pair.prompt, first, second, rationale)
                    })
            })
            .collect();
        let answers = engine.answer_choices(&queries, progress)?;
        let mut judgements = answers
            .into_iter()
            .zip(rationales)
            .map(|(answer, rationale)| OrderJudgement::new(answer, rationale));
        let mut labels = Vec::with_capacity(pairs.len());
        while let (Some(a_first), Some(b_first)) = (judgements.next(), judgements.next()) {
            let (a_first, b_first) = (a_first?, b_first?);
            labels.push(SoftLabel {
                p_a: 0.5 * (a_first.probs[0] + b_first.probs[1]),
                a_first,
                b_first,
            });
        }
        Ok(labels)
    }
}

/// Head-to-head comparison of a candidate policy against a reference: how often a judge prefers
/// the candidate's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    pub n: usize,
    /// Fraction of items where the candidate's reply is preferred (`p_a > 0.5`); exact ties count
    /// one half.
    pub win_rate: f64,
    /// Mean probability that the candidate's reply is better.
    pub mean_p_candidate: f64,
    /// Per-item labels, A = candidate, B = reference.
    pub labels: Vec<SoftLabel>,
}

/// The pairwise win-rate judge: a [`PairwiseLabeler`] (built-in `win_rate` preamble by default)
/// applied to (candidate, reference) reply pairs, both orders, for evaluation.
#[derive(Debug, Clone)]
pub struct WinRateJudge {
    labeler: PairwiseLabeler,
}

impl WinRateJudge {
    pub fn new(labeler: PairwiseLabeler) -> Self {
        Self { labeler }
    }

    /// The judge with the built-in `win_rate` preamble and no chain-of-thought.
    pub fn builtin() -> Result<Self> {
        Ok(Self::new(PairwiseLabeler::new(
            PairwiseTemplate::builtin("win_rate")?,
            None,
        )))
    }

    /// Judges `items`, where each pair's `a` is the candidate's reply and `b` the reference's.
    pub fn judge(
        &self,
        engine: &Engine,
        items: &[ResponsePair<'_>],
        progress: &mut dyn FnMut(usize),
    ) -> Result<WinRate> {
        if items.is_empty() {
            return Err(FeedbackError::InvalidInput(
                "a win rate needs at least one item".into(),
            ));
        }
        let labels = self.labeler.label(engine, items, progress)?;
        let n = labels.len();
        let wins: f64 = labels.iter().map(|label| hard_preference(label.p_a)).sum();
        let mean_p = labels.iter().map(|label| label.p_a).sum::<f64>() / n as f64;
        Ok(WinRate {
            n,
            win_rate: wins / n as f64,
            mean_p_candidate: mean_p,
            labels,
        })
    }
}

/// 1 when `p > 0.5`, 0 when `p < 0.5`, one half on a tie.
pub fn hard_preference(p: f64) -> f64 {
    match p.partial_cmp(&0.5) {
        Some(std::cmp::Ordering::Greater) => 1.0,
        Some(std::cmp::Ordering::Less) => 0.0,
        _ => 0.5,
    }
}
