//! `rlxf train sft|rm|dpo` (training from a TOML config), `rlxf train seed-replication` (the seed
//! study's two SFT arms) and `rlxf rm score`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use rlxf_train::config::read_config;
use rlxf_train::seed_replication::{self, Arm, SeedReplicationConfig, SeedReplicationObserver};
use rlxf_train::setup::{load_model, Lengths};
use rlxf_train::{dpo, reward, sft, RunOptions, TrainObserver, TrainSummary};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::commands::generate::{read_jsonl_objects, string_field, write_jsonl};
use crate::commands::{rl, BadInput};
use crate::{progress, Ctx};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning on one reply of each pair (the chosen one by default).
    Sft(TrainArgs),
    /// Train a reward model (backbone + scalar head) with the Bradley–Terry loss.
    Rm(TrainArgs),
    /// Direct Preference Optimization against a frozen reference model.
    Dpo(TrainArgs),
    /// PPO against a reward (reward model, AI labeler score or synthetic) with a KL leash to the
    /// reference: value head, GAE, clipped losses (TRL PPOTrainer defaults).
    Ppo(TrainArgs),
    /// A2C: REINFORCE with a learned value baseline, Lee et al. 2023's RL algorithm.
    A2c(TrainArgs),
    /// RLOO: k responses per prompt, leave-one-out baseline, no value head (TRL RLOOTrainer).
    Rloo(TrainArgs),
    /// The seed study's protocol: SFT on the chosen replies into OUTPUT_DIR/rlhf/ and SFT on the
    /// rejected replies (the seed's stand-in for AI feedback, not real RLAIF) into
    /// OUTPUT_DIR/rlaif/, then OUTPUT_DIR/summary.json. A rerun resumes or skips finished arms.
    SeedReplication(SeedReplicationArgs),
}

#[derive(Debug, Args)]
pub struct SeedReplicationArgs {
    /// TOML config: an SFT config without `target` (see configs/seed-replication*.toml).
    #[arg(long, value_name = "FILE.toml")]
    config: PathBuf,

    /// Override a config field, e.g. --set data.max_pairs=100 (value in TOML syntax; bare words
    /// are strings). Repeatable.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    overrides: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML config (see configs/*.toml; every field is optional and documented there). With
    /// --resume and no --config, the run's own config.toml is used.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,

    /// Continue the run in RUN_DIR from its newest checkpoint (sets output_dir to RUN_DIR).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,

    /// Override a config field, e.g. --set train.learning_rate=1e-4 --set model=runs/sft/model
    /// (value in TOML syntax; bare words are strings). Repeatable.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    overrides: Vec<String>,

    /// Write the run here (overrides the config's output_dir).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RmCommand {
    /// Score replies with a trained reward model.
    Score(ScoreArgs),
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Reward-model directory (as `rlxf train rm` writes it: RUN_DIR/model).
    #[arg(long, value_name = "DIR")]
    model: String,

    /// JSONL: objects with "prompt" and "response" (scored into "score"), or preference pairs with
    /// "prompt", "chosen", "rejected" (scored into "chosen_score" and "rejected_score"). Prompts are
    /// HH transcripts ending with "\n\nAssistant:"; replies get EOS appended, as in training.
    #[arg(long, value_name = "FILE.jsonl")]
    input: PathBuf,

    /// Write the scored objects here instead of standard output.
    #[arg(long, value_name = "FILE.jsonl")]
    out: Option<PathBuf>,

    /// Longest prompt + reply in tokens [default: 1024 or the model's context if shorter]; longer
    /// prompts keep their end.
    #[arg(long)]
    max_length: Option<usize>,

    /// Prompt tokens kept when prompt + reply is too long [default: half of --max-length].
    #[arg(long)]
    max_prompt_length: Option<usize>,

    /// Sequences scored per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

/// Draws the training progress bar.
pub(crate) struct Bar(pub(crate) ProgressBar);

impl TrainObserver for Bar {
    fn on_start(&mut self, start_step: u64, total_steps: u64) {
        self.0.set_length(total_steps);
        self.0.set_position(start_step);
        self.0.reset_eta();
    }

    fn on_step(&mut self, step: u64, record: &Map<String, Value>) {
        self.0.set_position(step);
        let number = |key: &str| record.get(key).and_then(Value::as_f64);
        // Online RL reports reward and KL; the offline trainers a loss.
        match (number("reward"), number("kl"), number("loss")) {
            (Some(reward), Some(kl), _) => {
                self.0.set_message(format!("reward {reward:.4} kl {kl:.3}"))
            }
            (_, _, Some(loss)) => self.0.set_message(format!("loss {loss:.4}")),
            _ => {}
        }
        for warning in record
            .get("warnings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            self.0.println(format!("warning (step {step}): {warning}"));
        }
    }
}

impl SeedReplicationObserver for Bar {
    fn on_arm(&mut self, arm: Arm) {
        self.0.println(format!(
            "arm {} (SFT on {:?})",
            arm.dir_name(),
            arm.target()
        ));
    }
}

pub fn run(cmd: TrainCommand, ctx: Ctx) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Sft(args) => run_algorithm(
            args,
            ctx,
            "sft",
            |c: &sft::SftConfig| c.output_dir.clone(),
            |c, dir| c.output_dir = dir,
            sft::run,
        ),
        TrainCommand::Rm(args) => run_algorithm(
            args,
            ctx,
            "rm",
            |c: &reward::RewardConfig| c.output_dir.clone(),
            |c, dir| c.output_dir = dir,
            reward::run,
        ),
        TrainCommand::Dpo(args) => run_algorithm(
            args,
            ctx,
            "dpo",
            |c: &dpo::DpoConfig| c.output_dir.clone(),
            |c, dir| c.output_dir = dir,
            dpo::run,
        ),
        TrainCommand::Ppo(args) => rl::run::<rlxf_train::rl::ppo::Ppo>(args, ctx),
        TrainCommand::A2c(args) => rl::run::<rlxf_train::rl::a2c::A2c>(args, ctx),
        TrainCommand::Rloo(args) => rl::run::<rlxf_train::rl::rloo::Rloo>(args, ctx),
        TrainCommand::SeedReplication(args) => run_seed_replication(args, ctx),
    }
}

fn run_seed_replication(args: SeedReplicationArgs, ctx: Ctx) -> anyhow::Result<()> {
    let (config, _) = read_config::<SeedReplicationConfig>(&args.config, &args.overrides)
        .with_context(|| format!("reading the preset config {}", args.config.display()))?;
    let mut observer = Bar(progress::bar(ctx, 0, "steps"));
    let summary =
        seed_replication::run(&config, &args.config, &mut observer).with_context(|| {
            format!(
                "running the seed replication into {}",
                config.output_dir.display()
            )
        })?;
    observer.0.finish_and_clear();
    for arm in &summary.arms {
        let eval = arm
            .final_eval_loss
            .map_or(String::new(), |loss| format!(", eval loss {loss:.4}"));
        println!(
            "{}: {} steps ({:?}), final loss {:.4}{eval}; model {}",
            arm.arm.dir_name(),
            arm.steps,
            arm.outcome,
            arm.final_train_loss,
            arm.model_dir.display()
        );
    }
    println!(
        "summary written to {}",
        config
            .output_dir
            .join(seed_replication::SUMMARY_FILE)
            .display()
    );
    Ok(())
}

/// The config of `rlxf train NAME` from --config or the run's own config.toml (with --resume),
/// with --set overrides and the output directory applied; also returns the config file, the
/// resolved config as TOML, and the run options.
pub(crate) fn load_run_config<C: DeserializeOwned + Serialize>(
    args: &TrainArgs,
    name: &str,
    set_output_dir: fn(&mut C, PathBuf),
) -> anyhow::Result<(C, PathBuf, String, RunOptions)> {
    let config_path = match (&args.config, &args.resume) {
        (Some(path), _) => path.clone(),
        (None, Some(run_dir)) => run_dir.join(rlxf_train::trainer::CONFIG_FILE),
        (None, None) => {
            return Err(BadInput("give --config FILE.toml (or --resume RUN_DIR)".into()).into())
        }
    };
    let (mut config, _) = read_config::<C>(&config_path, &args.overrides)
        .with_context(|| format!("reading the {name} config {}", config_path.display()))?;
    if let Some(dir) = args.resume.clone().or(args.output_dir.clone()) {
        set_output_dir(&mut config, dir);
    }
    let config_text = toml::to_string(&config).context("serialising the config")?;
    let options = RunOptions {
        resume: args.resume.is_some(),
        stop_after_step: None,
    };
    Ok((config, config_path, config_text, options))
}

type RunFn<C> =
    fn(&C, &str, &Path, &RunOptions, &mut dyn TrainObserver) -> rlxf_train::Result<TrainSummary>;

fn run_algorithm<C: DeserializeOwned + Serialize>(
    args: TrainArgs,
    ctx: Ctx,
    name: &str,
    output_dir: fn(&C) -> PathBuf,
    set_output_dir: fn(&mut C, PathBuf),
    train: RunFn<C>,
) -> anyhow::Result<()> {
    let (config, config_path, config_text, options) =
        load_run_config::<C>(&args, name, set_output_dir)?;
    let bar = progress::bar(ctx, 0, "steps");
    bar.set_message(format!("train {name}"));
    let mut observer = Bar(bar);
    let summary = train(&config, &config_text, &config_path, &options, &mut observer)
        .with_context(|| format!("training {name} into {}", output_dir(&config).display()))?;
    observer.0.finish_and_clear();
    let mut line = format!(
        "{name}: {} steps, final loss {:.4}",
        summary.steps, summary.final_loss
    );
    for (metric, value) in &summary.eval {
        line.push_str(&format!(", {metric} {value:.4}"));
    }
    println!("{line}");
    if let Some(model) = &summary.model_dir {
        println!("model saved to {}", model.display());
    }
    Ok(())
}

pub fn run_rm(cmd: RmCommand, ctx: Ctx) -> anyhow::Result<()> {
    match cmd {
        RmCommand::Score(args) => score(args, ctx),
    }
}

fn score(args: ScoreArgs, ctx: Ctx) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        return Err(BadInput("--batch-size must be at least 1".into()).into());
    }
    let objects = read_jsonl_objects(&args.input)?;
    let bundle = load_model(&args.model, 0)
        .with_context(|| format!("loading the reward model {}", args.model))?;
    let context = rlxf_model::CausalLm::max_context(&bundle.model);
    let max_length = args.max_length.unwrap_or(context.min(1024));
    let max_prompt_length = args.max_prompt_length.unwrap_or(max_length / 2);
    let lengths = Lengths {
        max_length,
        max_prompt_length,
    };
    lengths.validate(Path::new("command line"), context)?;

    // Every (prompt, reply) to score, and the object field each score goes to.
    let mut items = Vec::new();
    let mut targets = Vec::new();
    for (index, (line_no, object)) in objects.iter().enumerate() {
        let prompt = string_field(object, "prompt", &args.input, *line_no)?;
        let fields: &[(&str, &str)] = if object.contains_key("response") {
            &[("response", "score")]
        } else {
            &[("chosen", "chosen_score"), ("rejected", "rejected_score")]
        };
        for (reply_field, score_field) in fields {
            items.push((
                prompt.clone(),
                string_field(object, reply_field, &args.input, *line_no)?,
            ));
            targets.push((index, *score_field));
        }
    }
    let bar = progress::bar(ctx, items.len() as u64, "replies");
    let mut scores = Vec::with_capacity(items.len());
    for chunk in items.chunks(args.batch_size) {
        scores.extend(reward::score_texts(
            &bundle,
            chunk,
            lengths,
            args.batch_size,
        )?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut rows: Vec<Map<String, Value>> = objects.into_iter().map(|(_, object)| object).collect();
    for ((index, field), score) in targets.into_iter().zip(scores) {
        rows[index].insert(field.into(), Value::from(score));
    }
    let rows: Vec<Value> = rows.into_iter().map(Value::Object).collect();
    match &args.out {
        Some(path) => write_jsonl(path, &rows)?,
        None => {
            for row in rows {
                println!("{row}");
            }
        }
    }
    Ok(())
}
