//! `rlxf bench --precisions`: the `train` workload runs in each precision asked for, labelled as
//! the PyTorch reference labels its autocast runs, and an unknown precision is a usage error.
//! `rlxf bench --rounds`: the comparison repeats and ends with each workload's medians, and a
//! failing round keeps the rounds before it in `--out`.

use std::path::Path;
use std::process::Command;

fn rlxf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
}

/// Two rounds of the tiny generation workloads against `reference`, a shell script standing in
/// for the PyTorch script (run by `sh`), recorded to `out`.
fn two_generation_rounds(reference: &Path, out: &Path) -> Command {
    let mut command = rlxf();
    command
        .args(["--quiet", "bench", "--size", "tiny", "--only", "generate"])
        .args([
            "--steps",
            "1",
            "--rounds",
            "2",
            "--python",
            "sh",
            "--reference",
        ])
        .arg(reference)
        .arg("--out")
        .arg(out);
    command
}

/// Runs `command`, failing the test with its stderr if it fails; returns its stdout.
fn stdout_of(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_train_workload_runs_in_bf16() {
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("bench.jsonl");
    let stdout = stdout_of(
        rlxf()
            .args(["--quiet", "bench", "--size", "tiny", "--only", "train"])
            .args(["--no-reference", "--steps", "1", "--precisions", "bf16"])
            .arg("--out")
            .arg(&out),
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

#[test]
fn rounds_repeat_the_comparison_and_end_with_medians() {
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("bench.jsonl");
    // A stand-in for the PyTorch script, run by `sh`: one result per generation batch, in the
    // reference's JSON format.
    let reference = temp.path().join("reference.sh");
    std::fs::write(
        &reference,
        r#"for batch in 1 8; do
  echo "{\"workload\": \"generate\", \"batch\": $batch, \"tokens_per_s\": 1000.0, \"peak_rss_mb\": 1.0}"
done
"#,
    )
    .unwrap();
    let stdout = stdout_of(&mut two_generation_rounds(&reference, &out));
    for line in ["round 1 of 2", "round 2 of 2", "median of 2 rounds"] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    // The medians' rows end with both rounds' ratios.
    let medians = &stdout[stdout.find("median of 2 rounds").unwrap()..];
    for batch in [1, 8] {
        let row = medians
            .lines()
            .find(|line| line.starts_with(&format!("generate batch {batch} ")))
            .unwrap_or_else(|| panic!("no median row for batch {batch}: {stdout}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        // label (3 words), rlxf, torch, median ratio, one ratio per round
        assert_eq!(fields.len(), 8, "{row}");
        assert_eq!(fields[4], "1000.0", "{row}");
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let rounds_and_engines: Vec<(u64, &str)> = records
        .iter()
        .map(|r| (r["round"].as_u64().unwrap(), r["engine"].as_str().unwrap()))
        .collect();
    let expected = [1, 2].into_iter().flat_map(|round| {
        [
            (round, "rlxf"),
            (round, "rlxf"),
            (round, "pytorch"),
            (round, "pytorch"),
        ]
    });
    assert_eq!(rounds_and_engines, expected.collect::<Vec<_>>());
}

#[test]
fn zero_rounds_is_a_usage_error() {
    let output = rlxf()
        .args(["bench", "--size", "tiny", "--no-reference", "--rounds", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--rounds"), "{stderr}");
}

#[test]
fn a_failing_round_keeps_the_rounds_before_it() {
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("bench.jsonl");
    // Succeeds once, then fails: the second round's reference breaks.
    let reference = temp.path().join("reference.sh");
    let marker = temp.path().join("ran-once");
    std::fs::write(
        &reference,
        format!(
            r#"[ -e "{marker}" ] && {{ echo "reference broke" >&2; exit 1; }}
touch "{marker}"
echo '{{"workload": "generate", "batch": 1, "tokens_per_s": 1000.0, "peak_rss_mb": 1.0}}'
"#,
            marker = marker.display()
        ),
    )
    .unwrap();
    let output = two_generation_rounds(&reference, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("reference broke"), "{stderr}");
    let rounds: Vec<u64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["round"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        rounds,
        [1, 1, 1],
        "round 1: two rlxf results and one reference result"
    );
}
