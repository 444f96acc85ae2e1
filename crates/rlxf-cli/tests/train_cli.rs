//! `rlxf train` and `rlxf rm score` end to end on the embedded pairs with a tiny random model: a
//! run writes its files, resume continues it, bad configs exit 2.

use std::path::Path;
use std::process::{Command, Output};

fn rlxf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

fn config(dir: &Path, name: &str) -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/");
    let path = dir.join(name);
    std::fs::copy(format!("{repo}{name}"), &path).unwrap();
    path.to_str().unwrap().to_string()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn trains_resumes_and_scores() {
    let temp = tempfile::tempdir().unwrap();
    let dir = |name: &str| temp.path().join(name).to_str().unwrap().to_string();
    let sft = config(temp.path(), "sft-tiny.toml");
    let short = [
        "--set",
        "train.max_steps=2",
        "--set",
        "train.save_every=1",
        "--set",
        "max_length=48",
        "--set",
        "max_prompt_length=32",
    ];
    let mut args = vec!["train", "sft", "--config", &sft];
    args.extend(short);
    let sft_dir = dir("sft");
    args.extend(["--output-dir", &sft_dir]);
    assert_ok(&rlxf(&args));
    for file in [
        "config.toml",
        "metrics.jsonl",
        "model/model.safetensors",
        "checkpoints/step-00000002/optimizer.safetensors",
    ] {
        assert!(Path::new(&sft_dir).join(file).is_file(), "{file}");
    }
    // Resuming a finished run from its own config.toml trains no further.
    let resumed = rlxf(&["train", "sft", "--resume", &sft_dir]);
    assert_ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("2 steps"));

    let rm = config(temp.path(), "rm-tiny.toml");
    let rm_dir = dir("rm");
    let model = format!("model={sft_dir}/model");
    let mut args = vec![
        "train",
        "rm",
        "--config",
        &rm,
        "--output-dir",
        &rm_dir,
        "--set",
        &model,
    ];
    args.extend(short);
    assert_ok(&rlxf(&args));

    let input = temp.path().join("pairs.jsonl");
    std::fs::write(&input, "{\"prompt\": \"\\n\\nHuman: hi\\n\\nAssistant:\", \"chosen\": \" Hello!\", \"rejected\": \" No.\"}\n").unwrap();
    let scored = rlxf(&[
        "rm",
        "score",
        "--model",
        &format!("{rm_dir}/model"),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_ok(&scored);
    let row: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
    assert!(row["chosen_score"].is_f64() && row["rejected_score"].is_f64());
}

#[test]
fn bad_configs_exit_2() {
    let temp = tempfile::tempdir().unwrap();
    let dpo = config(temp.path(), "dpo-tiny.toml");
    for bad in [
        "beta=-1",
        "train.batch_size=0",
        "no_such_field=1",
        "max_length=100000",
    ] {
        let output = rlxf(&["train", "dpo", "--config", &dpo, "--set", bad]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let missing = rlxf(&["train", "sft", "--config", "/no/such/config.toml"]);
    assert_eq!(missing.status.code(), Some(2));
}
