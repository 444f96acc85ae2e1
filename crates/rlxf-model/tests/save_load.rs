//! Saving and loading in HF format, seeded initialisation, the scalar head, and bad-input errors.
//!
//! When `RLXF_EXPORT_DIR` is set, the saved models (with `rlxf_logits.safetensors`, the logits rlxf
//! computed) are written there for `tests/reference/check_rlxf_saved_model.py`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rlxf_model::{load_pretrained, CausalLm, LoadedModel, ModelConfig, ModelError};

use common::{
    ids, max_abs_diff, random_model, small_gpt2_config, small_llama_config, small_neo_config,
    small_untied_llama_config,
};

const TOKENS: [u32; 9] = [12, 7, 90, 3, 3, 41, 8, 66, 20];

fn output_dir(temp: &tempfile::TempDir, name: &str) -> PathBuf {
    match std::env::var_os("RLXF_EXPORT_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => temp.path().join(name),
    }
}

fn load(dir: &Path) -> rlxf_model::Result<LoadedModel> {
    load_pretrained(dir.to_str().unwrap(), &Device::Cpu, DType::F32)
}

fn write_logits(dir: &Path, tensors: HashMap<String, Tensor>) {
    candle_core::safetensors::save(&tensors, dir.join("rlxf_logits.safetensors")).unwrap();
}

#[test]
fn saved_models_reload_with_identical_logits() {
    let temp = tempfile::tempdir().unwrap();
    for (name, config) in [
        ("gpt-neo", small_neo_config()),
        ("gpt2", small_gpt2_config()),
        ("llama", small_llama_config()),
        ("llama-untied", small_untied_llama_config()),
    ] {
        let model = random_model(config, 5, DType::F32);
        let dir = output_dir(&temp, name);
        model.save_pretrained(&dir).unwrap();
        let reloaded = load(&dir).unwrap();
        assert_eq!(reloaded.config, model.config);
        let input = ids(&[&TOKENS]);
        let before = model.forward(&input, None, None).unwrap();
        let after = reloaded.forward(&input, None, None).unwrap();
        assert_eq!(max_abs_diff(&before, &after), 0.0);

        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["architectures"][0], model.config.causal_lm_class());
        assert_eq!(config["dtype"], "float32");
        write_logits(
            &dir,
            HashMap::from([
                ("input_ids".to_string(), input.to_dtype(DType::I64).unwrap()),
                ("logits".to_string(), before),
            ]),
        );
    }
}

#[test]
fn seed_fixes_the_initialisation() {
    let config = small_neo_config();
    let device = Device::Cpu;
    let a = LoadedModel::init_random(config.clone(), 1, &device, DType::F32).unwrap();
    let b = LoadedModel::init_random(config.clone(), 1, &device, DType::F32).unwrap();
    let c = LoadedModel::init_random(config, 2, &device, DType::F32).unwrap();
    let input = ids(&[&TOKENS]);
    let logits = |m: &LoadedModel| m.forward(&input, None, None).unwrap();
    assert_eq!(max_abs_diff(&logits(&a), &logits(&b)), 0.0);
    assert!(max_abs_diff(&logits(&a), &logits(&c)) > 0.0);
    // HF init: unit layer-norm scales, zero biases.
    let data = a.varmap.data().lock().unwrap();
    let ln = data["transformer.h.0.ln_1.weight"]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert!(ln.iter().all(|&v| v == 1.0));
    let bias = data["transformer.h.0.mlp.c_fc.bias"]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert!(bias.iter().all(|&v| v == 0.0));
}

#[test]
fn scalar_head_saves_as_sequence_classifier() {
    let temp = tempfile::tempdir().unwrap();
    let mut model = random_model(small_neo_config(), 6, DType::F32);
    let head = model.attach_scalar_head(9).unwrap();
    let dir = output_dir(&temp, "gpt-neo-reward");
    model.save_pretrained(&dir).unwrap();

    let input = ids(&[&TOKENS, &[0, 0, 0, 5, 6, 7, 8, 9, 10]]);
    let mask = Tensor::from_vec(
        [vec![1u32; 9], vec![0, 0, 0, 1, 1, 1, 1, 1, 1]].concat(),
        (2, 9),
        &Device::Cpu,
    )
    .unwrap();
    let hidden = model.hidden_states(&input, Some(&mask), None).unwrap();
    let rewards = head.score_last_token(&hidden, Some(&mask)).unwrap();
    let per_position = head.scores(&hidden).unwrap();
    assert_eq!(rewards.dims(), &[2]);
    // Left padding: the last real token is the last column.
    assert_eq!(
        rewards.to_vec1::<f32>().unwrap(),
        vec![
            per_position.to_vec2::<f32>().unwrap()[0][8],
            per_position.to_vec2::<f32>().unwrap()[1][8]
        ]
    );
    // Right padding: the last real token is found from the mask.
    let right_mask =
        Tensor::from_vec([vec![1u32; 5], vec![0; 4]].concat(), (1, 9), &Device::Cpu).unwrap();
    let one = model
        .hidden_states(&ids(&[&TOKENS]), Some(&right_mask), None)
        .unwrap();
    let score = head.score_last_token(&one, Some(&right_mask)).unwrap();
    assert_eq!(
        score.to_vec1::<f32>().unwrap()[0],
        head.scores(&one).unwrap().to_vec2::<f32>().unwrap()[0][4]
    );

    let reloaded = load(&dir).unwrap();
    let reloaded_head = reloaded.scalar_head().unwrap().expect("head saved");
    let reloaded_hidden = reloaded.hidden_states(&input, Some(&mask), None).unwrap();
    let again = reloaded_head
        .score_last_token(&reloaded_hidden, Some(&mask))
        .unwrap();
    assert_eq!(max_abs_diff(&rewards, &again), 0.0);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(config.contains("GPTNeoForSequenceClassification"));

    let unpadded = ids(&[&TOKENS]);
    write_logits(
        &dir,
        HashMap::from([
            (
                "input_ids".to_string(),
                unpadded.to_dtype(DType::I64).unwrap(),
            ),
            (
                "logits".to_string(),
                model.forward(&unpadded, None, None).unwrap(),
            ),
            (
                "scores".to_string(),
                head.score_last_token(&model.hidden_states(&unpadded, None, None).unwrap(), None)
                    .unwrap(),
            ),
        ]),
    );
}

fn expect_bad_input(err: ModelError, needles: &[&str]) {
    assert!(err.is_bad_input(), "not a bad-input error: {err}");
    let message = err.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "`{message}` does not mention `{needle}`"
        );
    }
}

#[test]
fn broken_checkpoints_give_clear_errors() {
    let temp = tempfile::tempdir().unwrap();
    let model = random_model(small_gpt2_config(), 7, DType::F32);
    let dir = temp.path().join("m");
    model.save_pretrained(&dir).unwrap();
    let weights_path = dir.join("model.safetensors");
    let original = candle_core::safetensors::load(&weights_path, &Device::Cpu).unwrap();

    // Missing tensor.
    let mut missing = original.clone();
    missing.remove("transformer.h.1.attn.c_attn.bias");
    candle_core::safetensors::save(&missing, &weights_path).unwrap();
    expect_bad_input(
        load(&dir).err().unwrap(),
        &["model.safetensors", "transformer.h.1.attn.c_attn.bias"],
    );

    // Shape mismatch.
    let mut misshapen = original.clone();
    misshapen.insert(
        "transformer.wpe.weight".into(),
        Tensor::zeros((31, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&misshapen, &weights_path).unwrap();
    expect_bad_input(
        load(&dir).err().unwrap(),
        &["transformer.wpe.weight", "[31, 16]", "[32, 16]"],
    );
    candle_core::safetensors::save(&original, &weights_path).unwrap();

    // No weights at all.
    let empty = temp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(dir.join("config.json"), empty.join("config.json")).unwrap();
    expect_bad_input(load(&empty).err().unwrap(), &["model.safetensors"]);

    // Unknown model type, invalid field, missing config.
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, text.replace("\"gpt2\"", "\"mamba\"")).unwrap();
    expect_bad_input(
        load(&dir).err().unwrap(),
        &["mamba", "gpt_neo, gpt2, llama", "config.json"],
    );
    std::fs::write(
        &config_path,
        text.replace("\"n_head\": 2", "\"n_head\": -2"),
    )
    .unwrap();
    expect_bad_input(load(&dir).err().unwrap(), &["n_head", "config.json"]);
    std::fs::remove_file(&config_path).unwrap();
    expect_bad_input(load(&dir).err().unwrap(), &["config.json"]);
}

#[test]
fn sequences_longer_than_the_position_table_are_rejected() {
    for config in [
        small_neo_config(),
        small_gpt2_config(),
        small_llama_config(),
    ] {
        let model = random_model(config, 8, DType::F32);
        let long: Vec<u32> = (0..33).collect();
        expect_bad_input(
            model.forward(&ids(&[&long]), None, None).err().unwrap(),
            &["33", "32"],
        );
        // The cache counts too.
        let mut cache = model.new_cache();
        model
            .forward(&ids(&[&long[..30]]), None, Some(&mut cache))
            .unwrap();
        expect_bad_input(
            model
                .forward(&ids(&[&long[..3]]), None, Some(&mut cache))
                .err()
                .unwrap(),
            &["33", "32"],
        );
    }
}

#[test]
fn preset_configs_match_hf() {
    let ModelConfig::GptNeo(neo) = ModelConfig::parse(
        &ModelConfig::GptNeo(rlxf_model::GptNeoConfig::gpt_neo_125m())
            .to_json("GPTNeoForCausalLM", "float32")
            .to_string(),
        Path::new("config.json"),
    )
    .unwrap() else {
        panic!("wrong architecture")
    };
    // EleutherAI/gpt-neo-125M's config.json.
    assert_eq!(
        (neo.hidden_size, neo.num_layers, neo.num_heads),
        (768, 12, 12)
    );
    assert_eq!((neo.window_size, neo.max_position_embeddings), (256, 2048));
    assert_eq!(neo.vocab_size, 50257);
    let spec = rlxf_model::parameter_spec(&ModelConfig::GptNeo(neo)).unwrap();
    let parameters: usize = spec.iter().map(|p| p.shape.iter().product::<usize>()).sum();
    // 125,198,592 parameters, as `sum(p.numel() for p in model.parameters())` reports.
    assert_eq!(parameters, 125_198_592);
}

#[test]
fn an_inference_model_gives_the_same_logits_without_an_autograd_graph() {
    for config in [small_neo_config(), small_llama_config()] {
        let trainable = random_model(config.clone(), 3, DType::F32);
        let input = ids(&[&TOKENS]);
        let trained_logits = trainable.forward(&input, None, None).unwrap();
        assert!(
            trained_logits.track_op(),
            "a trainable model records its ops"
        );
        let inference = random_model(config, 3, DType::F32)
            .into_inference()
            .unwrap();
        let logits = inference.forward(&input, None, None).unwrap();
        assert!(
            !logits.track_op(),
            "the inference model must not record ops"
        );
        assert_eq!(max_abs_diff(&logits, &trained_logits), 0.0);
    }
}

#[test]
fn an_inference_view_follows_the_trainable_model_without_an_autograd_graph() {
    let model = random_model(small_neo_config(), 3, DType::F32);
    let view = model.inference_model().unwrap();
    let input = ids(&[&TOKENS]);
    let logits = view.forward(&input, None, None).unwrap();
    assert!(!logits.track_op(), "the view must not record ops");
    let trained_logits = model.forward(&input, None, None).unwrap();
    assert!(
        trained_logits.track_op(),
        "the model itself stays trainable"
    );
    assert_eq!(max_abs_diff(&logits, &trained_logits), 0.0);

    // An update of the variables in place (as the optimiser makes) shows through the view
    // built before it.
    for var in model.varmap.all_vars() {
        var.set(&(var.as_tensor() * 0.5).unwrap()).unwrap();
    }
    let updated = view.forward(&input, None, None).unwrap();
    let expected = model.forward(&input, None, None).unwrap();
    assert_eq!(max_abs_diff(&updated, &expected), 0.0);
    assert!(
        max_abs_diff(&updated, &logits) > 1e-3,
        "the update changed the logits"
    );
}

#[test]
fn a_saved_model_keeps_the_tokenizer_files_of_the_directory_it_came_from() {
    let temp = tempfile::tempdir().unwrap();
    let source = temp.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    let fixture = common::fixture("tiny-llama");
    for name in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture.join(name), source.join(name)).unwrap();
    }
    let tokenizer = r#"{"version": "1.0", "note": "any tokenizer file"}"#;
    std::fs::write(source.join("tokenizer.json"), tokenizer).unwrap();

    let saved = temp.path().join("saved");
    load(&source).unwrap().save_pretrained(&saved).unwrap();
    assert_eq!(
        std::fs::read_to_string(saved.join("tokenizer.json")).unwrap(),
        tokenizer
    );
    assert_eq!(
        std::fs::read(saved.join("generation_config.json")).unwrap(),
        std::fs::read(fixture.join("generation_config.json")).unwrap()
    );
    assert!(
        !saved.join("special_tokens_map.json").exists(),
        "only files the source has"
    );
}
