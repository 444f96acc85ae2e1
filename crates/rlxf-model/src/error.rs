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

    #[error("{path}: GGUF `{key}`: {reason}")]
    InvalidGguf {
        path: PathBuf,
        key: String,
        reason: String,
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

    #[error("cannot fetch model `{model}`: {reason}")]
    FetchFailed { model: String, reason: String },

    #[error(
        "{path}: sha256 is {found}, expected {expected}; the file is damaged or not the pinned one"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error(
        "model `{name}` is not fetched yet (looked in {dir}): run `rlxf model fetch {name}` first \
         (set RLXF_CACHE to the --cache-dir it used, if any)"
    )]
    NotFetched { name: String, dir: PathBuf },

    #[error("{path}: cannot load tokenizer: {message}")]
    TokenizerLoad { path: PathBuf, message: String },

    #[error(
        "{dir}: no tokenizer found: expected tokenizer.json, or a config.json whose model_type is \
         gpt_neo or gpt2 (which use the built-in GPT-2 BPE){detail}"
    )]
    NoTokenizer { dir: PathBuf, detail: String },

    #[error(
        "{dir}: the tokenizer produces ids up to {max_token_id}, but the model's vocabulary has only \
         {model_vocab} entries; the tokenizer does not belong to this model"
    )]
    TokenizerVocabMismatch {
        dir: PathBuf,
        max_token_id: u32,
        model_vocab: usize,
    },

    #[error("tokenizer failed: {0}")]
    Encode(String),

    #[error("token id {id} is not in the tokenizer's vocabulary ({vocab} entries)")]
    UnknownTokenId { id: u32, vocab: usize },

    #[error("malformed dialogue transcript: {reason} (near {excerpt:?})")]
    MalformedTranscript { reason: String, excerpt: String },

    #[error("generation setting `{field}`: {message}")]
    InvalidGenerationConfig {
        field: &'static str,
        message: String,
    },

    #[error("prompt {index}: {message}")]
    InvalidPrompt { index: usize, message: String },
}

impl ModelError {
    /// True when the error was caused by the user's input (exit code 2), false for runtime failures.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ModelError::Tensor(_)
            | ModelError::Io { .. }
            | ModelError::HubUnavailable { .. }
            | ModelError::FetchFailed { .. }
            | ModelError::ChecksumMismatch { .. } => false,
            ModelError::InvalidConfig { .. }
            | ModelError::UnknownModelType { .. }
            | ModelError::InvalidGguf { .. }
            | ModelError::NotFetched { .. }
            | ModelError::MissingWeights { .. }
            | ModelError::UnreadableWeights { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::ShapeMismatch { .. }
            | ModelError::SequenceTooLong { .. }
            | ModelError::InvalidInput(_)
            | ModelError::TokenizerLoad { .. }
            | ModelError::NoTokenizer { .. }
            | ModelError::TokenizerVocabMismatch { .. }
            | ModelError::MalformedTranscript { .. }
            | ModelError::InvalidGenerationConfig { .. }
            | ModelError::InvalidPrompt { .. } => true,
            // An unknown id comes out of a model whose vocabulary outgrows its tokenizer, and a
            // tokenizer failure is internal to the tokenizer: neither is something the user typed.
            ModelError::Encode(_) | ModelError::UnknownTokenId { .. } => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
