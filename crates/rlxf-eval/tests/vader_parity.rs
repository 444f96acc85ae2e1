//! Parity of the Rust VADER port with Python vaderSentiment 3.3.2 on the sentences of
//! `tests/fixtures/vader_sentences.json` (made by `tests/reference/make_vader_fixture.py`).

use std::collections::BTreeMap;

use rlxf_eval::{SentimentScores, Vader};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct Record {
    category: String,
    text: String,
    scores: SentimentScores,
    raw: SentimentScores,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/vader_sentences.json");
    serde_json::from_str(text).expect("the VADER fixture parses")
}

#[test]
fn rounded_scores_equal_vader_sentiment_exactly() {
    let fixture = fixture();
    assert!(
        fixture.records.len() >= 200,
        "the fixture needs at least 200 sentences"
    );
    let vader = Vader::embedded();
    let mut mismatches = Vec::new();
    for record in &fixture.records {
        let ours = vader.polarity_scores(&record.text);
        if ours != record.scores {
            mismatches.push(format!(
                "[{}] {:?}: rust {:?} python {:?}",
                record.category, record.text, ours, record.scores
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn unrounded_scores_agree_to_1e_12() {
    let vader = Vader::embedded();
    for record in fixture().records {
        let ours = vader.raw_polarity_scores(&record.text);
        let pairs = [
            ("neg", ours.neg, record.raw.neg),
            ("neu", ours.neu, record.raw.neu),
            ("pos", ours.pos, record.raw.pos),
            ("compound", ours.compound, record.raw.compound),
        ];
        for (field, rust, python) in pairs {
            assert!(
                (rust - python).abs() <= 1e-12,
                "{:?} {field}: rust {rust} python {python}",
                record.text
            );
        }
    }
}

#[test]
fn fixture_covers_every_rule_family() {
    let mut per_category: BTreeMap<String, usize> = BTreeMap::new();
    for record in fixture().records {
        *per_category.entry(record.category).or_default() += 1;
    }
    for category in [
        "negation",
        "no_and_least",
        "boosters_dampeners",
        "caps",
        "punctuation",
        "but",
        "emoticons_emoji",
        "idioms_special",
        "edge_cases",
    ] {
        assert!(
            per_category.get(category).copied().unwrap_or(0) >= 15,
            "category {category} has too few sentences: {per_category:?}"
        );
    }
}
