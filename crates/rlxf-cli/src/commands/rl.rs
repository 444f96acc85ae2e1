//! `rlxf train ppo|a2c|rloo`: online RL from a TOML config. The library builds reward models and
//! synthetic rewards; this module adds the AI labeler's direct 1–10 score (d-RLAIF) from
//! `rlxf-feedback`, which `rlxf-train` does not depend on.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rlxf_feedback::{
    DirectScorer, Engine, FeedbackError, LabelCache, LabelerConfig, PromptResponse,
};
use rlxf_train::rl::{
    AlgorithmParams, BuiltinRewards, RewardFactory, RewardQuery, RewardSource, RewardSpec, RlConfig,
};
use rlxf_train::{RunOptions, TrainError, TrainObserver, TrainSummary};
use serde_json::Value;

use crate::commands::train::{load_run_config, Bar, TrainArgs};
use crate::{progress, Ctx};

/// The labeler's answer cache inside the run directory when its config names none.
const LABELER_CACHE_FILE: &str = "labeler_cache.sqlite";

pub fn run<P: AlgorithmParams>(args: TrainArgs, ctx: Ctx) -> anyhow::Result<()> {
    let name = P::NAME;
    let (config, config_path, config_text, options) =
        load_run_config::<RlConfig<P>>(&args, name, |config, dir| config.output_dir = dir)?;
    let bar = progress::bar(ctx, 0, "steps");
    bar.set_message(format!("train {name}"));
    let mut observer = Bar(bar);
    let rewards = CliRewards {
        run_dir: config.output_dir.clone(),
    };
    let summary = rlxf_train::rl::run(
        &config,
        &config_text,
        &config_path,
        &options,
        &mut observer,
        &rewards,
    )
    .with_context(|| format!("training {name} into {}", config.output_dir.display()))?;
    observer.0.finish_and_clear();
    let number = |record: &serde_json::Map<String, Value>, key: &str| {
        record.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
    };
    println!(
        "{name}: {} steps, reward {:.4} (first step of this run) -> {:.4}, KL {:.3} nats, \
         response length {:.1}",
        summary.train.steps,
        number(&summary.first, "reward"),
        number(&summary.last, "reward"),
        number(&summary.last, "kl"),
        number(&summary.last, "response_length"),
    );
    if let Some(model) = &summary.train.model_dir {
        println!("model saved to {}", model.display());
    }
    Ok(())
}

/// Trains with the CLI's reward sources and returns what a trainer returns: how `rlxf run` calls
/// an RL algorithm as one of its stages.
pub(crate) fn train_stage<P: AlgorithmParams>(
    config: &RlConfig<P>,
    config_text: &str,
    origin: &Path,
    options: &RunOptions,
    observer: &mut dyn TrainObserver,
) -> rlxf_train::Result<TrainSummary> {
    let rewards = CliRewards {
        run_dir: config.output_dir.clone(),
    };
    rlxf_train::rl::run(config, config_text, origin, options, observer, &rewards)
        .map(|summary| summary.train)
}

/// The library's reward sources plus the labeler's direct score.
struct CliRewards {
    run_dir: PathBuf,
}

impl RewardFactory for CliRewards {
    fn build(&self, spec: &RewardSpec) -> rlxf_train::Result<Box<dyn RewardSource>> {
        match spec {
            RewardSpec::Direct { labeler, .. } => {
                Ok(Box::new(DirectReward::open(labeler, &self.run_dir)?))
            }
            other => BuiltinRewards.build(other),
        }
    }
}

/// d-RLAIF: the labeler's expected 1–10 score of each response, rescaled to [−1, 1].
struct DirectReward {
    labeler: PathBuf,
    engine: Engine,
    scorer: DirectScorer,
}

/// A labeler error as a training error: bad input stays bad input (exit 2).
fn labeler_error(labeler: &Path, err: FeedbackError) -> TrainError {
    if err.is_bad_input() {
        TrainError::InvalidInput(format!("labeler {}: {err}", labeler.display()))
    } else {
        TrainError::Reward {
            source_name: format!("labeler {}", labeler.display()),
            message: err.to_string(),
        }
    }
}

impl DirectReward {
    fn open(labeler: &Path, run_dir: &Path) -> rlxf_train::Result<Self> {
        let error = |err| labeler_error(labeler, err);
        let config = LabelerConfig::read(labeler).map_err(error)?;
        std::fs::create_dir_all(run_dir).map_err(|err| TrainError::Reward {
            source_name: format!("labeler {}", labeler.display()),
            message: format!("cannot create {}: {err}", run_dir.display()),
        })?;
        let cache_path = config
            .cache
            .clone()
            .unwrap_or_else(|| run_dir.join(LABELER_CACHE_FILE));
        let cache = LabelCache::open(&cache_path).map_err(error)?;
        let device =
            rlxf_model::Device::cuda_if_available(0).map_err(|err| TrainError::Reward {
                source_name: format!("labeler {}", labeler.display()),
                message: format!("cannot open the device: {err}"),
            })?;
        let engine = Engine::new(config.backend(&device).map_err(error)?, Some(cache));
        Ok(Self {
            labeler: labeler.to_path_buf(),
            engine,
            scorer: DirectScorer::builtin().map_err(error)?,
        })
    }
}

impl RewardSource for DirectReward {
    fn describe(&self) -> String {
        format!("direct score of labeler {}", self.engine.identity())
    }

    fn score(&mut self, queries: &[RewardQuery<'_>]) -> rlxf_train::Result<Vec<f64>> {
        let items: Vec<PromptResponse<'_>> = queries
            .iter()
            .map(|query| PromptResponse {
                prompt: query.prompt,
                response: query.response,
            })
            .collect();
        let scores = self
            .scorer
            .score(&self.engine, &items, &mut |_| {})
            .map_err(|err| labeler_error(&self.labeler, err))?;
        Ok(scores.into_iter().map(|score| score.reward).collect())
    }
}
