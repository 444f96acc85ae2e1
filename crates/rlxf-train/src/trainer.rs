//! The training loop every algorithm shares: seeded shuffling, micro-batches with gradient
//! accumulation, clipping, AdamW with a schedule, periodic evaluation and checkpoints, a metrics
//! stream, and bit-identical resume.
//!
//! An algorithm plugs in as an [`Objective`]: it owns the model and its examples and turns a list
//! of example indices into a summed loss. The loop never prints; it reports through a
//! [`TrainObserver`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlxf_model::LoadedModel;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::checkpoint::{self, LoaderPosition, RngState, TrainerState};
use crate::error::{Result, TrainError};
use crate::metrics::MetricsWriter;
use crate::optim::{self, AdamW, AdamWConfig};
use crate::schedule::{Decay, Schedule};

/// The run's resolved config, written into the run directory at the start of a run.
pub const CONFIG_FILE: &str = "config.toml";

/// Settings of the loop, shared by every algorithm (the `[train]` table of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// Seeds data order (and everything else random in the run: model init, head init).
    pub seed: u64,
    /// Passes over the training examples.
    pub epochs: u64,
    /// Stop after this many optimiser steps instead (may cross epoch boundaries).
    pub max_steps: Option<u64>,
    /// Examples per optimiser step (TRL's `per_device_train_batch_size` × accumulation).
    pub batch_size: usize,
    /// Examples per forward/backward pass; gradients of the micro-batches of one step are summed.
    /// 0 means `batch_size` (no accumulation).
    pub micro_batch_size: usize,
    /// Peak learning rate; unset means the algorithm's default (see its config).
    pub learning_rate: Option<f64>,
    /// Steps of linear warmup from 0.
    pub warmup_steps: u64,
    /// Decay after warmup: "linear" (HF/TRL default), "cosine" or "constant".
    pub decay: Decay,
    /// AdamW decoupled weight decay (not applied to biases and layer norms). HF default 0.
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Clip the global gradient norm to this (HF default 1.0); unset disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Checkpoints kept on disk (the newest ones).
    pub keep_checkpoints: usize,
    /// Forward-pass precision: "f32", or "bf16" (mixed precision: f32 master weights, optimiser
    /// and loss). Left out of the resolved config when f32, so the keys of runs made before the
    /// field existed (all f32) still match.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// The dtype a trainer's forward pass computes in (`[train] precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 weights (cast from the f32 masters in every forward) and activations; norms, the
    /// attention softmax, log-probs and losses in f32, as PyTorch's bf16 autocast. See
    /// [`rlxf_model::LoadedModel::set_compute_dtype`].
    Bf16,
}

impl Precision {
    /// The model's compute dtype.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The name configs use: `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// Parses the names configs use (serde's, so the two cannot drift apart).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        use serde::de::IntoDeserializer;
        Self::deserialize(text.into_deserializer())
            .map_err(|err: serde::de::value::Error| err.to_string())
    }
}

impl Default for LoopConfig {
    fn default() -> Self {
        let adam = AdamWConfig::default();
        Self {
            seed: 42,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            micro_batch_size: 0,
            learning_rate: None,
            warmup_steps: 0,
            decay: Decay::Linear,
            weight_decay: adam.weight_decay,
            adam_beta1: adam.beta1,
            adam_beta2: adam.beta2,
            adam_epsilon: adam.eps,
            max_grad_norm: Some(1.0),
            eval_every: 0,
            save_every: 0,
            keep_checkpoints: 2,
            precision: Precision::F32,
        }
    }
}

impl LoopConfig {
    /// Examples per forward pass.
    pub fn micro_batch(&self) -> usize {
        if self.micro_batch_size == 0 {
            self.batch_size
        } else {
            self.micro_batch_size.min(self.batch_size)
        }
    }

    /// Optimiser steps for `examples` training examples.
    pub fn total_steps(&self, examples: usize) -> u64 {
        self.max_steps
            .unwrap_or(self.epochs * examples.div_ceil(self.batch_size.max(1)) as u64)
    }

    /// Errors naming the first invalid field (`origin` is the config file, for the message).
    pub fn validate(&self, origin: &Path) -> Result<()> {
        let invalid = |field: &str, reason: &str| TrainError::InvalidConfig {
            path: origin.to_path_buf(),
            field: format!("train.{field}"),
            reason: reason.to_string(),
        };
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1"));
        }
        if let Some(lr) = self.learning_rate {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(invalid("learning_rate", "must be a positive number"));
            }
        }
        for (field, beta) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(field, "must be in [0, 1)"));
            }
        }
        if self.adam_epsilon.is_nan() || self.adam_epsilon <= 0.0 {
            return Err(invalid("adam_epsilon", "must be positive"));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(invalid("weight_decay", "must not be negative"));
        }
        if self
            .max_grad_norm
            .is_some_and(|norm| norm.is_nan() || norm <= 0.0)
        {
            return Err(invalid(
                "max_grad_norm",
                "must be positive (leave it out to disable clipping)",
            ));
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err(invalid("epochs", "must be at least 1 (or set max_steps)"));
        }
        Ok(())
    }
}

/// What one micro-batch contributes.
pub struct MicroBatchOutput {
    /// Scalar: the loss summed over the micro-batch in the objective's loss units (tokens for
    /// SFT, pairs for pairwise losses). The loop divides it by the whole step's units.
    pub loss_sum: Tensor,
    /// Tokens the forward pass processed (for throughput).
    pub tokens: usize,
    /// Metrics summed over the micro-batch's examples; the loop reports their per-example mean.
    pub metric_sums: Vec<(&'static str, f64)>,
}

/// An algorithm, as the loop sees it.
pub trait Objective {
    fn model(&self) -> &LoadedModel;
    fn num_examples(&self) -> usize;
    /// Size of `examples` in loss units (the denominator of the step's mean loss).
    fn loss_units(&self, examples: &[usize]) -> f64;
    fn micro_batch(&mut self, examples: &[usize]) -> Result<MicroBatchOutput>;
    /// Held-out metrics (names without prefix; the loop adds `eval_`). Empty when there is no
    /// held-out set.
    fn evaluate(&mut self) -> Result<Vec<(String, f64)>>;
}

/// Progress reports from the loop (a CLI draws a bar from them; tests may record them).
pub trait TrainObserver {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {}
    /// After every optimiser step, with the record written to `metrics.jsonl`.
    fn on_step(&mut self, _step: u64, _record: &Map<String, Value>) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl TrainObserver for Silent {}

/// How to run the loop.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint in the run directory.
    pub resume: bool,
    /// Return after this step without the final evaluation, checkpoint or model, as if the
    /// process had been killed there (tests use it to exercise resume).
    pub stop_after_step: Option<u64>,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: u64,
    pub final_loss: f64,
    /// The last evaluation's metrics (`eval_…`).
    pub eval: Vec<(String, f64)>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Where the final model was saved (`RUN_DIR/model`); `None` for a stopped run.
    pub model_dir: Option<PathBuf>,
}

/// The seeded, epoch-wise shuffled order of the training examples (the online-RL loop draws its
/// prompts through it too).
pub(crate) struct Loader {
    examples: usize,
    seed: u64,
    pub(crate) position: LoaderPosition,
    permutation: Vec<usize>,
    pub(crate) rng: RngState,
}

impl Loader {
    pub(crate) fn new(examples: usize, seed: u64, position: LoaderPosition) -> Self {
        let mut loader = Self {
            examples,
            seed,
            position,
            permutation: Vec::new(),
            rng: RngState {
                seed,
                stream: 0,
                word_pos: 0,
            },
        };
        loader.shuffle();
        loader
    }

    /// Each epoch's order comes from its own ChaCha stream, so any epoch's permutation can be
    /// rebuilt from (seed, epoch) alone.
    fn shuffle(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.position.epoch);
        self.permutation = (0..self.examples).collect();
        self.permutation.shuffle(&mut rng);
        self.rng = RngState {
            seed: self.seed,
            stream: self.position.epoch,
            word_pos: rng.get_word_pos(),
        };
    }

    pub(crate) fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        if self.position.index >= self.examples {
            self.position = LoaderPosition {
                epoch: self.position.epoch + 1,
                index: 0,
            };
            self.shuffle();
        }
        let start = self.position.index;
        let end = (start + batch_size).min(self.examples);
        self.position.index = end;
        self.permutation[start..end].to_vec()
    }
}

/// Runs `objective` under `config`, writing metrics and checkpoints into `run_dir`.
/// `config_text` (the run's whole config, TOML) is stored in every checkpoint.
pub fn train(
    objective: &mut dyn Objective,
    config: &LoopConfig,
    default_lr: f64,
    run_dir: &Path,
    config_text: &str,
    options: &RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let examples = objective.num_examples();
    if examples == 0 {
        return Err(TrainError::InvalidInput("no training examples".into()));
    }
    std::fs::create_dir_all(run_dir).map_err(|err| TrainError::io(run_dir, err))?;
    if !config_text.is_empty() {
        checkpoint::write_atomic(&run_dir.join(CONFIG_FILE), config_text.as_bytes())?;
    }
    let total_steps = config.total_steps(examples);
    let schedule = Schedule {
        peak_lr: config.learning_rate.unwrap_or(default_lr),
        warmup_steps: config.warmup_steps,
        total_steps,
        decay: config.decay,
    };
    let adam = AdamWConfig {
        beta1: config.adam_beta1,
        beta2: config.adam_beta2,
        eps: config.adam_epsilon,
        weight_decay: config.weight_decay,
    };
    let mut optimizer = AdamW::new(optim::named_params(&objective.model().varmap), adam)?;

    let mut last_checkpoint = None;
    let mut start = TrainerState {
        step: 0,
        total_steps,
        loader: LoaderPosition { epoch: 0, index: 0 },
        rng: RngState {
            seed: config.seed,
            stream: 0,
            word_pos: 0,
        },
        loss: f64::NAN,
        config: config_text.to_string(),
    };
    if options.resume {
        if let Some(dir) = checkpoint::latest_checkpoint(run_dir)? {
            start = checkpoint::restore(&dir, objective.model(), &mut optimizer)?;
            if start.total_steps != total_steps {
                return Err(TrainError::Checkpoint {
                    path: dir,
                    reason: format!(
                        "was written by a run of {} steps; this config gives {total_steps}",
                        start.total_steps
                    ),
                });
            }
            last_checkpoint = Some(dir);
        }
    }
    let resumed_at = last_checkpoint.as_ref().map(|_| start.step);
    let mut metrics = MetricsWriter::open(run_dir, resumed_at)?;
    let mut loader = Loader::new(examples, config.seed, start.loader);
    if resumed_at.is_some() && loader.rng != start.rng {
        return Err(TrainError::Checkpoint {
            path: last_checkpoint.clone().unwrap_or_default(),
            reason: "the data order does not match this run's seed and data".into(),
        });
    }

    observer.on_start(start.step, total_steps);
    let micro = config.micro_batch();
    let mut step = start.step;
    let mut loss = start.loss;
    let mut eval = Vec::new();
    while step < total_steps {
        let began = Instant::now();
        let batch = loader.next_batch(config.batch_size);
        let units = objective.loss_units(&batch);
        let mut grads: Option<Vec<Option<Tensor>>> = None;
        let mut loss_total = 0.0;
        let mut tokens = 0;
        let mut metric_sums: Vec<(&'static str, f64)> = Vec::new();
        for chunk in batch.chunks(micro) {
            let output = objective.micro_batch(chunk)?;
            let micro_loss = (output.loss_sum / units)?;
            let value = micro_loss
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(non_finite(step + 1, value, last_checkpoint));
            }
            loss_total += value;
            tokens += output.tokens;
            add_metrics(&mut metric_sums, &output.metric_sums);
            let micro_grads = optimizer.gradients(&micro_loss.backward()?);
            grads = Some(match grads {
                None => micro_grads,
                Some(sum) => add_gradients(sum, micro_grads)?,
            });
        }
        let grads = grads.expect("a batch has at least one example");
        let grad_norm = optim::global_grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(non_finite(step + 1, grad_norm, last_checkpoint));
        }
        let lr = schedule.lr(step);
        optimizer.step(
            &grads,
            lr,
            optim::clip_coefficient(grad_norm, config.max_grad_norm),
        )?;
        step += 1;
        loss = loss_total;

        let elapsed = began.elapsed().as_secs_f64();
        let mut record = Map::new();
        record.insert("step".into(), step.into());
        record.insert("epoch".into(), loader.position.epoch.into());
        record.insert("loss".into(), json_number(loss));
        record.insert("lr".into(), json_number(lr));
        record.insert("grad_norm".into(), json_number(grad_norm));
        record.insert(
            "tokens_per_s".into(),
            json_number(tokens as f64 / elapsed.max(1e-9)),
        );
        for (name, sum) in &metric_sums {
            record.insert((*name).into(), json_number(sum / batch.len() as f64));
        }
        let stopping = options.stop_after_step == Some(step);
        let last = step == total_steps;
        if !stopping && (last || step.checked_rem(config.eval_every) == Some(0)) {
            eval = objective
                .evaluate()?
                .into_iter()
                .map(|(name, value)| (format!("eval_{name}"), value))
                .collect();
            for (name, value) in &eval {
                record.insert(name.clone(), json_number(*value));
            }
        }
        metrics.append(&record)?;
        observer.on_step(step, &record);
        if stopping {
            return Ok(TrainSummary {
                steps: step,
                final_loss: loss,
                eval,
                checkpoint: last_checkpoint,
                model_dir: None,
            });
        }
        if last || step.checked_rem(config.save_every) == Some(0) {
            let state = TrainerState {
                step,
                total_steps,
                loader: loader.position,
                rng: loader.rng,
                loss,
                config: config_text.to_string(),
            };
            last_checkpoint = Some(checkpoint::save_checkpoint(
                run_dir,
                objective.model(),
                &optimizer,
                &state,
                config.keep_checkpoints,
            )?);
        }
    }
    let model_dir = run_dir.join("model");
    objective.model().save_pretrained(&model_dir)?;
    Ok(TrainSummary {
        steps: step,
        final_loss: loss,
        eval,
        checkpoint: last_checkpoint,
        model_dir: Some(model_dir),
    })
}

pub(crate) fn non_finite(step: u64, value: f64, last_checkpoint: Option<PathBuf>) -> TrainError {
    TrainError::NonFiniteLoss {
        step,
        value,
        last_checkpoint,
    }
}

pub(crate) fn json_number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

fn add_metrics(sums: &mut Vec<(&'static str, f64)>, more: &[(&'static str, f64)]) {
    for &(name, value) in more {
        match sums.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, sum)) => *sum += value,
            None => sums.push((name, value)),
        }
    }
}

pub(crate) fn add_gradients(
    sum: Vec<Option<Tensor>>,
    more: Vec<Option<Tensor>>,
) -> Result<Vec<Option<Tensor>>> {
    sum.into_iter()
        .zip(more)
        .map(|pair| {
            Ok(match pair {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            })
        })
        .collect()
}
