//! `[train] precision = "bf16"` (issue #9): the config switch, and a short SFT run whose loss
//! curve stays within the noise of f32, where the noise is measured, not assumed: the spread
//! between two f32 runs that differ only in their seed (initialisation and data order).

use std::path::Path;

use rlxf_train::config::parse_config;
use rlxf_train::metrics::read_metrics;
use rlxf_train::setup::DataConfig;
use rlxf_train::sft::{self, SftConfig};
use rlxf_train::{Decay, LoopConfig, Precision, RunOptions, Silent, TrainError};

/// Optimiser steps of each run.
const STEPS: u64 = 16;

/// The per-step training losses of `STEPS` steps of SFT on the embedded pairs.
fn sft_loss_curve(seed: u64, precision: Precision, dir: &Path) -> Vec<f64> {
    let config = SftConfig {
        model: "random:gpt-neo-tiny".into(),
        output_dir: dir.to_path_buf(),
        max_length: 32,
        max_prompt_length: 20,
        data: DataConfig {
            eval_fraction: 0.0,
            ..DataConfig::default()
        },
        train: LoopConfig {
            seed,
            max_steps: Some(STEPS),
            batch_size: 4,
            learning_rate: Some(4e-3),
            warmup_steps: 2,
            decay: Decay::Constant,
            precision,
            ..LoopConfig::default()
        },
        ..SftConfig::default()
    };
    // Stopping after the last step skips the final checkpoint and model, which the test does
    // not need.
    let options = RunOptions {
        resume: false,
        stop_after_step: Some(STEPS),
    };
    sft::run(&config, "", Path::new("test.toml"), &options, &mut Silent).unwrap();
    read_metrics(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|record| record["loss"].as_f64().unwrap())
        .collect()
}

fn mean_abs_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

/// Mean of the first and of the last quarter of a curve.
fn start_and_end(curve: &[f64]) -> (f64, f64) {
    let quarter = curve.len() / 4;
    let mean = |part: &[f64]| part.iter().sum::<f64>() / part.len() as f64;
    (
        mean(&curve[..quarter]),
        mean(&curve[curve.len() - quarter..]),
    )
}

#[test]
fn bf16_sft_loss_curve_is_within_the_seed_to_seed_noise_of_f32() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed, precision| sft_loss_curve(seed, precision, &dir.path().join(name));
    let f32_a = run("f32-a", 1, Precision::F32);
    let f32_b = run("f32-b", 2, Precision::F32);
    let bf16_a = run("bf16-a", 1, Precision::Bf16);
    let noise = mean_abs_difference(&f32_a, &f32_b);
    let bf16_gap = mean_abs_difference(&bf16_a, &f32_a);
    println!("f32 seed 1: {f32_a:.3?}\nf32 seed 2: {f32_b:.3?}\nbf16 seed 1: {bf16_a:.3?}");
    println!("seed-to-seed noise {noise:.4}, bf16 vs f32 (same seed) {bf16_gap:.4}");
    for (name, curve) in [("f32", &f32_a), ("bf16", &bf16_a)] {
        let (start, end) = start_and_end(curve);
        assert!(
            end < start - 0.5,
            "{name}: the loss did not decrease ({start:.3} -> {end:.3})"
        );
    }
    // Measured: noise 0.22, bf16 gap 0.0007 (the tiny model's logits are small, so bf16's
    // relative rounding moves the loss little). A gap of exactly 0 would mean the switch did
    // nothing.
    assert!(bf16_gap > 0.0, "the bf16 run computed exactly as f32");
    assert!(
        bf16_gap < noise,
        "bf16 moved the loss curve by {bf16_gap:.4} per step, more than the seed-to-seed \
         spread of f32 ({noise:.4})"
    );
}

#[test]
fn precision_is_read_from_the_train_table_and_validated() {
    let (config, resolved): (SftConfig, String) =
        parse_config("[train]\nprecision = \"bf16\"\n", Path::new("x.toml"), &[]).unwrap();
    assert_eq!(config.train.precision, Precision::Bf16);
    assert!(resolved.contains("precision = \"bf16\""), "{resolved}");

    // The default, f32, stays out of the resolved config: runs keyed before the field existed
    // keep their keys.
    let (config, resolved): (SftConfig, String) =
        parse_config("", Path::new("x.toml"), &[]).unwrap();
    assert_eq!(config.train.precision, Precision::F32);
    assert!(!resolved.contains("precision"), "{resolved}");

    // The bench's `--precisions` parses the same names.
    for precision in [Precision::F32, Precision::Bf16] {
        assert_eq!(precision.name().parse::<Precision>(), Ok(precision));
    }
    assert!("fp16".parse::<Precision>().unwrap_err().contains("bf16"));

    let err =
        parse_config::<SftConfig>("[train]\nprecision = \"fp16\"\n", Path::new("x.toml"), &[])
            .unwrap_err();
    match &err {
        TrainError::InvalidConfig { field, reason, .. } => {
            assert_eq!(field, "train.precision");
            assert!(reason.contains("bf16"), "{reason}");
        }
        other => panic!("unexpected error {other}"),
    }
}
