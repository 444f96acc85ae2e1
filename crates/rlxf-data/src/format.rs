//! Input formats, configurable field names, and format detection.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{DataError, Result};
use crate::jsonl::{open_text, JsonLines};

/// How a file's records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Anthropic HH-RLHF JSONL (optionally gzip): `{"chosen": transcript, "rejected": transcript}`.
    Hh,
    /// JSONL (optionally gzip) with separate prompt / chosen / rejected fields: rlxf's canonical
    /// form, Dahoas/rm-static and full-hh-rlhf exported as JSONL, or any JSONL with `--fields`.
    Jsonl,
    /// Parquet with prompt / chosen / rejected columns (Dahoas/rm-static, Dahoas/full-hh-rlhf).
    Parquet,
}

impl Format {
    pub const NAMES: [&'static str; 3] = ["hh", "jsonl", "parquet"];
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Hh => "hh",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        })
    }
}

impl FromStr for Format {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "hh" => Ok(Format::Hh),
            "jsonl" => Ok(Format::Jsonl),
            "parquet" => Ok(Format::Parquet),
            other => Err(DataError::Option {
                option: "format",
                message: format!("`{other}` is not one of {:?}", Format::NAMES),
            }),
        }
    }
}

/// The record field (JSONL) or column (Parquet) names to read. The defaults are rlxf's canonical
/// names, which rm-static / full-hh-rlhf share; HH transcripts use only `chosen` and `rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldNames {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Optional in the data: a record without it gets a position-based id.
    pub id: String,
    /// Optional in the data: a record without it is tagged by the context rules.
    pub context: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames {
            prompt: "prompt".into(),
            chosen: "chosen".into(),
            rejected: "rejected".into(),
            id: "id".into(),
            context: "context".into(),
        }
    }
}

impl FieldNames {
    /// Applies overrides written as `role=name` pairs separated by commas, e.g.
    /// `prompt=question,chosen=good,rejected=bad`. Roles not named keep their defaults.
    pub fn with_overrides(mut self, spec: &str) -> Result<Self> {
        let bad = |message: String| DataError::Option {
            option: "fields",
            message,
        };
        for item in spec
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (role, name) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{item}` is not of the form role=name")))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(bad(format!("`{item}` names no field")));
            }
            let slot = match role.trim() {
                "prompt" => &mut self.prompt,
                "chosen" => &mut self.chosen,
                "rejected" => &mut self.rejected,
                "id" => &mut self.id,
                "context" => &mut self.context,
                other => {
                    return Err(bad(format!(
                        "unknown role `{other}` (expected prompt, chosen, rejected, id or context)"
                    )))
                }
            };
            *slot = name.to_string();
        }
        Ok(self)
    }
}

/// Guesses a file's format: `.parquet` files are Parquet; anything else is read as JSONL and its
/// first valid record decides: a `prompt` field (as named in `fields`) means [`Format::Jsonl`],
/// `chosen` and `rejected` without it mean [`Format::Hh`]. A file with no valid record is left to
/// the JSONL reader, which reports what is wrong with it.
pub fn detect_format(path: &Path, fields: &FieldNames) -> Result<Format> {
    let is_parquet = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("parquet"));
    if is_parquet {
        return Ok(Format::Parquet);
    }
    let (reader, gzip) = open_text(path)?;
    let Some(first) = JsonLines::new(reader, path, gzip).find_map(|record| record.ok()) else {
        return Ok(Format::Jsonl);
    };
    let object = first.1;
    if object.contains_key(&fields.prompt) {
        Ok(Format::Jsonl)
    } else if object.contains_key(&fields.chosen) && object.contains_key(&fields.rejected) {
        Ok(Format::Hh)
    } else {
        let mut found: Vec<&String> = object.keys().collect();
        found.sort();
        Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!(
                "cannot tell the format from the first record (fields {found:?}); expected \
                 `{}`, `{}`, `{}` or HH `chosen`/`rejected` transcripts: pass --format and/or \
                 --fields",
                fields.prompt, fields.chosen, fields.rejected
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_overrides_replace_only_the_named_roles() {
        let fields = FieldNames::default()
            .with_overrides("prompt=question, rejected = bad")
            .unwrap();
        assert_eq!(fields.prompt, "question");
        assert_eq!(fields.rejected, "bad");
        assert_eq!(fields.chosen, "chosen");
        assert!(FieldNames::default().with_overrides("answer=x").is_err());
        assert!(FieldNames::default().with_overrides("prompt").is_err());
        assert!(FieldNames::default().with_overrides("prompt=").is_err());
    }

    #[test]
    fn format_names_round_trip() {
        for name in Format::NAMES {
            assert_eq!(name.parse::<Format>().unwrap().to_string(), name);
        }
        assert!("csv".parse::<Format>().is_err());
    }
}
