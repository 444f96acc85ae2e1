//! Supervised fine-tuning: maximise the likelihood of a reply given its prompt.
//!
//! The loss is the mean negative log-likelihood over reply tokens only (prompt tokens condition
//! but are not predicted), with EOS appended to every reply by the dialogue template so the model
//! learns to stop. Batches are right-padded; position ids come from the attention mask, so padding
//! side does not change the result.

use std::path::{Path, PathBuf};

use rlxf_model::{continuation_logprobs, ContinuationBatch, LoadedModel, Padding};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::losses::sft_loss_sum;
use crate::setup::{self, DataConfig, EncodedPair, Lengths, ModelBundle};
use crate::trainer::{
    self, LoopConfig, MicroBatchOutput, Objective, RunOptions, TrainObserver, TrainSummary,
};

/// SFT learning rate when the config gives none: TRL `SFTConfig`'s default.
pub const DEFAULT_LR: f64 = 2e-5;

/// Which reply of each pair is the SFT target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Chosen,
    /// The dispreferred reply: the seed study's stand-in for "AI feedback" (see
    /// `configs/seed-replication.toml`).
    Rejected,
}

/// `rlxf train sft` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Model to fine-tune: a directory, a Hugging Face id, or `random:<arch>` (see
    /// [`setup::RANDOM_MODELS`]).
    pub model: String,
    /// Run directory: `metrics.jsonl`, `checkpoints/`, the final `model/`.
    pub output_dir: PathBuf,
    /// Which reply to train on.
    pub target: Target,
    /// Longest prompt + reply in tokens (TRL SFT default 1024).
    pub max_length: usize,
    /// Prompt tokens kept when prompt + reply is too long (the end of the prompt is kept).
    pub max_prompt_length: usize,
    pub data: DataConfig,
    pub train: LoopConfig,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            model: "random:gpt-neo-tiny".into(),
            output_dir: "runs/sft".into(),
            target: Target::Chosen,
            max_length: 1024,
            max_prompt_length: 512,
            data: DataConfig::default(),
            train: LoopConfig::default(),
        }
    }
}

impl SftConfig {
    pub fn lengths(&self) -> Lengths {
        Lengths {
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
        }
    }
}

/// A prompt and the reply to learn, as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub prompt: Vec<u32>,
    pub reply: Vec<u32>,
}

impl SftExample {
    pub fn from_pair(pair: &EncodedPair, target: Target) -> Self {
        let reply = match target {
            Target::Chosen => &pair.chosen,
            Target::Rejected => &pair.rejected,
        };
        Self {
            prompt: pair.prompt.clone(),
            reply: reply.clone(),
        }
    }
}

pub struct SftObjective {
    model: LoadedModel,
    pad_id: u32,
    train: Vec<SftExample>,
    eval: Vec<SftExample>,
    eval_batch_size: usize,
}

impl SftObjective {
    pub fn new(
        model: LoadedModel,
        pad_id: u32,
        train: Vec<SftExample>,
        eval: Vec<SftExample>,
        eval_batch_size: usize,
    ) -> Self {
        Self {
            model,
            pad_id,
            train,
            eval,
            eval_batch_size: eval_batch_size.max(1),
        }
    }

    /// Summed reply NLL of `examples` and the tokens the forward pass processed.
    fn nll_sum(&self, examples: &[&SftExample]) -> Result<(candle_core::Tensor, usize)> {
        let prompts: Vec<Vec<u32>> = examples.iter().map(|e| e.prompt.clone()).collect();
        let replies: Vec<Vec<u32>> = examples.iter().map(|e| e.reply.clone()).collect();
        let batch = ContinuationBatch::new(
            &prompts,
            &replies,
            Padding::Right,
            self.pad_id,
            self.model.model.device(),
        )?;
        let logprobs = continuation_logprobs(&self.model, &batch)?;
        let tokens = examples
            .iter()
            .map(|e| e.prompt.len() + e.reply.len())
            .sum();
        Ok((sft_loss_sum(&logprobs)?, tokens))
    }

    /// Mean reply-token NLL over `examples` (no gradient kept).
    pub fn mean_nll(&self, examples: &[SftExample]) -> Result<f64> {
        let mut total = 0.0;
        let mut reply_tokens = 0;
        for chunk in examples.chunks(self.eval_batch_size) {
            let refs: Vec<&SftExample> = chunk.iter().collect();
            let (sum, _) = self.nll_sum(&refs)?;
            total += sum
                .detach()
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            reply_tokens += chunk.iter().map(|e| e.reply.len()).sum::<usize>();
        }
        Ok(total / reply_tokens.max(1) as f64)
    }
}

impl Objective for SftObjective {
    fn model(&self) -> &LoadedModel {
        &self.model
    }

    fn num_examples(&self) -> usize {
        self.train.len()
    }

    fn loss_units(&self, examples: &[usize]) -> f64 {
        examples
            .iter()
            .map(|&i| self.train[i].reply.len())
            .sum::<usize>() as f64
    }

    fn micro_batch(&mut self, examples: &[usize]) -> Result<MicroBatchOutput> {
        let refs: Vec<&SftExample> = examples.iter().map(|&i| &self.train[i]).collect();
        let (loss_sum, tokens) = self.nll_sum(&refs)?;
        Ok(MicroBatchOutput {
            loss_sum,
            tokens,
            metric_sums: Vec::new(),
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        if self.eval.is_empty() {
            return Ok(Vec::new());
        }
        let loss = self.mean_nll(&self.eval)?;
        Ok(vec![
            ("loss".into(), loss),
            ("perplexity".into(), loss.exp()),
        ])
    }
}

/// Runs SFT as `config` says (`config_text`: the resolved config, stored with the run;
/// `origin`: the config file, for error messages).
pub fn run(
    config: &SftConfig,
    config_text: &str,
    origin: &Path,
    options: &RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    config.train.validate(origin)?;
    let bundle = setup::load_model_for(&config.model, &config.train)?;
    config
        .lengths()
        .validate(origin, rlxf_model::CausalLm::max_context(&bundle.model))?;
    let data = setup::load_data(&config.data, config.train.seed)?;
    let encode = |pairs| -> Result<Vec<SftExample>> {
        Ok(setup::encode_pairs(&bundle, pairs, config.lengths(), None)?
            .iter()
            .map(|pair| SftExample::from_pair(pair, config.target))
            .collect())
    };
    let (train, eval) = (encode(&data.train)?, encode(&data.eval)?);
    let ModelBundle {
        model, tokenizer, ..
    } = bundle;
    let mut objective = SftObjective::new(
        model,
        tokenizer.pad_id(),
        train,
        eval,
        config.train.micro_batch(),
    );
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
