//! `rlxf bench --precisions`: the `train` workload runs in each precision asked for, labelled as
//! the PyTorch reference labels its autocast runs, and an unknown precision is a usage error.

use std::process::Command;

fn rlxf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
}

#[test]
fn the_train_workload_runs_in_bf16() {
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("bench.jsonl");
    let output = rlxf()
        .args(["--quiet", "bench", "--size", "tiny", "--only", "train"])
        .args(["--no-reference", "--steps", "1", "--precisions", "bf16"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("train 4x128 bf16"), "{stdout}");
    let results: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "4x128 and 4x256");
    for result in &results {
        assert_eq!(result["precision"], "bf16", "{result}");
        let rate = result["tokens_per_s"].as_f64().unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{result}");
    }
}

#[test]
fn an_unknown_precision_is_a_usage_error() {
    let output = rlxf()
        .args([
            "bench",
            "--size",
            "tiny",
            "--no-reference",
            "--precisions",
            "f32,fp16",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("fp16") && stderr.contains("bf16"),
        "{stderr}"
    );
}
