//! `rlxf run` end to end on the tiny study config: every stage writes its manifest and the report,
//! a rerun reuses everything, a changed setting reruns only what depends on it, an interrupted stage
//! resumes, and a bad config exits 2 naming the field. The semantic metrics run on rlxf-model's
//! tiny random BERT (a real Hugging Face BERT folder), so no download is needed.

use std::path::Path;
use std::process::{Command, Output};

use rlxf_eval::SUPPORTIVE_REFERENCES;
use rlxf_model::{cosine_similarity, Device, SentenceEncoder};
use serde_json::Value;

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
const TINY_BERT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../rlxf-model/tests/fixtures/tiny-bert"
);

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

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The cell of `results.json` for `policy`, `context` and `metric`.
fn cell<'a>(results: &'a Value, policy: &str, context: &str, metric: &str) -> &'a Value {
    results["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cell| {
            cell["policy"] == policy && cell["context"] == context && cell["metric"] == metric
        })
        .unwrap_or_else(|| panic!("no {metric} cell for {policy} in {context}"))
}

/// Recomputes each policy's support similarity (mean over its replies of the largest cosine to a
/// reference reply) and embedding diversity (mean `1 - cos` over pairs of different replies) from
/// the eval stage's replies, by brute force with the tiny encoder, and compares them with
/// `results.json`.
fn check_semantic_metrics(run_dir: &Path, results: &Value) {
    let encoder = SentenceEncoder::load(Path::new(TINY_BERT), &Device::Cpu).unwrap();
    let references = encoder.embed(&SUPPORTIVE_REFERENCES).unwrap();
    let replies = std::fs::read_to_string(run_dir.join("eval/responses.jsonl")).unwrap();
    let rows: Vec<Value> = replies
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for policy in results["policies"].as_array().unwrap() {
        let policy = policy.as_str().unwrap();
        let texts: Vec<&str> = rows
            .iter()
            .filter(|row| row["policy"] == policy)
            .map(|row| row["response"].as_str().unwrap())
            .collect();
        let embeddings = encoder.embed(&texts).unwrap();
        let nearest: Vec<f64> = embeddings
            .iter()
            .map(|reply| {
                references
                    .iter()
                    .map(|reference| f64::from(cosine_similarity(reply, reference)))
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .collect();
        let support = cell(results, policy, "all", "support_similarity");
        let expected = nearest.iter().sum::<f64>() / nearest.len() as f64;
        let value = support["value"].as_f64().unwrap();
        assert!(
            (value - expected).abs() < 1e-4,
            "{policy}: {value} vs {expected}"
        );
        assert_eq!(support["n"], texts.len());
        let [low, high] = [&support["ci"][0], &support["ci"][1]].map(|v| v.as_f64().unwrap());
        assert!(low <= value && value <= high, "{support}");

        let (mut distance, mut pairs) = (0.0, 0.0);
        for (i, a) in embeddings.iter().enumerate() {
            for (j, b) in embeddings.iter().enumerate() {
                if i != j {
                    distance += 1.0 - f64::from(cosine_similarity(a, b));
                    pairs += 1.0;
                }
            }
        }
        let diversity = cell(results, policy, "all", "embedding_diversity");
        let value = diversity["value"].as_f64().unwrap();
        assert!(
            (value - distance / pairs).abs() < 1e-4,
            "{policy}: {value} vs {}",
            distance / pairs
        );
    }
}

#[test]
fn a_study_runs_reuses_reruns_what_changed_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = format!("eval.encoder=\"{TINY_BERT}\"");
    let first = run_study(dir.path(), &[&encoder]);
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
    let results = read_json(&run_dir.join("eval/results.json"));
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
    // The harmlessness judge's self-contradiction rate stands beside its rate.
    assert!(
        markdown.contains("of replies it gave the same digit in both orders"),
        "{markdown}"
    );
    assert!(markdown.contains("AI labeler audit: tiny/s1"), "{markdown}");

    // the semantic metrics: right values, and a per-context table and plot in the report
    check_semantic_metrics(&run_dir, &results);
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    for metric in ["support_similarity", "embedding_diversity"] {
        let title = format!("{metric} ↑ by context");
        let table = markdown
            .split("\n### ")
            .find(|section| section.starts_with(&title))
            .unwrap_or_else(|| panic!("no `{title}` table: {markdown}"));
        // sft's row shows its value in every context (a dash where there is none)
        let row = table
            .lines()
            .find(|line| line.starts_with("| sft |"))
            .unwrap_or_else(|| panic!("{table}"));
        for context in results["contexts"].as_array().unwrap() {
            let value = &cell(&results, "sft", context.as_str().unwrap(), metric)["value"];
            let shown = value.as_f64().map_or("–".into(), |v| format!("{v:.3}"));
            assert!(row.contains(&shown), "{context}: {shown} not in {row}");
        }
        assert!(
            html.contains(&title),
            "{metric} table missing from the HTML"
        );
        let slug = metric.replace('_', "-");
        assert!(report.join(format!("plots/metric-{slug}.svg")).is_file());
    }
    let support = cell(&results, "sft", "emotional_support", "support_similarity");
    assert_eq!(support["n"], 1);

    // everything reused
    let again = run_study(dir.path(), &[&encoder]);
    assert_ok(&again);
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.starts_with("0 stages run, 20 reused"), "{out}");

    // a changed generation setting reruns generation, eval and report only
    let changed = run_study(dir.path(), &[&encoder, "eval.max_new_tokens=3"]);
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
    let resumed = run_study(dir.path(), &[&encoder, "eval.max_new_tokens=3"]);
    assert_ok(&resumed);
    let log = stderr(&resumed);
    assert!(log.contains("[resume] tiny/seed-1/dpo-human\n"), "{log}");
    assert!(
        log.contains("[reuse] tiny/seed-1/generate-dpo-human\n"),
        "{log}"
    );

    // switching the encoder off reruns the evaluation and the report only
    let off = run_study(
        dir.path(),
        &["eval.encoder=\"none\"", "eval.max_new_tokens=3"],
    );
    assert_ok(&off);
    let log = stderr(&off);
    assert!(log.contains("[reuse] tiny/seed-1/generate-sft\n"), "{log}");
    assert!(
        log.contains("[run] eval\n") && log.contains("[run] report\n"),
        "{log}"
    );
    let results = read_json(&run_dir.join("eval/results.json"));
    let metrics: Vec<&str> = results["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|info| info["name"].as_str().unwrap())
        .collect();
    assert!(
        metrics.contains(&"empathy") && !metrics.contains(&"support_similarity"),
        "{metrics:?}"
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

    // a missing encoder stops the run before any stage, saying how to get one
    let missing = dir.path().join("no-such-encoder");
    let output = run_study(
        dir.path(),
        &[&format!("eval.encoder=\"{}\"", missing.display())],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("eval.encoder")
            && message.contains("rlxf model fetch all-minilm-l6-v2")
            && message.contains("\"none\""),
        "{message}"
    );
    assert!(!dir.path().join("study-tiny/tiny").exists(), "{message}");
}

#[test]
fn a_judge_model_that_cannot_be_fetched_stops_the_run_before_any_stage() {
    let dir = tempfile::tempdir().unwrap();
    // A model cache that is a file: the fetch fails at once, without touching the network.
    let cache = dir.path().join("cache-is-a-file");
    std::fs::write(&cache, "").unwrap();
    let runs_dir = format!("runs_dir=\"{}\"", dir.path().display());
    let output = Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .args([
            "run",
            CONFIG,
            "--set",
            &runs_dir,
            "--set",
            "methods=[\"sft\"]",
        ])
        .args(["--set", "judge.backend.kind=\"local\""])
        .args(["--set", "judge.backend.model=\"smollm2-135m-instruct\""])
        .env("RLXF_CACHE", &cache)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("[judge]") && message.contains("rlxf model fetch smollm2-135m-instruct"),
        "{message}"
    );
    assert!(!dir.path().join("study-tiny/tiny").exists(), "{message}");
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
        // The same audit as `rlxf label` and the labels-ai stage write.
        let audit = read_json(&round_dir.join("labels/audit.json"));
        assert_eq!(audit["n_pairs"], 4);
        assert_eq!(audit["run"]["round"], round[6..].parse::<u64>().unwrap());
        assert!(audit["by_context"].is_object() && audit["labeler_config"].is_object());
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
    let results = read_json(&dir.path().join("study-tiny/eval/results.json"));
    assert_eq!(
        results["policies"],
        serde_json::json!(["sft", "self-improve"])
    );
}
