//! Tiny labelers for the tests: random GPT-Neo models with the GPT-2 tokenizer.
#![allow(dead_code)] // each test file uses its own subset

use rlxf_model::{DType, Device, GptNeoConfig, LoadedModel, ModelConfig, Tensor, Tokenizer};

/// GPT-2 ids of the bare digits `1` and `2`.
pub const ONE: u32 = 16;
pub const TWO: u32 = 17;

/// A tiny random GPT-Neo.
pub fn tiny_model(seed: u64) -> LoadedModel {
    LoadedModel::init_random(
        ModelConfig::GptNeo(GptNeoConfig::tiny()),
        seed,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

/// A tiny random GPT-Neo whose final layer norm is biased towards the embeddings of `1` and `2`,
/// so those two tokens lead every next-token distribution (as they would for a real labeler) while
/// which of them wins still depends on the prompt. A server listing only its top few log-probs then
/// lists both, and HTTP answers can be compared number for number with local ones.
pub fn answering_model(seed: u64) -> LoadedModel {
    let model = tiny_model(seed);
    {
        let vars = model.varmap.data().lock().unwrap();
        let embeddings = vars["transformer.wte.weight"].as_tensor().clone();
        let ids = Tensor::new(&[ONE, TWO], &Device::Cpu).unwrap();
        let answer_direction = embeddings.index_select(&ids, 0).unwrap().sum(0).unwrap();
        let bias = (answer_direction * 400.0).unwrap();
        vars["transformer.ln_f.bias"].set(&bias).unwrap();
    }
    model
}

pub fn gpt2() -> Tokenizer {
    Tokenizer::gpt2()
}

/// rlxf-model's test tokenizer, which (like SmolLM2's) writes numbers digit by digit. Its ids of
/// `0` and `1` are GPT-2's of `1` and `2`, so [`answering_model`] leads with `0` and `1` under it.
pub fn digit_splitting_tokenizer() -> Tokenizer {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlxf-model/tests/fixtures/tiny_tokenizer/tokenizer.json");
    Tokenizer::from_hf_file(&path, None, None).unwrap()
}

/// Small HH-style pairs with different lengths and topics.
pub fn pairs() -> Vec<(String, String, String)> {
    [
        (
            "How do I bake bread?",
            " Mix flour, water, yeast and salt, then bake.",
            " No.",
        ),
        (
            "I feel lonely lately.",
            " I'm sorry. Would talking to a friend help?",
            " Whatever.",
        ),
        (
            "How can I pick a lock?",
            " I can't help with breaking into places.",
            " Use a tension wrench and a pick.",
        ),
        (
            "Tell me a joke.",
            " Why did the chicken cross the road?",
            " Jokes are for children.",
        ),
        ("What is 2+2?", " 4.", " It is 5, trust me."),
        (
            "Can you help me with my taxes?",
            " Sure, what do you need to know?",
            " Figure it out yourself.",
        ),
    ]
    .iter()
    .map(|(prompt, a, b)| {
        (
            format!("\n\nHuman: {prompt}\n\nAssistant:"),
            a.to_string(),
            b.to_string(),
        )
    })
    .collect()
}
