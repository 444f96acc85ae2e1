//! `rlxf train seed-replication` end to end on the shipped local preset, shrunk with `--set` to a
//! few dozen embedded pairs and a handful of steps: both arms' models load and differ, the summary
//! is complete, and a rerun skips the finished arms.

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device};
use rlxf_model::LoadedModel;
use serde_json::Value;

fn rlxf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every tensor of the model, flattened to f32, in name order.
fn weights(model: &LoadedModel) -> Vec<(String, Vec<f32>)> {
    let data = model.varmap.data().lock().unwrap();
    let mut named: Vec<(String, Vec<f32>)> = data
        .iter()
        .map(|(name, var)| {
            let values = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            (name.clone(), values)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

#[test]
fn runs_both_arms_writes_the_summary_and_skips_on_rerun() {
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("seed");
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/seed-replication-local.toml"
    );
    let output_dir = format!("output_dir={}", out.display());
    let args = [
        "train",
        "seed-replication",
        "--config",
        config,
        "--set",
        &output_dir,
        "--set",
        "data.train=embedded",
        "--set",
        "data.max_pairs=30",
        "--set",
        "data.eval_fraction=0.2",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.save_every=2",
        "--set",
        "train.eval_every=2",
        "--set",
        "max_length=48",
        "--set",
        "max_prompt_length=32",
    ];
    let first = rlxf(&args);
    assert_ok(&first);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("rlhf: 4 steps") && stdout.contains("rlaif: 4 steps"),
        "{stdout}"
    );

    let summary = read_json(&out.join("summary.json"));
    assert!(summary["note"].as_str().unwrap().contains("No AI labeler"));
    let arms = summary["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    let mut models = Vec::new();
    for (arm, (name, target)) in arms.iter().zip([("rlhf", "chosen"), ("rlaif", "rejected")]) {
        assert_eq!(arm["arm"], name);
        assert_eq!(arm["target"], target);
        assert_eq!(arm["steps"], 4);
        assert_eq!(arm["outcome"]["kind"], "trained");
        assert_eq!(Path::new(arm["run_dir"].as_str().unwrap()), out.join(name));
        // The summary's losses are the run's last metrics record.
        let metrics = std::fs::read_to_string(out.join(name).join("metrics.jsonl")).unwrap();
        let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert_eq!(arm["final_train_loss"], last["loss"]);
        assert_eq!(arm["final_eval_loss"], last["eval_loss"]);
        assert_eq!(arm["final_eval_perplexity"], last["eval_perplexity"]);
        assert!(arm["final_eval_loss"].as_f64().unwrap().is_finite());
        let model_dir = Path::new(arm["model_dir"].as_str().unwrap());
        assert_eq!(model_dir, out.join(name).join("model"));
        models.push(LoadedModel::load_dir(model_dir, &Device::Cpu, DType::F32).unwrap());
    }
    // Same start, same data order, different replies to learn: the weights must part ways.
    let (rlhf, rlaif) = (weights(&models[0]), weights(&models[1]));
    assert_eq!(
        rlhf.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        rlaif.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    assert!(rlhf.iter().zip(&rlaif).any(|(a, b)| a.1 != b.1));

    // A rerun trains nothing: both arms are reported complete, their metrics and models untouched.
    let metrics_before: Vec<String> = ["rlhf", "rlaif"]
        .map(|name| std::fs::read_to_string(out.join(name).join("metrics.jsonl")).unwrap())
        .to_vec();
    let model_file = out.join("rlaif/model/model.safetensors");
    let modified = std::fs::metadata(&model_file).unwrap().modified().unwrap();
    assert_ok(&rlxf(&args));
    let again = read_json(&out.join("summary.json"));
    for (before, after) in arms.iter().zip(again["arms"].as_array().unwrap()) {
        assert_eq!(after["outcome"]["kind"], "already_complete");
        assert_eq!(after["final_eval_loss"], before["final_eval_loss"]);
    }
    for (name, before) in ["rlhf", "rlaif"].iter().zip(metrics_before) {
        let after = std::fs::read_to_string(out.join(name).join("metrics.jsonl")).unwrap();
        assert_eq!(after, before, "{name}");
    }
    assert_eq!(
        std::fs::metadata(&model_file).unwrap().modified().unwrap(),
        modified
    );

    // Changing the config under an existing run is refused as bad input, not silently mixed.
    let mut changed = args.to_vec();
    changed.extend(["--set", "train.learning_rate=0.002"]);
    let refused = rlxf(&changed);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("different config"));
}
