//! `rlxf run` end to end on the tiny study config: every stage writes its manifest and the report,
//! a rerun reuses everything, a changed setting reruns only what depends on it, an interrupted stage
//! resumes, and a bad config exits 2 naming the field.

use std::path::Path;
use std::process::{Command, Output};

fn rlxf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
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

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/study-tiny.toml");

/// The tiny study made smaller still, into `runs`.
fn run_study(runs: &Path, extra: &[&str]) -> Output {
    let runs_dir = format!("runs_dir=\"{}\"", runs.display());
    let mut args = vec!["run", CONFIG, "--set", &runs_dir];
    for setting in [
        "data.max_pairs=24",
        "sft.max_length=64",
        "rm.max_length=64",
        "dpo.max_length=64",
        "sft.max_prompt_length=48",
        "rm.max_prompt_length=48",
        "dpo.max_prompt_length=48",
        "eval.per_context=1",
        "eval.heldout_pairs=2",
        "eval.max_new_tokens=4",
        "eval.resamples=100",
        "ppo.train.max_steps=1",
        "ppo.rollout.max_new_tokens=4",
    ] {
        args.extend(["--set", setting]);
    }
    for setting in extra {
        args.extend(["--set", setting]);
    }
    rlxf(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_study_runs_reuses_reruns_what_changed_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_study(dir.path(), &[]);
    assert_ok(&first);
    let run_dir = dir.path().join("study-tiny");
    for stage in [
        "base",
        "sft",
        "sft-rejected",
        "rm",
        "dpo-human",
        "generate-sft",
        "generate-dpo-human",
    ] {
        let manifest = run_dir
            .join("tiny/seed-1")
            .join(stage)
            .join("manifest.json");
        assert!(manifest.is_file(), "{} missing", manifest.display());
    }
    let report = run_dir.join("report");
    assert!(report.join("report.html").is_file());
    assert!(report.join("report.md").is_file());
    assert!(report.join("plots/metric-reward.svg").is_file());
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("eval/results.json")).unwrap())
            .unwrap();
    assert_eq!(
        results["policies"],
        serde_json::json!([
            "sft",
            "sft-rejected",
            "dpo-human",
            "dpo-ai",
            "rlhf-ppo",
            "rlaif-ppo",
            "d-rlaif"
        ])
    );
    // the AI labels DPO trained on, and the judge's metrics
    let seed_dir = run_dir.join("tiny/seed-1");
    let labels = std::fs::read_to_string(seed_dir.join("labels-ai/labels.jsonl")).unwrap();
    assert_eq!(labels.lines().count(), 24, "every pair of [data] labeled");
    let dpo_ai_config = std::fs::read_to_string(seed_dir.join("dpo-ai/config.toml")).unwrap();
    assert!(
        dpo_ai_config.contains("labels-ai/labels.jsonl"),
        "{dpo_ai_config}"
    );
    assert_eq!(results["baseline"], "sft");
    let markdown = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(markdown.contains("| dpo-human |"), "{markdown}");
    // 7 contexts x 1 prompt + 2 held-out prompts per policy
    assert!(markdown.contains("(n=9)"), "{markdown}");
    assert!(
        markdown.contains("harmless") && markdown.contains("win_rate"),
        "{markdown}"
    );
    assert!(markdown.contains("AI labeler audit: tiny/s1"), "{markdown}");

    // everything reused
    let again = run_study(dir.path(), &[]);
    assert_ok(&again);
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.starts_with("0 stages run, 20 reused"), "{out}");

    // a changed generation setting reruns generation, eval and report only
    let changed = run_study(dir.path(), &["eval.max_new_tokens=3"]);
    assert_ok(&changed);
    let log = stderr(&changed);
    assert!(log.contains("[reuse] tiny/seed-1/sft\n"), "{log}");
    assert!(log.contains("[reuse] tiny/seed-1/dpo-human\n"), "{log}");
    assert!(log.contains("[run] tiny/seed-1/generate-sft\n"), "{log}");
    assert!(
        log.contains("[run] eval\n") && log.contains("[run] report\n"),
        "{log}"
    );

    // a stage killed before its manifest was written resumes under the same key; what depends on
    // it is reused when it reproduces the same inputs
    std::fs::remove_file(run_dir.join("tiny/seed-1/dpo-human/manifest.json")).unwrap();
    let resumed = run_study(dir.path(), &["eval.max_new_tokens=3"]);
    assert_ok(&resumed);
    let log = stderr(&resumed);
    assert!(log.contains("[resume] tiny/seed-1/dpo-human\n"), "{log}");
    assert!(
        log.contains("[reuse] tiny/seed-1/generate-dpo-human\n"),
        "{log}"
    );
}

#[test]
fn a_bad_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_study(dir.path(), &["methods=[\"sft\", \"magic\"]"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("methods") && message.contains("magic"),
        "{message}"
    );

    let output = run_study(dir.path(), &["eval.baseline=\"nobody\""]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("nobody"));
}

#[test]
fn self_improvement_rounds_chain_each_policy_into_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_study(
        dir.path(),
        &[
            "methods=[\"sft\", \"self-improve\"]",
            "eval.reward_model=false",
            "eval.judge=false",
            "eval.heldout_pairs=0",
            "self_improve.rounds=2",
            "self_improve.prompts_per_round=4",
            "self_improve.max_new_tokens=4",
        ],
    );
    assert_ok(&output);
    let seed_dir = dir.path().join("study-tiny/tiny/seed-1");
    for round in ["round-1", "round-2"] {
        let round_dir = seed_dir.join("self-improve").join(round);
        for step in ["samples", "labels", "rm", "ppo"] {
            let manifest = round_dir.join(step).join("manifest.json");
            assert!(manifest.is_file(), "{} missing", manifest.display());
        }
        let labels = std::fs::read_to_string(round_dir.join("labels/labels.jsonl")).unwrap();
        assert_eq!(labels.lines().count(), 4, "one AI label per sampled pair");
        let rm_config = std::fs::read_to_string(round_dir.join("rm/config.toml")).unwrap();
        assert!(
            rm_config.contains(&format!("{round}/samples/pairs.jsonl")),
            "the round's reward model learns from its own samples: {rm_config}"
        );
    }
    // round 2 starts from round 1's policy, round 1 from the SFT model
    let ppo_config = |round: &str| {
        std::fs::read_to_string(
            seed_dir
                .join("self-improve")
                .join(round)
                .join("ppo/config.toml"),
        )
        .unwrap()
    };
    assert!(ppo_config("round-1").contains("seed-1/sft/model"));
    assert!(ppo_config("round-2").contains("round-1/ppo/model"));
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("study-tiny/eval/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        results["policies"],
        serde_json::json!(["sft", "self-improve"])
    );
}
