//! Checkpoints: everything needed to continue a run exactly where it stopped.
//!
//! `RUN_DIR/checkpoints/step-00000012/` holds
//! - `config.json`, `model.safetensors`: the model, as [`LoadedModel::save_pretrained`] writes it;
//! - `optimizer.safetensors`: the AdamW moments and step counts;
//! - `trainer_state.json`: optimiser step (which is also the schedule's step), data-loader position
//!   (epoch, index into that epoch's seeded permutation), data-order RNG state, and the run's
//!   config as TOML text.
//!
//! A checkpoint is written into a temporary directory next to its final place and renamed, so a
//! crash never leaves a half-written checkpoint where [`latest_checkpoint`] would find it. The
//! temporary directory a crash does leave is removed when the run next saves a checkpoint.

use std::path::{Path, PathBuf};

use candle_core::Device;
use rlxf_model::LoadedModel;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{AdamW, NamedParam};

pub const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const MODEL_FILE: &str = "model.safetensors";
const PREFIX: &str = "step-";
/// Names of checkpoints being written (renamed to `step-…` when complete).
const UNFINISHED_PREFIX: &str = ".tmp-";

/// Where the data loader stands: the next batch starts at `index` of epoch `epoch`'s permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPosition {
    pub epoch: u64,
    pub index: usize,
}

/// State of the ChaCha8 generator that shuffled the current epoch: seeded with the run seed, one
/// stream per epoch; `word_pos` is how far the shuffle advanced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    pub stream: u64,
    pub word_pos: u128,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done (the schedule's next step index).
    pub step: u64,
    pub total_steps: u64,
    pub loader: LoaderPosition,
    pub rng: RngState,
    /// Training loss of the last step.
    pub loss: f64,
    /// The run's configuration, TOML.
    pub config: String,
}

/// Writes a checkpoint for `state.step` under `run_dir/checkpoints/` and returns its directory.
/// Keeps the newest `keep` checkpoints (at least this one) and deletes older ones.
pub fn save_checkpoint(
    run_dir: &Path,
    model: &LoadedModel,
    optimizer: &AdamW,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    save_checkpoint_with(run_dir, model, optimizer, state, keep, &|_| Ok(()))
}

/// [`save_checkpoint`] plus the files an algorithm adds (a value head, its own state):
/// `write_extra` writes them into the checkpoint's temporary directory before the rename, so they
/// appear together with the rest or not at all.
pub fn save_checkpoint_with(
    run_dir: &Path,
    model: &LoadedModel,
    optimizer: &AdamW,
    state: &TrainerState,
    keep: usize,
    write_extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let parent = run_dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&parent).map_err(|err| TrainError::io(&parent, err))?;
    // What runs killed while saving left here is as big as a checkpoint (gigabytes for a 125M
    // model with its optimizer state), and nothing else would delete it. Only the run itself
    // writes checkpoints into its folder, so none of it is in use.
    rlxf_data::atomic_file::remove_abandoned_folders(&parent, UNFINISHED_PREFIX)
        .map_err(|(path, err)| TrainError::io(path, err))?;
    let temp = tempfile::Builder::new()
        .prefix(UNFINISHED_PREFIX)
        .tempdir_in(&parent)
        .map_err(|err| TrainError::io(&parent, err))?;
    model.save_pretrained(temp.path())?;
    optimizer.save(&temp.path().join(OPTIMIZER_FILE))?;
    let state_json = serde_json::to_string_pretty(state).expect("trainer state serialises");
    write_atomic(&temp.path().join(STATE_FILE), state_json.as_bytes())?;
    write_extra(temp.path())?;

    let target = parent.join(format!("{PREFIX}{:08}", state.step));
    if target.exists() {
        // A resumed run re-reaching a step it had checkpointed before it was interrupted.
        std::fs::remove_dir_all(&target).map_err(|err| TrainError::io(&target, err))?;
    }
    let temp_path = temp.keep();
    std::fs::rename(&temp_path, &target).map_err(|err| TrainError::io(&target, err))?;

    let checkpoints = list_checkpoints(run_dir)?;
    let excess = checkpoints.len().saturating_sub(keep.max(1));
    for (_, old) in checkpoints.into_iter().take(excess) {
        std::fs::remove_dir_all(&old).map_err(|err| TrainError::io(&old, err))?;
    }
    Ok(target)
}

/// Complete checkpoints of a run, oldest first, with their steps.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let parent = run_dir.join(CHECKPOINTS_DIR);
    if !parent.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(&parent).map_err(|err| TrainError::io(&parent, err))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| TrainError::io(&parent, err))?;
        let name = entry.file_name();
        let step = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(step) = step {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(run_dir)?.pop().map(|(_, dir)| dir))
}

pub fn read_state(checkpoint: &Path) -> Result<TrainerState> {
    let path = checkpoint.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|err| TrainError::io(&path, err))?;
    serde_json::from_str(&text).map_err(|err| TrainError::Checkpoint {
        path: path.clone(),
        reason: err.to_string(),
    })
}

/// Restores the model's weights and the optimiser's state from `checkpoint`; returns the trainer
/// state. The model must have exactly the checkpoint's parameters.
pub fn restore(
    checkpoint: &Path,
    model: &LoadedModel,
    optimizer: &mut AdamW,
) -> Result<TrainerState> {
    let state = read_state(checkpoint)?;
    let params: Vec<NamedParam> = optimizer.params().cloned().collect();
    restore_params(&checkpoint.join(MODEL_FILE), &params, model.model.device())?;
    optimizer.load(&checkpoint.join(OPTIMIZER_FILE))?;
    Ok(state)
}

/// Sets every parameter of `params` from the safetensors file `weights_path`, which must hold
/// exactly those tensors with their shapes.
pub fn restore_params(weights_path: &Path, params: &[NamedParam], device: &Device) -> Result<()> {
    let weights = candle_core::safetensors::load(weights_path, &Device::Cpu)?;
    let mismatch = |reason: String| TrainError::Checkpoint {
        path: weights_path.to_path_buf(),
        reason,
    };
    if weights.len() != params.len() {
        return Err(mismatch(format!(
            "holds {} tensors, the model has {} parameters",
            weights.len(),
            params.len()
        )));
    }
    for param in params {
        let tensor = weights
            .get(&param.name)
            .ok_or_else(|| mismatch(format!("no tensor `{}`", param.name)))?;
        if tensor.dims() != param.var.dims() {
            return Err(mismatch(format!(
                "`{}` has shape {:?}, the model {:?}",
                param.name,
                tensor.dims(),
                param.var.dims()
            )));
        }
        param
            .var
            .set(&tensor.to_dtype(param.var.dtype())?.to_device(device)?)?;
    }
    Ok(())
}

/// Writes a file through a temporary file in the same directory and a rename (see
/// [`rlxf_data::atomic_file`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    rlxf_data::atomic_file::write(path, bytes).map_err(|err| TrainError::io(path, err))
}
