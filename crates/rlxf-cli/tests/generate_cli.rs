//! End-to-end tests of `rlxf generate` and `rlxf logprobs` on a tiny random GPT-Neo written by
//! `rlxf model init`, checked against the rlxf-model library called directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device};
use rlxf_model::{
    continuation_logprobs_vec, generate_keyed, load_tokenizer, ChatTemplate, GenerationConfig,
    LoadedModel, Padding,
};
use serde_json::Value;

fn rlxf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap()
}

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny-neo");
    let output = rlxf(&[
        "model",
        "init",
        "--arch",
        "gpt-neo",
        "--size",
        "tiny",
        "--seed",
        "1",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    model
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

const PROMPTS: [&str; 3] = [
    "How do I bake bread?",
    "Tell me a joke.",
    "What is the capital of France?",
];

#[test]
fn generate_wraps_prompts_in_the_dialogue_format_and_ignores_batching() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(dir.path());
    let prompts = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = PROMPTS
        .iter()
        .map(|p| serde_json::json!({ "prompt": p }).to_string())
        .collect();
    std::fs::write(&prompts, lines.join("\n") + "\n\n").unwrap();

    let run = |batch_size: &str, out: &Path| {
        let output = rlxf(&[
            "generate",
            "--model",
            model_dir.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--temperature",
            "1.0",
            "--top-k",
            "50",
            "--seed",
            "7",
            "--batch-size",
            batch_size,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        read_jsonl(out)
    };
    let one_by_one = run("1", &dir.path().join("a.jsonl"));
    let together = run("3", &dir.path().join("b.jsonl"));
    assert_eq!(together.len(), 3);
    // Row seeds are keyed by line, not by batch: the same tokens, log-probs up to float rounding
    // (padding changes the shapes of the matrix products).
    for (a, b) in one_by_one.iter().zip(&together) {
        for field in [
            "prompt",
            "completion",
            "reply",
            "token_ids",
            "finish_reason",
        ] {
            assert_eq!(a[field], b[field], "{field}");
        }
        for (x, y) in floats(&a["logprobs"]).iter().zip(floats(&b["logprobs"])) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    // The library, called directly on the HH-formatted prompts with the same row keys.
    let model = LoadedModel::load_dir(&model_dir, &Device::Cpu, DType::F32).unwrap();
    let tokenizer = load_tokenizer(&model_dir).unwrap();
    let template = ChatTemplate::for_model_dir(&model_dir).unwrap();
    let prompt_ids: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| tokenizer.encode(&template.format_user_message(p)).unwrap())
        .collect();
    let config = GenerationConfig {
        max_new_tokens: 6,
        temperature: 1.0,
        top_k: Some(50),
        seed: 7,
        stop_strings: template.stop_strings(),
        ..GenerationConfig::default()
    };
    let expected = generate_keyed(&model, &tokenizer, &prompt_ids, &[0, 1, 2], &config).unwrap();
    for ((row, want), prompt) in together.iter().zip(&expected).zip(PROMPTS) {
        assert_eq!(row["prompt"], prompt);
        assert_eq!(ids(&row["token_ids"]), want.token_ids);
        assert_eq!(row["completion"], want.text.as_str());
        assert_eq!(row["reply"], template.reply_text(&want.text));
        assert_eq!(row["finish_reason"], want.finish_reason.as_str());
        assert_eq!(floats(&row["logprobs"]).len(), want.token_ids.len());
    }
}

#[test]
fn generate_prints_a_greedy_reply_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(dir.path());
    let args = [
        "generate",
        "--model",
        model_dir.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--temperature",
        "0",
        "--max-new-tokens",
        "5",
        "--raw",
    ];
    let first = rlxf(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(first.stdout, rlxf(&args).stdout);

    let model = LoadedModel::load_dir(&model_dir, &Device::Cpu, DType::F32).unwrap();
    let tokenizer = load_tokenizer(&model_dir).unwrap();
    let expected = generate_keyed(
        &model,
        &tokenizer,
        &[tokenizer.encode("Hello").unwrap()],
        &[0],
        &GenerationConfig::greedy(5),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(first.stdout).unwrap(),
        format!("{}\n", expected[0].text)
    );
}

#[test]
fn logprobs_match_the_library_and_report_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(dir.path());
    let input = dir.path().join("pairs.jsonl");
    let pairs = [
        ("\n\nHuman: Hi\n\nAssistant:", " Hello there!"),
        ("The sky is", " blue"),
        ("Empty completion", ""),
    ];
    let lines: Vec<String> = pairs
        .iter()
        .map(|(p, c)| serde_json::json!({ "prompt": p, "completion": c }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.path().join("logprobs.jsonl");
    let output = rlxf(&[
        "logprobs",
        "--model",
        model_dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "2",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = read_jsonl(&out);
    assert_eq!(rows.len(), 3);

    let model = LoadedModel::load_dir(&model_dir, &Device::Cpu, DType::F32).unwrap();
    let tokenizer = load_tokenizer(&model_dir).unwrap();
    let prompts: Vec<Vec<u32>> = pairs[..2]
        .iter()
        .map(|(p, _)| tokenizer.encode(p).unwrap())
        .collect();
    let completions: Vec<Vec<u32>> = pairs[..2]
        .iter()
        .map(|(_, c)| tokenizer.encode(c).unwrap())
        .collect();
    let expected =
        continuation_logprobs_vec(&model, &prompts, &completions, Padding::Right).unwrap();
    for (index, row) in rows[..2].iter().enumerate() {
        assert_eq!(ids(&row["prompt_ids"]), prompts[index]);
        assert_eq!(ids(&row["completion_ids"]), completions[index]);
        let got = floats(&row["logprobs"]);
        assert_eq!(got.len(), expected[index].len());
        for (g, w) in got.iter().zip(&expected[index]) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        let sum: f32 = expected[index].iter().sum();
        assert!((row["sum"].as_f64().unwrap() as f32 - sum).abs() < 1e-3);
    }
    assert_eq!(rows[2]["logprobs"], serde_json::json!([]));
    assert_eq!(rows[2]["sum"].as_f64(), Some(0.0));

    // A line without a completion: exit 2, and the message names the file, line and field.
    std::fs::write(&input, format!("{}\n{{\"prompt\": \"x\"}}\n", lines[0])).unwrap();
    let output = rlxf(&[
        "logprobs",
        "--model",
        model_dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pairs.jsonl:2") && stderr.contains("completion"),
        "{stderr}"
    );

    std::fs::write(
        &input,
        "{\"prompt\": \"x\", \"completion\": \"y\"}\nnot json\n",
    )
    .unwrap();
    let output = rlxf(&[
        "logprobs",
        "--model",
        model_dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("pairs.jsonl:2"));

    std::fs::write(&input, "{\"prompt\": \"\", \"completion\": \"y\"}\n").unwrap();
    let output = rlxf(&[
        "logprobs",
        "--model",
        model_dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pairs.jsonl:1") && stderr.contains("`prompt`"),
        "{stderr}"
    );
}

#[test]
fn bad_generation_flags_and_models_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(dir.path());
    let model = model_dir.to_str().unwrap();
    for flags in [
        ["--top-p", "0"],
        ["--temperature", "-1"],
        ["--batch-size", "0"],
    ] {
        let output = rlxf(&[
            "generate", "--model", model, "--prompt", "Hi", flags[0], flags[1],
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{flags:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let missing = dir.path().join("no/such/model");
    let output = rlxf(&[
        "generate",
        "--model",
        missing.to_str().unwrap(),
        "--prompt",
        "Hi",
    ]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = rlxf(&["generate", "--model", model]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap rejects a missing --prompt/--prompts"
    );
}
