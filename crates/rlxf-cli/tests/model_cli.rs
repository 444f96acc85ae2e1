//! `rlxf model init` end to end: it writes a loadable HF-format model, the seed fixes the weights,
//! and bad flags exit 2.

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
    for arch in ["gpt-neo", "gpt2"] {
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
        let expected_type = if arch == "gpt2" { "gpt2" } else { "gpt_neo" };
        assert_eq!(model.config.model_type(), expected_type);
        assert_eq!(model.config.vocab_size(), 50257);
    }
}

#[test]
fn unknown_architecture_is_bad_input() {
    let temp = tempfile::tempdir().unwrap();
    let output = init("llama", "1", temp.path());
    assert_eq!(output.status.code(), Some(2));
}
