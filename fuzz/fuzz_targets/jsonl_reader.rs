//! The JSONL reader and record conversion on arbitrary bytes, in every JSONL format, strict and
//! skipping: never a panic; strict loading either fails or reports no problem but HH mismatches.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rlxf_data::{load_jsonl_bytes, Format, LoadOptions, ProblemKind};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Hh, Format::Jsonl] {
        for skip_invalid in [false, true] {
            let options = LoadOptions {
                skip_invalid,
                ..LoadOptions::default()
            };
            match load_jsonl_bytes(data, Path::new("fuzz.jsonl"), format, &options) {
                Ok(loaded) => {
                    let report = &loaded.report;
                    assert_eq!(
                        loaded.pairs.len() + report.problems.len(),
                        report.records_read
                    );
                    if !skip_invalid {
                        assert_eq!(report.count(ProblemKind::InvalidRecord), 0);
                    }
                }
                Err(err) => assert!(
                    err.is_bad_input(),
                    "in-memory input failed at runtime: {err}"
                ),
            }
        }
    }
});
