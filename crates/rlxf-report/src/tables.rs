//! Tables as plain rows of text, rendered by both the Markdown and the HTML writer.

use rlxf_eval::{MetricInfo, ALL_CONTEXTS};
use serde::{Deserialize, Serialize};

use crate::format;
use crate::ReportInput;

/// A titled table of text cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub title: String,
    /// A sentence under the title saying how to read the table.
    #[serde(default)]
    pub note: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The report's own tables: overview, one per metric across contexts, comparisons with the
/// baseline, final training values; then the caller's extra tables.
pub fn standard_tables(input: &ReportInput) -> Vec<Table> {
    let mut tables = vec![overview(input)];
    tables.extend(
        input
            .results
            .metrics
            .iter()
            .map(|info| per_context(input, info)),
    );
    if let Some(table) = comparisons(input) {
        tables.push(table);
    }
    if let Some(table) = final_training_values(input) {
        tables.push(table);
    }
    tables.extend(input.extra_tables.iter().cloned());
    tables
}

fn level_percent(input: &ReportInput) -> String {
    format!("{:.0}%", 100.0 * input.results.stats.level)
}

/// `↑` when higher is better, `↓` when lower is, nothing otherwise.
pub fn direction(info: &MetricInfo) -> &'static str {
    match info.higher_is_better {
        Some(true) => " ↑",
        Some(false) => " ↓",
        None => "",
    }
}

fn overview(input: &ReportInput) -> Table {
    let results = &input.results;
    let mut headers = vec!["policy".to_string()];
    headers.extend(
        results
            .metrics
            .iter()
            .map(|info| format!("{}{}", info.name, direction(info))),
    );
    let rows =
        results
            .policies
            .iter()
            .map(|policy| {
                let mut row = vec![policy.clone()];
                row.extend(results.metrics.iter().map(|info| {
                    format::cell(info, results.cell(policy, ALL_CONTEXTS, &info.name))
                }));
                row
            })
            .collect();
    Table {
        title: "Overview: all contexts".into(),
        note: format!(
            "Each cell: estimate [{} bootstrap interval] (responses it is computed from). Rates in \
             percent.",
            level_percent(input)
        ),
        headers,
        rows,
    }
}

fn per_context(input: &ReportInput, info: &MetricInfo) -> Table {
    let results = &input.results;
    let mut headers = vec!["policy".to_string()];
    headers.extend(results.contexts.iter().cloned());
    let rows = results
        .policies
        .iter()
        .map(|policy| {
            let mut row = vec![policy.clone()];
            row.extend(
                results
                    .contexts
                    .iter()
                    .map(|context| format::cell(info, results.cell(policy, context, &info.name))),
            );
            row
        })
        .collect();
    Table {
        title: format!("{}{} by context", info.name, direction(info)),
        note: info.description.clone(),
        headers,
        rows,
    }
}

fn comparisons(input: &ReportInput) -> Option<Table> {
    let results = &input.results;
    let baseline = results.baseline.as_ref()?;
    if results.comparisons.is_empty() {
        return None;
    }
    let rows = results
        .comparisons
        .iter()
        .map(|comparison| {
            let info = results
                .metrics
                .iter()
                .find(|info| info.name == comparison.metric);
            let (difference, low, high) = match info {
                Some(info) => (
                    format::difference(info, comparison.difference),
                    format::bare(info, comparison.ci[0]),
                    format::bare(info, comparison.ci[1]),
                ),
                None => (
                    format!("{:+.3}", comparison.difference),
                    format!("{:.3}", comparison.ci[0]),
                    format!("{:.3}", comparison.ci[1]),
                ),
            };
            vec![
                comparison.policy.clone(),
                comparison.context.clone(),
                comparison.metric.clone(),
                difference,
                format!("[{low}, {high}]"),
                format::p_value(comparison.p_value),
                comparison.n_pairs.to_string(),
            ]
        })
        .collect();
    Some(Table {
        title: format!("Paired differences from the baseline `{baseline}`"),
        note: format!(
            "Policy minus baseline on the same prompts; {} paired-bootstrap interval; two-sided \
             sign-flip permutation p-value; n = prompts both answered.",
            level_percent(input)
        ),
        headers: [
            "policy",
            "context",
            "metric",
            "difference",
            "interval",
            "p",
            "n",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    })
}

fn final_training_values(input: &ReportInput) -> Option<Table> {
    if input.curves.is_empty() {
        return None;
    }
    let rows = input
        .curves
        .iter()
        .filter_map(|curve| {
            let (first_step, first) = curve.points.first()?;
            let (last_step, last) = curve.points.last()?;
            Some(vec![
                curve.run.clone(),
                curve.metric.clone(),
                format!("{first:.4} (step {first_step})"),
                format!("{last:.4} (step {last_step})"),
                curve.points.len().to_string(),
            ])
        })
        .collect();
    Some(Table {
        title: "Training curves: first and last values".into(),
        note: "From each run's metrics.jsonl; the curves are plotted below.".into(),
        headers: ["run", "metric", "first", "last", "points"]
            .map(String::from)
            .to_vec(),
        rows,
    })
}
