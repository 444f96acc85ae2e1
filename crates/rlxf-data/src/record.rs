//! Turning one raw record (a JSON object or a Parquet row) into a [`PreferencePair`], with errors
//! that name the file, position and field.

use std::path::Path;

use parquet::record::{Field, Row};
use serde_json::{Map, Value};

use crate::error::{DataError, Position, Result};
use crate::format::{FieldNames, Format};
use crate::hh::{split_hh_pair, TranscriptMismatch};
use crate::jsonl::json_kind;
use crate::pair::{PreferencePair, Prompt};

/// What a record holds under one field name.
pub(crate) enum Cell<'a> {
    Missing,
    Null,
    Text(&'a str),
    Integer(i64),
    /// Any other kind of value, described for the error message.
    Other(&'static str),
}

/// A raw record whose fields can be looked up by name.
pub(crate) trait RawRecord {
    fn cell(&self, name: &str) -> Cell<'_>;
}

impl RawRecord for Map<String, Value> {
    fn cell(&self, name: &str) -> Cell<'_> {
        match self.get(name) {
            None => Cell::Missing,
            Some(Value::Null) => Cell::Null,
            Some(Value::String(text)) => Cell::Text(text),
            Some(Value::Number(n)) if n.is_i64() => Cell::Integer(n.as_i64().unwrap_or_default()),
            Some(other) => Cell::Other(json_kind(other)),
        }
    }
}

impl RawRecord for Row {
    fn cell(&self, name: &str) -> Cell<'_> {
        match self
            .get_column_iter()
            .find(|(column, _)| column.as_str() == name)
        {
            None => Cell::Missing,
            Some((_, Field::Null)) => Cell::Null,
            Some((_, Field::Str(text))) => Cell::Text(text),
            Some((_, Field::Bytes(bytes))) => match bytes.as_utf8() {
                Ok(text) => Cell::Text(text),
                Err(_) => Cell::Other("non-UTF-8 binary"),
            },
            Some((_, Field::Int(n))) => Cell::Integer(i64::from(*n)),
            Some((_, Field::Long(n))) => Cell::Integer(*n),
            Some((_, Field::Bool(_))) => Cell::Other("a boolean"),
            Some((_, Field::Float(_) | Field::Double(_))) => Cell::Other("a floating-point number"),
            Some((_, Field::Group(_) | Field::MapInternal(_))) => Cell::Other("a struct or map"),
            Some((_, Field::ListInternal(_))) => Cell::Other("a list"),
            Some(_) => Cell::Other("a non-string value"),
        }
    }
}

/// Where a record came from, for ids and error messages.
pub(crate) struct RecordSite<'a> {
    pub path: &'a Path,
    /// The file name used in position-based ids.
    pub source_name: &'a str,
    pub position: Position,
}

impl RecordSite<'_> {
    fn default_id(&self) -> String {
        match self.position {
            Position::Line(n) => format!("{}:L{n}", self.source_name),
            Position::Row(n) => format!("{}:R{n}", self.source_name),
        }
    }

    fn required_text<'r>(&self, record: &'r impl RawRecord, field: &str) -> Result<&'r str> {
        match record.cell(field) {
            Cell::Text(text) => Ok(text),
            Cell::Missing => Err(DataError::MissingField {
                path: self.path.to_path_buf(),
                position: self.position,
                field: field.to_string(),
            }),
            other => Err(self.wrong_type(field, "a string", &other)),
        }
    }

    fn optional_text(&self, record: &impl RawRecord, field: &str) -> Result<Option<String>> {
        match record.cell(field) {
            Cell::Missing | Cell::Null => Ok(None),
            Cell::Text(text) => Ok(Some(text.to_string())),
            other => Err(self.wrong_type(field, "a string or null", &other)),
        }
    }

    fn id(&self, record: &impl RawRecord, field: &str) -> Result<String> {
        match record.cell(field) {
            Cell::Missing | Cell::Null => Ok(self.default_id()),
            Cell::Text(text) => Ok(text.to_string()),
            Cell::Integer(n) => Ok(n.to_string()),
            other => Err(self.wrong_type(field, "a string or integer", &other)),
        }
    }

    fn wrong_type(&self, field: &str, expected: &'static str, found: &Cell<'_>) -> DataError {
        let found = match found {
            Cell::Null => "null",
            Cell::Integer(_) => "an integer",
            Cell::Other(kind) => kind,
            Cell::Missing | Cell::Text(_) => "an unexpected value",
        };
        DataError::WrongType {
            path: self.path.to_path_buf(),
            position: self.position,
            field: field.to_string(),
            expected,
            found: found.to_string(),
        }
    }
}

/// A record converts to a pair, or to a pair that cannot exist (an HH transcript pair without a
/// shared prompt), or fails with a record error.
pub(crate) enum Converted {
    Pair(PreferencePair),
    NoSharedPrompt(TranscriptMismatch),
}

pub(crate) fn to_pair(
    record: &impl RawRecord,
    site: &RecordSite<'_>,
    format: Format,
    fields: &FieldNames,
) -> Result<Converted> {
    let id = site.id(record, &fields.id)?;
    let context = site.optional_text(record, &fields.context)?;
    let (prompt, chosen, rejected) = match format {
        Format::Hh => {
            let chosen = site.required_text(record, &fields.chosen)?;
            let rejected = site.required_text(record, &fields.rejected)?;
            match split_hh_pair(chosen, rejected) {
                Ok(split) => (split.prompt, split.chosen, split.rejected),
                Err(mismatch) => return Ok(Converted::NoSharedPrompt(mismatch)),
            }
        }
        Format::Jsonl | Format::Parquet => (
            site.required_text(record, &fields.prompt)?,
            site.required_text(record, &fields.chosen)?,
            site.required_text(record, &fields.rejected)?,
        ),
    };
    Ok(Converted::Pair(PreferencePair {
        id,
        prompt: prompt.to_string(),
        chosen: chosen.to_string(),
        rejected: rejected.to_string(),
        context,
    }))
}

/// The field names of a canonical prompt-set record.
const PROMPT_FIELDS: (&str, &str, &str) = ("id", "text", "context");

pub(crate) fn to_prompt(record: &impl RawRecord, site: &RecordSite<'_>) -> Result<Prompt> {
    let (id, text, context) = PROMPT_FIELDS;
    Ok(Prompt {
        id: site.id(record, id)?,
        text: site.required_text(record, text)?.to_string(),
        context: site.optional_text(record, context)?,
    })
}
