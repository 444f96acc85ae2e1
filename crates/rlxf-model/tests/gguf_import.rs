//! GGUF import on `tests/fixtures/tiny-llama-gguf/model.gguf`, written by
//! `tests/reference/make_llama_fixtures.py` the way llama.cpp's converter writes a Llama (permuted
//! q/k rows, llama.cpp names, Q8_0/Q4_1/F16/F32 tensors, tokenizer in the metadata). The imported
//! model must give the logits `transformers` computes from the same dequantized weights, and the
//! tokenizer rebuilt from the metadata the ids of the HF tokenizer it was made from.
//!
//! With `RLXF_EXPORT_DIR` set, the imported directory (with `rlxf_logits.safetensors` and
//! `rlxf_tokens.json`) is written there for `tests/reference/check_rlxf_saved_model.py`, which
//! loads it with `AutoModelForCausalLM` and `AutoTokenizer`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use rlxf_model::{import_gguf, load_pretrained, load_tokenizer, CausalLm, ChatTemplate};

use common::{fixture, max_abs_diff};

/// Dequantization is exact; what is left is float rounding in a different order of operations.
const TOLERANCE: f64 = 1e-4;

fn import_fixture(temp: &tempfile::TempDir) -> PathBuf {
    let out = match std::env::var_os("RLXF_EXPORT_DIR") {
        Some(dir) => PathBuf::from(dir).join("llama-gguf"),
        None => temp.path().join("llama-gguf"),
    };
    let summary = import_gguf(&fixture("tiny-llama-gguf").join("model.gguf"), &out).unwrap();
    assert_eq!(summary.config.num_attention_heads, 4);
    assert_eq!(summary.config.kv_heads(), 2);
    assert!(summary.config.tie_word_embeddings);
    let types: HashMap<String, usize> = summary.tensor_types.into_iter().collect();
    for kind in ["Q8_0", "Q4_1", "F16", "F32"] {
        assert!(types.contains_key(kind), "fixture lacks {kind}: {types:?}");
    }
    out
}

#[test]
fn imported_model_matches_transformers_on_the_dequantized_weights() {
    let temp = tempfile::tempdir().unwrap();
    let dir = import_fixture(&temp);
    let model = load_pretrained(dir.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let expected = candle_core::safetensors::load(
        fixture("tiny-llama-gguf").join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let logits = model.forward(&ids, None, None).unwrap();
    let diff = max_abs_diff(&logits, &expected["logits"]);
    println!("imported GGUF vs transformers: max |dlogit| = {diff:e}");
    assert!(diff <= TOLERANCE, "imported model differs by {diff}");
    candle_core::safetensors::save(
        &HashMap::from([
            ("input_ids".to_string(), ids.to_dtype(DType::I64).unwrap()),
            ("logits".to_string(), logits),
        ]),
        dir.join("rlxf_logits.safetensors"),
    )
    .unwrap();
}

#[test]
fn tokenizer_rebuilt_from_metadata_matches_the_hf_tokenizer() {
    let temp = tempfile::tempdir().unwrap();
    let dir = import_fixture(&temp);
    let tokenizer = load_tokenizer(&dir).unwrap();
    let text =
        std::fs::read_to_string(fixture("tiny-llama-gguf").join("expected_tokens.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 8);
    let mut encodings = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(ids, expected, "encoding of {text:?}");
        assert_eq!(
            tokenizer.decode(&ids).unwrap(),
            text,
            "round trip of {text:?}"
        );
        encodings.push(serde_json::json!({"text": text, "ids": ids}));
    }
    std::fs::write(
        dir.join("rlxf_tokens.json"),
        serde_json::to_string(&encodings).unwrap(),
    )
    .unwrap();
    // config.json's eos_token_id (from tokenizer.ggml.eos_token_id) is ChatML's `<|im_end|>`.
    assert_eq!(tokenizer.eos_id(), 2);
    assert_eq!(tokenizer.token_text(2).unwrap(), "<|im_end|>");

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert!(config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(
        ChatTemplate::for_model_dir(&dir).unwrap(),
        ChatTemplate::ChatMl
    );
}

#[test]
fn unsupported_gguf_files_are_refused_with_the_key() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("gpt2.gguf");
    let arch = gguf_file::Value::String("gpt2".into());
    let mut file = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
    drop(file);
    let err = import_gguf(&path, &temp.path().join("out")).unwrap_err();
    assert!(err.is_bad_input());
    let message = err.to_string();
    assert!(
        message.contains("general.architecture") && message.contains("gpt2.gguf"),
        "{message}"
    );
    assert!(!temp.path().join("out").exists(), "nothing is written");

    let err = import_gguf(&temp.path().join("missing.gguf"), &temp.path().join("out")).unwrap_err();
    assert!(err.to_string().contains("missing.gguf"), "{err}");
}
