//! Where rewards come from: a trained reward model, a synthetic reward with a known optimum (for
//! tests and smoke runs), a weighted sum of sources, or a source the caller supplies. The AI
//! labeler's direct 1–10 score (d-RLAIF) lives in `rlxf-feedback`, which this crate does not
//! depend on: the CLI implements [`RewardSource`] for it and hands it in through a
//! [`RewardFactory`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::reward::score_texts;
use crate::setup::{load_model, Lengths, ModelBundle};

/// One response to score: its prompt and reply as text (for sources with their own tokenizer)
/// and as the policy's token ids (the response's ids include EOS when the policy ended with it).
#[derive(Debug, Clone, Copy)]
pub struct RewardQuery<'a> {
    pub prompt: &'a str,
    pub response: &'a str,
    pub prompt_ids: &'a [u32],
    pub response_ids: &'a [u32],
}

/// Scores a batch of responses, one number each.
pub trait RewardSource {
    /// A short description for logs and errors.
    fn describe(&self) -> String;
    fn score(&mut self, queries: &[RewardQuery<'_>]) -> Result<Vec<f64>>;
}

/// A reward model trained by `rlxf train rm` (backbone + scalar head), reading the texts with its
/// own tokenizer; the response gets EOS appended, as in reward-model training.
pub struct RewardModelSource {
    bundle: ModelBundle,
    lengths: Lengths,
    batch_size: usize,
    origin: String,
}

impl RewardModelSource {
    pub fn new(bundle: ModelBundle, lengths: Lengths, batch_size: usize, origin: String) -> Self {
        Self {
            bundle,
            lengths,
            batch_size,
            origin,
        }
    }
}

impl RewardSource for RewardModelSource {
    fn describe(&self) -> String {
        format!("reward model {}", self.origin)
    }

    fn score(&mut self, queries: &[RewardQuery<'_>]) -> Result<Vec<f64>> {
        let items: Vec<(String, String)> = queries
            .iter()
            .map(|q| (q.prompt.to_string(), q.response.to_string()))
            .collect();
        score_texts(&self.bundle, &items, self.lengths, self.batch_size)
    }
}

/// A synthetic reward with a known optimum: the fraction of response tokens equal to `token_id`
/// (EOS counts as a token). For tests and smoke runs of the RL machinery.
pub struct TargetTokenFraction {
    pub token_id: u32,
}

impl RewardSource for TargetTokenFraction {
    fn describe(&self) -> String {
        format!("fraction of token {}", self.token_id)
    }

    fn score(&mut self, queries: &[RewardQuery<'_>]) -> Result<Vec<f64>> {
        Ok(queries
            .iter()
            .map(|q| {
                let hits = q.response_ids.iter().filter(|&&id| id == self.token_id);
                hits.count() as f64 / q.response_ids.len().max(1) as f64
            })
            .collect())
    }
}

/// `Σ wᵢ·sourceᵢ`.
pub struct WeightedSum {
    pub parts: Vec<(f64, Box<dyn RewardSource>)>,
}

impl RewardSource for WeightedSum {
    fn describe(&self) -> String {
        let terms: Vec<String> = self
            .parts
            .iter()
            .map(|(weight, source)| format!("{weight}·{}", source.describe()))
            .collect();
        terms.join(" + ")
    }

    fn score(&mut self, queries: &[RewardQuery<'_>]) -> Result<Vec<f64>> {
        let mut total = vec![0.0; queries.len()];
        for (weight, source) in &mut self.parts {
            let scores = source.score(queries)?;
            if scores.len() != queries.len() {
                return Err(TrainError::InvalidInput(format!(
                    "{} returned {} scores for {} responses",
                    source.describe(),
                    scores.len(),
                    queries.len()
                )));
            }
            for (sum, score) in total.iter_mut().zip(scores) {
                *sum += *weight * score;
            }
        }
        Ok(total)
    }
}

fn one() -> f64 {
    1.0
}

fn default_reward_max_length() -> usize {
    1024
}

fn default_reward_batch_size() -> usize {
    8
}

/// One `[[rewards]]` entry of an RL config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RewardSpec {
    /// A reward model directory as `rlxf train rm` writes it (RUN_DIR/model).
    Model {
        path: String,
        #[serde(default = "one")]
        weight: f64,
        /// Longest prompt + reply the reward model reads (its prompt keeps its end), capped at
        /// the model's context.
        #[serde(default = "default_reward_max_length")]
        max_length: usize,
        #[serde(default = "default_reward_batch_size")]
        batch_size: usize,
    },
    /// Synthetic: the fraction of response tokens equal to `token_id`.
    TargetToken {
        token_id: u32,
        #[serde(default = "one")]
        weight: f64,
    },
    /// d-RLAIF: the AI labeler's direct 1–10 score rescaled to [−1, 1] (Lee et al. 2023 §2.3);
    /// `labeler` is a labeler config (see `rlxf label --help`). Built by the `rlxf` CLI.
    Direct {
        labeler: PathBuf,
        #[serde(default = "one")]
        weight: f64,
    },
}

impl RewardSpec {
    pub fn weight(&self) -> f64 {
        match self {
            RewardSpec::Model { weight, .. }
            | RewardSpec::TargetToken { weight, .. }
            | RewardSpec::Direct { weight, .. } => *weight,
        }
    }
}

/// Builds a [`RewardSource`] from a config entry.
pub trait RewardFactory {
    fn build(&self, spec: &RewardSpec) -> Result<Box<dyn RewardSource>>;
}

/// The sources this crate can build: reward models and synthetic rewards.
pub struct BuiltinRewards;

impl RewardFactory for BuiltinRewards {
    fn build(&self, spec: &RewardSpec) -> Result<Box<dyn RewardSource>> {
        match spec {
            RewardSpec::Model {
                path,
                max_length,
                batch_size,
                ..
            } => {
                let bundle = load_model(path, 0)?;
                if bundle.model.scalar_head()?.is_none() {
                    return Err(TrainError::InvalidInput(format!(
                        "{path} has no reward head (`score.weight`); train one with `rlxf train rm`"
                    )));
                }
                let max_length =
                    (*max_length).min(rlxf_model::CausalLm::max_context(&bundle.model));
                let lengths = Lengths {
                    max_length,
                    max_prompt_length: max_length / 2,
                };
                Ok(Box::new(RewardModelSource::new(
                    bundle,
                    lengths,
                    (*batch_size).max(1),
                    path.clone(),
                )))
            }
            RewardSpec::TargetToken { token_id, .. } => Ok(Box::new(TargetTokenFraction {
                token_id: *token_id,
            })),
            RewardSpec::Direct { labeler, .. } => Err(TrainError::InvalidInput(format!(
                "the direct (d-RLAIF) reward with labeler {} is built by the `rlxf` CLI; a \
                 library caller supplies it through its own RewardFactory",
                labeler.display()
            ))),
        }
    }
}

/// The reward of a config's `[[rewards]]` list: the single source itself when it has weight 1,
/// otherwise their weighted sum.
pub fn build_reward(
    specs: &[RewardSpec],
    factory: &dyn RewardFactory,
) -> Result<Box<dyn RewardSource>> {
    if let [spec] = specs {
        if spec.weight() == 1.0 {
            return factory.build(spec);
        }
    }
    let parts = specs
        .iter()
        .map(|spec| Ok((spec.weight(), factory.build(spec)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Box::new(WeightedSum { parts }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query<'a>(ids: &'a [u32]) -> RewardQuery<'a> {
        RewardQuery {
            prompt: "",
            response: "",
            prompt_ids: &[1],
            response_ids: ids,
        }
    }

    #[test]
    fn target_fraction_and_weighted_sum_by_hand() {
        let queries = [query(&[3, 1, 3, 3]), query(&[2, 2])];
        let mut single = TargetTokenFraction { token_id: 3 };
        assert_eq!(single.score(&queries).unwrap(), vec![0.75, 0.0]);
        let specs = [
            RewardSpec::TargetToken {
                token_id: 3,
                weight: 2.0,
            },
            RewardSpec::TargetToken {
                token_id: 2,
                weight: -1.0,
            },
        ];
        let mut sum = build_reward(&specs, &BuiltinRewards).unwrap();
        assert_eq!(sum.score(&queries).unwrap(), vec![1.5, -1.0]);
        assert!(sum.describe().contains("2·fraction of token 3"));
    }

    #[test]
    fn specs_parse_from_toml_and_reject_unknown_fields() {
        #[derive(Deserialize)]
        struct Wrapper {
            rewards: Vec<RewardSpec>,
        }
        let text = "[[rewards]]\nkind = \"model\"\npath = \"runs/rm/model\"\n\n\
                    [[rewards]]\nkind = \"direct\"\nlabeler = \"l.toml\"\nweight = 0.5\n";
        let parsed: Wrapper = toml::from_str(text).unwrap();
        assert_eq!(parsed.rewards[0].weight(), 1.0);
        assert!(matches!(
            &parsed.rewards[0],
            RewardSpec::Model {
                max_length: 1024,
                batch_size: 8,
                ..
            }
        ));
        assert_eq!(parsed.rewards[1].weight(), 0.5);
        let bad = "[[rewards]]\nkind = \"target_token\"\ntoken_id = 3\ntokn = 1\n";
        assert!(toml::from_str::<Wrapper>(bad).is_err());
        let err = BuiltinRewards.build(&parsed.rewards[1]).err().unwrap();
        assert!(err.to_string().contains("CLI"), "{err}");
    }
}
