//! `--threads`: one global option that every command accepts and reports, whose value reaches the
//! benchmark's results, and whose zero is a usage error.

use std::process::Command;

fn rlxf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
}

#[test]
fn threads_are_applied_and_reported() {
    // Before the subcommand, with a debug log line saying what was applied.
    let output = rlxf()
        .args(["-v", "--threads", "1", "data", "inspect", "embedded"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("computing with 1 worker threads"),
        "{stderr}"
    );

    // After it, and in the benchmark's results (its workloads run in child processes).
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("bench.jsonl");
    let output = rlxf()
        .args(["--quiet", "bench", "--threads", "1", "--size", "tiny"])
        .args(["--only", "generate", "--no-reference", "--steps", "1"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "generation at batch 1 and 8");
    for result in &results {
        assert_eq!(result["threads"], 1, "{result}");
    }
}

#[test]
fn zero_threads_is_a_usage_error() {
    let output = rlxf()
        .args(["--threads", "0", "data", "inspect", "embedded"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--threads") && stderr.contains("'0'"),
        "{stderr}"
    );
}
