//! `metrics.jsonl`: one JSON object per optimiser step, appended and flushed line by line so a
//! crash loses at most the step in flight.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Result, TrainError};

pub const METRICS_FILE: &str = "metrics.jsonl";

pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `dir/metrics.jsonl` for appending. With `keep_through = Some(step)` (a resume) lines of
    /// later steps, written by the run after its last checkpoint, are dropped first so every step
    /// appears once; with `None` (a fresh run) the file starts empty.
    pub fn open(dir: &Path, keep_through: Option<u64>) -> Result<Self> {
        let path = dir.join(METRICS_FILE);
        let kept = match keep_through {
            Some(step) if path.exists() => lines_through(&path, step)?,
            _ => Vec::new(),
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        crate::checkpoint::write_atomic(&path, text.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|err| TrainError::io(&path, err))?;
        Ok(Self { path, file })
    }

    pub fn append(&mut self, record: &Map<String, Value>) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("JSON maps serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|err| TrainError::io(&self.path, err))
    }
}

/// The lines of `path` whose `step` is at most `step` (unparsable lines are dropped: they can only
/// be a line cut short by a crash).
fn lines_through(path: &Path, step: u64) -> Result<Vec<String>> {
    let file = File::open(path).map_err(|err| TrainError::io(path, err))?;
    let mut kept = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|err| TrainError::io(path, err))?;
        let line_step = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|value| value.get("step").and_then(Value::as_u64));
        if line_step.is_some_and(|line_step| line_step <= step) {
            kept.push(line);
        }
    }
    Ok(kept)
}

/// Reads every record of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).map_err(|err| TrainError::io(path, err))?;
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|err| TrainError::InvalidRecord {
                origin: path.display().to_string(),
                record: format!("line {}", index + 1),
                field: "(line)".to_string(),
                reason: err.to_string(),
            })
        })
        .collect()
}
