//! Reports for rlxf experiments: `report.md` and a self-contained `report.html` (inline SVG plots,
//! inline CSS, no network) from evaluation results, training curves and any extra tables (such as a
//! labeler audit), plus every plot as its own SVG file beside them.
//!
//! What a report shows:
//! - an overview table: every metric per policy over all contexts, with its 95% interval and sample
//!   count;
//! - per-context tables and bar charts with interval whiskers, one per metric;
//! - paired comparisons of each policy with the baseline (difference, interval, permutation p);
//! - training curves (reward, KL, loss … per step), one chart per curve metric;
//! - a metric against model size per method, when policies of several sizes were evaluated;
//! - extra tables the caller supplies (labeler audit, run provenance).
//!
//! ```
//! use rlxf_eval::{distinct_metrics, lexical_metrics, Evaluator, ResponseRecord};
//! use rlxf_report::{render, ReportInput};
//!
//! let record = |policy: &str, response: &str| ResponseRecord {
//!     policy: policy.into(),
//!     prompt_id: "p1".into(),
//!     prompt: "\n\nHuman: I feel lonely.\n\nAssistant:".into(),
//!     response: response.into(),
//!     context: Some("emotional_support".into()),
//! };
//! let results = Evaluator::new(lexical_metrics(), distinct_metrics())
//!     .evaluate(vec![record("sft", "Go outside."), record("dpo", "I'm sorry, that sounds hard.")])?;
//! let report = render(&ReportInput::new("Example", results))?;
//! assert!(report.html.contains("<svg"));
//! assert!(report.markdown.contains("| dpo |"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod format;
mod html;
mod markdown;
mod plots;
mod tables;

use std::path::{Path, PathBuf};

use rlxf_eval::EvalResults;
use serde::{Deserialize, Serialize};

pub use error::{ReportError, Result};
pub use plots::Plot;
pub use tables::Table;

/// What a policy is, for grouping in plots (method × model size) and for the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The policy name as it appears in the evaluation records.
    pub name: String,
    /// The recipe (`sft`, `dpo-human`, `rlaif-ppo` …); the series of the size plot.
    #[serde(default)]
    pub method: Option<String>,
    /// Trainable parameters of the policy's model; the x axis of the size plot.
    #[serde(default)]
    pub parameters: Option<u64>,
    /// Human-readable size (`tiny`, `125m`).
    #[serde(default)]
    pub size: Option<String>,
}

/// One training metric of one run over steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The run (for example `rlhf-ppo/seed-1`); one line per run in the chart.
    pub run: String,
    /// The metric (`reward`, `kl`, `loss` …); one chart per metric.
    pub metric: String,
    /// `(step, value)` in step order.
    pub points: Vec<(f64, f64)>,
}

/// Everything a report is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    pub title: String,
    /// A paragraph under the title (what was run, on what data).
    #[serde(default)]
    pub summary: String,
    pub results: EvalResults,
    #[serde(default)]
    pub policies: Vec<PolicyInfo>,
    #[serde(default)]
    pub curves: Vec<Curve>,
    /// The metric plotted against model size; the first rate metric when `None`.
    #[serde(default)]
    pub size_metric: Option<String>,
    /// Tables appended after the standard ones (labeler audit, provenance).
    #[serde(default)]
    pub extra_tables: Vec<Table>,
}

impl ReportInput {
    pub fn new(title: impl Into<String>, results: EvalResults) -> Self {
        Self {
            title: title.into(),
            summary: String::new(),
            results,
            policies: Vec::new(),
            curves: Vec::new(),
            size_metric: None,
            extra_tables: Vec::new(),
        }
    }
}

/// A rendered report: both documents and the plots they show.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: String,
    /// Self-contained: the plots are inline SVG.
    pub html: String,
    pub plots: Vec<Plot>,
}

/// Folder, relative to the report, that holds the plots as SVG files (linked from `report.md`).
pub const PLOTS_DIR: &str = "plots";

/// Renders the report in memory.
pub fn render(input: &ReportInput) -> Result<Report> {
    let tables = tables::standard_tables(input);
    let plots = plots::all_plots(input)?;
    Ok(Report {
        markdown: markdown::render(input, &tables, &plots),
        html: html::render(input, &tables, &plots),
        plots,
    })
}

/// Renders the report and writes `report.md`, `report.html` and `plots/*.svg` into `dir`, each file
/// atomically. Returns the paths written.
pub fn write(input: &ReportInput, dir: &Path) -> Result<Vec<PathBuf>> {
    let report = render(input)?;
    let plots_dir = dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&plots_dir).map_err(|source| ReportError::io(&plots_dir, source))?;
    let mut written = Vec::new();
    let mut put = |path: PathBuf, text: &str| -> Result<()> {
        rlxf_data::pair::write_atomic(&path, |out| out.write_all(text.as_bytes())).map_err(
            |source| ReportError::Write {
                path: path.clone(),
                reason: source.to_string(),
            },
        )?;
        written.push(path);
        Ok(())
    };
    for plot in &report.plots {
        put(plots_dir.join(&plot.file_name), &plot.svg)?;
    }
    put(dir.join("report.md"), &report.markdown)?;
    put(dir.join("report.html"), &report.html)?;
    Ok(written)
}

/// Reads `metrics.jsonl` of a training run (one JSON object per step with a `step` field) into one
/// curve per requested metric that the file has; lines without a metric are skipped for it.
pub fn curves_from_metrics(path: &Path, run: &str, metrics: &[&str]) -> Result<Vec<Curve>> {
    let text = std::fs::read_to_string(path).map_err(|source| ReportError::io(path, source))?;
    let mut curves: Vec<Curve> = metrics
        .iter()
        .map(|metric| Curve {
            run: run.to_string(),
            metric: metric.to_string(),
            points: Vec::new(),
        })
        .collect();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|error| ReportError::Parse {
                path: path.to_path_buf(),
                line: index + 1,
                reason: error.to_string(),
            })?;
        let step = value
            .get("step")
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| ReportError::Parse {
                path: path.to_path_buf(),
                line: index + 1,
                reason: "no numeric `step` field".into(),
            })?;
        for curve in &mut curves {
            if let Some(y) = value.get(&curve.metric).and_then(serde_json::Value::as_f64) {
                curve.points.push((step, y));
            }
        }
    }
    curves.retain(|curve| !curve.points.is_empty());
    Ok(curves)
}
