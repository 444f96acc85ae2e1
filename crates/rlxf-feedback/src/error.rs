//! The feedback crate's error type. [`FeedbackError::is_bad_input`] tells the user's mistakes (a
//! template, a config, a pairs file) from runtime failures (a server that keeps failing), so the CLI
//! can exit 2 or 1.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(transparent)]
    Model(#[from] rlxf_model::ModelError),

    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),

    #[error(transparent)]
    Data(#[from] rlxf_data::DataError),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A labeler config, template or exemplar file that cannot be used.
    #[error("{origin}: field `{field}`: {reason}")]
    InvalidConfig {
        origin: String,
        field: String,
        reason: String,
    },

    /// A choice (`"1"`, `"2"`, a score) whose tokens are not the ending's tokens followed by
    /// tokens of its own, so its probability cannot be read after the ending.
    #[error(
        "choice {choice:?} does not begin a token of its own after the ending {ending:?} for this \
         tokenizer (it merges with the end of the ending); end the template's ending without \
         trailing whitespace"
    )]
    ChoiceMergesWithEnding { choice: String, ending: String },

    #[error("label cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("label cache {path}: entry {key} is not a valid answer: {reason}")]
    CorruptCacheEntry {
        path: PathBuf,
        key: String,
        reason: String,
    },

    /// An HTTP request that failed for good: a non-retryable status, or retries used up.
    #[error("{url}: {message}")]
    Http { url: String, message: String },

    /// A server answer without what labeling needs (no log-probs, no choices).
    #[error("{url}: unusable response: {reason}")]
    BadResponse { url: String, reason: String },

    /// A backend that broke its contract (answered a query twice, or not at all).
    #[error("backend error: {0}")]
    Backend(String),

    /// Inputs that do not fit together (empty pair list, a response missing, ...).
    #[error("invalid feedback input: {0}")]
    InvalidInput(String),
}

pub type Result<T, E = FeedbackError> = std::result::Result<T, E>;

impl FeedbackError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(origin: impl Into<String>, field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            origin: origin.into(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// True when the user's input caused the error (exit code 2 in the CLI).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Model(err) => err.is_bad_input(),
            Self::Data(err) => err.is_bad_input(),
            Self::InvalidConfig { .. }
            | Self::ChoiceMergesWithEnding { .. }
            | Self::InvalidInput(_) => true,
            Self::Io { .. }
            | Self::Tensor(_)
            | Self::Cache { .. }
            | Self::CorruptCacheEntry { .. }
            | Self::Http { .. }
            | Self::BadResponse { .. }
            | Self::Backend(_) => false,
        }
    }
}
