//! One module per subcommand group. Commands parse arguments, call the libraries, print results.

pub mod bench;
pub mod data;
pub mod generate;
pub mod label;
pub mod logprobs;
pub mod model;
pub mod rl;
pub mod run;
pub mod serve;
pub mod train;

/// Exit code for an error: 2 when the user's input caused it, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|cause| {
        cause
            .downcast_ref::<rlxf_data::DataError>()
            .is_some_and(rlxf_data::DataError::is_bad_input)
            || cause
                .downcast_ref::<rlxf_model::ModelError>()
                .is_some_and(rlxf_model::ModelError::is_bad_input)
            || cause
                .downcast_ref::<rlxf_train::TrainError>()
                .is_some_and(rlxf_train::TrainError::is_bad_input)
            || cause
                .downcast_ref::<rlxf_feedback::FeedbackError>()
                .is_some_and(rlxf_feedback::FeedbackError::is_bad_input)
            || cause.downcast_ref::<BadInput>().is_some()
    });
    if bad_input {
        2
    } else {
        1
    }
}

/// A bad-input error raised by the CLI itself (a flag value that makes no sense, say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);
