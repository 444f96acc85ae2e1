//! The datasets compiled into rlxf: a small hand-written preference set and an evaluation prompt
//! set, both canonical JSONL with context tags (`crates/rlxf-data/data/`).

use std::path::Path;

use crate::error::Position;
use crate::error::Result;
use crate::jsonl::JsonLines;
use crate::load::{load_pairs, LoadOptions};
use crate::pair::{PreferencePair, Prompt};
use crate::record::{to_prompt, RecordSite};
use crate::source::Source;

pub(crate) const EMBEDDED_PAIRS: &str = include_str!("../data/default_pairs.jsonl");
pub(crate) const EMBEDDED_PAIRS_NAME: &str = "embedded:default_pairs.jsonl";
const EMBEDDED_EVAL_PROMPTS: &str = include_str!("../data/eval_prompts.jsonl");
const EMBEDDED_EVAL_PROMPTS_NAME: &str = "embedded:eval_prompts.jsonl";

/// The embedded default preference set (the `embedded` source).
pub fn embedded_default_pairs() -> Vec<PreferencePair> {
    load_pairs(&Source::Embedded, &LoadOptions::default())
        .expect("the embedded preference set is checked by the crate's tests")
        .pairs
}

/// The embedded evaluation prompts, each with its hand-assigned context.
pub fn embedded_eval_prompts() -> Vec<Prompt> {
    parse_prompts(
        EMBEDDED_EVAL_PROMPTS.as_bytes(),
        Path::new(EMBEDDED_EVAL_PROMPTS_NAME),
    )
    .expect("the embedded prompt set is checked by the crate's tests")
}

/// Reads a prompt-set JSONL file (`{"id", "text", "context"}` per line; `id` and `context`
/// optional), plain or gzip.
pub fn read_prompts_jsonl(path: &Path) -> Result<Vec<Prompt>> {
    let (reader, gzip) = crate::jsonl::open_text(path)?;
    parse_jsonl_prompts(JsonLines::new(reader, path, gzip), path)
}

fn parse_prompts(bytes: &[u8], name: &Path) -> Result<Vec<Prompt>> {
    parse_jsonl_prompts(JsonLines::new(bytes, name, false), name)
}

fn parse_jsonl_prompts<R: std::io::BufRead>(
    lines: JsonLines<R>,
    path: &Path,
) -> Result<Vec<Prompt>> {
    let source_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut prompts = Vec::new();
    for record in lines {
        let (line, object) = record?;
        let site = RecordSite {
            path,
            source_name: &source_name,
            position: Position::Line(line),
        };
        prompts.push(to_prompt(&object, &site)?);
    }
    if prompts.is_empty() {
        return Err(crate::error::DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(prompts)
}
