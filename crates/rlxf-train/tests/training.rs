//! The shared loop (resume, non-finite loss, metrics) on synthetic data, and learning tests of SFT,
//! the reward model and DPO on real HH-RLHF harmless-base pairs (skipped when the data is absent).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use rlxf_data::{load_pairs, LoadOptions, PreferencePair, Source};
use rlxf_model::{AttentionKind, GptNeoConfig, LoadedModel, ModelConfig};
use rlxf_train::checkpoint::list_checkpoints;
use rlxf_train::dpo::{reference_logprobs, DpoObjective};
use rlxf_train::losses::{to_f64s, DpoLossConfig};
use rlxf_train::metrics::read_metrics;
use rlxf_train::reward::RewardObjective;
use rlxf_train::setup::{encode_pairs, EncodedPair, Lengths, ModelBundle};
use rlxf_train::sft::{SftExample, SftObjective};
use rlxf_train::trainer::MicroBatchOutput;
use rlxf_train::{train, LoopConfig, Objective, RunOptions, Silent, TrainError, TrainSummary};

const PAD: u32 = 50256;

fn small_model(seed: u64) -> LoadedModel {
    let config = GptNeoConfig {
        num_layers: 2,
        attention_types: vec![(vec![AttentionKind::Global, AttentionKind::Local], 1)],
        hidden_size: 32,
        num_heads: 2,
        window_size: 8,
        ..GptNeoConfig::tiny()
    };
    LoadedModel::init_random(ModelConfig::GptNeo(config), seed, &Device::Cpu, DType::F32).unwrap()
}

fn synthetic_examples() -> Vec<SftExample> {
    (0..10u32)
        .map(|i| SftExample {
            prompt: (0..(2 + i % 3)).map(|j| 100 + i * 7 + j).collect(),
            reply: (0..(1 + i % 4))
                .map(|j| 300 + i * 3 + j)
                .chain([PAD])
                .collect(),
        })
        .collect()
}

fn sft_objective() -> SftObjective {
    SftObjective::new(
        small_model(11),
        PAD,
        synthetic_examples(),
        synthetic_examples()[..3].to_vec(),
        4,
    )
}

fn loop_config() -> LoopConfig {
    LoopConfig {
        seed: 5,
        epochs: 3,
        batch_size: 4,
        micro_batch_size: 2,
        learning_rate: Some(3e-3),
        warmup_steps: 2,
        weight_decay: 0.01,
        eval_every: 3,
        save_every: 2,
        keep_checkpoints: 3,
        ..LoopConfig::default()
    }
}

fn weights(model: &LoadedModel) -> Vec<(String, Vec<f64>)> {
    let data = model.varmap.data().lock().unwrap();
    let mut all: Vec<_> = data
        .iter()
        .map(|(name, var)| (name.clone(), to_f64s(var.as_tensor()).unwrap()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// A fresh SFT run into `run_dir` that stops right after step `last_step`, as a kill then would:
/// nothing is saved for that step.
fn sft_stopped_after(run_dir: &Path, config: &LoopConfig, last_step: u64) -> TrainSummary {
    let stop = RunOptions {
        resume: false,
        stop_after_step: Some(last_step),
    };
    train(
        &mut sft_objective(),
        config,
        1.0,
        run_dir,
        "",
        &stop,
        &mut Silent,
    )
    .unwrap()
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let config = loop_config();
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = sft_objective();
    let summary = train(
        &mut straight,
        &config,
        1.0,
        straight_dir.path(),
        "",
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(summary.steps, 9); // 3 epochs of ceil(10 / 4) steps
    assert!(summary
        .model_dir
        .unwrap()
        .join("model.safetensors")
        .is_file());

    let dir = tempfile::tempdir().unwrap();
    let stopped = sft_stopped_after(dir.path(), &config, 5);
    assert_eq!(stopped.steps, 5);
    assert_eq!(
        stopped.checkpoint.unwrap(),
        dir.path().join("checkpoints/step-00000004")
    );
    // A fresh process: a freshly initialised model, restored from the step-4 checkpoint.
    let mut resumed = sft_objective();
    let resume = RunOptions {
        resume: true,
        stop_after_step: None,
    };
    train(
        &mut resumed,
        &config,
        1.0,
        dir.path(),
        "",
        &resume,
        &mut Silent,
    )
    .unwrap();

    assert_eq!(
        weights(resumed.model()),
        weights(straight.model()),
        "weights differ after resume"
    );
    let straight_metrics = read_metrics(&straight_dir.path().join("metrics.jsonl")).unwrap();
    let resumed_metrics = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = resumed_metrics
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=9).collect::<Vec<_>>(), "each step logged once");
    for (a, b) in straight_metrics.iter().zip(&resumed_metrics) {
        assert_eq!(a["loss"], b["loss"]);
        assert_eq!(a["lr"], b["lr"]);
        assert_eq!(a.get("eval_loss"), b.get("eval_loss"));
    }
    assert!(
        resumed_metrics[2].contains_key("eval_loss")
            && !resumed_metrics[3].contains_key("eval_loss")
    );
    // keep_checkpoints = 3 of steps 2, 4, 6, 8, 9.
    let kept: Vec<u64> = list_checkpoints(dir.path())
        .unwrap()
        .into_iter()
        .map(|(step, _)| step)
        .collect();
    assert_eq!(kept, vec![6, 8, 9]);
}

/// A run killed while saving a checkpoint leaves the checkpoint's temporary folder behind (gigabytes
/// for a real model with its optimizer state); the next checkpoint the run saves removes it.
#[test]
fn a_checkpoint_cut_short_by_a_kill_is_removed_by_the_next_save() {
    let dir = tempfile::tempdir().unwrap();
    let unfinished = dir.path().join("checkpoints").join(".tmp-killed");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("model.safetensors"), b"half of it").unwrap();
    // Steps 1 to 3, saving at step 2 (`save_every`).
    sft_stopped_after(dir.path(), &loop_config(), 3);
    assert!(
        !unfinished.exists(),
        "the unfinished checkpoint is still there"
    );
    let kept: Vec<u64> = list_checkpoints(dir.path())
        .unwrap()
        .into_iter()
        .map(|(step, _)| step)
        .collect();
    assert_eq!(kept, vec![2]);
}

/// Every file of a run (config, metrics, the checkpoint's weights, optimizer state and trainer
/// state, the final model) gets the permissions of a newly created file, not the owner-only ones of
/// the temporary files it is written through: others who may read the run folder can read them.
#[cfg(unix)]
#[test]
fn run_files_get_the_permissions_of_newly_created_files() {
    use std::os::unix::fs::PermissionsExt;
    fn files_under(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let config = LoopConfig {
        epochs: 1,
        ..loop_config()
    };
    train(
        &mut sft_objective(),
        &config,
        1.0,
        &run_dir,
        "seed = 5\n",
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let created = dir.path().join("created");
    std::fs::File::create(&created).unwrap();
    let expected = mode(&created);

    let mut files = Vec::new();
    files_under(&run_dir, &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for name in [
        "config.toml",
        "metrics.jsonl",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not among {names:?}"
        );
    }
    for path in &files {
        assert_eq!(
            format!("{:o}", mode(path)),
            format!("{expected:o}"),
            "{}",
            path.display()
        );
    }
}

/// Wraps an objective and poisons its loss from the `poison_from`-th micro-batch on.
struct Poisoned {
    inner: SftObjective,
    calls: usize,
    poison_from: usize,
}

impl Objective for Poisoned {
    fn model(&self) -> &LoadedModel {
        self.inner.model()
    }
    fn num_examples(&self) -> usize {
        self.inner.num_examples()
    }
    fn loss_units(&self, examples: &[usize]) -> f64 {
        self.inner.loss_units(examples)
    }
    fn micro_batch(&mut self, examples: &[usize]) -> rlxf_train::Result<MicroBatchOutput> {
        self.calls += 1;
        let mut output = self.inner.micro_batch(examples)?;
        if self.calls >= self.poison_from {
            output.loss_sum = (output.loss_sum * f64::NAN)?;
        }
        Ok(output)
    }
    fn evaluate(&mut self) -> rlxf_train::Result<Vec<(String, f64)>> {
        self.inner.evaluate()
    }
}

#[test]
fn non_finite_loss_stops_with_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Two micro-batches per step: the 7th call is in step 4, after the step-2 checkpoint... and the
    // step-4 one is never written.
    let mut objective = Poisoned {
        inner: sft_objective(),
        calls: 0,
        poison_from: 7,
    };
    let err = train(
        &mut objective,
        &loop_config(),
        1.0,
        dir.path(),
        "",
        &RunOptions::default(),
        &mut Silent,
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
            assert!(checkpoint.join("model.safetensors").is_file());
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("step-00000002"), "{err}");
    assert!(!err.is_bad_input());
}

// ---------------------------------------------------------------------------------------------
// Learning tests on HH-RLHF harmless-base.

const HH_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/hh-rlhf-harmless-base/test.jsonl.gz"
);

fn hh_pairs() -> Option<Vec<PreferencePair>> {
    if !Path::new(HH_TEST).is_file() {
        eprintln!("skipping: {HH_TEST} is absent");
        return None;
    }
    let source: Source = HH_TEST.parse().unwrap();
    Some(load_pairs(&source, &LoadOptions::default()).unwrap().pairs)
}

fn tiny_bundle(seed: u64) -> ModelBundle {
    ModelBundle {
        model: LoadedModel::init_random(
            ModelConfig::GptNeo(GptNeoConfig::tiny()),
            seed,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap(),
        tokenizer: rlxf_model::Tokenizer::gpt2(),
        template: rlxf_model::ChatTemplate::HumanAssistant,
    }
}

const LENGTHS: Lengths = Lengths {
    max_length: 64,
    max_prompt_length: 40,
};

fn run_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run");
    (dir, path)
}

#[test]
fn sft_on_hh_lowers_held_out_loss() {
    let Some(pairs) = hh_pairs() else { return };
    let began = Instant::now();
    let bundle = tiny_bundle(1);
    let encoded = encode_pairs(&bundle, &pairs[..120], LENGTHS, None).unwrap();
    let examples: Vec<SftExample> = encoded
        .iter()
        .map(|p| SftExample::from_pair(p, rlxf_train::sft::Target::Chosen))
        .collect();
    let (train_examples, eval_examples) = (examples[..96].to_vec(), examples[96..].to_vec());
    let mut objective =
        SftObjective::new(bundle.model, PAD, train_examples, eval_examples.clone(), 8);
    let before = objective.mean_nll(&eval_examples).unwrap();
    let config = LoopConfig {
        seed: 1,
        epochs: 1,
        batch_size: 8,
        learning_rate: Some(5e-3),
        warmup_steps: 2,
        ..LoopConfig::default()
    };
    let (_dir, run) = run_dir();
    let summary = train(
        &mut objective,
        &config,
        1.0,
        &run,
        "",
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let after = objective.mean_nll(&eval_examples).unwrap();
    eprintln!(
        "SFT held-out NLL {before:.3} -> {after:.3} in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    // A random init predicts ~uniformly (ln 50257 = 10.8 nats); 12 steps learn at least the
    // frequent reply tokens (the unigram entropy of English BPE text is ~7.5 nats).
    assert!(before > 10.0);
    assert!(after < before - 1.0, "{before} -> {after}");
    let eval_loss = summary
        .eval
        .iter()
        .find(|(name, _)| name == "eval_loss")
        .unwrap()
        .1;
    assert!((eval_loss - after).abs() < 1e-6);
}

#[test]
fn reward_model_fits_hh_training_pairs() {
    let Some(pairs) = hh_pairs() else { return };
    let began = Instant::now();
    let bundle = tiny_bundle(4);
    let train_pairs = encode_pairs(&bundle, &pairs[..32], LENGTHS, None).unwrap();
    let mut objective =
        RewardObjective::new(bundle.model, 4, PAD, train_pairs.clone(), Vec::new(), 16).unwrap();
    let before = objective.pair_stats(&train_pairs).unwrap();
    let config = LoopConfig {
        seed: 4,
        epochs: 4,
        batch_size: 16,
        learning_rate: Some(3e-3),
        ..LoopConfig::default()
    };
    let (_dir, run) = run_dir();
    train(
        &mut objective,
        &config,
        1.0,
        &run,
        "",
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let after = objective.pair_stats(&train_pairs).unwrap();
    eprintln!(
        "RM train accuracy {:.3} -> {:.3}, margin {:.3} -> {:.3} in {:.1}s",
        before.accuracy,
        after.accuracy,
        before.mean_margin,
        after.mean_margin,
        began.elapsed().as_secs_f64()
    );
    // 8 steps over 32 pairs: the model separates most training pairs (a random head scores
    // them at chance).
    assert!(after.accuracy >= 0.75, "{after:?}");
    assert!(after.mean_margin > before.mean_margin);
}

#[test]
#[ignore = "about 5 minutes on 2 cores in the dev profile (1,200 pairs x 2 epochs); measured accuracy 0.573"]
fn reward_model_on_hh_beats_chance_on_held_out_pairs() {
    let Some(pairs) = hh_pairs() else { return };
    let began = Instant::now();
    let bundle = tiny_bundle(2);
    let encoded = encode_pairs(&bundle, &pairs, LENGTHS, None).unwrap();
    let held_out = 400;
    let (eval, train_pairs) = encoded.split_at(held_out);
    let train_pairs: Vec<EncodedPair> = train_pairs.iter().take(1200).cloned().collect();
    let mut objective =
        RewardObjective::new(bundle.model, 2, PAD, train_pairs, eval.to_vec(), 16).unwrap();
    let config = LoopConfig {
        seed: 2,
        epochs: 2,
        batch_size: 16,
        learning_rate: Some(1e-3),
        warmup_steps: 5,
        ..LoopConfig::default()
    };
    let (_dir, run) = run_dir();
    train(
        &mut objective,
        &config,
        1.0,
        &run,
        "",
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let stats = objective.pair_stats(objective.eval_pairs()).unwrap();
    eprintln!(
        "RM held-out accuracy {:.3} (margin {:.3} ± {:.3}) in {:.1}s",
        stats.accuracy,
        stats.mean_margin,
        stats.margin_std,
        began.elapsed().as_secs_f64()
    );
    // Under chance (p = 0.5) the accuracy over 400 independent pairs has sd 0.025, so 0.55 is
    // two sd above it (one-sided p ≈ 0.023). Chosen replies in harmless-base are shorter in 55% of
    // pairs and more often refuse, cues a tiny model picks up from the last token's position and
    // the reply's words.
    assert!(
        stats.accuracy > 0.55,
        "held-out accuracy {}",
        stats.accuracy
    );
}

#[test]
fn dpo_on_hh_raises_implicit_reward_accuracy_on_training_pairs() {
    let Some(pairs) = hh_pairs() else { return };
    let began = Instant::now();
    let bundle = tiny_bundle(3);
    let train_pairs = encode_pairs(&bundle, &pairs[..32], LENGTHS, None).unwrap();
    let reference = reference_logprobs(&bundle.model, &train_pairs, PAD, 16).unwrap();
    let loss = DpoLossConfig::default();
    let mut objective = DpoObjective::new(
        bundle.model,
        PAD,
        loss,
        train_pairs.clone(),
        Vec::new(),
        reference,
        16,
    )
    .unwrap();
    let before = objective.evaluate_pairs(&train_pairs).unwrap();
    let config = LoopConfig {
        seed: 3,
        epochs: 3,
        batch_size: 16,
        learning_rate: Some(3e-3),
        ..LoopConfig::default()
    };
    let (_dir, run) = run_dir();
    train(
        &mut objective,
        &config,
        1.0,
        &run,
        "",
        &RunOptions::default(),
        &mut Silent,
    )
    .unwrap();
    let after = objective.evaluate_pairs(&train_pairs).unwrap();
    eprintln!(
        "DPO train accuracy {:.3} -> {:.3}, loss {:.4} -> {:.4} in {:.1}s",
        before.rewards.accuracy,
        after.rewards.accuracy,
        before.loss,
        after.loss,
        began.elapsed().as_secs_f64()
    );
    // The policy starts as the reference: every implicit reward is 0, the loss ln 2.
    assert_eq!(before.rewards.accuracy, 0.0);
    assert!((before.loss - std::f64::consts::LN_2).abs() < 1e-6);
    // 6 steps over 32 pairs: the policy can fit the training pairs' preferences.
    assert!(after.rewards.accuracy >= 0.75, "{:?}", after.rewards);
    assert!(after.loss < 0.6 && after.rewards.mean_margin > 0.0);
}
