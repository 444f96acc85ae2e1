//! The self-improvement loop (the seed study's question whether a small model can improve itself
//! with its own AI feedback): starting from the SFT model, each round
//!
//! 1. samples two replies per training prompt from the current policy (`samples`),
//! 2. has the labeler (by default the model's own starting checkpoint) label which is better, both
//!    orders averaged (`labels`),
//! 3. trains a reward model on those soft labels from the SFT model (`rm`),
//! 4. runs PPO from the current policy against it (`ppo`), giving the next round's policy.
//!
//! Every step is a cached stage `self-improve/round-<r>/<step>` keyed by the previous round.

use std::path::Path;

use anyhow::Context;
use rlxf_data::{ContextRules, PreferencePair};
use rlxf_model::{generate_keyed, GenerationConfig};
use rlxf_train::reward;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::ExperimentConfig;
use super::manifest::{stage_dir, StageRun};
use super::stages::{
    feedback_config, model_reward, model_table, ppo_stage, prompt_key, trainer_stage, Made,
    PpoStage,
};
use super::{run_stage, RunSummary};
use crate::commands::generate::load_cli_model;
use crate::commands::label::{context_tags, label_pairs};
use crate::{progress, Ctx};

/// `[self_improve]`: the loop of the `self-improve` method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfImproveSettings {
    pub rounds: usize,
    /// Training prompts sampled per round (distinct prompts of `[data]`, in split order).
    pub prompts_per_round: usize,
    /// Sampling temperature of the two replies (1.0, so that they differ enough to compare).
    pub temperature: f64,
    pub max_new_tokens: usize,
}

impl Default for SelfImproveSettings {
    fn default() -> Self {
        Self {
            rounds: 2,
            prompts_per_round: 64,
            temperature: 1.0,
            max_new_tokens: 48,
        }
    }
}

/// Two sampled replies per prompt of the policy in `policy`, as preference pairs (A as `chosen`, B
/// as `rejected`: the labels, not the order, say which is better).
fn sample_pairs(
    policy: &Path,
    prompts: &[PreferencePair],
    settings: &SelfImproveSettings,
    round: usize,
    ctx: Ctx,
) -> anyhow::Result<Vec<PreferencePair>> {
    let model = load_cli_model(&policy.display().to_string())?;
    let generation = GenerationConfig {
        max_new_tokens: settings.max_new_tokens,
        temperature: settings.temperature,
        seed: round as u64,
        stop_strings: model.template.stop_strings(),
        stop_at_eos: true,
        ..GenerationConfig::default()
    };
    let bar = progress::bar(ctx, prompts.len() as u64, "prompts");
    bar.set_message(format!("round {round}: sampling reply pairs"));
    let mut pairs = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(8) {
        let mut ids = Vec::with_capacity(chunk.len() * 2);
        let mut keys = Vec::with_capacity(chunk.len() * 2);
        for pair in chunk {
            let text = model.template.render_hh_prompt(&pair.prompt)?;
            let encoded = model.tokenizer.encode(&text)?;
            ids.extend([encoded.clone(), encoded]);
            let key = prompt_key(&pair.id);
            keys.extend([key, key ^ 1]);
        }
        let replies = generate_keyed(&model.model, &model.tokenizer, &ids, &keys, &generation)?;
        for (pair, two) in chunk.iter().zip(replies.chunks(2)) {
            let reply =
                |index: usize| format!(" {}", model.template.reply_text(&two[index].text).trim());
            pairs.push(PreferencePair {
                id: format!("round-{round}/{}", pair.id),
                prompt: pair.prompt.clone(),
                chosen: reply(0),
                rejected: reply(1),
                context: pair.context.clone(),
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(pairs)
}

/// Runs the rounds for one model and seed from `sft`; returns the last round's policy.
#[allow(clippy::too_many_arguments)]
pub fn self_improve(
    config: &ExperimentConfig,
    config_path: &Path,
    base: &Made,
    sft: &Made,
    seed: u64,
    run_dir: &Path,
    scope: Option<(&str, u64)>,
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<Made> {
    let settings = &config.self_improve;
    let labeler = feedback_config(config.labeler.as_ref(), &base.0, "labeler")?;
    let split = rlxf_train::setup::load_data(&config.data, seed)?;
    let mut seen = std::collections::HashSet::new();
    let prompts: Vec<PreferencePair> = split
        .train
        .into_iter()
        .filter(|pair| seen.insert(pair.prompt.clone()))
        .take(settings.prompts_per_round)
        .collect();
    let label_cache = run_dir.join("label-cache.sqlite");
    let mut policy = sft.clone();
    for round in 1..=settings.rounds {
        let round_dir = stage_dir(run_dir, scope, &format!("self-improve/round-{round}"));

        let samples = StageRun::new(
            "self-improve-samples",
            round_dir.join("samples"),
            json!({"settings": settings, "data": config.data, "seed": seed, "round": round}),
            vec![policy.1.clone()],
        );
        let samples_key = samples.key.clone();
        run_stage(samples, ctx, summary, |dir, _| {
            let pairs = sample_pairs(&policy.0, &prompts, settings, round, ctx)?;
            rlxf_data::write_jsonl(&dir.join("pairs.jsonl"), &pairs)?;
            Ok(json!({"pairs": "pairs.jsonl", "count": pairs.len()}))
        })?;
        let pairs_path = round_dir.join("samples/pairs.jsonl");

        let labels = StageRun::new(
            "self-improve-labels",
            round_dir.join("labels"),
            json!({"labeler": labeler}),
            vec![samples_key, base.1.clone()],
        );
        let labels_key = labels.key.clone();
        run_stage(labels, ctx, summary, |dir, _| {
            let pairs = rlxf_data::load::read_pairs_jsonl(&pairs_path)?;
            let rules = ContextRules::embedded();
            let contexts = context_tags(&pairs, &rules);
            let labeled = label_pairs(
                &labeler,
                &pairs,
                &contexts,
                &|_| None,
                &label_cache,
                dir,
                ctx,
            )?;
            let run = json!({"stage": "self-improve-labels", "round": round, "seed": seed});
            labeled.write_audit(dir, &labeler, &label_cache, run)?;
            Ok(json!({"labels": "labels.jsonl", "audit": "audit.json"}))
        })?;

        let mut fixed = model_table(sft, &config.data, seed)?;
        if let Some(toml::Value::Table(data)) = fixed.get_mut("data") {
            data.insert(
                "train".into(),
                toml::Value::String(pairs_path.display().to_string()),
            );
            data.insert(
                "labels".into(),
                toml::Value::String(round_dir.join("labels/labels.jsonl").display().to_string()),
            );
            data.remove("max_pairs");
        }
        let reward_model = trainer_stage::<reward::RewardConfig>(
            "self-improve-rm",
            &config.rm,
            fixed,
            vec![sft.1.clone(), labels_key],
            round_dir.join("rm"),
            config_path,
            reward::run,
            ctx,
            summary,
        )?;

        let stage = PpoStage {
            name: "self-improve-ppo",
            start: &policy,
            seed,
            dir: round_dir.join("ppo"),
        };
        let next = ppo_stage(
            config,
            config_path,
            stage,
            model_reward(&reward_model),
            reward_model.1.clone(),
            ctx,
            summary,
        )
        .with_context(|| format!("self-improvement round {round}"))?;
        policy = next;
    }
    Ok(policy)
}
