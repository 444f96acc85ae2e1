//! Direct Preference Optimization (Rafailov et al. 2023) with TRL's sigmoid loss, label smoothing
//! (conservative DPO) and soft labels.
//!
//! The reference model's sequence log-probs never change, so they are computed once, before the
//! first step, for every training and held-out pair, and cached by pair id in
//! `RUN_DIR/reference_logprobs.json`. A resumed run reads the cache instead of recomputing it with
//! the (by then trained) policy, and only one model is held in memory while training.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use rlxf_model::{continuation_logprobs, CausalLm, ContinuationBatch, LoadedModel, Padding};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::losses::{dpo_loss, to_f64s, DpoLossConfig, PairStats};
use crate::setup::{self, DataConfig, EncodedPair, Lengths};
use crate::trainer::{
    self, LoopConfig, MicroBatchOutput, Objective, RunOptions, TrainObserver, TrainSummary,
};

/// DPO learning rate when the config gives none: 5e-7, Zephyr's DPO rate (Tunstall et al. 2023);
/// TRL's `DPOConfig` default is 1e-6. DPO needs rates far below SFT's.
pub const DEFAULT_LR: f64 = 5e-7;
pub const REFERENCE_CACHE_FILE: &str = "reference_logprobs.json";

/// `rlxf train dpo` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// Policy to start from (usually the SFT model): a directory, a Hugging Face id, or
    /// `random:<arch>`.
    pub model: String,
    /// Reference model; unset means the starting policy itself (the usual choice).
    pub reference: Option<String>,
    /// Run directory: `metrics.jsonl`, `checkpoints/`, the reference cache, the final `model/`.
    pub output_dir: PathBuf,
    /// KL strength β (paper and TRL: 0.1).
    pub beta: f64,
    /// Conservative-DPO label smoothing ε in [0, 0.5) (TRL default 0).
    pub label_smoothing: f64,
    /// Longest prompt + reply in tokens (TRL DPO default 1024).
    pub max_length: usize,
    /// Prompt tokens kept when prompt + reply is too long (the end of the prompt is kept).
    pub max_prompt_length: usize,
    pub data: DataConfig,
    pub train: LoopConfig,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            model: "random:gpt-neo-tiny".into(),
            reference: None,
            output_dir: "runs/dpo".into(),
            beta: 0.1,
            label_smoothing: 0.0,
            max_length: 1024,
            max_prompt_length: 512,
            data: DataConfig::default(),
            train: LoopConfig::default(),
        }
    }
}

impl DpoConfig {
    pub fn lengths(&self) -> Lengths {
        Lengths {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
        }
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let invalid = |field: &str, reason: &str| TrainError::InvalidConfig {
            path: origin.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        };
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(invalid("beta", "must be a positive number"));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(invalid("label_smoothing", "must be in [0, 0.5)"));
        }
        self.train.validate(origin)
    }
}

/// Summed log-probs of the chosen and of the rejected replies, each `[pairs]`, and the tokens
/// processed, from one right-padded forward pass over `2 × pairs` rows.
pub fn pair_logprob_sums(
    model: &dyn CausalLm,
    pairs: &[&EncodedPair],
    pad_id: u32,
) -> Result<(Tensor, Tensor, usize)> {
    let prompts: Vec<Vec<u32>> = pairs
        .iter()
        .chain(pairs)
        .map(|p| p.prompt.clone())
        .collect();
    let replies: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| p.chosen.clone())
        .chain(pairs.iter().map(|p| p.rejected.clone()))
        .collect();
    let batch = ContinuationBatch::new(&prompts, &replies, Padding::Right, pad_id, model.device())?;
    let sums = continuation_logprobs(model, &batch)?.sums()?;
    let n = pairs.len();
    let tokens = prompts
        .iter()
        .zip(&replies)
        .map(|(p, r)| p.len() + r.len())
        .sum();
    Ok((sums.narrow(0, 0, n)?, sums.narrow(0, n, n)?, tokens))
}

/// Reference log-probs `(chosen, rejected)` of every pair, by id.
pub fn reference_logprobs(
    reference: &LoadedModel,
    pairs: &[EncodedPair],
    pad_id: u32,
    batch_size: usize,
) -> Result<HashMap<String, (f64, f64)>> {
    // Through detached variables: no autograd graph keeps a chunk's activations alive.
    let frozen = reference.inference_model()?;
    let mut cache = HashMap::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        let refs: Vec<&EncodedPair> = chunk.iter().collect();
        let (chosen, rejected, _) = pair_logprob_sums(frozen.as_ref(), &refs, pad_id)?;
        let (chosen, rejected) = (to_f64s(&chosen.detach())?, to_f64s(&rejected.detach())?);
        for ((pair, c), r) in chunk.iter().zip(chosen).zip(rejected) {
            cache.insert(pair.id.clone(), (c, r));
        }
    }
    Ok(cache)
}

/// Errors on a repeated pair id (the reference cache is keyed by id).
fn check_unique_ids(pairs: &[EncodedPair]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for pair in pairs {
        if !seen.insert(pair.id.as_str()) {
            return Err(TrainError::InvalidRecord {
                origin: "DPO data".into(),
                record: pair.id.clone(),
                field: "id".into(),
                reason: "pair id occurs twice; DPO caches reference log-probs by id".into(),
            });
        }
    }
    Ok(())
}

pub struct DpoObjective {
    model: LoadedModel,
    pad_id: u32,
    loss: DpoLossConfig,
    train: Vec<EncodedPair>,
    eval: Vec<EncodedPair>,
    reference: HashMap<String, (f64, f64)>,
    eval_batch_size: usize,
    soft: bool,
}

/// DPO loss and implicit-reward statistics over a set of pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoEvaluation {
    pub loss: f64,
    pub rewards: PairStats,
}

impl DpoObjective {
    /// `reference` must hold every training and held-out pair's id.
    pub fn new(
        model: LoadedModel,
        pad_id: u32,
        loss: DpoLossConfig,
        train: Vec<EncodedPair>,
        eval: Vec<EncodedPair>,
        reference: HashMap<String, (f64, f64)>,
        eval_batch_size: usize,
    ) -> Result<Self> {
        if let Some(missing) = train
            .iter()
            .chain(&eval)
            .find(|p| !reference.contains_key(&p.id))
        {
            return Err(TrainError::InvalidInput(format!(
                "no reference log-probs for pair `{}`",
                missing.id
            )));
        }
        let soft = train.iter().any(|pair| pair.label != 1.0);
        Ok(Self {
            model,
            pad_id,
            loss,
            train,
            eval,
            reference,
            eval_batch_size: eval_batch_size.max(1),
            soft,
        })
    }

    fn reference_tensors(&self, pairs: &[&EncodedPair], like: &Tensor) -> Result<(Tensor, Tensor)> {
        let (chosen, rejected): (Vec<f64>, Vec<f64>) =
            pairs.iter().map(|p| self.reference[&p.id]).unzip();
        let to_tensor = |values: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::new(values, like.device())?.to_dtype(like.dtype())?)
        };
        Ok((to_tensor(chosen)?, to_tensor(rejected)?))
    }

    fn losses(&self, pairs: &[&EncodedPair]) -> Result<(crate::losses::DpoLoss, usize)> {
        let (chosen, rejected, tokens) = pair_logprob_sums(&self.model, pairs, self.pad_id)?;
        let (ref_chosen, ref_rejected) = self.reference_tensors(pairs, &chosen)?;
        let labels = if self.soft {
            Some(Tensor::new(
                pairs.iter().map(|p| p.label).collect::<Vec<_>>(),
                chosen.device(),
            )?)
        } else {
            None
        };
        let loss = dpo_loss(
            &chosen,
            &rejected,
            &ref_chosen,
            &ref_rejected,
            self.loss,
            labels.as_ref(),
        )?;
        Ok((loss, tokens))
    }

    /// Mean loss and implicit-reward statistics of the current policy on `pairs` (which must be
    /// among the pairs the reference cache covers).
    pub fn evaluate_pairs(&self, pairs: &[EncodedPair]) -> Result<DpoEvaluation> {
        let (mut chosen, mut rejected, mut loss_sum) = (Vec::new(), Vec::new(), 0.0);
        for chunk in pairs.chunks(self.eval_batch_size) {
            let refs: Vec<&EncodedPair> = chunk.iter().collect();
            let (loss, _) = self.losses(&refs)?;
            loss_sum += loss
                .losses
                .detach()
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            chosen.extend(to_f64s(&loss.chosen_rewards)?);
            rejected.extend(to_f64s(&loss.rejected_rewards)?);
        }
        Ok(DpoEvaluation {
            loss: loss_sum / pairs.len().max(1) as f64,
            rewards: PairStats::of(&chosen, &rejected),
        })
    }
}

impl Objective for DpoObjective {
    fn model(&self) -> &LoadedModel {
        &self.model
    }

    fn num_examples(&self) -> usize {
        self.train.len()
    }

    fn loss_units(&self, examples: &[usize]) -> f64 {
        examples.len() as f64
    }

    fn micro_batch(&mut self, examples: &[usize]) -> Result<MicroBatchOutput> {
        let pairs: Vec<&EncodedPair> = examples.iter().map(|&i| &self.train[i]).collect();
        let (loss, tokens) = self.losses(&pairs)?;
        let stats = PairStats::of(
            &to_f64s(&loss.chosen_rewards)?,
            &to_f64s(&loss.rejected_rewards)?,
        );
        let n = pairs.len() as f64;
        Ok(MicroBatchOutput {
            loss_sum: loss.losses.sum_all()?,
            tokens,
            metric_sums: vec![
                ("rewards_chosen", stats.mean_chosen * n),
                ("rewards_rejected", stats.mean_rejected * n),
                ("rewards_margin", stats.mean_margin * n),
                ("rewards_accuracy", stats.accuracy * n),
            ],
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        if self.eval.is_empty() {
            return Ok(Vec::new());
        }
        let evaluation = self.evaluate_pairs(&self.eval)?;
        Ok(vec![
            ("loss".into(), evaluation.loss),
            ("rewards_accuracy".into(), evaluation.rewards.accuracy),
            ("rewards_margin".into(), evaluation.rewards.mean_margin),
            ("rewards_chosen".into(), evaluation.rewards.mean_chosen),
            ("rewards_rejected".into(), evaluation.rewards.mean_rejected),
        ])
    }
}

/// Reads the reference cache of a run, if present.
fn read_cache(path: &Path) -> Result<Option<HashMap<String, (f64, f64)>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|err| TrainError::io(path, err))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })
}

/// Runs DPO as `config` says (see [`crate::sft::run`] for the arguments).
pub fn run(
    config: &DpoConfig,
    config_text: &str,
    origin: &Path,
    options: &RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    config.validate(origin)?;
    let bundle = setup::load_model_for(&config.model, &config.train)?;
    config
        .lengths()
        .validate(origin, bundle.model.max_context())?;
    let data = setup::load_data(&config.data, config.train.seed)?;
    let labels = config
        .data
        .labels
        .as_ref()
        .map(|path| setup::read_labels(Path::new(path)))
        .transpose()?;
    let train = setup::encode_pairs(&bundle, &data.train, config.lengths(), labels.as_ref())?;
    let eval = setup::encode_pairs(&bundle, &data.eval, config.lengths(), labels.as_ref())?;
    let all: Vec<EncodedPair> = train.iter().chain(&eval).cloned().collect();
    check_unique_ids(&all)?;
    let pad_id = bundle.tokenizer.pad_id();
    let batch = config.train.micro_batch();

    std::fs::create_dir_all(&config.output_dir)
        .map_err(|err| TrainError::io(&config.output_dir, err))?;
    let cache_path: PathBuf = config.output_dir.join(REFERENCE_CACHE_FILE);
    let cached = if options.resume {
        read_cache(&cache_path)?
    } else {
        None
    };
    let reference = match cached {
        Some(cache) => cache,
        None => {
            let cache = match &config.reference {
                Some(source) => reference_logprobs(
                    &setup::load_model_for(source, &config.train)?.model,
                    &all,
                    pad_id,
                    batch,
                )?,
                None => reference_logprobs(&bundle.model, &all, pad_id, batch)?,
            };
            let text = serde_json::to_string(&cache).expect("a map of numbers serialises");
            crate::checkpoint::write_atomic(&cache_path, text.as_bytes())?;
            cache
        }
    };
    let loss = DpoLossConfig {
        beta: config.beta,
        label_smoothing: config.label_smoothing,
    };
    let mut objective =
        DpoObjective::new(bundle.model, pad_id, loss, train, eval, reference, batch)?;
    trainer::train(
        &mut objective,
        &config.train,
        DEFAULT_LR,
        &config.output_dir,
        config_text,
        options,
        observer,
    )
}
