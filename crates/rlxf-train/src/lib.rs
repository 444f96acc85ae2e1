//! Training for rlxf: one module per algorithm on a shared loop.
//!
//! - [`optim`]: AdamW updating parameters in place, global-norm clipping; [`schedule`]: warmup +
//!   linear/cosine decay; [`losses`]: Bradley–Terry (hard and soft labels), DPO (TRL's sigmoid loss
//!   with label smoothing), SFT cross-entropy.
//! - [`trainer`]: the loop (seeded shuffling, gradient accumulation, evaluation, checkpoints,
//!   `metrics.jsonl`, bit-identical resume) that [`sft`], [`reward`] and [`dpo`] plug into.
//! - [`rl`]: online RL (PPO, A2C, RLOO) on rollouts from the policy, rewarded by a reward model,
//!   a synthetic reward or (through the CLI) the AI labeler, with a KL leash to the reference.
//! - [`seed_replication`]: the seed study's two SFT arms (chosen / rejected) as one preset.

pub mod checkpoint;
pub mod config;
pub mod dpo;
pub mod error;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod reward;
pub mod rl;
pub mod schedule;
pub mod seed_replication;
pub mod setup;
pub mod sft;
pub mod trainer;

pub use error::{Result, TrainError};
pub use optim::{AdamW, AdamWConfig, NamedParam};
pub use schedule::{Decay, Schedule};
pub use trainer::{
    train, LoopConfig, Objective, Precision, RunOptions, Silent, TrainObserver, TrainSummary,
};
