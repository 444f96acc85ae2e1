//! Errors of the evaluation library.

use std::path::PathBuf;

use thiserror::Error;

pub type Result<T> = std::result::Result<T, EvalError>;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] rlxf_model::ModelError),

    #[error(transparent)]
    Data(#[from] rlxf_data::DataError),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A results or scores file that does not parse.
    #[error("{path}: line {line}: {reason}")]
    InvalidFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A lexicon (VADER's or a user's) with a line that does not parse.
    #[error("{file}: line {line}: {reason}")]
    Lexicon {
        file: String,
        line: usize,
        reason: String,
    },

    /// A response record that a metric cannot score (named by record and field).
    #[error("record {record}, field `{field}`: {reason}")]
    InvalidRecord {
        record: String,
        field: String,
        reason: String,
    },

    /// Arguments that do not fit together: mismatched lengths, an empty sample, a bad level.
    #[error("invalid argument `{argument}`: {reason}")]
    InvalidArgument {
        argument: &'static str,
        reason: String,
    },

    /// A metric implementation (for instance a judge) failed at run time.
    #[error("metric `{metric}` failed on record {record}: {reason}")]
    MetricFailed {
        metric: String,
        record: String,
        reason: String,
    },
}

impl EvalError {
    /// True when the error comes from the caller's input (the CLI exits 2), false for runtime failures.
    pub fn is_bad_input(&self) -> bool {
        match self {
            EvalError::Model(error) => error.is_bad_input(),
            EvalError::Data(error) => error.is_bad_input(),
            EvalError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            EvalError::Lexicon { .. }
            | EvalError::InvalidFile { .. }
            | EvalError::InvalidRecord { .. }
            | EvalError::InvalidArgument { .. } => true,
            EvalError::MetricFailed { .. } => false,
        }
    }

    pub(crate) fn invalid_argument(argument: &'static str, reason: impl Into<String>) -> Self {
        EvalError::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }
}
