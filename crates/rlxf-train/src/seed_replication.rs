//! The seed study's protocol as one call: SFT on the `chosen` replies (the seed's "RLHF" model)
//! and SFT on the `rejected` replies (the seed's "RLAIF" model), from one config.
//!
//! Be plain about what this is: the seed's "RLAIF" arm is supervised fine-tuning on the
//! dispreferred human-labelled reply, its stand-in for AI feedback. No AI labeler is involved and
//! neither arm does reinforcement learning. The arm names follow the seed so results can be set
//! side by side with it; real RLAIF (AI soft labels feeding a reward model or DPO) is
//! `rlxf train rm|dpo` with `data.labels`.
//!
//! `OUTPUT_DIR/rlhf/` and `OUTPUT_DIR/rlaif/` are ordinary SFT run directories (checkpoints,
//! `metrics.jsonl`, `model/`); `OUTPUT_DIR/summary.json` holds both arms' final losses and model
//! paths. A rerun skips an arm whose model is written and resumes one that was interrupted from its
//! newest checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::read_config;
use crate::error::{Result, TrainError};
use crate::metrics::{read_metrics, METRICS_FILE};
use crate::setup::DataConfig;
use crate::sft::{self, SftConfig, Target};
use crate::trainer::{LoopConfig, RunOptions, TrainObserver, CONFIG_FILE};

pub const SUMMARY_FILE: &str = "summary.json";

/// What `summary.json` says about the arms, so nobody reads "RLAIF" as more than it is.
pub const PROTOCOL_NOTE: &str = "Seed-study protocol: both arms are supervised fine-tuning on \
human-labelled pairs. \"rlhf\" imitates the chosen replies; \"rlaif\" imitates the rejected \
replies, the seed's stand-in for AI feedback. No AI labeler and no reinforcement learning is \
involved in either arm.";

/// `rlxf train seed-replication` config: an SFT config without `target` (each arm sets its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedReplicationConfig {
    /// Model both arms start from (see [`SftConfig::model`]).
    pub model: String,
    /// Root of the preset: `rlhf/`, `rlaif/` and `summary.json` go here.
    pub output_dir: PathBuf,
    /// Longest prompt + reply in tokens.
    pub max_length: usize,
    /// Prompt tokens kept when prompt + reply is too long.
    pub max_prompt_length: usize,
    pub data: DataConfig,
    pub train: LoopConfig,
}

impl Default for SeedReplicationConfig {
    fn default() -> Self {
        let sft = SftConfig::default();
        Self {
            model: sft.model,
            output_dir: "runs/seed-replication".into(),
            max_length: sft.max_length,
            max_prompt_length: sft.max_prompt_length,
            data: sft.data,
            train: sft.train,
        }
    }
}

/// One arm of the seed study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// SFT on the chosen replies (the seed's "RLHF" model).
    Rlhf,
    /// SFT on the rejected replies (the seed's "RLAIF" model; not real RLAIF, see the module docs).
    Rlaif,
}

impl Arm {
    pub const ALL: [Arm; 2] = [Arm::Rlhf, Arm::Rlaif];

    /// The arm's directory under the preset's output directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Arm::Rlhf => "rlhf",
            Arm::Rlaif => "rlaif",
        }
    }

    pub fn target(self) -> Target {
        match self {
            Arm::Rlhf => Target::Chosen,
            Arm::Rlaif => Target::Rejected,
        }
    }
}

impl SeedReplicationConfig {
    /// The SFT config of one arm: this config with the arm's target and run directory.
    pub fn arm_config(&self, arm: Arm) -> SftConfig {
        SftConfig {
            model: self.model.clone(),
            output_dir: self.output_dir.join(arm.dir_name()),
            target: arm.target(),
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
            data: self.data.clone(),
            train: self.train.clone(),
        }
    }
}

/// What this invocation did with an arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ArmOutcome {
    /// Trained from the first step.
    Trained,
    /// Continued from the checkpoint at `from_step`.
    Resumed { from_step: u64 },
    /// Its model was already written by an earlier invocation with the same config; not run.
    AlreadyComplete,
}

/// One arm's result, as `summary.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: Arm,
    pub target: Target,
    pub run_dir: PathBuf,
    /// The fine-tuned model in Hugging Face format.
    pub model_dir: PathBuf,
    pub steps: u64,
    /// Training loss (mean reply-token NLL) of the last step.
    pub final_train_loss: f64,
    /// Held-out reply-token NLL after the last step; `None` without held-out pairs.
    pub final_eval_loss: Option<f64>,
    pub final_eval_perplexity: Option<f64>,
    pub outcome: ArmOutcome,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedReplicationSummary {
    pub note: String,
    pub arms: Vec<ArmResult>,
}

/// Progress reports: an arm is announced, then its training reports as any run's do.
pub trait SeedReplicationObserver: TrainObserver {
    fn on_arm(&mut self, _arm: Arm) {}
}

impl SeedReplicationObserver for crate::trainer::Silent {}

/// Records where the trainer started while passing its reports on.
struct StartRecorder<'a> {
    inner: &'a mut dyn SeedReplicationObserver,
    start_step: Option<u64>,
}

impl TrainObserver for StartRecorder<'_> {
    fn on_start(&mut self, start_step: u64, total_steps: u64) {
        self.start_step = Some(start_step);
        self.inner.on_start(start_step, total_steps);
    }

    fn on_step(&mut self, step: u64, record: &Map<String, Value>) {
        self.inner.on_step(step, record);
    }
}

/// Runs both arms (`origin`: the config file, for error messages) and writes `summary.json`.
pub fn run(
    config: &SeedReplicationConfig,
    origin: &Path,
    observer: &mut dyn SeedReplicationObserver,
) -> Result<SeedReplicationSummary> {
    let mut arms = Vec::new();
    for arm in Arm::ALL {
        observer.on_arm(arm);
        arms.push(run_arm(config, arm, origin, observer)?);
    }
    let summary = SeedReplicationSummary {
        note: PROTOCOL_NOTE.to_string(),
        arms,
    };
    let path = config.output_dir.join(SUMMARY_FILE);
    let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
    crate::checkpoint::write_atomic(&path, json.as_bytes())?;
    Ok(summary)
}

fn run_arm(
    config: &SeedReplicationConfig,
    arm: Arm,
    origin: &Path,
    observer: &mut dyn SeedReplicationObserver,
) -> Result<ArmResult> {
    let arm_config = config.arm_config(arm);
    let config_text = toml::to_string(&arm_config).map_err(|err| TrainError::InvalidConfig {
        path: origin.to_path_buf(),
        field: "(file)".into(),
        reason: err.to_string(),
    })?;
    let run_dir = &arm_config.output_dir;
    let model_dir = run_dir.join("model");
    // The trainer resumes whatever checkpoints it finds; refuse to mix runs of different configs.
    // The run directory itself may have moved (or be spelt relative), so it is not compared.
    let stored_config = run_dir.join(CONFIG_FILE);
    if stored_config.exists() {
        let (mut stored, _): (SftConfig, String) = read_config(&stored_config, &[])?;
        stored.output_dir.clone_from(&arm_config.output_dir);
        if stored != arm_config {
            return Err(TrainError::InvalidConfig {
                path: origin.to_path_buf(),
                field: "output_dir".into(),
                reason: format!(
                    "{} holds a run with a different config ({}); choose another output_dir or \
                     delete that directory",
                    run_dir.display(),
                    stored_config.display()
                ),
            });
        }
    }
    let outcome = if model_dir.join("config.json").is_file() {
        ArmOutcome::AlreadyComplete
    } else {
        let mut recorder = StartRecorder {
            inner: observer,
            start_step: None,
        };
        let options = RunOptions {
            resume: true,
            stop_after_step: None,
        };
        sft::run(&arm_config, &config_text, origin, &options, &mut recorder)?;
        match recorder.start_step {
            Some(0) | None => ArmOutcome::Trained,
            Some(from_step) => ArmOutcome::Resumed { from_step },
        }
    };
    final_losses(arm, run_dir, model_dir, outcome)
}

/// The arm's result from the last record of its `metrics.jsonl`, which holds the final step's loss
/// and evaluation whether this invocation trained, resumed or skipped it.
fn final_losses(
    arm: Arm,
    run_dir: &Path,
    model_dir: PathBuf,
    outcome: ArmOutcome,
) -> Result<ArmResult> {
    let path = run_dir.join(METRICS_FILE);
    let records = read_metrics(&path)?;
    let missing = |field: &str| TrainError::InvalidRecord {
        origin: path.display().to_string(),
        record: "last line".into(),
        field: field.into(),
        reason: "missing; the run's metrics are incomplete (delete the run directory and rerun)"
            .into(),
    };
    let last = records.last().ok_or_else(|| missing("step"))?;
    let number = |field: &str| last.get(field).and_then(Value::as_f64);
    Ok(ArmResult {
        arm,
        target: arm.target(),
        run_dir: run_dir.to_path_buf(),
        model_dir,
        steps: last
            .get("step")
            .and_then(Value::as_u64)
            .ok_or_else(|| missing("step"))?,
        final_train_loss: number("loss").ok_or_else(|| missing("loss"))?,
        final_eval_loss: number("eval_loss"),
        final_eval_perplexity: number("eval_perplexity"),
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::trainer::Silent;

    fn tiny_config(dir: &Path) -> SeedReplicationConfig {
        let text = format!(
            "model = \"random:gpt-neo-tiny\"\noutput_dir = {:?}\nmax_length = 40\n\
             max_prompt_length = 24\n[data]\nmax_pairs = 12\neval_fraction = 0.25\n\
             [train]\nbatch_size = 3\nmax_steps = 3\nsave_every = 1\nlearning_rate = 1e-3\n",
            dir.to_str().unwrap()
        );
        parse_config(&text, Path::new("tiny.toml"), &[]).unwrap().0
    }

    #[test]
    fn arms_differ_only_in_target_and_run_dir() {
        let config = SeedReplicationConfig::default();
        let [rlhf, rlaif] = Arm::ALL.map(|arm| config.arm_config(arm));
        assert_eq!(rlhf.target, Target::Chosen);
        assert_eq!(rlaif.target, Target::Rejected);
        assert_eq!(rlhf.output_dir, Path::new("runs/seed-replication/rlhf"));
        assert_eq!(rlaif.output_dir, Path::new("runs/seed-replication/rlaif"));
        let same = SftConfig {
            target: rlhf.target,
            output_dir: rlhf.output_dir.clone(),
            ..rlaif
        };
        assert_eq!(same, rlhf);
    }

    #[test]
    fn shipped_presets_parse_and_keep_the_seed_protocol() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs"));
        let (real, _): (SeedReplicationConfig, _) =
            read_config(&dir.join("seed-replication.toml"), &[]).unwrap();
        assert_eq!(real.model, "EleutherAI/gpt-neo-125M");
        assert_eq!(real.data.max_pairs, Some(3500));
        assert_eq!((real.train.epochs, real.train.batch_size), (3, 4));
        let (local, _): (SeedReplicationConfig, _) =
            read_config(&dir.join("seed-replication-local.toml"), &[]).unwrap();
        assert_eq!(local.model, "random:gpt-neo-tiny");
        assert_eq!((local.train.epochs, local.train.batch_size), (3, 4));
        // `target` belongs to each arm, not to the preset.
        let err = parse_config::<SeedReplicationConfig>(
            "target = \"chosen\"\n",
            Path::new("p.toml"),
            &[],
        )
        .unwrap_err();
        assert!(
            err.is_bad_input() && err.to_string().contains("target"),
            "{err}"
        );
    }

    #[test]
    fn an_interrupted_arm_resumes_and_a_finished_one_is_skipped() {
        let temp = tempfile::tempdir().unwrap();
        let config = tiny_config(temp.path());
        // Interrupt the rlhf arm during step 2, as a killed process would leave it: step 1's
        // checkpoint is the newest (save_every = 1).
        let rlhf = config.arm_config(Arm::Rlhf);
        let text = toml::to_string(&rlhf).unwrap();
        let stop = RunOptions {
            resume: false,
            stop_after_step: Some(2),
        };
        sft::run(&rlhf, &text, Path::new("tiny.toml"), &stop, &mut Silent).unwrap();

        let summary = run(&config, Path::new("tiny.toml"), &mut Silent).unwrap();
        let outcomes: Vec<ArmOutcome> = summary.arms.iter().map(|arm| arm.outcome).collect();
        assert_eq!(
            outcomes,
            [ArmOutcome::Resumed { from_step: 1 }, ArmOutcome::Trained]
        );
        for result in &summary.arms {
            assert_eq!(result.steps, 3);
            assert!(result.final_train_loss.is_finite());
            let eval = result.final_eval_loss.unwrap();
            assert!((result.final_eval_perplexity.unwrap() - eval.exp()).abs() < 1e-9 * eval.exp());
        }
        // The two arms see the same prompts but learn different replies.
        assert_ne!(
            summary.arms[0].final_eval_loss,
            summary.arms[1].final_eval_loss
        );
        let written: SeedReplicationSummary =
            serde_json::from_str(&std::fs::read_to_string(temp.path().join(SUMMARY_FILE)).unwrap())
                .unwrap();
        assert_eq!(written, summary);

        let again = run(&config, Path::new("tiny.toml"), &mut Silent).unwrap();
        for (before, after) in summary.arms.iter().zip(&again.arms) {
            assert_eq!(after.outcome, ArmOutcome::AlreadyComplete);
            assert_eq!(
                (after.steps, after.final_train_loss, after.final_eval_loss),
                (
                    before.steps,
                    before.final_train_loss,
                    before.final_eval_loss
                )
            );
        }

        // A moved preset directory is still recognised as the same run.
        let moved = temp.path().join("moved");
        std::fs::create_dir(&moved).unwrap();
        for arm in Arm::ALL {
            std::fs::rename(temp.path().join(arm.dir_name()), moved.join(arm.dir_name())).unwrap();
        }
        let config = SeedReplicationConfig {
            output_dir: moved,
            ..config
        };
        let after_move = run(&config, Path::new("tiny.toml"), &mut Silent).unwrap();
        assert!(after_move
            .arms
            .iter()
            .all(|arm| arm.outcome == ArmOutcome::AlreadyComplete));

        let mut changed = config.clone();
        changed.train.learning_rate = Some(2e-3);
        let err = run(&changed, Path::new("tiny.toml"), &mut Silent).unwrap_err();
        assert!(err.to_string().contains("different config"), "{err}");
    }
}
