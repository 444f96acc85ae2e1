//! The config of an online-RL run (`rlxf train ppo|a2c|rloo`): what every algorithm shares, plus
//! the algorithm's own `[algorithm]` table.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::rl::kl::KlConfig;
use crate::rl::rewards::RewardSpec;
use crate::rl::rollout::RolloutConfig;
use crate::rl::runner::Algorithm;
use crate::trainer::LoopConfig;

/// An algorithm's own settings (the `[algorithm]` table), which is the algorithm itself.
pub trait AlgorithmParams:
    Algorithm + Default + Clone + PartialEq + Serialize + DeserializeOwned
{
    /// `ppo`, `a2c` or `rloo`: the subcommand and the default run directory's name.
    const NAME: &'static str;
    /// Learning rate when `train.learning_rate` is unset.
    const DEFAULT_LR: f64;
    /// Errors name the first invalid field (`origin`: the config file).
    fn validate(&self, origin: &Path) -> Result<()>;
}

/// Where the prompts come from (the `[prompts]` table): the prompts of preference pairs, each
/// distinct prompt once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptsConfig {
    /// A file or folder of pairs (HH-RLHF jsonl(.gz), rlxf JSONL, Parquet), an
    /// `hf://datasets/...` source, or `embedded`.
    pub source: String,
    /// Use at most this many prompts (a seeded random subset).
    pub max_prompts: Option<usize>,
}

impl Default for PromptsConfig {
    fn default() -> Self {
        Self {
            source: "embedded".into(),
            max_prompts: None,
        }
    }
}

/// Thresholds of the warnings written into `metrics.jsonl` (the `[guards]` table). Training goes
/// on; a warning tells the user where to look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Warn when the mean per-response KL estimate falls below this many nats: the k1 estimate
    /// of a true KL is only negative by sampling noise, so a clearly negative mean points at a
    /// mismatch between sampling and scoring. TRL warns below −1.
    pub negative_kl: f64,
    /// Warn when the mean per-response KL exceeds this many nats (the policy is drifting far from
    /// the reference, the usual road to reward hacking).
    pub max_kl: f64,
    /// Warn when the mean per-token entropy (nats) falls below this: the policy has collapsed onto
    /// near-deterministic replies.
    pub min_entropy: f64,
    /// Warn when the mean response length exceeds this multiple of the first step's.
    pub length_growth: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            negative_kl: -1.0,
            max_kl: 10.0,
            min_entropy: 0.1,
            length_growth: 2.0,
        }
    }
}

/// `rlxf train ppo|a2c|rloo` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, bound = "P: AlgorithmParams")]
pub struct RlConfig<P: AlgorithmParams> {
    /// The policy to start from (usually the SFT model): a directory, a Hugging Face id, or
    /// `random:<arch>`.
    pub model: String,
    /// The frozen reference of the KL penalty; unset means the starting policy (the usual choice).
    pub reference: Option<String>,
    /// Run directory: `config.toml`, `metrics.jsonl`, `checkpoints/`, the final `model/` (and
    /// `value_head.safetensors` for actor-critic methods).
    pub output_dir: PathBuf,
    pub prompts: PromptsConfig,
    pub rollout: RolloutConfig,
    pub kl: KlConfig,
    /// The reward: one or more `[[rewards]]` entries, summed with their weights.
    pub rewards: Vec<RewardSpec>,
    pub guards: GuardConfig,
    /// The loop: `batch_size` prompts per step, `max_steps` (or `epochs` over the prompts),
    /// `micro_batch_size` rows per forward pass, AdamW and the schedule (over optimiser updates).
    pub train: LoopConfig,
    pub algorithm: P,
}

impl<P: AlgorithmParams> Default for RlConfig<P> {
    fn default() -> Self {
        Self {
            model: "random:gpt-neo-tiny".into(),
            reference: None,
            output_dir: PathBuf::from("runs").join(P::NAME),
            prompts: PromptsConfig::default(),
            rollout: RolloutConfig::default(),
            kl: KlConfig::default(),
            rewards: Vec::new(),
            guards: GuardConfig::default(),
            train: LoopConfig::default(),
            algorithm: P::default(),
        }
    }
}

impl<P: AlgorithmParams> RlConfig<P> {
    /// Checks everything that does not need the model (see [`RolloutConfig::validate`] for the
    /// rest).
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let invalid = |field: &str, reason: &str| TrainError::InvalidConfig {
            path: origin.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        };
        self.train.validate(origin)?;
        if self.train.eval_every != 0 {
            return Err(invalid(
                "train.eval_every",
                "online RL has no held-out evaluation; set 0 and evaluate the saved model with \
                 `rlxf eval`",
            ));
        }
        if self.rewards.is_empty() {
            return Err(invalid(
                "rewards",
                "give at least one [[rewards]] entry (kind = \"model\", \"direct\" or \
                 \"target_token\")",
            ));
        }
        if self.rewards.iter().any(|spec| !spec.weight().is_finite()) {
            return Err(invalid("rewards.weight", "must be a finite number"));
        }
        if !(self.kl.beta.is_finite() && (0.0..1.0).contains(&self.kl.beta)) {
            return Err(invalid("kl.beta", "must be in [0, 1)"));
        }
        if self
            .kl
            .target
            .is_some_and(|target| !(target.is_finite() && target > 0.0))
        {
            return Err(invalid("kl.target", "must be a positive number of nats"));
        }
        if !(self.kl.horizon.is_finite() && self.kl.horizon > 0.0) {
            return Err(invalid("kl.horizon", "must be positive"));
        }
        self.algorithm.validate(origin)
    }
}

/// Errors unless every `(field, value)` is a finite number in `range`.
pub fn check_ranges(
    origin: &Path,
    fields: &[(&str, f64, std::ops::RangeInclusive<f64>)],
) -> Result<()> {
    for (field, value, range) in fields {
        if !(value.is_finite() && range.contains(value)) {
            return Err(TrainError::InvalidConfig {
                path: origin.to_path_buf(),
                field: format!("algorithm.{field}"),
                reason: format!("must be in [{}, {}]", range.start(), range.end()),
            });
        }
    }
    Ok(())
}

/// Errors unless every `(field, value)` is at least 1.
pub fn check_counts(origin: &Path, fields: &[(&str, usize)]) -> Result<()> {
    for (field, value) in fields {
        if *value == 0 {
            return Err(TrainError::InvalidConfig {
                path: origin.to_path_buf(),
                field: format!("algorithm.{field}"),
                reason: "must be at least 1".into(),
            });
        }
    }
    Ok(())
}
