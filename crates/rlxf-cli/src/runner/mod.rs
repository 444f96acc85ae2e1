//! `rlxf run CONFIG.toml`: the whole study from one config, stage by stage into
//! `<runs_dir>/<name>/`, each stage skipped when its manifest matches its inputs and resumed when a
//! kill interrupted it.
//!
//! Stages, per model and seed: `sft` (chosen replies), `sft-rejected`, `rm` (human labels, from the
//! SFT model), `dpo-human` (from the SFT model), then `generate-<method>` (replies to the
//! evaluation prompts); once for the run: `eval` (metrics per policy × context with bootstrap
//! intervals, the semantic ones with the `[eval] encoder`) and `report` (`report.md`,
//! `report.html`, `plots/`).

pub mod config;
pub mod manifest;
mod self_improve;
mod stages;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use config::{ExperimentConfig, Method};
use manifest::{stage_dir, StageRun, StageState};

use crate::Ctx;

/// A policy of the study and where its model is.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unique name in the report: the method, with model and seed when the sweep has several.
    pub name: String,
    pub method: Method,
    pub model_name: String,
    pub seed: u64,
    pub model_dir: PathBuf,
    /// Key of the stage that made the model (or of the source, for `base`).
    pub key: String,
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub report_dir: PathBuf,
    /// Stages that ran now (the others were reused).
    pub ran: Vec<String>,
    pub reused: Vec<String>,
}

/// Runs (or reuses) a stage: `work` gets the stage folder and whether it resumes an interrupted
/// attempt, and returns the outputs recorded in the manifest.
pub(crate) fn run_stage(
    stage: StageRun,
    ctx: Ctx,
    summary: &mut RunSummary,
    work: impl FnOnce(&Path, bool) -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<manifest::Manifest> {
    let label = stage
        .dir
        .strip_prefix(&summary.run_dir)
        .unwrap_or(&stage.dir)
        .display()
        .to_string();
    let resume = match stage.state()? {
        StageState::Done(manifest) => {
            if !ctx.quiet {
                eprintln!("[reuse] {label}");
            }
            summary.reused.push(label);
            return Ok(manifest);
        }
        StageState::Interrupted => true,
        StageState::Fresh => false,
    };
    if !ctx.quiet {
        eprintln!("[{}] {label}", if resume { "resume" } else { "run" });
    }
    let started = stage.start()?;
    let outputs = work(&stage.dir, resume).with_context(|| format!("stage {label}"))?;
    let manifest = stage.finish(started, outputs)?;
    summary.ran.push(label);
    Ok(manifest)
}

/// Runs every stage the config declares.
pub fn run(config: &ExperimentConfig, config_path: &Path, ctx: Ctx) -> anyhow::Result<RunSummary> {
    let run_dir = config.runs_dir.join(&config.name);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run folder {}", run_dir.display()))?;
    let text = toml::to_string(config)?;
    rlxf_model::weights::write_atomic(&run_dir.join("config.toml"), text.as_bytes())?;
    let mut summary = RunSummary {
        report_dir: stage_dir(&run_dir, None, "report"),
        run_dir: run_dir.clone(),
        ran: Vec::new(),
        reused: Vec::new(),
    };
    // loaded before any training, so that a missing encoder stops the run at once
    let encoder = stages::sentence_encoder(config, config_path, ctx)?;
    stages::fetch_feedback_models(config, config_path, ctx)?;
    let mut policies = Vec::new();
    let mut reward_models = Vec::new();
    let mut audits = Vec::new();
    let mut first_base = None;
    for model in &config.models {
        for &seed in &config.seeds {
            let trained = stages::train_model_stages(
                config,
                config_path,
                model,
                seed,
                &run_dir,
                ctx,
                &mut summary,
            )?;
            for method in &config.methods {
                let (model_dir, key) = trained.policy_model(*method)?;
                policies.push(Policy {
                    name: config.policy_name(*method, &model.name, seed),
                    method: *method,
                    model_name: model.name.clone(),
                    seed,
                    model_dir,
                    key,
                });
            }
            first_base.get_or_insert_with(|| trained.base.0.clone());
            if let Some((audit, key)) = &trained.labels_audit {
                audits.push((
                    format!("{}/s{seed}", model.name),
                    audit.clone(),
                    key.clone(),
                ));
            }
            if let Some(reward_model) = trained.reward_model {
                reward_models.push((model.name.clone(), seed, reward_model));
            }
        }
    }
    let responses = stages::generate_all(config, &run_dir, &policies, ctx, &mut summary)?;
    let judge = match (config.eval.judge, &first_base) {
        (true, Some(base)) => Some(stages::feedback_config(
            config.judge.as_ref(),
            base,
            "judge",
        )?),
        _ => None,
    };
    let inputs = stages::EvalInputs {
        policies: &policies,
        responses: &responses,
        reward_models: &reward_models,
        judge: judge.as_ref(),
        encoder: encoder.as_ref(),
    };
    let eval = stages::evaluate(config, &run_dir, inputs, ctx, &mut summary)?;
    stages::report(
        config,
        &run_dir,
        &policies,
        &eval,
        &audits,
        ctx,
        &mut summary,
    )?;
    Ok(summary)
}
