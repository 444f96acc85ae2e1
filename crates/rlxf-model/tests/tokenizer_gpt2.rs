//! Tokenizers against references: the embedded GPT-2 BPE against OpenAI's original BPE algorithm
//! (fixture from tests/reference/make_tokenizer_fixture.py), a `tokenizer.json` against the Hugging
//! Face `tokenizers` library, and round trips over the real HH-RLHF transcripts.

use std::io::Read;
use std::path::Path;

use rlxf_model::chat::ChatTemplate;
use rlxf_model::tokenizer::{load_tokenizer, Tokenizer, GPT2_EOS_ID, GPT2_VOCAB_SIZE};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const HH_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/hh-rlhf-harmless-base/test.jsonl.gz"
);

fn read_json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cases(fixture: &Value) -> Vec<(String, Vec<u32>)> {
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let ids = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_u64().unwrap() as u32);
            (case["text"].as_str().unwrap().to_string(), ids.collect())
        })
        .collect()
}

#[test]
fn gpt2_bpe_matches_the_openai_reference_encodings() {
    let fixture = read_json(&format!("{FIXTURES}/tokenizer_gpt2_encodings.json"));
    let tokenizer = Tokenizer::gpt2();
    let cases = cases(&fixture);
    assert!(cases.len() >= 10);
    for (text, ids) in cases {
        assert_eq!(tokenizer.encode(&text).unwrap(), ids, "encoding {text:?}");
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
}

#[test]
fn gpt2_known_ids_and_special_tokens() {
    let tokenizer = Tokenizer::gpt2();
    // Widely published GPT-2 ids.
    assert_eq!(tokenizer.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(
        tokenizer.encode("\n\nHuman:").unwrap(),
        vec![198, 198, 20490, 25]
    );
    assert_eq!(tokenizer.eos_id(), 50256);
    assert_eq!(tokenizer.pad_id(), 50256);
    assert_eq!(tokenizer.vocab_size(), 50257);
    assert_eq!(tokenizer.max_token_id(), 50256);
    assert_eq!(tokenizer.token_text(GPT2_EOS_ID).unwrap(), "<|endoftext|>");
    // The EOS text in user data stays text: it must not end a sequence early.
    assert!(!tokenizer
        .encode("a <|endoftext|> b")
        .unwrap()
        .contains(&GPT2_EOS_ID));
    assert_eq!(tokenizer.single_token_id(" Hello").unwrap(), Some(18435));
    assert_eq!(tokenizer.single_token_id("Hello world").unwrap(), None);
    assert_eq!(tokenizer.token_text(995).unwrap(), " world");
    let err = tokenizer.decode(&[GPT2_VOCAB_SIZE as u32]).unwrap_err();
    assert!(err.to_string().contains("50257"), "{err}");
}

#[test]
fn gpt2_decodes_partial_utf8_without_failing() {
    let tokenizer = Tokenizer::gpt2();
    let ids = tokenizer.encode("😀").unwrap();
    assert!(ids.len() > 1, "an emoji spans several byte-level tokens");
    assert!(tokenizer.decode(&ids[..1]).unwrap().contains('\u{FFFD}'));
    assert_eq!(tokenizer.decode(&ids).unwrap(), "😀");
}

fn hh_chosen_transcripts() -> Option<Vec<String>> {
    if !Path::new(HH_TEST).is_file() {
        println!("skipping: {HH_TEST} is not present");
        return None;
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(HH_TEST).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let transcripts = text
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            record["chosen"].as_str().unwrap().to_string()
        })
        .collect();
    Some(transcripts)
}

#[test]
fn gpt2_round_trips_every_hh_test_transcript() {
    let Some(transcripts) = hh_chosen_transcripts() else {
        return;
    };
    assert_eq!(transcripts.len(), 2312);
    let tokenizer = Tokenizer::gpt2();
    for transcript in &transcripts {
        let ids = tokenizer.encode(transcript).unwrap();
        assert!(ids.iter().all(|&id| id < GPT2_EOS_ID));
        assert_eq!(&tokenizer.decode(&ids).unwrap(), transcript);
    }
}

#[test]
fn hh_template_parses_every_hh_test_transcript() {
    let Some(transcripts) = hh_chosen_transcripts() else {
        return;
    };
    let template = ChatTemplate::HumanAssistant;
    let mut exact = 0;
    let mut well_formed = 0;
    for transcript in &transcripts {
        let turns = template.parse_transcript(transcript).unwrap();
        assert_eq!(
            turns.first().unwrap().role,
            rlxf_model::Role::User,
            "{transcript:?}"
        );
        assert_eq!(
            turns.last().unwrap().role,
            rlxf_model::Role::Assistant,
            "{transcript:?}"
        );
        let (prompt, completion) = template.split_last_reply(transcript).unwrap();
        assert_eq!(format!("{prompt}{completion}"), *transcript);
        // A handful of HH transcripts have two assistant turns in a row; the others' prompt is
        // exactly what the template builds from the earlier turns.
        let earlier = &turns[..turns.len() - 1];
        if earlier
            .last()
            .is_some_and(|turn| turn.role == rlxf_model::Role::User)
        {
            assert_eq!(template.format_prompt(earlier).unwrap(), prompt);
            well_formed += 1;
        }
        if template.format_transcript(&turns) == *transcript {
            exact += 1;
        }
    }
    println!(
        "{exact} of {} transcripts re-render byte for byte",
        transcripts.len()
    );
    assert_eq!(exact, transcripts.len());
    // 4 of the 2,312 end with consecutive assistant turns (checked with a Python regex split).
    assert_eq!(well_formed, transcripts.len() - 4);
}

#[test]
fn hf_tokenizer_json_matches_the_tokenizers_reference() {
    let fixture = read_json(&format!("{FIXTURES}/tokenizer_tiny_encodings.json"));
    let path = Path::new(FIXTURES).join("tiny_tokenizer/tokenizer.json");
    let tokenizer = Tokenizer::from_hf_file(&path, None, None).unwrap();
    assert_eq!(
        tokenizer.vocab_size() as u64,
        fixture["vocab_size"].as_u64().unwrap()
    );
    assert_eq!(
        tokenizer.eos_id() as u64,
        fixture["eos_id"].as_u64().unwrap()
    );
    assert_eq!(tokenizer.pad_id(), tokenizer.eos_id());
    for (text, ids) in cases(&fixture) {
        assert_eq!(tokenizer.encode(&text).unwrap(), ids, "encoding {text:?}");
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
    let err = tokenizer.decode(&[100_000]).unwrap_err();
    assert!(
        matches!(
            err,
            rlxf_model::ModelError::UnknownTokenId { id: 100_000, .. }
        ),
        "{err}"
    );
}

fn model_dir(config: Option<&str>, with_tokenizer: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(config) = config {
        std::fs::write(dir.path().join("config.json"), config).unwrap();
    }
    if with_tokenizer {
        std::fs::copy(
            Path::new(FIXTURES).join("tiny_tokenizer/tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
    }
    dir
}

#[test]
fn load_tokenizer_prefers_tokenizer_json_then_the_builtin_bpe() {
    let dir = model_dir(
        Some(r#"{"model_type": "gpt_neo", "vocab_size": 300, "eos_token_id": 5}"#),
        true,
    );
    let tokenizer = load_tokenizer(dir.path()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 300);
    assert_eq!(tokenizer.eos_id(), 5, "config.json's eos_token_id wins");

    let dir = model_dir(
        Some(r#"{"model_type": "gpt_neo", "vocab_size": 50257}"#),
        false,
    );
    assert_eq!(
        load_tokenizer(dir.path())
            .unwrap()
            .encode("Hello world")
            .unwrap(),
        vec![15496, 995]
    );
    let dir = model_dir(Some(r#"{"model_type": "gpt2"}"#), false);
    assert_eq!(load_tokenizer(dir.path()).unwrap().eos_id(), GPT2_EOS_ID);
}

#[test]
fn load_tokenizer_reports_bad_model_directories() {
    // Tokenizer ids past the model's embedding table.
    let dir = model_dir(
        Some(r#"{"model_type": "gpt_neo", "vocab_size": 1000}"#),
        false,
    );
    let err = load_tokenizer(dir.path()).unwrap_err();
    assert!(err.is_bad_input());
    assert!(
        err.to_string().contains("50256") && err.to_string().contains("1000"),
        "{err}"
    );

    let dir = model_dir(Some(r#"{"model_type": "llama"}"#), false);
    let err = load_tokenizer(dir.path()).unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("llama"),
        "{err}"
    );

    let dir = model_dir(None, false);
    let err = load_tokenizer(dir.path()).unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("tokenizer.json"),
        "{err}"
    );

    let dir = model_dir(
        Some(r#"{"model_type": "gpt_neo", "eos_token_id": "x"}"#),
        true,
    );
    let err = load_tokenizer(dir.path()).unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("eos_token_id"),
        "{err}"
    );

    let dir = model_dir(Some("{not json"), false);
    assert!(load_tokenizer(dir.path()).unwrap_err().is_bad_input());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    let err = load_tokenizer(dir.path()).unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn exported_tokenizer_json_encodes_like_the_embedded_bpe() {
    let fixture = read_json(&format!("{FIXTURES}/tokenizer_gpt2_encodings.json"));
    let exported = rlxf_model::tokenizer::gpt2_tokenizer_json();
    let merges = exported["model"]["merges"].as_array().unwrap();
    assert_eq!(merges.len(), 50000);
    for (merge, want) in merges
        .iter()
        .zip(fixture["first_merges"].as_array().unwrap())
    {
        let want = format!(
            "{} {}",
            want[0].as_str().unwrap(),
            want[1].as_str().unwrap()
        );
        assert_eq!(merge.as_str().unwrap(), want);
    }

    let dir = tempfile::tempdir().unwrap();
    rlxf_model::tokenizer::save_gpt2_tokenizer(dir.path()).unwrap();
    let hf = Tokenizer::from_hf_file(&dir.path().join("tokenizer.json"), None, None).unwrap();
    assert_eq!(hf.vocab_size(), GPT2_VOCAB_SIZE);
    assert_eq!(hf.eos_id(), GPT2_EOS_ID);
    assert_eq!(hf.max_token_id(), GPT2_EOS_ID);
    for (text, ids) in cases(&fixture) {
        // The HF tokenizer matches added tokens in text; the embedded BPE deliberately does not.
        if text.contains("<|endoftext|>") {
            continue;
        }
        assert_eq!(hf.encode(&text).unwrap(), ids, "encoding {text:?}");
        assert_eq!(hf.decode(&ids).unwrap(), text);
    }
    // Two BPE implementations (tiktoken's and Hugging Face's) over every HH test transcript.
    let Some(transcripts) = hh_chosen_transcripts() else {
        return;
    };
    let embedded = Tokenizer::gpt2();
    for transcript in &transcripts {
        assert_eq!(
            hf.encode(transcript).unwrap(),
            embedded.encode(transcript).unwrap()
        );
    }
}
