//! The online-RL loop every algorithm shares. One step:
//!
//! 1. draw `batch_size` prompts (seeded order, as the offline loop draws examples);
//! 2. roll out `samples_per_prompt` responses each (seed from the run's rollout RNG);
//! 3. score them with the reward source, estimate the per-token KL to the reference, and form
//!    per-token rewards;
//! 4. let the algorithm turn them into advantages and value targets;
//! 5. run `epochs` passes over shuffled minibatches, one AdamW update per minibatch (gradients
//!    of its forward chunks summed);
//! 6. update the adaptive KL coefficient, write a `metrics.jsonl` record with guard-rail
//!    warnings, and checkpoint.
//!
//! Checkpoints add the value head and [`RlState`] (rollout RNG, KL coefficient) to the offline
//! trainers' files, so a resumed run is bit-identical to an uninterrupted one. A non-finite loss
//! or gradient stops the run before the update, naming the last good checkpoint.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlxf_model::{CausalLm, LoadedModel, ScalarHead, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::checkpoint::{self, LoaderPosition, RngState, TrainerState};
use crate::error::{Result, TrainError};
use crate::metrics::MetricsWriter;
use crate::optim::{self, AdamW, AdamWConfig, NamedParam};
use crate::rl::advantages::whiten;
use crate::rl::config::GuardConfig;
use crate::rl::kl::{token_rewards, KlConfig, KlController};
use crate::rl::rewards::{RewardQuery, RewardSource};
use crate::rl::rollout::{rollout, score_tokens, Policy, RolloutConfig, Sample, TokenScores};
use crate::schedule::Schedule;
use crate::trainer::{
    add_gradients, json_number, non_finite, Loader, LoopConfig, RunOptions, TrainObserver,
    TrainSummary, CONFIG_FILE,
};

/// The value head's weights in a checkpoint and in the run directory.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";
const RL_STATE_FILE: &str = "rl_state.json";
/// The value head's parameter in the optimiser (the policy may carry a `score.weight` of its own).
const VALUE_HEAD_PARAM: &str = "value_head.score.weight";
/// The rollout RNG's ChaCha stream; the data loader uses streams 0, 1, ... (one per epoch).
const ROLLOUT_STREAM: u64 = u64::MAX;

/// A prompt as text (for reward sources) and as the policy's token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
}

/// One response with its reward, per-token KL estimates and per-token rewards, and the targets
/// the algorithm derives from them.
#[derive(Debug, Clone)]
pub struct Experience {
    pub sample: Sample,
    pub score: f64,
    /// The configured estimator, per token.
    pub kl: Vec<f64>,
    /// `−β·kl_t`, plus the weighted score at the last token.
    pub rewards: Vec<f64>,
    /// Per token (PPO, A2C) or one per response (RLOO).
    pub advantages: Vec<f64>,
    /// Value targets per token (empty without a value head).
    pub returns: Vec<f64>,
}

/// A chunk's loss and metrics.
pub struct LossOutput {
    /// Scalar, summed over the chunk in the algorithm's loss units; the loop divides by the
    /// minibatch's units.
    pub loss_sum: Tensor,
    /// Summed over the chunk in loss units; the loop reports their mean over the step.
    pub metric_sums: Vec<(&'static str, f64)>,
}

/// An RL algorithm, as the loop sees it.
pub trait Algorithm {
    fn samples_per_prompt(&self) -> usize;
    fn uses_value_head(&self) -> bool;
    /// Passes over each rollout batch.
    fn epochs(&self) -> usize;
    /// Minibatches (= optimiser updates) per pass.
    fn minibatches(&self) -> usize;
    /// Fills `advantages` and `returns` of one step's experiences (responses to the same prompt
    /// are consecutive).
    fn prepare(&self, experiences: &mut [Experience]) -> Result<()>;
    /// Size of `experiences` in loss units (tokens or responses).
    fn loss_units(&self, experiences: &[&Experience]) -> f64;
    /// The loss of a chunk from the current policy's forward pass over it.
    fn loss(&self, scores: &TokenScores, experiences: &[&Experience]) -> Result<LossOutput>;
}

/// Everything a run trains and reads.
pub struct RlParts {
    pub policy: Policy,
    /// The value head's variables (empty without a head).
    pub value_head_vars: VarMap,
    /// Frozen: read through detached variables (see [`LoadedModel::into_inference`]).
    pub reference: LoadedModel,
    pub tokenizer: Tokenizer,
    pub prompts: Vec<Prompt>,
    pub reward: Box<dyn RewardSource>,
}

impl RlParts {
    /// Bundles the parts, attaching a value head initialised N(0, 0.02) from `seed` when
    /// `value_head` is true.
    pub fn new(
        model: LoadedModel,
        reference: LoadedModel,
        tokenizer: Tokenizer,
        prompts: Vec<Prompt>,
        reward: Box<dyn RewardSource>,
        value_head: bool,
        seed: u64,
    ) -> Result<Self> {
        let value_head_vars = VarMap::new();
        let head = if value_head {
            let hidden = model.hidden_size();
            let spec = rlxf_model::weights::record_parameters(|vb| ScalarHead::new(hidden, vb))?;
            let tensors =
                rlxf_model::weights::init_tensors(&spec, seed, model.dtype(), model.device())?;
            {
                let mut data = value_head_vars.data().lock().expect("varmap lock");
                for (name, tensor) in tensors {
                    data.insert(name, candle_core::Var::from_tensor(&tensor)?);
                }
            }
            let vb = VarBuilder::from_varmap(&value_head_vars, model.dtype(), model.device());
            Some(ScalarHead::new(hidden, vb)?)
        } else {
            None
        };
        Ok(Self {
            policy: Policy {
                model,
                value_head: head,
            },
            value_head_vars,
            // Its forward passes record no autograd graph, which would keep every activation
            // of a scoring pass alive until its log-probs are dropped.
            reference: reference.into_inference()?,
            tokenizer,
            prompts,
            reward,
        })
    }

    fn value_head_params(&self) -> Vec<NamedParam> {
        optim::named_params(&self.value_head_vars)
    }
}

/// The RL settings shared by every algorithm.
#[derive(Debug, Clone, Copy)]
pub struct RlSettings<'a> {
    pub rollout: &'a RolloutConfig,
    pub kl: &'a KlConfig,
    pub guards: &'a GuardConfig,
    pub train: &'a LoopConfig,
    /// Learning rate when `train.learning_rate` is unset.
    pub default_lr: f64,
}

/// What checkpoints add for RL.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RlState {
    /// The rollout RNG after the step: it seeds the next step's sampling and minibatch order.
    pub rollout_rng: RngState,
    /// The KL coefficient for the next step (the adaptive controller moves it).
    pub beta: f64,
    /// Mean response length of the first step (the length guard's yardstick).
    pub first_response_length: f64,
}

/// What a finished (or stopped) RL run reports.
#[derive(Debug, Clone)]
pub struct RlSummary {
    pub train: TrainSummary,
    /// The metrics records of the first and of the last step of this invocation.
    pub first: Map<String, Value>,
    pub last: Map<String, Value>,
}

fn rng_state(rng: &ChaCha8Rng, seed: u64) -> RngState {
    RngState {
        seed,
        stream: ROLLOUT_STREAM,
        word_pos: rng.get_word_pos(),
    }
}

fn rng_from_state(state: RngState) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(state.seed);
    rng.set_stream(state.stream);
    rng.set_word_pos(state.word_pos);
    rng
}

/// Rows of per-token values, zero-padded to `width` columns, `[rows, width]` f32.
pub fn padded(rows: &[&[f64]], width: usize, device: &Device) -> Result<Tensor> {
    let mut flat = vec![0f32; rows.len() * width];
    for (row, values) in rows.iter().enumerate() {
        for (column, &value) in values.iter().take(width).enumerate() {
            flat[row * width + column] = value as f32;
        }
    }
    Ok(Tensor::from_vec(flat, (rows.len(), width), device)?)
}

/// The experiences' rollout log-probs and values, advantages and returns, laid out like a forward
/// pass's [`TokenScores`] (`[rows, max_response]`, zero-padded): the per-token losses' inputs.
pub struct TokenTargets {
    pub old_logprobs: Tensor,
    pub old_values: Tensor,
    pub advantages: Tensor,
    pub returns: Tensor,
}

impl TokenTargets {
    pub fn new(scores: &TokenScores, experiences: &[&Experience]) -> Result<Self> {
        let width = scores.mask.dim(1)?;
        let device = scores.mask.device();
        let rows = |field: fn(&Experience) -> &[f64]| -> Result<Tensor> {
            let rows: Vec<&[f64]> = experiences.iter().map(|e| field(e)).collect();
            padded(&rows, width, device)
        };
        Ok(Self {
            old_logprobs: rows(|e| &e.sample.logprobs)?,
            old_values: rows(|e| &e.sample.values)?,
            advantages: rows(|e| &e.advantages)?,
            returns: rows(|e| &e.returns)?,
        })
    }
}

/// Response tokens of `experiences`.
pub fn token_count(experiences: &[&Experience]) -> f64 {
    experiences
        .iter()
        .map(|e| e.sample.response.len())
        .sum::<usize>() as f64
}

/// Sets every experience's per-token `(advantages, returns)` to `estimate` of it (from its
/// rewards and values), then, if `whiten`, whitens the advantages of the whole batch together.
pub fn set_advantages(
    experiences: &mut [Experience],
    whiten: bool,
    estimate: impl Fn(&Experience) -> (Vec<f64>, Vec<f64>),
) {
    for experience in experiences.iter_mut() {
        (experience.advantages, experience.returns) = estimate(experience);
    }
    if whiten {
        whiten_advantages(experiences);
    }
}

/// Whitens the advantages of all `experiences` together (every token of the batch).
fn whiten_advantages(experiences: &mut [Experience]) {
    let mut all: Vec<f64> = experiences
        .iter()
        .flat_map(|e| e.advantages.iter().copied())
        .collect();
    whiten(&mut all, true);
    let mut whitened = all.into_iter();
    for advantage in experiences.iter_mut().flat_map(|e| e.advantages.iter_mut()) {
        *advantage = whitened.next().expect("one whitened value per advantage");
    }
}

/// `Σ tensor`, as f64.
pub fn total(tensor: &Tensor) -> Result<f64> {
    Ok(tensor.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

/// The guard-rail warnings of one step.
fn warnings(
    guards: &GuardConfig,
    mean_kl: f64,
    mean_entropy: f64,
    mean_length: f64,
    first_length: f64,
) -> Vec<String> {
    let mut found = Vec::new();
    if mean_kl < guards.negative_kl {
        found.push(format!(
            "negative KL estimate ({mean_kl:.3} nats): sampling and scoring disagree (check the \
             temperature and the reference model)"
        ));
    }
    if mean_kl > guards.max_kl {
        found.push(format!(
            "KL is exploding ({mean_kl:.3} nats > {}): raise kl.beta or lower the learning rate",
            guards.max_kl
        ));
    }
    if mean_entropy < guards.min_entropy {
        found.push(format!(
            "entropy collapsed ({mean_entropy:.4} nats per token < {}): the policy has become \
             near-deterministic",
            guards.min_entropy
        ));
    }
    if mean_length > guards.length_growth * first_length {
        found.push(format!(
            "response length blew up ({mean_length:.1} tokens, {:.1}× the first step's)",
            mean_length / first_length
        ));
    }
    found
}

/// Runs `algorithm` on `parts` (see the module docs), writing into `run_dir`.
pub fn train_rl(
    algorithm: &dyn Algorithm,
    parts: &mut RlParts,
    settings: RlSettings<'_>,
    run_dir: &Path,
    config_text: &str,
    options: &RunOptions,
    observer: &mut dyn TrainObserver,
) -> Result<RlSummary> {
    let train = settings.train;
    if parts.prompts.is_empty() {
        return Err(TrainError::InvalidInput("no prompts".into()));
    }
    if algorithm.uses_value_head() != parts.policy.value_head.is_some() {
        return Err(TrainError::InvalidInput(
            "the policy's value head does not match the algorithm".into(),
        ));
    }
    std::fs::create_dir_all(run_dir).map_err(|err| TrainError::io(run_dir, err))?;
    if !config_text.is_empty() {
        checkpoint::write_atomic(&run_dir.join(CONFIG_FILE), config_text.as_bytes())?;
    }
    let total_steps = train.total_steps(parts.prompts.len());
    let updates_per_step = (algorithm.epochs() * algorithm.minibatches()) as u64;
    let schedule = Schedule {
        peak_lr: train.learning_rate.unwrap_or(settings.default_lr),
        warmup_steps: train.warmup_steps,
        total_steps: total_steps * updates_per_step,
        decay: train.decay,
    };
    let adam = AdamWConfig {
        beta1: train.adam_beta1,
        beta2: train.adam_beta2,
        eps: train.adam_epsilon,
        weight_decay: train.weight_decay,
    };
    let policy_params = optim::named_params(&parts.policy.model.varmap);
    let head_params = parts.value_head_params();
    let mut all_params = policy_params.clone();
    all_params.extend(head_params.iter().map(|param| NamedParam {
        name: VALUE_HEAD_PARAM.into(),
        ..param.clone()
    }));
    let mut optimizer = AdamW::new(all_params, adam)?;

    let mut state = TrainerState {
        step: 0,
        total_steps,
        loader: LoaderPosition { epoch: 0, index: 0 },
        rng: RngState {
            seed: train.seed,
            stream: 0,
            word_pos: 0,
        },
        loss: f64::NAN,
        config: config_text.to_string(),
    };
    let mut rollout_rng = rng_from_state(RngState {
        seed: train.seed,
        stream: ROLLOUT_STREAM,
        word_pos: 0,
    });
    let mut controller = KlController::new(settings.kl);
    let mut first_length = f64::NAN;
    let mut last_checkpoint = None;
    if options.resume {
        if let Some(dir) = checkpoint::latest_checkpoint(run_dir)? {
            let device = parts.policy.model.device().clone();
            checkpoint::restore_params(&dir.join(checkpoint::MODEL_FILE), &policy_params, &device)?;
            if !head_params.is_empty() {
                checkpoint::restore_params(&dir.join(VALUE_HEAD_FILE), &head_params, &device)?;
            }
            optimizer.load(&dir.join(checkpoint::OPTIMIZER_FILE))?;
            state = checkpoint::read_state(&dir)?;
            let rl_path = dir.join(RL_STATE_FILE);
            let text =
                std::fs::read_to_string(&rl_path).map_err(|err| TrainError::io(&rl_path, err))?;
            let rl: RlState =
                serde_json::from_str(&text).map_err(|err| TrainError::Checkpoint {
                    path: rl_path.clone(),
                    reason: err.to_string(),
                })?;
            if state.total_steps != total_steps {
                return Err(TrainError::Checkpoint {
                    path: dir,
                    reason: format!(
                        "was written by a run of {} steps; this config gives {total_steps}",
                        state.total_steps
                    ),
                });
            }
            rollout_rng = rng_from_state(rl.rollout_rng);
            controller.beta = rl.beta;
            first_length = rl.first_response_length;
            last_checkpoint = Some(dir);
        }
    }
    let resumed_at = last_checkpoint.as_ref().map(|_| state.step);
    let mut metrics = MetricsWriter::open(run_dir, resumed_at)?;
    let mut loader = Loader::new(parts.prompts.len(), train.seed, state.loader);
    if resumed_at.is_some() && loader.rng != state.rng {
        return Err(TrainError::Checkpoint {
            path: last_checkpoint.clone().unwrap_or_default(),
            reason: "the prompt order does not match this run's seed and prompts".into(),
        });
    }

    observer.on_start(state.step, total_steps);
    let micro = train.micro_batch();
    let mut step = state.step;
    let mut loss = state.loss;
    let mut first_record = None;
    let mut record = Map::new();
    while step < total_steps {
        let began = Instant::now();
        let batch = loader.next_batch(train.batch_size);
        let prompt_ids: Vec<Vec<u32>> = batch
            .iter()
            .map(|&i| parts.prompts[i].ids.clone())
            .collect();
        let generation_seed = rollout_rng.next_u64();
        let samples = rollout(
            &parts.policy,
            &parts.reference,
            &parts.tokenizer,
            &prompt_ids,
            algorithm.samples_per_prompt(),
            settings.rollout,
            generation_seed,
            micro,
        )?;
        let rollout_seconds = began.elapsed().as_secs_f64();
        let response_tokens: usize = samples.iter().map(|s| s.response.len()).sum();

        let queries: Vec<RewardQuery<'_>> = samples
            .iter()
            .map(|sample| RewardQuery {
                prompt: &parts.prompts[batch[sample.prompt_index]].text,
                response: &sample.text,
                prompt_ids: &sample.prompt,
                response_ids: &sample.response,
            })
            .collect();
        let scores = parts.reward.score(&queries)?;
        drop(queries);
        if scores.len() != samples.len() {
            return Err(TrainError::InvalidInput(format!(
                "{} returned {} scores for {} responses",
                parts.reward.describe(),
                scores.len(),
                samples.len()
            )));
        }
        if let Some(bad) = scores.iter().find(|score| !score.is_finite()) {
            return Err(TrainError::InvalidInput(format!(
                "{} gave the non-finite reward {bad} at step {}; training stopped{}",
                parts.reward.describe(),
                step + 1,
                last_checkpoint
                    .as_ref()
                    .map_or(String::new(), |dir| format!(
                        "; the last good checkpoint is {}",
                        dir.display()
                    ))
            )));
        }

        let beta = controller.beta;
        let mut experiences: Vec<Experience> = samples
            .into_iter()
            .zip(&scores)
            .map(|(sample, &score)| {
                let kl: Vec<f64> = sample
                    .logprobs
                    .iter()
                    .zip(&sample.ref_logprobs)
                    .map(|(&lp, &lq)| settings.kl.estimator.estimate(lp, lq))
                    .collect();
                let rewards = token_rewards(score, &kl, beta, settings.kl.form);
                Experience {
                    sample,
                    score,
                    kl,
                    rewards,
                    advantages: Vec::new(),
                    returns: Vec::new(),
                }
            })
            .collect();
        algorithm.prepare(&mut experiences)?;

        // Optimisation: epochs over shuffled minibatches, one update each.
        let mut order: Vec<usize> = (0..experiences.len()).collect();
        let minibatch_size = experiences.len().div_ceil(algorithm.minibatches().max(1));
        let mut metric_sums: Vec<(&'static str, f64)> = Vec::new();
        let (mut units_total, mut loss_total, mut grad_norm_total) = (0.0, 0.0, 0.0);
        let mut updates = 0u64;
        let mut lr = 0.0;
        for _ in 0..algorithm.epochs() {
            order.shuffle(&mut rollout_rng);
            for minibatch in order.chunks(minibatch_size) {
                let members: Vec<&Experience> =
                    minibatch.iter().map(|&i| &experiences[i]).collect();
                let units = algorithm.loss_units(&members);
                let mut grads: Option<Vec<Option<Tensor>>> = None;
                for chunk in members.chunks(micro) {
                    let prompts: Vec<Vec<u32>> =
                        chunk.iter().map(|e| e.sample.prompt.clone()).collect();
                    let responses: Vec<Vec<u32>> =
                        chunk.iter().map(|e| e.sample.response.clone()).collect();
                    let scores = score_tokens(
                        &parts.policy.model,
                        parts.policy.value_head.as_ref(),
                        &prompts,
                        &responses,
                        settings.rollout.temperature,
                    )?;
                    let output = algorithm.loss(&scores, chunk)?;
                    let chunk_loss = (output.loss_sum / units)?;
                    let value = total(&chunk_loss)?;
                    if !value.is_finite() {
                        return Err(non_finite(step + 1, value, last_checkpoint));
                    }
                    loss_total += value;
                    for (name, sum) in output.metric_sums {
                        match metric_sums.iter_mut().find(|(known, _)| *known == name) {
                            Some((_, existing)) => *existing += sum,
                            None => metric_sums.push((name, sum)),
                        }
                    }
                    let chunk_grads = optimizer.gradients(&chunk_loss.backward()?);
                    grads = Some(match grads {
                        None => chunk_grads,
                        Some(sum) => add_gradients(sum, chunk_grads)?,
                    });
                }
                units_total += units;
                let grads = grads.expect("a minibatch has at least one response");
                let grad_norm = optim::global_grad_norm(&grads)?;
                if !grad_norm.is_finite() {
                    return Err(non_finite(step + 1, grad_norm, last_checkpoint));
                }
                lr = schedule.lr(step * updates_per_step + updates);
                optimizer.step(
                    &grads,
                    lr,
                    optim::clip_coefficient(grad_norm, train.max_grad_norm),
                )?;
                grad_norm_total += grad_norm;
                updates += 1;
            }
        }
        step += 1;
        loss = loss_total / updates.max(1) as f64;

        let sequence_kl: Vec<f64> = experiences
            .iter()
            .map(|e| {
                e.sample
                    .logprobs
                    .iter()
                    .zip(&e.sample.ref_logprobs)
                    .map(|(lp, lq)| lp - lq)
                    .sum()
            })
            .collect();
        let mean_kl = mean(sequence_kl.iter().copied());
        let mean_score = mean(scores.iter().copied());
        let mean_length = response_tokens as f64 / experiences.len() as f64;
        let mean_entropy = experiences
            .iter()
            .flat_map(|e| e.sample.entropy.iter())
            .sum::<f64>()
            / response_tokens.max(1) as f64;
        if first_length.is_nan() {
            first_length = mean_length;
        }
        let score_std = mean(scores.iter().map(|s| (s - mean_score).powi(2))).sqrt();

        record = Map::new();
        record.insert("step".into(), step.into());
        record.insert("epoch".into(), loader.position.epoch.into());
        record.insert("loss".into(), json_number(loss));
        record.insert("reward".into(), json_number(mean_score));
        record.insert("reward_std".into(), json_number(score_std));
        record.insert("kl".into(), json_number(mean_kl));
        record.insert(
            "non_score_reward".into(),
            json_number(mean(
                experiences.iter().map(|e| -beta * e.kl.iter().sum::<f64>()),
            )),
        );
        record.insert(
            "objective".into(),
            json_number(mean(
                experiences.iter().map(|e| e.rewards.iter().sum::<f64>()),
            )),
        );
        record.insert("beta".into(), json_number(beta));
        record.insert("response_length".into(), json_number(mean_length));
        record.insert("entropy".into(), json_number(mean_entropy));
        for (name, sum) in &metric_sums {
            record.insert((*name).into(), json_number(sum / units_total));
        }
        record.insert("lr".into(), json_number(lr));
        record.insert(
            "grad_norm".into(),
            json_number(grad_norm_total / updates.max(1) as f64),
        );
        record.insert(
            "rollout_tokens_per_s".into(),
            json_number(response_tokens as f64 / rollout_seconds.max(1e-9)),
        );
        record.insert(
            "step_seconds".into(),
            json_number(began.elapsed().as_secs_f64()),
        );
        let found = warnings(
            settings.guards,
            mean_kl,
            mean_entropy,
            mean_length,
            first_length,
        );
        if !found.is_empty() {
            record.insert("warnings".into(), found.into());
        }
        controller.update(mean_kl, experiences.len());

        metrics.append(&record)?;
        observer.on_step(step, &record);
        first_record.get_or_insert_with(|| record.clone());
        let summary = |checkpoint, model_dir, record: &Map<String, Value>| RlSummary {
            train: TrainSummary {
                steps: step,
                final_loss: loss,
                eval: Vec::new(),
                checkpoint,
                model_dir,
            },
            first: first_record.clone().unwrap_or_default(),
            last: record.clone(),
        };
        if options.stop_after_step == Some(step) {
            return Ok(summary(last_checkpoint, None, &record));
        }
        if step == total_steps || step.checked_rem(train.save_every) == Some(0) {
            let trainer_state = TrainerState {
                step,
                total_steps,
                loader: loader.position,
                rng: loader.rng,
                loss,
                config: config_text.to_string(),
            };
            let rl_state = RlState {
                rollout_rng: rng_state(&rollout_rng, train.seed),
                beta: controller.beta,
                first_response_length: first_length,
            };
            let value_head_vars = &parts.value_head_vars;
            let write_extra = |dir: &Path| -> Result<()> {
                let json = serde_json::to_string_pretty(&rl_state).expect("RL state serialises");
                checkpoint::write_atomic(&dir.join(RL_STATE_FILE), json.as_bytes())?;
                save_value_head(value_head_vars, dir)
            };
            last_checkpoint = Some(checkpoint::save_checkpoint_with(
                run_dir,
                &parts.policy.model,
                &optimizer,
                &trainer_state,
                train.keep_checkpoints,
                &write_extra,
            )?);
        }
    }
    let model_dir = run_dir.join("model");
    parts.policy.model.save_pretrained(&model_dir)?;
    save_value_head(&parts.value_head_vars, run_dir)?;
    Ok(RlSummary {
        train: TrainSummary {
            steps: step,
            final_loss: loss,
            eval: Vec::new(),
            checkpoint: last_checkpoint,
            model_dir: Some(model_dir),
        },
        first: first_record.unwrap_or_default(),
        last: record,
    })
}

/// Writes `dir/value_head.safetensors` when there is a value head.
fn save_value_head(vars: &VarMap, dir: &Path) -> Result<()> {
    let tensors = rlxf_model::weights::varmap_tensors(vars);
    if !tensors.is_empty() {
        rlxf_model::weights::save_safetensors(&dir.join(VALUE_HEAD_FILE), &tensors)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_rails_warn_on_each_condition() {
        let guards = GuardConfig::default();
        assert!(warnings(&guards, 0.5, 2.0, 10.0, 10.0).is_empty());
        let found = warnings(&guards, -1.5, 0.05, 25.0, 10.0);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("negative KL"));
        assert!(found[1].contains("entropy collapsed"));
        assert!(found[2].contains("length blew up"));
        let found = warnings(&guards, 12.0, 2.0, 10.0, 10.0);
        assert!(
            found.len() == 1 && found[0].contains("exploding"),
            "{found:?}"
        );
    }

    #[test]
    fn padded_rows_by_hand() {
        let rows: [&[f64]; 2] = [&[1.0, 2.0], &[3.0]];
        let tensor = padded(&rows, 3, &Device::Cpu).unwrap();
        assert_eq!(
            tensor.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0, 0.0], vec![3.0, 0.0, 0.0]]
        );
    }
}
