//! The model crate's error type. Every variant that comes from something the user handed us
//! (a file, a config, a prompt) reports true from [`ModelError::is_bad_input`], so the CLI can exit 2.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid config: field `{field}`: {reason}")]
    InvalidConfig {
        path: PathBuf,
        field: String,
        reason: String,
    },

    #[error(
        "{path}: unsupported model_type `{found}` (supported: {})",
        supported.join(", ")
    )]
    UnknownModelType {
        path: PathBuf,
        found: String,
        supported: Vec<&'static str>,
    },

    #[error("{path}: no weights found (expected model.safetensors or pytorch_model.bin)")]
    MissingWeights { path: PathBuf },

    #[error("{path}: cannot read weights: {reason}")]
    UnreadableWeights { path: PathBuf, reason: String },

    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "sequence of {length} positions is longer than the model's position table ({max_positions}); \
         truncate the input to at most {max_positions} tokens"
    )]
    SequenceTooLong { length: usize, max_positions: usize },

    /// Inputs handed to a model function that do not fit together (shapes, empty prompts, ...).
    #[error("invalid model input: {0}")]
    InvalidInput(String),

    #[error("model `{model_id}` is not a local directory and could not be fetched from the Hugging Face hub ({reason}); without network access pass a local directory holding config.json and model.safetensors")]
    HubUnavailable { model_id: String, reason: String },
}

impl ModelError {
    /// True when the error was caused by the user's input (exit code 2), false for runtime failures.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ModelError::Tensor(_)
            | ModelError::Io { .. }
            | ModelError::HubUnavailable { .. } => false,
            ModelError::InvalidConfig { .. }
            | ModelError::UnknownModelType { .. }
            | ModelError::MissingWeights { .. }
            | ModelError::UnreadableWeights { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::ShapeMismatch { .. }
            | ModelError::SequenceTooLong { .. }
            | ModelError::InvalidInput(_) => true,
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
