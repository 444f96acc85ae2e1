//! Online RL on a tiny GPT-Neo with a 16-token vocabulary: the KL estimates of real rollouts
//! against the exact KL (all 16³ responses enumerated), each algorithm raising a synthetic reward
//! with a bounded KL, bit-identical resume, and the stop on a non-finite loss.

use candle_core::{DType, Device};
use rlxf_model::{AttentionKind, GptNeoConfig, LoadedModel, ModelConfig, Tokenizer};
use rlxf_train::losses::to_f64s;
use rlxf_train::metrics::read_metrics;
use rlxf_train::rl::a2c::A2c;
use rlxf_train::rl::kl::{KlConfig, KlEstimator};
use rlxf_train::rl::ppo::Ppo;
use rlxf_train::rl::rewards::{RewardQuery, RewardSource, TargetTokenFraction};
use rlxf_train::rl::rloo::Rloo;
use rlxf_train::rl::rollout::{rollout, score_tokens, Policy, RolloutConfig};
use rlxf_train::rl::runner::VALUE_HEAD_FILE;
use rlxf_train::rl::{train_rl, Algorithm, GuardConfig, Prompt, RlParts, RlSettings, RlSummary};
use rlxf_train::{Decay, LoopConfig, RunOptions, Silent, TrainError};

const VOCAB: usize = 16;
/// The synthetic reward: the fraction of response tokens equal to this id.
const TARGET: u32 = 5;

/// A 2-layer GPT-Neo over 16 tokens. A wide init (0.3 instead of HF's 0.02) makes its next-token
/// distributions far from uniform, so two seeds give models with a clearly non-zero KL.
fn small_model(seed: u64, initializer_range: f64) -> LoadedModel {
    let config = GptNeoConfig {
        vocab_size: VOCAB,
        max_position_embeddings: 32,
        num_layers: 2,
        attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 1)],
        hidden_size: 32,
        num_heads: 2,
        window_size: 8,
        initializer_range,
        ..GptNeoConfig::tiny()
    };
    LoadedModel::init_random(ModelConfig::GptNeo(config), seed, &Device::Cpu, DType::F32).unwrap()
}

/// Eight prompts of four tokens (equal lengths: generation left-pads with the GPT-2 tokenizer's
/// pad id, which is outside this vocabulary).
fn prompts() -> Vec<Prompt> {
    (0..8u32)
        .map(|i| Prompt {
            text: format!("prompt {i}"),
            ids: vec![i, (i * 3 + 1) % 16, (i * 7 + 2) % 16, 15 - i],
        })
        .collect()
}

fn rollout_config() -> RolloutConfig {
    RolloutConfig {
        temperature: 0.9,
        max_new_tokens: 6,
        max_prompt_length: 8,
    }
}

fn loop_config(steps: u64, learning_rate: f64) -> LoopConfig {
    LoopConfig {
        seed: 3,
        max_steps: Some(steps),
        batch_size: 8,
        micro_batch_size: 8,
        learning_rate: Some(learning_rate),
        decay: Decay::Constant,
        save_every: 2,
        keep_checkpoints: 2,
        ..LoopConfig::default()
    }
}

fn parts(value_head: bool, reward: Box<dyn RewardSource>) -> RlParts {
    RlParts::new(
        small_model(7, 0.02),
        small_model(7, 0.02),
        Tokenizer::gpt2(),
        prompts(),
        reward,
        value_head,
        7,
    )
    .unwrap()
}

fn run(
    algorithm: &dyn Algorithm,
    parts: &mut RlParts,
    train: &LoopConfig,
    dir: &std::path::Path,
    options: &RunOptions,
) -> rlxf_train::Result<RlSummary> {
    let rollout = rollout_config();
    let kl = KlConfig::default();
    let guards = GuardConfig::default();
    let settings = RlSettings {
        rollout: &rollout,
        kl: &kl,
        guards: &guards,
        train,
        default_lr: 1e-3,
    };
    train_rl(algorithm, parts, settings, dir, "", options, &mut Silent)
}

fn mean_of(records: &[serde_json::Map<String, serde_json::Value>], key: &str) -> f64 {
    records
        .iter()
        .map(|r| r[key].as_f64().unwrap())
        .sum::<f64>()
        / records.len() as f64
}

/// Trains `algorithm` on the target-token reward and checks that the mean reward of the last
/// three steps clearly exceeds that of the first three, with the KL to the reference bounded.
fn assert_learns(algorithm: &dyn Algorithm, value_head: bool, steps: u64, learning_rate: f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut parts = parts(
        value_head,
        Box::new(TargetTokenFraction { token_id: TARGET }),
    );
    run(
        algorithm,
        &mut parts,
        &loop_config(steps, learning_rate),
        dir.path(),
        &RunOptions::default(),
    )
    .unwrap();
    let records = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(records.len() as u64, steps);
    let first = mean_of(&records[..3], "reward");
    let last = mean_of(&records[records.len() - 3..], "reward");
    let max_kl = records
        .iter()
        .map(|r| r["kl"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    eprintln!("reward {first:.3} -> {last:.3}, max KL {max_kl:.3}");
    for record in &records {
        for key in ["entropy", "response_length", "kl", "loss", "grad_norm"] {
            assert!(
                record[key].as_f64().unwrap().is_finite(),
                "{key}: {record:?}"
            );
        }
    }
    // A uniform policy puts 1/16 of its tokens on the target. The thresholds leave room for
    // sampling noise while demanding the target be several times more frequent than at the start.
    assert!(first < 0.15, "starting reward {first}");
    assert!(
        last > 0.35 && last > first + 0.2,
        "reward {first} -> {last}"
    );
    // The leash: a policy that ignores it ends up emitting only the target, about
    // 6·log 16 ≈ 16.6 nats from the near-uniform reference. The KL-regularised optimum with
    // β = 0.05, π*(y) ∝ π_ref(y)·exp(0.95·r(y)/0.05), weights the target by e^{19/6} ≈ 23.7 per
    // token: p(target) ≈ 0.61, KL ≈ 1.05 nats per token, ≈ 6.3 per response. Allow noisy
    // overshoot of that, not the unleashed policy.
    assert!(max_kl < 12.0, "KL {max_kl}");
    let last_kl = mean_of(&records[records.len() - 3..], "kl");
    assert!(last_kl < 10.0, "final KL {last_kl}");
    let model_dir = dir.path().join("model");
    assert!(model_dir.join("model.safetensors").is_file());
    assert_eq!(dir.path().join(VALUE_HEAD_FILE).is_file(), value_head);
}

#[test]
fn ppo_raises_the_reward_with_bounded_kl() {
    assert_learns(&Ppo::default(), true, 16, 1e-2);
}

#[test]
fn a2c_raises_the_reward_with_bounded_kl() {
    assert_learns(&A2c::default(), true, 20, 1e-2);
}

#[test]
fn rloo_raises_the_reward_with_bounded_kl() {
    let rloo = Rloo {
        k: 4,
        ..Rloo::default()
    };
    assert_learns(&rloo, false, 16, 1e-2);
}

/// Rollout KL estimates against the exact sequence KL: all 16³ three-token responses to one
/// prompt are enumerated and scored at the sampling temperature,
/// `KL = Σ_y π(y)·(log π(y) − log π_ref(y))`; the mean k1 and k3 estimates over 1,500 sampled
/// responses must agree with it within four standard errors.
#[test]
fn rollout_kl_estimates_match_the_exact_kl_on_a_small_vocabulary() {
    let policy = Policy {
        model: small_model(1, 0.3),
        value_head: None,
    };
    let reference = small_model(2, 0.3);
    let prompt = vec![3u32, 9, 4];
    let config = RolloutConfig {
        temperature: 0.9,
        max_new_tokens: 3,
        max_prompt_length: 8,
    };

    let responses: Vec<Vec<u32>> = (0..VOCAB.pow(3) as u32)
        .map(|code| vec![code % 16, (code / 16) % 16, code / 256])
        .collect();
    let prompts = vec![prompt.clone(); responses.len()];
    let sequence_logprobs = |model: &LoadedModel| -> Vec<f64> {
        let scores = score_tokens(model, None, &prompts, &responses, config.temperature).unwrap();
        to_f64s(&scores.logprobs.sum(1).unwrap()).unwrap()
    };
    let policy_lp = sequence_logprobs(&policy.model);
    let reference_lp = sequence_logprobs(&reference);
    let total_mass: f64 = policy_lp.iter().map(|lp| lp.exp()).sum();
    assert!((total_mass - 1.0).abs() < 1e-4, "mass {total_mass}");
    let exact: f64 = policy_lp
        .iter()
        .zip(&reference_lp)
        .map(|(lp, lq)| lp.exp() * (lp - lq))
        .sum();
    assert!(
        exact > 0.2,
        "the two models should differ clearly; KL {exact}"
    );

    let samples = rollout(
        &policy,
        &reference,
        &Tokenizer::gpt2(),
        &[prompt],
        1500,
        &config,
        11,
        500,
    )
    .unwrap();
    for estimator in [KlEstimator::K1, KlEstimator::K3] {
        let estimates: Vec<f64> = samples
            .iter()
            .map(|s| {
                s.logprobs
                    .iter()
                    .zip(&s.ref_logprobs)
                    .map(|(&lp, &lq)| estimator.estimate(lp, lq))
                    .sum()
            })
            .collect();
        let n = estimates.len() as f64;
        let mean = estimates.iter().sum::<f64>() / n;
        let variance = estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let standard_error = (variance / n).sqrt();
        eprintln!("{estimator:?}: {mean:.4} ± {standard_error:.4}, exact {exact:.4}");
        assert!(
            (mean - exact).abs() < 4.0 * standard_error,
            "{estimator:?}: estimate {mean} ± {standard_error}, exact {exact}"
        );
    }
}

fn all_weights(parts: &RlParts) -> Vec<(String, Vec<f64>)> {
    let mut weights = Vec::new();
    for varmap in [&parts.policy.model.varmap, &parts.value_head_vars] {
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            weights.push((name.clone(), to_f64s(var.as_tensor()).unwrap()));
        }
    }
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    weights
}

/// Stopping after step 3 (last checkpoint: step 2) and resuming in a fresh process gives the
/// weights, value head and metrics of an uninterrupted run: the rollout RNG, KL coefficient and
/// optimiser state come back from the checkpoint.
fn assert_resume_is_bit_identical(algorithm: &dyn Algorithm, value_head: bool) {
    let mut train = loop_config(5, 1e-2);
    train.micro_batch_size = 4;
    let reward = || Box::new(TargetTokenFraction { token_id: TARGET });
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = parts(value_head, reward());
    run(
        algorithm,
        &mut straight,
        &train,
        straight_dir.path(),
        &RunOptions::default(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let stop = RunOptions {
        resume: false,
        stop_after_step: Some(3),
    };
    let stopped = run(
        algorithm,
        &mut parts(value_head, reward()),
        &train,
        dir.path(),
        &stop,
    )
    .unwrap();
    assert_eq!(
        stopped.train.checkpoint.unwrap(),
        dir.path().join("checkpoints/step-00000002")
    );
    let mut resumed = parts(value_head, reward());
    let resume = RunOptions {
        resume: true,
        stop_after_step: None,
    };
    run(algorithm, &mut resumed, &train, dir.path(), &resume).unwrap();

    assert!(
        all_weights(&resumed) == all_weights(&straight),
        "weights differ after resume"
    );
    let straight_metrics = read_metrics(&straight_dir.path().join("metrics.jsonl")).unwrap();
    let resumed_metrics = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(resumed_metrics.len(), 5, "each step logged once");
    for (a, b) in straight_metrics.iter().zip(&resumed_metrics) {
        for key in ["reward", "kl", "loss", "beta", "entropy"] {
            assert_eq!(a[key], b[key], "{key} at step {}", a["step"]);
        }
    }
}

#[test]
fn ppo_resume_is_bit_identical() {
    assert_resume_is_bit_identical(&Ppo::default(), true);
}

#[test]
fn rloo_resume_is_bit_identical() {
    assert_resume_is_bit_identical(&Rloo::default(), false);
}

/// The target-token reward until `from_call`, then a reward so large that the value loss
/// overflows f32.
struct Exploding {
    calls: usize,
    from_call: usize,
}

impl RewardSource for Exploding {
    fn describe(&self) -> String {
        "exploding".into()
    }

    fn score(&mut self, queries: &[RewardQuery<'_>]) -> rlxf_train::Result<Vec<f64>> {
        self.calls += 1;
        let mut scores = TargetTokenFraction { token_id: TARGET }.score(queries)?;
        if self.calls >= self.from_call {
            scores.iter_mut().for_each(|s| *s = 1e30);
        }
        Ok(scores)
    }
}

#[test]
fn non_finite_loss_stops_with_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let reward = Box::new(Exploding {
        calls: 0,
        from_call: 4,
    });
    let mut parts = parts(true, reward);
    let err = run(
        &A2c::default(),
        &mut parts,
        &loop_config(6, 1e-2),
        dir.path(),
        &RunOptions::default(),
    )
    .unwrap_err();
    match &err {
        TrainError::NonFiniteLoss {
            step,
            last_checkpoint,
            ..
        } => {
            assert_eq!(*step, 4);
            let checkpoint = last_checkpoint.as_ref().unwrap();
            assert_eq!(checkpoint, &dir.path().join("checkpoints/step-00000002"));
            assert!(checkpoint.join(VALUE_HEAD_FILE).is_file());
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("step-00000002"), "{err}");
}

/// The shipped configs parse, validate, and round-trip through their resolved form.
#[test]
fn shipped_rl_configs_parse_and_validate() {
    use rlxf_train::config::{parse_config, read_config};
    use rlxf_train::rl::RlConfig;
    fn check<P: rlxf_train::rl::AlgorithmParams + std::fmt::Debug>(name: &str) {
        let path =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs")).join(name);
        let (config, resolved) = read_config::<RlConfig<P>>(&path, &[]).unwrap();
        config.validate(&path).unwrap();
        let (again, _) = parse_config::<RlConfig<P>>(&resolved, &path, &[]).unwrap();
        assert_eq!(again, config);
        // Overrides reach the nested tables; a misspelt field is named.
        let overridden = ["kl.beta=0.1".to_string(), "rollout.temperature=0.7".into()];
        let (changed, _) = read_config::<RlConfig<P>>(&path, &overridden).unwrap();
        assert_eq!(changed.kl.beta, 0.1);
        assert_eq!(changed.rollout.temperature, 0.7);
        let err = read_config::<RlConfig<P>>(&path, &["algorithm.nope=1".to_string()]).unwrap_err();
        assert!(err.to_string().contains("algorithm"), "{err}");
        assert!(err.is_bad_input());
    }
    check::<Ppo>("ppo-tiny.toml");
    check::<A2c>("a2c-tiny.toml");
    check::<Rloo>("rloo-tiny.toml");
}
