//! `rlxf train ppo|rloo` end to end with a tiny random model on the embedded prompts: PPO rewarded
//! by a reward model trained by `rlxf train rm`, RLOO by a synthetic reward, resume, and bad
//! configs exiting 2.

use std::path::Path;
use std::process::{Command, Output};

fn rlxf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

/// The shipped config `name` with its `[[rewards]]` entries replaced by `rewards`, written to `dir`.
fn config_with_rewards(dir: &Path, name: &str, rewards: &str) -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/");
    let text = std::fs::read_to_string(format!("{repo}{name}")).unwrap();
    let start = text.find("[[rewards]]").unwrap();
    let end = text.find("[guards]").unwrap();
    let text = format!("{}{rewards}\n{}", &text[..start], &text[end..]);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const SHORT: [&str; 8] = [
    "--set",
    "train.max_steps=2",
    "--set",
    "train.save_every=1",
    "--set",
    "rollout.max_new_tokens=6",
    "--set",
    "prompts.max_prompts=8",
];

#[test]
fn ppo_with_a_reward_model_and_rloo_with_a_synthetic_reward() {
    let temp = tempfile::tempdir().unwrap();
    let dir = |name: &str| temp.path().join(name).to_str().unwrap().to_string();

    let rm_dir = dir("rm");
    let repo_rm = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/rm-tiny.toml");
    assert_ok(&rlxf(&[
        "train",
        "rm",
        "--config",
        repo_rm,
        "--output-dir",
        &rm_dir,
        "--set",
        "train.max_steps=1",
    ]));

    let reward_model =
        format!("[[rewards]]\nkind = \"model\"\npath = \"{rm_dir}/model\"\nmax_length = 128\n");
    let ppo = config_with_rewards(temp.path(), "ppo-tiny.toml", &reward_model);
    let ppo_dir = dir("ppo");
    let mut args = vec!["train", "ppo", "--config", &ppo, "--output-dir", &ppo_dir];
    args.extend(SHORT);
    let output = rlxf(&args);
    assert_ok(&output);
    assert!(String::from_utf8_lossy(&output.stdout).contains("ppo: 2 steps"));
    for file in [
        "config.toml",
        "metrics.jsonl",
        "model/model.safetensors",
        "value_head.safetensors",
        "checkpoints/step-00000002/rl_state.json",
        "checkpoints/step-00000002/value_head.safetensors",
    ] {
        assert!(Path::new(&ppo_dir).join(file).is_file(), "{file}");
    }
    let metrics = std::fs::read_to_string(Path::new(&ppo_dir).join("metrics.jsonl")).unwrap();
    for key in [
        "\"reward\"",
        "\"kl\"",
        "\"entropy\"",
        "\"clipfrac\"",
        "\"response_length\"",
    ] {
        assert!(metrics.contains(key), "{key} missing from {metrics}");
    }

    let synthetic = "[[rewards]]\nkind = \"target_token\"\ntoken_id = 262\n";
    let rloo = config_with_rewards(temp.path(), "rloo-tiny.toml", synthetic);
    let rloo_dir = dir("rloo");
    let mut args = vec![
        "train",
        "rloo",
        "--config",
        &rloo,
        "--output-dir",
        &rloo_dir,
    ];
    args.extend(SHORT);
    assert_ok(&rlxf(&args));
    assert!(!Path::new(&rloo_dir).join("value_head.safetensors").exists());
    // Resuming a finished run from its own config.toml trains no further.
    let resumed = rlxf(&["train", "rloo", "--resume", &rloo_dir]);
    assert_ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("rloo: 2 steps"));
}

#[test]
fn bad_rl_configs_exit_2() {
    let temp = tempfile::tempdir().unwrap();
    let synthetic = "[[rewards]]\nkind = \"target_token\"\ntoken_id = 262\n";
    let a2c = config_with_rewards(temp.path(), "a2c-tiny.toml", synthetic);
    for bad in [
        "algorithm.gamma=2",
        "kl.beta=1.5",
        "rollout.temperature=0",
        "train.eval_every=5",
    ] {
        let output = rlxf(&["train", "a2c", "--config", &a2c, "--set", bad]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // No [[rewards]] at all.
    let none = config_with_rewards(temp.path(), "rloo-tiny.toml", "");
    let output = rlxf(&["train", "rloo", "--config", &none]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("rewards"));
}

/// d-RLAIF: the reward is a labeler's direct 1–10 score; here a tiny random model is the labeler
/// (the score is meaningless, the wiring is what is checked: scores in [−1, 1], a label cache).
#[test]
fn a2c_with_the_labelers_direct_score() {
    let temp = tempfile::tempdir().unwrap();
    let labeler_model = temp.path().join("labeler-model");
    let labeler_model = labeler_model.to_str().unwrap();
    assert_ok(&rlxf(&[
        "model",
        "init",
        "--arch",
        "gpt-neo",
        "--size",
        "tiny",
        "--seed",
        "0",
        "--out",
        labeler_model,
    ]));
    let labeler = temp.path().join("labeler.toml");
    std::fs::write(
        &labeler,
        format!("[backend]\nkind = \"local\"\nmodel = \"{labeler_model}\"\nbatch_size = 8\n"),
    )
    .unwrap();
    let direct = format!(
        "[[rewards]]\nkind = \"direct\"\nlabeler = \"{}\"\n",
        labeler.display()
    );
    let a2c = config_with_rewards(temp.path(), "a2c-tiny.toml", &direct);
    let run_dir = temp.path().join("a2c");
    let run_dir = run_dir.to_str().unwrap();
    let mut args = vec!["train", "a2c", "--config", &a2c, "--output-dir", run_dir];
    args.extend(SHORT);
    assert_ok(&rlxf(&args));
    assert!(Path::new(run_dir).join("labeler_cache.sqlite").is_file());
    let metrics = std::fs::read_to_string(Path::new(run_dir).join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let reward = record["reward"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&reward), "{reward}");
    }
}
