//! The embedding metrics through the real encoder path: on rlxf-model's tiny random BERT fixture
//! (wiring and arithmetic), and on all-MiniLM-L6-v2 when it is available (`RLXF_MINILM_DIR` or the
//! rlxf model cache) for what the numbers mean.

use std::path::PathBuf;
use std::sync::Arc;

use rlxf_eval::{
    EmbeddingDiversityMetric, Evaluator, Metric, ResponseRecord, SetMetric, SupportSimilarityMetric,
};
use rlxf_model::sentence_encoder::minilm_dir;
use rlxf_model::{cosine_similarity, Device, SentenceEncoder};

fn tiny_encoder() -> Arc<SentenceEncoder> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rlxf-model/tests/fixtures/tiny-bert");
    Arc::new(SentenceEncoder::load(&dir, &Device::Cpu).unwrap())
}

fn replies(policy: &str, texts: &[&str]) -> Vec<ResponseRecord> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| ResponseRecord {
            policy: policy.into(),
            prompt_id: format!("p{i}"),
            prompt: "\n\nHuman: I feel lonely today.\n\nAssistant:".into(),
            response: text.to_string(),
            context: Some("emotional_support".into()),
        })
        .collect()
}

#[test]
fn support_similarity_is_the_nearest_reference_cosine() {
    let encoder = tiny_encoder();
    let references = ["you are not alone", "that sounds hard", "i am here for you"];
    let metric = SupportSimilarityMetric::new(encoder.clone(), &references).unwrap();
    let records = replies("p", &["I feel sad today.", "happy dog"]);
    let scores = metric.score(&records).unwrap();
    let reference_embeddings = encoder.embed(&references).unwrap();
    for (record, score) in records.iter().zip(scores) {
        let reply = &encoder.embed(&[record.response.as_str()]).unwrap()[0];
        let nearest = reference_embeddings
            .iter()
            .map(|reference| cosine_similarity(reply, reference))
            .fold(f32::NEG_INFINITY, f32::max);
        assert!((score.unwrap() - f64::from(nearest)).abs() < 1e-5);
    }
    assert!(SupportSimilarityMetric::new(encoder, &[] as &[&str]).is_err());
}

#[test]
fn diversity_of_identical_replies_is_zero_and_aggregates_with_an_interval() {
    let encoder = tiny_encoder();
    let same = replies("same", &["that sounds hard"; 5]);
    let varied = replies(
        "varied",
        &[
            "that sounds hard",
            "happy dog",
            "i feel lonely",
            "zebra",
            "help me",
        ],
    );
    let metric = EmbeddingDiversityMetric::new(encoder.clone());
    let statistic = metric.prepare(&same).unwrap();
    assert!(statistic.value(&[0, 1, 2, 3, 4]).abs() < 1e-6);

    let records: Vec<ResponseRecord> = same.into_iter().chain(varied).collect();
    let results = Evaluator::new(
        Vec::new(),
        vec![Box::new(EmbeddingDiversityMetric::new(encoder))],
    )
    .evaluate(records)
    .unwrap();
    let varied = results
        .cell("varied", "all", "embedding_diversity")
        .unwrap();
    let [low, high] = varied.ci.unwrap();
    assert!(
        varied.value.unwrap() > 0.0
            && low <= varied.value.unwrap()
            && varied.value.unwrap() <= high
    );
    assert_eq!(varied.n, 5);
}

#[test]
fn minilm_scores_support_above_unrelated_replies() {
    let Some(dir) = minilm_dir() else {
        eprintln!("skipped: all-MiniLM-L6-v2 not found (set RLXF_MINILM_DIR; see rlxf-model's sentence encoder)");
        return;
    };
    let encoder = Arc::new(SentenceEncoder::load(&dir, &Device::Cpu).unwrap());
    let metric = SupportSimilarityMetric::with_supportive_references(encoder.clone()).unwrap();
    let records = replies(
        "p",
        &[
            "I'm sorry you're feeling lonely. That sounds really hard, and I'm here if you want to talk.",
            "The capital of Australia is Canberra.",
            "Here is how to configure a Linux firewall with iptables.",
        ],
    );
    let scores: Vec<f64> = metric
        .score(&records)
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    println!("support similarity with MiniLM: {scores:?}");
    assert!(scores[0] > 0.4, "{scores:?}");
    assert!(
        scores[0] > scores[1] + 0.3 && scores[0] > scores[2] + 0.3,
        "{scores:?}"
    );

    let diversity = EmbeddingDiversityMetric::new(encoder);
    let statistic = diversity.prepare(&records).unwrap();
    let spread = statistic.value(&[0, 1, 2]);
    println!("embedding diversity of three unrelated replies with MiniLM: {spread:.3}");
    assert!(spread > 0.7, "{spread}");
}

#[test]
fn descriptions_name_the_encoder_in_use() {
    let encoder = tiny_encoder();
    assert_eq!(encoder.name(), "tiny-bert");
    let support = SupportSimilarityMetric::with_supportive_references(encoder.clone()).unwrap();
    let diversity = EmbeddingDiversityMetric::new(encoder);
    for description in [support.info().description, diversity.info().description] {
        assert!(description.contains("(tiny-bert)"), "{description}");
        assert!(!description.contains("MiniLM"), "{description}");
    }
}
