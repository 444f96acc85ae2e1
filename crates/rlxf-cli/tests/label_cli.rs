//! `rlxf label` and `rlxf serve` end to end: labels and an audit for HH pairs with a tiny local
//! labeler, resumption from the cache, and labeling through `rlxf serve` with injected faults.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const HH_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/hh-rlhf-harmless-base/test.jsonl.gz"
);

fn rlxf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .arg("--quiet")
        .args(args)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("labeler");
    assert_success(&rlxf(&[
        "model",
        "init",
        "--arch",
        "gpt-neo",
        "--size",
        "tiny",
        "--seed",
        "5",
        "--out",
        model.to_str().unwrap(),
    ]));
    model
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks labels.jsonl holds each of `ids` exactly once with proper soft labels.
fn check_labels(labels: &[Value], ids: &BTreeSet<String>) {
    let seen: Vec<String> = labels
        .iter()
        .map(|label| label["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen.len(), ids.len(), "one line per pair");
    assert_eq!(&seen.into_iter().collect::<BTreeSet<_>>(), ids);
    for label in labels {
        let p = label["label"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        for order in ["chosen_first", "rejected_first"] {
            let probs = &label[order]["probs"];
            let sum = probs[0].as_f64().unwrap() + probs[1].as_f64().unwrap();
            assert!((sum - 1.0).abs() < 1e-9);
        }
        // The label is the mean of both orders mapped back to (chosen, rejected).
        let mean = 0.5
            * (label["chosen_first"]["probs"][0].as_f64().unwrap()
                + label["rejected_first"]["probs"][1].as_f64().unwrap());
        assert!((p - mean).abs() < 1e-12);
    }
}

#[test]
fn label_writes_labels_and_an_audit_for_hh_pairs_and_resumes_from_the_cache() {
    if !Path::new(HH_TEST).is_file() {
        eprintln!("skipping: {HH_TEST} is absent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let config = write(
        &dir.path().join("labeler.toml"),
        &format!(
            "[backend]\nkind = \"local\"\nmodel = {:?}\nbatch_size = 4\n\n[prompt]\npreamble = \"harmless_detailed\"\n",
            model.to_str().unwrap()
        ),
    );
    let out = dir.path().join("out");
    let args = [
        "label",
        "--labeler",
        config.to_str().unwrap(),
        "--pairs",
        HH_TEST,
        "--out",
        out.to_str().unwrap(),
        "--max-samples",
        "12",
        "--own-side",
        "rejected",
    ];
    let first = rlxf(&args);
    assert_success(&first);
    let labels = read_jsonl(&out.join("labels.jsonl"));
    let ids: BTreeSet<String> = labels
        .iter()
        .map(|label| label["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 12);
    check_labels(&labels, &ids);

    let audit = read_json(&out.join("audit.json"));
    assert_eq!(audit["n_pairs"], 12);
    assert_eq!(audit["run"]["max_samples"], 12);
    assert!(audit["labeler_config"].is_object());
    assert_eq!(audit["cache"]["answers_computed"], 24);
    let overall = &audit["overall"];
    assert_eq!(overall["n"], 12);
    // A random tiny labeler: the numbers are whatever they are, but they are computed.
    let agreement = overall["agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    let expected_agreement = labels
        .iter()
        .map(|label| match label["label"].as_f64().unwrap() {
            p if p > 0.5 => 1.0,
            p if p < 0.5 => 0.0,
            _ => 0.5,
        })
        .sum::<f64>()
        / 12.0;
    assert!((agreement - expected_agreement).abs() < 1e-12);
    assert!(overall["position_bias_rate"].as_f64().is_some());
    assert!(overall["length_bias"]["correlation"].as_f64().is_some());
    assert_eq!(overall["self_preference"]["n"], 12);
    assert_eq!(overall["self_preference"]["human_chose_own_rate"], 0.0);
    let by_context = audit["by_context"].as_object().unwrap();
    let per_context: u64 = by_context.values().map(|s| s["n"].as_u64().unwrap()).sum();
    assert_eq!(per_context, 12);

    // The rerun asks the model nothing and writes the same labels.
    let second = rlxf(&args);
    assert_success(&second);
    let audit = read_json(&out.join("audit.json"));
    assert_eq!(audit["cache"]["answers_from_cache"], 24);
    assert_eq!(audit["cache"]["answers_computed"], 0);
    assert_eq!(read_jsonl(&out.join("labels.jsonl")), labels);
}

/// A running `rlxf serve`, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(model: &Path, faults: &str) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .args(["--quiet", "serve", "--port", "0", "--name", "tiny"])
        .args([
            "--model",
            model.to_str().unwrap(),
            "--inject-faults",
            faults,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base_url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Server(child), base_url)
}

#[test]
fn label_through_rlxf_serve_survives_faults_and_labels_each_pair_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (_server, base_url) = serve(&model, "ok,429,ok,500,slow:3500,malformed,ok,drop");
    let pairs: Vec<String> = (0..5)
        .map(|i| {
            serde_json::json!({
                "id": format!("p{i}"),
                "prompt": format!("\n\nHuman: Question number {i}?\n\nAssistant:"),
                "chosen": format!(" A helpful answer {i}."),
                "rejected": " No.",
            })
            .to_string()
        })
        .collect();
    let pairs_file = write(&dir.path().join("pairs.jsonl"), &(pairs.join("\n") + "\n"));
    let config = write(
        &dir.path().join("labeler.toml"),
        &format!(
            "[backend]\nkind = \"openai\"\nbase_url = {base_url:?}\nmodel = \"tiny\"\n\
             top_logprobs = 20\ntimeout_s = 2.5\nmax_retries = 30\nbackoff_initial_s = 0.01\n\
             backoff_max_s = 0.05\nconcurrency = 3\napi_key_env = \"RLXF_TEST_NO_SUCH_KEY\"\n\n\
             [prompt]\npreamble = \"base\"\n"
        ),
    );
    let out = dir.path().join("out");
    let output = rlxf(&[
        "label",
        "--labeler",
        config.to_str().unwrap(),
        "--pairs",
        pairs_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_success(&output);
    let ids: BTreeSet<String> = (0..5).map(|i| format!("p{i}")).collect();
    check_labels(&read_jsonl(&out.join("labels.jsonl")), &ids);
    let audit = read_json(&out.join("audit.json"));
    assert_eq!(audit["cache"]["answers_computed"], 10);
    assert!(audit["labeler"]
        .as_str()
        .unwrap()
        .starts_with("openai:completions:http://127.0.0.1:"));
}

#[test]
fn bad_labeler_configs_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("labeler.toml"),
        "[backend]\nkind = \"openai\"\nmodel = \"m\"\nconcurrency = 0\n",
    );
    let output = rlxf(&[
        "label",
        "--labeler",
        config.to_str().unwrap(),
        "--pairs",
        "embedded",
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("concurrency"));

    let output = rlxf(&["serve", "--model", "/no/such/model", "--port", "0"]);
    assert_eq!(output.status.code(), Some(2));
}
