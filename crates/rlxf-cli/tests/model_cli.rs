//! `rlxf model init`, `import-gguf` and `fetch` end to end: init writes a loadable HF-format model,
//! the seed fixes the weights, a GGUF imports into a model `generate` uses in ChatML, registered
//! names resolve only once fetched, and bad flags exit 2.

use std::process::Command;

fn rlxf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlxf"))
}

fn init(arch: &str, seed: &str, out: &std::path::Path) -> std::process::Output {
    rlxf()
        .args([
            "--quiet", "model", "init", "--arch", arch, "--size", "tiny", "--seed", seed,
        ])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn init_writes_a_loadable_seeded_model() {
    let temp = tempfile::tempdir().unwrap();
    for arch in ["gpt-neo", "gpt2", "llama"] {
        let first = temp.path().join(format!("{arch}-a"));
        let second = temp.path().join(format!("{arch}-b"));
        let other = temp.path().join(format!("{arch}-c"));
        for (dir, seed) in [(&first, "4"), (&second, "4"), (&other, "5")] {
            let output = init(arch, seed, dir);
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let weights = |dir: &std::path::Path| std::fs::read(dir.join("model.safetensors")).unwrap();
        assert_eq!(weights(&first), weights(&second));
        assert_ne!(weights(&first), weights(&other));

        let model = rlxf_model::load_pretrained(
            first.to_str().unwrap(),
            &rlxf_model::Device::Cpu,
            rlxf_model::DType::F32,
        )
        .unwrap();
        let expected_type = match arch {
            "gpt2" => "gpt2",
            "llama" => "llama",
            _ => "gpt_neo",
        };
        assert_eq!(model.config.model_type(), expected_type);
        assert_eq!(model.config.vocab_size(), 50257);
    }
}

#[test]
fn unknown_architecture_is_bad_input() {
    let temp = tempfile::tempdir().unwrap();
    let output = init("mamba", "1", temp.path());
    assert_eq!(output.status.code(), Some(2));
}

fn gguf_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlxf-model/tests/fixtures/tiny-llama-gguf/model.gguf")
}

#[test]
fn imported_gguf_generates_in_chatml() {
    let temp = tempfile::tempdir().unwrap();
    let out = temp.path().join("imported");
    let output = rlxf()
        .args(["--quiet", "model", "import-gguf"])
        .arg(gguf_fixture())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("with chat template") && stdout.contains("Q4_1"),
        "{stdout}"
    );

    let output = rlxf()
        .args(["--quiet", "generate", "--model"])
        .arg(&out)
        .args([
            "--prompt",
            "Hello",
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
        ])
        .args(["--out"])
        .arg(temp.path().join("replies.jsonl"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(temp.path().join("replies.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(reply["token_ids"]
        .as_array()
        .is_some_and(|ids| !ids.is_empty()));

    let output = rlxf()
        .args(["model", "import-gguf"])
        .arg(temp.path().join("missing.gguf"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.gguf"));
}

#[test]
fn registered_names_need_a_fetch_first() {
    let temp = tempfile::tempdir().unwrap();
    let output = rlxf()
        .env("RLXF_CACHE", temp.path())
        .args([
            "--quiet",
            "generate",
            "--model",
            "smollm2-135m-instruct",
            "--prompt",
            "Hi",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rlxf model fetch smollm2-135m-instruct"),
        "{stderr}"
    );

    let output = rlxf()
        .args(["--quiet", "model", "fetch", "gpt-7", "--cache-dir"])
        .arg(temp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("smollm2-135m-instruct"));
}
