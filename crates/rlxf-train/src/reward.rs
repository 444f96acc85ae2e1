//! Reward model: the backbone plus a scalar head read at each sequence's last real token (EOS,
//! unless truncation cut it), trained with the Bradley–Terry loss on hard or soft labels.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rlxf_model::{CausalLm, ContinuationBatch, LoadedModel, Padding, ScalarHead};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::losses::{bradley_terry_loss, to_f64s, PairStats};
use crate::setup::{self, DataConfig, EncodedPair, Lengths};
use crate::trainer::{
    self, LoopConfig, MicroBatchOutput, Objective, RunOptions, TrainObserver, TrainSummary,
};

/// Reward-model learning rate when the config gives none: 1e-5, the rate of TRL's reward-modelling
/// examples and of InstructGPT's 6B reward model (Ouyang et al. 2022, ~9e-6).
pub const DEFAULT_LR: f64 = 1e-5;

/// `rlxf train rm` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Backbone: a directory (an SFT model, or a reward model to keep training), a Hugging Face
    /// id, or `random:<arch>`. A scalar head is added (from the seed) when it has none.
    pub model: String,
    /// Run directory: `metrics.jsonl`, `checkpoints/`, the final `model/`.
    pub output_dir: PathBuf,
    /// Longest prompt + reply in tokens (TRL RewardConfig default 1024).
    pub max_length: usize,
    /// Prompt tokens kept when prompt + reply is too long (the end of the prompt is kept).
    pub max_prompt_length: usize,
    pub data: DataConfig,
    pub train: LoopConfig,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            model: "random:gpt-neo-tiny".into(),
            output_dir: "runs/rm".into(),
            max_length: 1024,
            max_prompt_length: 512,
            data: DataConfig::default(),
            train: LoopConfig::default(),
        }
    }
}

impl RewardConfig {
    pub fn lengths(&self) -> Lengths {
        Lengths {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
        }
    }
}

/// Scores of `(prompt, reply)` sequences, `[n]`, differentiable: the head at each row's last real
/// token of a right-padded batch.
pub fn score_sequences(
    model: &LoadedModel,
    head: &ScalarHead,
    prompts: &[Vec<u32>],
    replies: &[Vec<u32>],
    pad_id: u32,
) -> Result<Tensor> {
    let batch = ContinuationBatch::new(prompts, replies, Padding::Right, pad_id, model.device())?;
    let hidden = model.hidden_states(&batch.input_ids, Some(&batch.attention_mask), None)?;
    Ok(head.score_last_token(&hidden, Some(&batch.attention_mask))?)
}

/// Chosen and rejected scores of `pairs`, each `[pairs]`, from one forward pass.
pub fn score_pairs(
    model: &LoadedModel,
    head: &ScalarHead,
    pairs: &[&EncodedPair],
    pad_id: u32,
) -> Result<(Tensor, Tensor)> {
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
    let scores = score_sequences(model, head, &prompts, &replies, pad_id)?;
    let n = pairs.len();
    Ok((scores.narrow(0, 0, n)?, scores.narrow(0, n, n)?))
}

pub struct RewardObjective {
    model: LoadedModel,
    head: ScalarHead,
    pad_id: u32,
    train: Vec<EncodedPair>,
    eval: Vec<EncodedPair>,
    eval_batch_size: usize,
    /// Whether any training pair has a label other than 1 (then the soft-label loss is used).
    soft: bool,
}

impl RewardObjective {
    /// `model` gets a scalar head initialised from `head_seed` unless it already has one.
    pub fn new(
        mut model: LoadedModel,
        head_seed: u64,
        pad_id: u32,
        train: Vec<EncodedPair>,
        eval: Vec<EncodedPair>,
        eval_batch_size: usize,
    ) -> Result<Self> {
        let head = match model.scalar_head()? {
            Some(head) => head,
            None => model.attach_scalar_head(head_seed)?,
        };
        let soft = train.iter().any(|pair| pair.label != 1.0);
        Ok(Self {
            model,
            head,
            pad_id,
            train,
            eval,
            eval_batch_size: eval_batch_size.max(1),
            soft,
        })
    }

    /// Pairwise accuracy and margin statistics of the current model on `pairs`.
    pub fn pair_stats(&self, pairs: &[EncodedPair]) -> Result<PairStats> {
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for chunk in pairs.chunks(self.eval_batch_size) {
            let refs: Vec<&EncodedPair> = chunk.iter().collect();
            let (c, r) = score_pairs(&self.model, &self.head, &refs, self.pad_id)?;
            chosen.extend(to_f64s(&c.detach())?);
            rejected.extend(to_f64s(&r.detach())?);
        }
        Ok(PairStats::of(&chosen, &rejected))
    }

    pub fn eval_pairs(&self) -> &[EncodedPair] {
        &self.eval
    }
}

impl Objective for RewardObjective {
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
        let (chosen, rejected) = score_pairs(&self.model, &self.head, &pairs, self.pad_id)?;
        let labels = if self.soft {
            let labels: Vec<f64> = pairs.iter().map(|p| p.label).collect();
            Some(Tensor::new(labels, chosen.device())?)
        } else {
            None
        };
        let losses = bradley_terry_loss(&chosen, &rejected, labels.as_ref())?;
        let stats = PairStats::of(&to_f64s(&chosen.detach())?, &to_f64s(&rejected.detach())?);
        let n = pairs.len() as f64;
        Ok(MicroBatchOutput {
            loss_sum: losses.sum_all()?,
            tokens: pairs
                .iter()
                .map(|p| 2 * p.prompt.len() + p.chosen.len() + p.rejected.len())
                .sum(),
            metric_sums: vec![
                ("accuracy", stats.accuracy * n),
                ("margin", stats.mean_margin * n),
            ],
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        if self.eval.is_empty() {
            return Ok(Vec::new());
        }
        let stats = self.pair_stats(&self.eval)?;
        Ok(vec![
            ("accuracy".into(), stats.accuracy),
            ("margin_mean".into(), stats.mean_margin),
            ("margin_std".into(), stats.margin_std),
            ("chosen_mean".into(), stats.mean_chosen),
            ("rejected_mean".into(), stats.mean_rejected),
        ])
    }
}

/// Trains a reward model as `config` says (see [`crate::sft::run`] for the arguments).
pub fn run(
    config: &RewardConfig,
    config_text: &str,
    origin: &Path,
    options: &RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    config.train.validate(origin)?;
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
    let pad_id = bundle.tokenizer.pad_id();
    let mut objective = RewardObjective::new(
        bundle.model,
        config.train.seed,
        pad_id,
        train,
        eval,
        config.train.micro_batch(),
    )?;
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

/// Scores of `(prompt, reply)` texts with a trained reward model, in batches of `batch_size`.
pub fn score_texts(
    bundle: &setup::ModelBundle,
    items: &[(String, String)],
    lengths: Lengths,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let head = bundle.model.scalar_head()?.ok_or_else(|| {
        crate::TrainError::InvalidInput(
            "the model has no reward head (`score.weight`); train one with `rlxf train rm`".into(),
        )
    })?;
    let mut scores = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch_size.max(1)) {
        let (prompts, replies): (Vec<Vec<u32>>, Vec<Vec<u32>>) = chunk
            .iter()
            .map(|(prompt, reply)| setup::encode_reply(bundle, prompt, reply, lengths))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let batch_scores = score_sequences(
            &bundle.model,
            &head,
            &prompts,
            &replies,
            bundle.tokenizer.pad_id(),
        )?;
        scores.extend(to_f64s(&batch_scores.detach())?);
    }
    Ok(scores)
}
