//! Online RL: PPO, A2C (REINFORCE with a learned value baseline, Lee et al. 2023's algorithm) and
//! RLOO, on a shared rollout, reward and KL machinery.
//!
//! - [`rollout`]: sampling (temperature 0.9 by default), per-token log-probs of the policy and of
//!   the frozen reference, entropies and values;
//! - [`rewards`]: the [`rewards::RewardSource`] trait (reward model, synthetic, weighted sum; the
//!   CLI adds the AI labeler's direct score);
//! - [`kl`]: KL estimators, `(1 − β)·r − β·KL` or `r − β·KL`, the adaptive KL controller;
//! - [`advantages`]: GAE, returns, the leave-one-out baseline, whitening;
//! - [`losses`]: PPO's clipped policy and value losses;
//! - [`runner`]: the loop (metrics, guard-rail warnings, checkpoints, bit-identical resume);
//! - [`ppo`], [`a2c`], [`rloo`]: the algorithms.

pub mod a2c;
pub mod advantages;
pub mod config;
pub mod kl;
pub mod losses;
pub mod ppo;
pub mod rewards;
pub mod rloo;
pub mod rollout;
pub mod runner;

use std::collections::HashSet;
use std::path::Path;

use rlxf_data::{load_pairs, shuffle_cap_split, LoadOptions, Source, SplitRatios};

use crate::error::{Result, TrainError};
use crate::setup::{self, ModelBundle};
use crate::trainer::{RunOptions, TrainObserver};
pub use config::{AlgorithmParams, GuardConfig, PromptsConfig, RlConfig};
pub use rewards::{BuiltinRewards, RewardFactory, RewardQuery, RewardSource, RewardSpec};
pub use runner::{train_rl, Algorithm, Prompt, RlParts, RlSettings, RlSummary};

/// The distinct prompts of `config`'s pairs (a seeded subset of at most `max_prompts`), rendered
/// in the model's dialogue template, tokenized, and cut to their last `max_prompt_length` tokens.
/// `text` keeps the HH transcript, which is what reward models and labelers read.
pub fn load_prompts(
    config: &PromptsConfig,
    bundle: &ModelBundle,
    max_prompt_length: usize,
    seed: u64,
) -> Result<Vec<Prompt>> {
    let source: Source = config.source.parse()?;
    let pairs = load_pairs(&source, &LoadOptions::default())?.pairs;
    let mut seen = HashSet::new();
    let distinct: Vec<_> = pairs
        .into_iter()
        .filter(|pair| seen.insert(pair.prompt.clone()))
        .collect();
    let everything = SplitRatios {
        train: 1.0,
        validation: 0.0,
        test: 0.0,
    };
    let (splits, _) = shuffle_cap_split(distinct, seed, config.max_prompts, everything);
    splits
        .train
        .into_iter()
        .map(|pair| {
            let rendered = bundle.template.render_hh_prompt(&pair.prompt)?;
            let mut ids = bundle.tokenizer.encode(&rendered)?;
            if ids.is_empty() {
                return Err(TrainError::InvalidRecord {
                    origin: config.source.clone(),
                    record: pair.id.clone(),
                    field: "prompt".into(),
                    reason: "the prompt is empty".into(),
                });
            }
            if ids.len() > max_prompt_length {
                ids.drain(..ids.len() - max_prompt_length);
            }
            Ok(Prompt {
                text: pair.prompt,
                ids,
            })
        })
        .collect()
}

/// Runs the algorithm `P` as `config` says: loads the policy, the reference, the prompts and the
/// reward (`rewards` builds the `[[rewards]]` entries; [`BuiltinRewards`] knows all but the
/// labeler's direct score), then [`train_rl`]. `config_text` is the resolved config, stored
/// with the run; `origin` the config file, for messages.
pub fn run<P: AlgorithmParams>(
    config: &RlConfig<P>,
    config_text: &str,
    origin: &Path,
    options: &RunOptions,
    observer: &mut dyn TrainObserver,
    rewards: &dyn RewardFactory,
) -> Result<RlSummary> {
    config.validate(origin)?;
    let seed = config.train.seed;
    let bundle = setup::load_model_for(&config.model, &config.train)?;
    config
        .rollout
        .validate(origin, rlxf_model::CausalLm::max_context(&bundle.model))?;
    let reference = setup::load_model_for(
        config.reference.as_deref().unwrap_or(&config.model),
        &config.train,
    )?;
    let prompts = load_prompts(
        &config.prompts,
        &bundle,
        config.rollout.max_prompt_length,
        seed,
    )?;
    let reward = rewards::build_reward(&config.rewards, rewards)?;
    let mut parts = RlParts::new(
        bundle.model,
        reference.model,
        bundle.tokenizer,
        prompts,
        reward,
        config.algorithm.uses_value_head(),
        seed,
    )?;
    let settings = RlSettings {
        rollout: &config.rollout,
        kl: &config.kl,
        guards: &config.guards,
        train: &config.train,
        default_lr: P::DEFAULT_LR,
    };
    train_rl(
        &config.algorithm,
        &mut parts,
        settings,
        &config.output_dir,
        config_text,
        options,
        observer,
    )
}
