//! Errors of the training library.

use std::path::PathBuf;

use thiserror::Error;

pub type Result<T> = std::result::Result<T, TrainError>;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] rlxf_model::ModelError),

    #[error(transparent)]
    Data(#[from] rlxf_data::DataError),

    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A config file (or override) that does not parse or holds an invalid value.
    #[error("{path}: field `{field}`: {reason}")]
    InvalidConfig {
        path: PathBuf,
        field: String,
        reason: String,
    },

    /// Input records the trainer cannot use (for instance a soft label outside [0, 1]).
    #[error("{origin}: record {record}, field `{field}`: {reason}")]
    InvalidRecord {
        origin: String,
        record: String,
        field: String,
        reason: String,
    },

    /// A checkpoint directory that is missing files or does not match the model being trained.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error(
        "loss became {value} at step {step}; training stopped. {}",
        match last_checkpoint {
            Some(dir) => format!("The last good checkpoint is {}; lower the learning rate and resume from it.", dir.display()),
            None => "No checkpoint was written yet; lower the learning rate and start again.".to_string(),
        }
    )]
    NonFiniteLoss {
        step: u64,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },

    #[error("{0}")]
    InvalidInput(String),

    /// A reward source outside this crate (an AI labeler, say) failed at run time.
    #[error("reward source {source_name}: {message}")]
    Reward {
        source_name: String,
        message: String,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the user's input (config, data, checkpoint path) caused the error.
    pub fn is_bad_input(&self) -> bool {
        match self {
            TrainError::Model(err) => err.is_bad_input(),
            TrainError::Data(err) => err.is_bad_input(),
            TrainError::InvalidConfig { .. }
            | TrainError::InvalidRecord { .. }
            | TrainError::Checkpoint { .. }
            | TrainError::InvalidInput(_) => true,
            TrainError::Candle(_)
            | TrainError::Io { .. }
            | TrainError::NonFiniteLoss { .. }
            | TrainError::Reward { .. } => false,
        }
    }
}
