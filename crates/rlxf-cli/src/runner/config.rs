//! The experiment config `rlxf run` reads: which models, seeds and methods to compare, and the
//! settings of each stage (each trainer's section takes the fields of that trainer's own config).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rlxf_train::setup::DataConfig;
use serde::{Deserialize, Serialize};

use crate::commands::BadInput;

/// A policy-producing recipe compared in the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The starting model itself, untrained.
    Base,
    /// SFT on the chosen replies (also the seed study's "RLHF" arm).
    Sft,
    /// SFT on the rejected replies: the seed study's "RLAIF" arm, its stand-in for AI feedback.
    SftRejected,
    /// DPO from the SFT model on the human preference labels.
    DpoHuman,
    /// DPO from the SFT model on AI soft labels (the `[labeler]`, by default the starting model
    /// itself: the seed study's self-improvement question).
    DpoAi,
    /// PPO from the SFT model against the reward model trained on the human labels.
    RlhfPpo,
    /// PPO from the SFT model against a reward model trained on the AI soft labels.
    RlaifPpo,
    /// PPO from the SFT model rewarded directly by the AI labeler's 1–10 score (Lee et al.'s
    /// d-RLAIF, no reward model).
    DRlaif,
    /// Rounds of sampling, self-labeling, reward-model training and PPO from the SFT model (see
    /// `[self_improve]`).
    SelfImprove,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Base => "base",
            Method::Sft => "sft",
            Method::SftRejected => "sft-rejected",
            Method::DpoHuman => "dpo-human",
            Method::DpoAi => "dpo-ai",
            Method::RlhfPpo => "rlhf-ppo",
            Method::RlaifPpo => "rlaif-ppo",
            Method::DRlaif => "d-rlaif",
            Method::SelfImprove => "self-improve",
        }
    }

    /// Whether the method asks the `[labeler]` for AI feedback.
    pub fn uses_labeler(self) -> bool {
        matches!(
            self,
            Method::DpoAi | Method::RlaifPpo | Method::DRlaif | Method::SelfImprove
        )
    }
}

/// One model size of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Short name used in folder and policy names (`tiny`, `smollm2-135m`).
    pub name: String,
    /// A model directory, a registered name (`smollm2-135m-instruct`), a Hugging Face id, or
    /// `random:<arch>`.
    pub source: String,
}

/// How policies are evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    /// Prompt suite: `embedded` (rlxf's suite across the seed's contexts) or a JSONL file of
    /// `{"id", "text", "context"}` prompts in HH form.
    pub prompts: String,
    /// Use at most this many prompts per context from the suite (all when unset).
    pub per_context: Option<usize>,
    /// Also evaluate on the prompts of this many held-out HH pairs (from `[data]`'s split).
    pub heldout_pairs: usize,
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    pub temperature: f64,
    pub seed: u64,
    pub batch_size: usize,
    /// The policy every other is compared with; the first method's policy when unset.
    pub baseline: Option<String>,
    /// Train a reward model on the human pairs (from the SFT model) and report its score.
    pub reward_model: bool,
    /// Judge every reply with the AI judge (`[judge]`, by default the first model's starting
    /// checkpoint): harmless rate, and win rate against the baseline with both orders judged.
    pub judge: bool,
    /// Bootstrap resamples per interval.
    pub resamples: usize,
    /// Sentence encoder of the semantic metrics (`support_similarity`, `embedding_diversity`): a
    /// registered encoder (`all-minilm-l6-v2`, fetched into the model cache on first use), a
    /// directory of a BERT sentence encoder in Hugging Face format, or `none` to leave them out.
    pub encoder: String,
}

/// `[eval] encoder` value that turns the semantic metrics off.
pub const NO_ENCODER: &str = "none";

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            prompts: "embedded".into(),
            per_context: None,
            heldout_pairs: 0,
            max_new_tokens: 64,
            temperature: 0.0,
            seed: 0,
            batch_size: 8,
            baseline: None,
            reward_model: false,
            judge: false,
            resamples: 2000,
            // The metrics the seed's supportiveness question needs, on the encoder they were
            // validated with (rlxf-eval's MiniLM tests); a study that cannot fetch it says "none".
            encoder: rlxf_model::fetch::ALL_MINILM_L6_V2.name.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportSettings {
    /// Report title; the experiment name when unset.
    pub title: Option<String>,
    /// A paragraph under the title.
    pub summary: Option<String>,
}

/// `rlxf run` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name: everything goes to `<runs_dir>/<name>/`.
    pub name: String,
    #[serde(default = "default_runs_dir")]
    pub runs_dir: PathBuf,
    /// One run of every method per seed (data order, initialisation, sampling).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    pub models: Vec<ModelEntry>,
    pub methods: Vec<Method>,
    /// Training pairs, shared by every stage (the `[data]` table of the trainer configs).
    #[serde(default)]
    pub data: DataConfig,
    /// Fields of `rlxf train sft`'s config (model, output_dir, data and target are set by the run).
    #[serde(default)]
    pub sft: toml::Table,
    /// Fields of `rlxf train rm`'s config.
    #[serde(default)]
    pub rm: toml::Table,
    /// Fields of `rlxf train dpo`'s config.
    #[serde(default)]
    pub dpo: toml::Table,
    /// Fields of `rlxf train ppo`'s config (the RL methods; model, prompts, rewards, output_dir
    /// and train.seed are set by the run).
    #[serde(default)]
    pub ppo: toml::Table,
    /// The `self-improve` method's rounds.
    #[serde(default)]
    pub self_improve: super::self_improve::SelfImproveSettings,
    /// AI labeler for `dpo-ai` (a labeler config: `[labeler.backend]`, `[labeler.prompt]`, see
    /// configs/labeler-local.toml); unset means each model labels with its own starting checkpoint.
    #[serde(default)]
    pub labeler: Option<toml::Table>,
    /// AI judge for `[eval] judge` (same form as `[labeler]`); unset means the first model's
    /// starting checkpoint.
    #[serde(default)]
    pub judge: Option<toml::Table>,
    #[serde(default)]
    pub eval: EvalSettings,
    #[serde(default)]
    pub report: ReportSettings,
}

fn default_runs_dir() -> PathBuf {
    "runs".into()
}

fn default_seeds() -> Vec<u64> {
    vec![1]
}

impl ExperimentConfig {
    /// Reads and checks a config file; `overrides` are `section.field=value` (TOML values).
    pub fn read(path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        let (config, _): (Self, String) = rlxf_train::config::read_config(path, overrides)
            .with_context(|| format!("reading the experiment config {}", path.display()))?;
        config.validate(path)?;
        super::stages::check_sections(&config, path)?;
        Ok(config)
    }

    /// The name of the policy that `method` makes from `model` with `seed` in the report: the
    /// method alone when the study has one model and one seed, else `method@model/s<seed>`.
    pub fn policy_name(&self, method: Method, model: &str, seed: u64) -> String {
        if self.models.len() > 1 || self.seeds.len() > 1 {
            format!("{}@{model}/s{seed}", method.name())
        } else {
            method.name().to_string()
        }
    }

    /// Every policy name of the study, in run order.
    pub fn policy_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for model in &self.models {
            for &seed in &self.seeds {
                for &method in &self.methods {
                    names.push(self.policy_name(method, &model.name, seed));
                }
            }
        }
        names
    }

    fn validate(&self, path: &Path) -> anyhow::Result<()> {
        let bad = |field: &str, reason: &str| -> anyhow::Result<()> {
            Err(BadInput(format!("{}: field `{field}`: {reason}", path.display())).into())
        };
        let safe = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !name.starts_with('.')
        };
        if !safe(&self.name) {
            return bad(
                "name",
                "use letters, digits, '-', '_' or '.' (it names a folder)",
            );
        }
        if self.models.is_empty() {
            return bad("models", "list at least one model");
        }
        for (index, model) in self.models.iter().enumerate() {
            if !safe(&model.name) {
                return bad(
                    &format!("models[{index}].name"),
                    "use letters, digits, '-', '_' or '.' (it names a folder)",
                );
            }
        }
        let mut names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("models", "model names must be unique");
        }
        if self.methods.is_empty() {
            return bad("methods", "list at least one method");
        }
        if self.seeds.is_empty() {
            return bad("seeds", "list at least one seed");
        }
        if self.eval.batch_size == 0 || self.eval.max_new_tokens == 0 {
            return bad("eval", "batch_size and max_new_tokens must be at least 1");
        }
        if self.eval.encoder.is_empty() {
            return bad(
                "eval.encoder",
                "name a sentence encoder (all-minilm-l6-v2, a directory) or \"none\"",
            );
        }
        if let Some(baseline) = &self.eval.baseline {
            // checked here rather than at the eval stage, which runs after all the training
            let names = self.policy_names();
            if !names.contains(baseline) {
                return bad(
                    "eval.baseline",
                    &format!(
                        "`{baseline}` is not one of the policies: {}",
                        names.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");

    /// Every config in configs/ with a `methods` list is an `rlxf run` config.
    fn runner_configs() -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(CONFIGS)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .filter(|path| {
                let table: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
                table.contains_key("methods")
            })
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn every_runner_config_in_configs_reads_validates_and_parses_its_sections() {
        let paths = runner_configs();
        let names: Vec<String> = paths
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "quickstart.toml",
            "rlaif-vs-rlhf-125m.toml",
            "study-tiny.toml",
        ] {
            assert!(names.iter().any(|name| name == expected), "{names:?}");
        }
        for path in &paths {
            ExperimentConfig::read(path, &[])
                .unwrap_or_else(|err| panic!("{}: {err:#}", path.display()));
        }
    }

    #[test]
    fn the_125m_study_compares_rlhf_with_rlaif_on_the_seed_setup() {
        let config =
            ExperimentConfig::read(&Path::new(CONFIGS).join("rlaif-vs-rlhf-125m.toml"), &[])
                .unwrap();
        assert_eq!(config.models[0].source, "EleutherAI/gpt-neo-125M");
        assert_eq!(config.data.train, "hf://datasets/Dahoas/rm-static");
        assert!(config.seeds.len() >= 2);
        for method in [
            Method::Sft,
            Method::SftRejected,
            Method::RlhfPpo,
            Method::RlaifPpo,
            Method::DRlaif,
            Method::DpoHuman,
            Method::DpoAi,
        ] {
            assert!(config.methods.contains(&method), "{}", method.name());
        }
        assert!(config.labeler.is_some() && config.judge.is_some() && config.eval.judge);
        assert_eq!(config.eval.encoder, "all-minilm-l6-v2");
    }

    /// `study-tiny.toml` with `extra` TOML appended, read with `overrides`.
    fn read_tiny(extra: &str, overrides: &[&str]) -> anyhow::Result<ExperimentConfig> {
        let text = std::fs::read_to_string(Path::new(CONFIGS).join("study-tiny.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.toml");
        std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|o| o.to_string()).collect();
        ExperimentConfig::read(&path, &overrides)
    }

    /// Reading `study-tiny.toml` with `extra` and `overrides` fails with an error that mentions
    /// every one of `words`.
    fn read_fails(extra: &str, overrides: &[&str], words: &[&str]) -> anyhow::Error {
        let err = read_tiny(extra, overrides).unwrap_err();
        let message = format!("{err:#}");
        assert!(words.iter().all(|word| message.contains(word)), "{message}");
        err
    }

    #[test]
    fn a_mistyped_section_field_fails_at_read_naming_section_and_field() {
        read_fails("", &["ppo.train.max_step=3"], &["[ppo]", "max_step"]);
        let judge = "[judge.backend]\nkind = \"local\"\nmodle = \"x\"\n";
        read_fails(judge, &[], &["[judge]", "modle"]);
        read_fails(
            "",
            &["sft.train.epochs=\"two\""],
            &["[sft]", "train.epochs"],
        );
    }

    #[test]
    fn the_baseline_must_name_a_policy_of_the_study() {
        let baseline = "eval.baseline=\"dpo-ai@tiny/s1\"";
        let err = read_fails("", &[baseline], &["eval.baseline", "sft-rejected"]);
        assert!(err.downcast_ref::<BadInput>().is_some());
        // with two seeds the policies carry model and seed
        let config = read_tiny("", &["seeds=[1, 2]", "eval.baseline=\"dpo-ai@tiny/s2\""]).unwrap();
        assert_eq!(
            config.policy_name(Method::DpoAi, "tiny", 2),
            "dpo-ai@tiny/s2"
        );
        assert_eq!(config.policy_names().len(), 2 * config.methods.len());
    }
}
