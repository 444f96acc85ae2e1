//! `rlxf data ...` end to end: exit codes, messages, and prepared output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../rlxf-data/tests/fixtures");

fn rlxf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .args(args)
        // No hub traffic from tests: any uncached hf:// source fails at once.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn inspect_embedded_shows_counts_lengths_contexts_and_a_sample() {
    let output = rlxf(&["data", "inspect", "embedded"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for needle in [
        "source: embedded",
        "pairs: ",
        "prompt chars",
        "chosen words",
        "contexts:",
        "sample pair",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    let pairs = rlxf_data::embedded_default_pairs().len();
    assert!(
        text.contains(&format!("pairs: {pairs} from {pairs} records")),
        "{text}"
    );
}

#[test]
fn inspect_parquet_as_json() {
    let path = format!("{FIXTURES}/rm_static_sample.parquet");
    let output = rlxf(&["data", "inspect", &path, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["summary"]["pairs"], 5);
    assert_eq!(json["summary"]["empty_replies"], 1);
    assert_eq!(json["report"]["inputs"][0]["format"], "parquet");
}

/// A bad input file, and what stderr must name.
struct BadInput {
    name: &'static str,
    bytes: Vec<u8>,
    expect: &'static [&'static str],
}

fn bad_inputs() -> Vec<BadInput> {
    let good = br#"{"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " a", "rejected": " b"}"#;
    let with_line2 = |line: &[u8]| [good.as_slice(), b"\n", line, b"\n"].concat();
    vec![
        BadInput {
            name: "malformed.jsonl",
            bytes: with_line2(b"{\"prompt\": "),
            expect: &["malformed.jsonl", "line 2", "malformed JSON"],
        },
        BadInput {
            name: "missing.jsonl",
            bytes: with_line2(br#"{"prompt": "p", "rejected": " b"}"#),
            expect: &["missing.jsonl", "line 2", "`chosen`"],
        },
        BadInput {
            name: "wrongtype.jsonl",
            bytes: with_line2(br#"{"prompt": ["p"], "chosen": " a", "rejected": " b"}"#),
            expect: &["wrongtype.jsonl", "line 2", "`prompt`", "an array"],
        },
        BadInput {
            name: "latin1.jsonl",
            bytes: with_line2(
                b"{\"prompt\": \"na\xefve\", \"chosen\": \" a\", \"rejected\": \" b\"}",
            ),
            expect: &["latin1.jsonl", "line 2", "UTF-8"],
        },
        BadInput {
            name: "empty.jsonl",
            bytes: Vec::new(),
            expect: &["empty.jsonl", "empty"],
        },
    ]
}

#[test]
fn every_bad_input_exits_2_naming_file_line_and_field_with_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, Vec<&str>)> = bad_inputs()
        .into_iter()
        .map(|case| {
            let path = write(dir.path(), case.name, &case.bytes);
            (path.display().to_string(), case.expect.to_vec())
        })
        .collect();
    // Written by crates/rlxf-data/tests/fixtures/make_parquet_fixture.py.
    cases.push((
        format!("{FIXTURES}/truncated.jsonl.gz"),
        vec!["truncated.jsonl.gz", "truncated gzip"],
    ));
    cases.push((
        format!("{FIXTURES}/wrong_columns.parquet"),
        vec!["wrong_columns.parquet", "lacks column", "prompt"],
    ));
    for (path, expect) in cases {
        for command in ["inspect", "prepare"] {
            let out = dir.path().join(format!("out-{command}"));
            let out_arg = out.display().to_string();
            let mut args = vec!["data", command, path.as_str()];
            if command == "prepare" {
                args.extend(["--out", out_arg.as_str()]);
            }
            let output = rlxf(&args);
            let message = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "{path} {command}: {message}");
            for needle in &expect {
                assert!(
                    message.contains(needle),
                    "{path} {command}: `{message}` lacks `{needle}`"
                );
            }
            assert!(!out.exists(), "{path}: partial output left");
        }
    }
    // Nothing but the inputs is left in the folder (no temp folders from prepare).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);
}

#[test]
fn skip_invalid_turns_line_errors_into_reported_skips() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " a", "rejected": " b"}"#;
    let path = write(
        dir.path(),
        "mixed.jsonl",
        format!("{good}\n{{broken\n{good}\n").as_bytes(),
    );
    let path = path.display().to_string();
    let output = rlxf(&["data", "inspect", &path, "--skip-invalid"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("pairs: 2 from 3 records"), "{text}");
    assert!(text.contains("1 invalid skipped"), "{text}");
    assert!(text.contains("mixed.jsonl: line 2: "), "{text}");
}

#[test]
fn prepare_is_byte_identical_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let output = rlxf(&[
            "data",
            "prepare",
            "embedded",
            "--out",
            out.to_str().unwrap(),
            "--split",
            "0.8,0.1,0.1",
            "--seed",
            seed,
            "--max-samples",
            "50",
            "--dedupe",
            "--quiet",
        ]);
        assert!(output.status.success(), "{}", stderr(&output));
        [
            "train.jsonl",
            "validation.jsonl",
            "test.jsonl",
            "manifest.json",
        ]
        .map(|file| std::fs::read(out.join(file)).unwrap())
    };
    let first = run("a", "7");
    assert_eq!(first, run("b", "7"));
    assert_ne!(first[0], run("c", "8")[0]);
    let manifest: serde_json::Value = serde_json::from_slice(&first[3]).unwrap();
    assert_eq!(manifest["counts"]["train"], 40);
    assert_eq!(manifest["options"]["seed"], 7);
    assert_eq!(manifest["options"]["dedupe"], true);
}

#[test]
fn prepare_drops_pairs_over_the_token_budget() {
    let dir = tempfile::tempdir().unwrap();
    let line = |prompt: &str| {
        format!("{{\"prompt\": \"{prompt}\", \"chosen\": \" yes\", \"rejected\": \" no\"}}\n")
    };
    // GPT-2 BPE: "Hi" + " yes" is 2 tokens; the long prompt is 200 tokens on its own.
    let text = format!("{}{}", line("Hi"), line(&" hello".repeat(200)));
    let input = write(dir.path(), "pairs.jsonl", text.as_bytes());
    let out = dir.path().join("out");
    let output = rlxf(&[
        "data",
        "prepare",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-tokens",
        "16",
        "--split",
        "1,0,0",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["counts"]["over_token_budget"], 1);
    assert_eq!(manifest["counts"]["train"], 1);
    assert_eq!(manifest["options"]["max_tokens"], 16);
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "data", "prepare", "embedded", "--out", out, "--split", "0.5,0.2",
            ],
            "split",
        ),
        (
            &["data", "inspect", "embedded", "--fields", "question"],
            "fields",
        ),
        (
            &["data", "inspect", "/no/such/file.jsonl"],
            "/no/such/file.jsonl",
        ),
    ];
    for (args, needle) in cases {
        let output = rlxf(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn offline_hub_source_fails_with_instructions() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_rlxf"))
        .args([
            "data",
            "inspect",
            "hf://datasets/Dahoas/rm-static/test",
            "--quiet",
        ])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("download the dataset files yourself"),
        "{message}"
    );
}
