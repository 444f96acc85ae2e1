//! The data crate's error type. Every variant names the file, and the line/row and field where known.

use std::fmt;
use std::path::PathBuf;

/// Where in an input a record sits: a 1-based JSONL line or a 1-based Parquet row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Line(usize),
    Row(usize),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Row(n) => write!(f, "row {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An input file or folder the user named does not exist.
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },

    /// Reading or writing failed for a reason outside the data (permissions, disk full, ...).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file holds no records at all.
    #[error("{path}: the file is empty (no records)")]
    Empty { path: PathBuf },

    /// A gzip stream ends early or is corrupt.
    #[error("{path}: corrupt or truncated gzip data after line {after_line}: {message}")]
    Gzip {
        path: PathBuf,
        after_line: usize,
        message: String,
    },

    /// A JSONL line holds bytes that are not UTF-8.
    #[error("{path}: {position}: not valid UTF-8 ({message})")]
    NotUtf8 {
        path: PathBuf,
        position: Position,
        message: String,
    },

    /// A JSONL line is not a JSON object.
    #[error("{path}: {position}: malformed JSON: {message}")]
    Json {
        path: PathBuf,
        position: Position,
        message: String,
    },

    /// A record lacks a field the format needs.
    #[error("{path}: {position}: missing field `{field}`")]
    MissingField {
        path: PathBuf,
        position: Position,
        field: String,
    },

    /// A record's field holds the wrong kind of value.
    #[error("{path}: {position}: field `{field}` should be {expected}, found {found}")]
    WrongType {
        path: PathBuf,
        position: Position,
        field: String,
        expected: &'static str,
        found: String,
    },

    /// A Parquet file lacks the columns the format needs.
    #[error(
        "{path}: Parquet file lacks column(s) {missing:?} (it has {found:?}); expected the \
         rm-static / full-hh-rlhf columns prompt, chosen, rejected or --fields naming yours"
    )]
    ParquetColumns {
        path: PathBuf,
        missing: Vec<String>,
        found: Vec<String>,
    },

    /// The Parquet file cannot be decoded.
    #[error("{path}: invalid Parquet data: {message}")]
    Parquet { path: PathBuf, message: String },

    /// The input's format could not be determined or is not supported.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },

    /// A source string (path, `hf://...` or `embedded`) cannot be understood.
    #[error("invalid source `{source_text}`: {message}")]
    Source {
        source_text: String,
        message: String,
    },

    /// The Hugging Face Hub could not be reached or refused the request.
    #[error(
        "could not fetch {what} from the Hugging Face Hub: {message}. Without network access, \
         download the dataset files yourself (e.g. from https://huggingface.co/datasets/{repo_id}) \
         and pass their local path instead of the hf:// source"
    )]
    Hub {
        repo_id: String,
        what: String,
        message: String,
    },

    /// A context rule file is malformed.
    #[error("{path}: invalid context rules: {message}")]
    ContextRules { path: PathBuf, message: String },

    /// An option value makes no sense (a split that does not sum to 1, say).
    #[error("invalid {option}: {message}")]
    Option {
        option: &'static str,
        message: String,
    },

    /// The output folder exists already and the caller did not ask to replace it.
    #[error("{path}: output folder exists and is not empty (pass overwrite to replace it)")]
    OutputExists { path: PathBuf },
}

impl DataError {
    /// True when the error was caused by the user's input (exit code 2), false for runtime failures.
    pub fn is_bad_input(&self) -> bool {
        match self {
            DataError::Io { .. } | DataError::Hub { .. } => false,
            DataError::NotFound { .. }
            | DataError::Empty { .. }
            | DataError::Gzip { .. }
            | DataError::NotUtf8 { .. }
            | DataError::Json { .. }
            | DataError::MissingField { .. }
            | DataError::WrongType { .. }
            | DataError::ParquetColumns { .. }
            | DataError::Parquet { .. }
            | DataError::Format { .. }
            | DataError::Source { .. }
            | DataError::ContextRules { .. }
            | DataError::Option { .. }
            | DataError::OutputExists { .. } => true,
        }
    }

    /// True for an error confined to one record, which `skip_invalid` may turn into a reported skip.
    pub fn is_record_error(&self) -> bool {
        matches!(
            self,
            DataError::NotUtf8 { .. }
                | DataError::Json { .. }
                | DataError::MissingField { .. }
                | DataError::WrongType { .. }
        )
    }

    /// Wraps an I/O error on `path`, telling a missing file (the user's mistake) from other failures.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path }
        } else {
            DataError::Io { path, source }
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
