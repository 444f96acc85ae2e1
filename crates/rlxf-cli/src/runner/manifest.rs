//! Stage manifests: a stage is done when its folder holds a `manifest.json` whose key matches the
//! key of its inputs now (its resolved config, the keys of the stages it reads, the rlxf version).
//! A stage whose key changed starts over in a clean folder; one that was interrupted (its
//! `stage.key` matches but no manifest was written) resumes from what it left.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const MANIFEST_FILE: &str = "manifest.json";
/// Written when a stage starts: the key it is working towards.
const STARTED_FILE: &str = "stage.key";

/// What a finished stage records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub key: String,
    pub rlxf_version: String,
    /// The stage's resolved settings, as hashed.
    pub config: Value,
    /// Keys of the stages it read.
    pub inputs: Vec<String>,
    pub seconds: f64,
    /// What the stage produced (paths relative to the run folder, metrics).
    pub outputs: Value,
}

/// A stage about to run or be skipped.
pub struct StageRun {
    pub name: String,
    pub dir: PathBuf,
    pub key: String,
    config: Value,
    inputs: Vec<String>,
}

/// The state a stage is found in.
pub enum StageState {
    /// Finished with the same key: reuse its outputs.
    Done(Manifest),
    /// Started with the same key and interrupted: resume.
    Interrupted,
    /// Never run, or run with other inputs (its folder has been cleared).
    Fresh,
}

fn key_of(stage: &str, config: &Value, inputs: &[String]) -> String {
    let mut hasher = Sha256::new();
    let canonical = serde_json::json!({
        "stage": stage,
        "config": config,
        "inputs": inputs,
        "rlxf_version": env!("CARGO_PKG_VERSION"),
    });
    hasher.update(canonical.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

impl StageRun {
    pub fn new(name: &str, dir: PathBuf, config: Value, inputs: Vec<String>) -> Self {
        let key = key_of(name, &config, &inputs);
        Self {
            name: name.to_string(),
            dir,
            key,
            config,
            inputs,
        }
    }

    /// Inspects the stage folder; clears it when it belongs to other inputs.
    pub fn state(&self) -> anyhow::Result<StageState> {
        let manifest_path = self.dir.join(MANIFEST_FILE);
        if let Ok(text) = std::fs::read_to_string(&manifest_path) {
            if let Ok(manifest) = serde_json::from_str::<Manifest>(&text) {
                if manifest.key == self.key {
                    return Ok(StageState::Done(manifest));
                }
            }
        }
        let started = std::fs::read_to_string(self.dir.join(STARTED_FILE)).ok();
        if started.as_deref().map(str::trim) == Some(self.key.as_str()) {
            return Ok(StageState::Interrupted);
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| {
                format!(
                    "clearing {} (its inputs changed since it ran)",
                    self.dir.display()
                )
            })?;
        }
        Ok(StageState::Fresh)
    }

    /// Marks the stage as started (so a kill leaves it resumable under the same key).
    pub fn start(&self) -> anyhow::Result<Instant> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        rlxf_model::weights::write_atomic(&self.dir.join(STARTED_FILE), self.key.as_bytes())?;
        Ok(Instant::now())
    }

    /// Writes the manifest: from now on the stage counts as done.
    pub fn finish(&self, started: Instant, outputs: Value) -> anyhow::Result<Manifest> {
        let manifest = Manifest {
            stage: self.name.clone(),
            key: self.key.clone(),
            rlxf_version: env!("CARGO_PKG_VERSION").into(),
            config: self.config.clone(),
            inputs: self.inputs.clone(),
            seconds: started.elapsed().as_secs_f64(),
            outputs,
        };
        let text = serde_json::to_string_pretty(&manifest)?;
        rlxf_model::weights::write_atomic(&self.dir.join(MANIFEST_FILE), text.as_bytes())?;
        Ok(manifest)
    }
}

/// The folder of `stage` for one model and seed of the sweep, or of the whole run.
pub fn stage_dir(run_dir: &Path, scope: Option<(&str, u64)>, stage: &str) -> PathBuf {
    match scope {
        Some((model, seed)) => run_dir.join(model).join(format!("seed-{seed}")).join(stage),
        None => run_dir.join(stage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_stage_is_done_and_other_inputs_clear_it() {
        let dir = tempfile::tempdir().unwrap();
        let stage_dir = dir.path().join("sft");
        let config = serde_json::json!({"lr": 1e-3});
        let run = StageRun::new("sft", stage_dir.clone(), config.clone(), vec!["a".into()]);
        assert!(matches!(run.state().unwrap(), StageState::Fresh));
        let started = run.start().unwrap();
        std::fs::write(stage_dir.join("partial"), "x").unwrap();
        // killed here: same key resumes, keeping what was written
        assert!(matches!(run.state().unwrap(), StageState::Interrupted));
        assert!(stage_dir.join("partial").exists());
        run.finish(started, serde_json::json!({"model": "model"}))
            .unwrap();
        assert!(matches!(run.state().unwrap(), StageState::Done(_)));

        // an upstream stage changed: the key differs, the folder is cleared
        let changed = StageRun::new("sft", stage_dir.clone(), config, vec!["b".into()]);
        assert_ne!(changed.key, run.key);
        assert!(matches!(changed.state().unwrap(), StageState::Fresh));
        assert!(!stage_dir.exists());
    }
}
