//! Loading every supported format, and every kind of bad input, through the public API.

use std::io::Write;
use std::path::{Path, PathBuf};

use rlxf_data::{
    load_pairs, read_pairs_jsonl, write_jsonl, DataError, FieldNames, Format, LoadOptions,
    Position, PreferencePair, ProblemKind, Source,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const HH_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/hh-rlhf-harmless-base/test.jsonl.gz"
);

fn load(path: &Path, options: &LoadOptions) -> rlxf_data::Result<rlxf_data::LoadedPairs> {
    load_pairs(&Source::Path(path.to_path_buf()), options)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn skipping() -> LoadOptions {
    LoadOptions {
        skip_invalid: true,
        ..LoadOptions::default()
    }
}

#[test]
fn parquet_fixture_matches_its_json_sidecar() {
    let expected: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURES).join("rm_static_sample.json")).unwrap(),
    )
    .unwrap();
    let path = Path::new(FIXTURES).join("rm_static_sample.parquet");
    let loaded = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.report.inputs[0].format, Format::Parquet);
    assert_eq!(loaded.pairs.len(), expected.len());
    for (i, (pair, row)) in loaded.pairs.iter().zip(&expected).enumerate() {
        assert_eq!(pair.prompt, row["prompt"].as_str().unwrap());
        assert_eq!(pair.chosen, row["chosen"].as_str().unwrap());
        assert_eq!(pair.rejected, row["rejected"].as_str().unwrap());
        assert_eq!(pair.id, format!("rm_static_sample.parquet:R{}", i + 1));
        assert_eq!(pair.context, None);
    }
    assert!(loaded.report.problems.is_empty());
}

#[test]
fn parquet_without_the_columns_is_rejected_naming_them() {
    let path = Path::new(FIXTURES).join("wrong_columns.parquet");
    let err = load(&path, &skipping()).unwrap_err();
    assert!(matches!(&err, DataError::ParquetColumns { missing, .. } if missing.len() == 3));
    let message = err.to_string();
    assert!(
        message.contains("wrong_columns.parquet") && message.contains("\"prompt\""),
        "{message}"
    );
    assert!(message.contains("\"question\""), "{message}");
    assert!(err.is_bad_input());

    // The same file reads once --fields names its columns.
    let fields = FieldNames::default()
        .with_overrides("prompt=question,chosen=answer,rejected=answer")
        .unwrap();
    let options = LoadOptions {
        fields,
        ..LoadOptions::default()
    };
    assert_eq!(load(&path, &options).unwrap().pairs[0].prompt, "What?");
}

#[test]
fn parquet_null_cell_names_row_and_field_and_can_be_skipped() {
    let path = Path::new(FIXTURES).join("null_rejected.parquet");
    let err = load(&path, &LoadOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, DataError::WrongType { position: Position::Row(2), field, .. } if field == "rejected"),
        "{message}"
    );
    assert!(
        message.contains("null_rejected.parquet: row 2: field `rejected`"),
        "{message}"
    );
    let loaded = load(&path, &skipping()).unwrap();
    assert_eq!(loaded.pairs.len(), 2);
    assert_eq!(loaded.report.count(ProblemKind::InvalidRecord), 1);
    assert_eq!(loaded.report.problems[0].position, Position::Row(2));
}

#[test]
fn non_parquet_bytes_in_a_parquet_file_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "fake.parquet", b"not parquet at all");
    let err = load(&path, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::Parquet { .. }) && err.is_bad_input(),
        "{err}"
    );
}

#[test]
fn real_hh_harmless_test_file_splits_into_2312_pairs() {
    let path = Path::new(HH_TEST);
    if !path.exists() {
        println!("skipping: {HH_TEST} is absent");
        return;
    }
    let loaded = load(path, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.report.inputs[0].format, Format::Hh);
    assert_eq!(loaded.report.records_read, 2312);
    assert_eq!(
        loaded.pairs.len(),
        2312,
        "problems: {:?}",
        loaded.report.problems
    );
    assert!(loaded.report.problems.is_empty());

    // Independent check: prompt + reply reproduces each raw transcript byte for byte.
    let mut raw = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut raw,
    )
    .unwrap();
    for (pair, line) in loaded.pairs.iter().zip(raw.lines()) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            format!("{}{}", pair.prompt, pair.chosen),
            record["chosen"].as_str().unwrap()
        );
        assert_eq!(
            format!("{}{}", pair.prompt, pair.rejected),
            record["rejected"].as_str().unwrap()
        );
        assert!(pair.prompt.ends_with("\n\nAssistant:"));
        assert!(!pair.chosen.contains("\n\nHuman:") && !pair.rejected.contains("\n\nHuman:"));
    }
    assert_eq!(loaded.pairs[0].id, "test.jsonl.gz:L1");
}

#[test]
fn hh_pairs_without_a_shared_prompt_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = concat!(
        r#"{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}"#,
        "\n",
        r#"{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}"#,
        "\n",
        r#"{"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: a\n\nAssistant: c\n\nHuman: z\n\nAssistant: w"}"#,
        "\n"
    );
    let path = write(dir.path(), "hh.jsonl.gz", &gzip(text.as_bytes()));
    let loaded = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.pairs.len(), 1);
    assert_eq!(loaded.pairs[0].chosen, " hello");
    let lines: Vec<Position> = loaded.report.problems.iter().map(|p| p.position).collect();
    assert_eq!(lines, vec![Position::Line(2), Position::Line(3)]);
    assert_eq!(loaded.report.count(ProblemKind::NoSharedPrompt), 2);
}

#[test]
fn generic_jsonl_with_configured_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "custom.jsonl",
        b"{\"q\": \"\\n\\nHuman: hi\\n\\nAssistant:\", \"good\": \" hey\", \"bad\": \" no\", \"uid\": 17, \"tag\": \"general\"}\n",
    );
    let fields = FieldNames::default()
        .with_overrides("prompt=q,chosen=good,rejected=bad,id=uid,context=tag")
        .unwrap();
    let options = LoadOptions {
        fields,
        ..LoadOptions::default()
    };
    let pair = &load(&path, &options).unwrap().pairs[0];
    assert_eq!(
        pair,
        &PreferencePair {
            id: "17".into(),
            prompt: "\n\nHuman: hi\n\nAssistant:".into(),
            chosen: " hey".into(),
            rejected: " no".into(),
            context: Some("general".into()),
        }
    );
    // Without the field names the first record fits no format.
    let err = load(&path, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::Format { .. }) && err.to_string().contains("--fields"),
        "{err}"
    );
}

#[test]
fn canonical_jsonl_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = rlxf_data::embedded_default_pairs();
    let path = dir.path().join("pairs.jsonl");
    write_jsonl(&path, &pairs).unwrap();
    assert_eq!(read_pairs_jsonl(&path).unwrap(), pairs);
    let loaded = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.report.inputs[0].format, Format::Jsonl);
}

#[test]
fn a_folder_reads_its_data_files_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let line =
        |p: &str| format!("{{\"prompt\": \"{p}\", \"chosen\": \" a\", \"rejected\": \" b\"}}\n");
    write(dir.path(), "b.jsonl", line("second").as_bytes());
    write(dir.path(), "a.jsonl.gz", &gzip(line("first").as_bytes()));
    write(dir.path(), "notes.txt", b"ignored");
    let loaded = load(dir.path(), &LoadOptions::default()).unwrap();
    let prompts: Vec<&str> = loaded.pairs.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(prompts, vec!["first", "second"]);
    assert_eq!(loaded.report.inputs.len(), 2);
}

/// One bad JSONL input: its bytes, and what the error must say.
struct BadCase {
    name: &'static str,
    bytes: Vec<u8>,
    expect: &'static [&'static str],
    /// Whether `skip_invalid` turns it into a skip (line errors) or it always fails (file errors).
    skippable: bool,
}

fn bad_cases() -> Vec<BadCase> {
    let good = br#"{"prompt": "p", "chosen": " a", "rejected": " b"}"#;
    let with_line2 =
        |line: &[u8]| [good.as_slice(), b"\n", line, b"\n", good.as_slice(), b"\n"].concat();
    let full = gzip(&with_line2(good));
    vec![
        BadCase {
            name: "malformed.jsonl",
            bytes: with_line2(br#"{"prompt": "p", "chosen": "#),
            expect: &["malformed.jsonl", "line 2", "malformed JSON"],
            skippable: true,
        },
        BadCase {
            name: "missing.jsonl",
            bytes: with_line2(br#"{"prompt": "p", "chosen": " a"}"#),
            expect: &["missing.jsonl", "line 2", "missing field `rejected`"],
            skippable: true,
        },
        BadCase {
            name: "wrongtype.jsonl",
            bytes: with_line2(br#"{"prompt": "p", "chosen": 5, "rejected": " b"}"#),
            expect: &[
                "wrongtype.jsonl",
                "line 2",
                "field `chosen`",
                "found an integer",
            ],
            skippable: true,
        },
        BadCase {
            name: "latin1.jsonl",
            bytes: with_line2(
                b"{\"prompt\": \"caf\xe9\", \"chosen\": \" a\", \"rejected\": \" b\"}",
            ),
            expect: &["latin1.jsonl", "line 2", "not valid UTF-8"],
            skippable: true,
        },
        BadCase {
            name: "truncated.jsonl.gz",
            bytes: full[..full.len() - 12].to_vec(),
            expect: &["truncated.jsonl.gz", "truncated gzip"],
            skippable: false,
        },
        BadCase {
            name: "empty.jsonl",
            bytes: Vec::new(),
            expect: &["empty.jsonl", "empty"],
            skippable: false,
        },
        BadCase {
            name: "blank.jsonl",
            bytes: b"\n  \n".to_vec(),
            expect: &["blank.jsonl", "empty"],
            skippable: false,
        },
    ]
}

#[test]
fn every_bad_input_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for case in bad_cases() {
        let path = write(dir.path(), case.name, &case.bytes);
        let err = load(&path, &LoadOptions::default()).unwrap_err();
        let message = err.to_string();
        assert!(err.is_bad_input(), "{}: {message}", case.name);
        for needle in case.expect {
            assert!(
                message.contains(needle),
                "{}: `{message}` lacks `{needle}`",
                case.name
            );
        }
        match (case.skippable, load(&path, &skipping())) {
            (true, Ok(loaded)) => {
                assert_eq!(loaded.pairs.len(), 2, "{}", case.name);
                assert_eq!(
                    loaded.report.count(ProblemKind::InvalidRecord),
                    1,
                    "{}",
                    case.name
                );
                assert_eq!(loaded.report.problems[0].position, Position::Line(2));
            }
            (false, Err(err)) => assert!(err.is_bad_input(), "{}", case.name),
            (skippable, other) => panic!("{}: skippable={skippable} but got {other:?}", case.name),
        }
    }
}

#[test]
fn missing_file_is_bad_input_naming_the_path() {
    let err = load(
        Path::new("/nonexistent/pairs.jsonl"),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }) && err.is_bad_input());
    assert!(err.to_string().contains("/nonexistent/pairs.jsonl"));
}

#[test]
fn forced_format_overrides_detection() {
    let dir = tempfile::tempdir().unwrap();
    // Has a prompt field, so detection says jsonl; forced hh reads the transcripts instead.
    let path = write(
        dir.path(),
        "both.jsonl",
        br#"{"prompt": "ignored", "chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}"#,
    );
    assert_eq!(
        load(&path, &LoadOptions::default()).unwrap().pairs[0].prompt,
        "ignored"
    );
    let forced = LoadOptions {
        format: Some(Format::Hh),
        ..LoadOptions::default()
    };
    assert_eq!(
        load(&path, &forced).unwrap().pairs[0].prompt,
        "\n\nHuman: q\n\nAssistant:"
    );
}

#[test]
fn rm_static_rows_as_jsonl_read_like_the_parquet_file() {
    let rows: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURES).join("rm_static_sample.json")).unwrap(),
    )
    .unwrap();
    let mut text = String::new();
    for row in &rows {
        // rm-static's JSON export carries the extra `response` column too.
        let mut row = row.clone();
        row["response"] = row["chosen"].clone();
        text.push_str(&serde_json::to_string(&row).unwrap());
        text.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "rm_static.jsonl", text.as_bytes());
    let from_jsonl = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(from_jsonl.report.inputs[0].format, Format::Jsonl);
    let from_parquet = load(
        &Path::new(FIXTURES).join("rm_static_sample.parquet"),
        &LoadOptions::default(),
    )
    .unwrap();
    let texts = |pairs: &[PreferencePair]| -> Vec<(String, String, String)> {
        pairs
            .iter()
            .map(|p| (p.prompt.clone(), p.chosen.clone(), p.rejected.clone()))
            .collect()
    };
    assert_eq!(texts(&from_jsonl.pairs), texts(&from_parquet.pairs));
}
