//! Aggregation of per-response scores per policy × context into one serialisable
//! [`EvalResults`], with a bootstrap interval and sample count for every number and paired
//! comparisons of each policy with a baseline.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::metric::{Metric, MetricInfo, MetricKind, ResponseRecord, SetMetric};
use crate::stats::{bootstrap, bootstrap_mean, paired_comparison, StatsConfig};

/// The context name of the cells that pool all contexts.
pub const ALL_CONTEXTS: &str = "all";

/// Metrics to compute and how to summarise them.
pub struct Evaluator {
    metrics: Vec<Box<dyn Metric>>,
    set_metrics: Vec<Box<dyn SetMetric>>,
    pub stats: StatsConfig,
    /// The policy every other policy is compared with (paired by prompt id), if any.
    pub baseline: Option<String>,
}

/// Every record's value of every per-response metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredRecords {
    pub records: Vec<ResponseRecord>,
    pub metrics: Vec<MetricInfo>,
    /// `values[m][r]`: metric `m` on record `r`.
    pub values: Vec<Vec<Option<f64>>>,
}

/// One metric for one policy in one context (or [`ALL_CONTEXTS`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultCell {
    pub policy: String,
    pub context: String,
    pub metric: String,
    /// Responses in the group.
    pub responses: usize,
    /// Responses the value is computed from (those the metric scored).
    pub n: usize,
    /// The mean, rate or set statistic; `None` when no response had a value.
    pub value: Option<f64>,
    /// `[low, high]` at [`StatsConfig::level`]; `None` for a statistic without a valid bootstrap.
    pub ci: Option<[f64; 2]>,
}

/// A policy minus the baseline on the same prompts, for one metric in one context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonCell {
    pub policy: String,
    pub baseline: String,
    pub context: String,
    pub metric: String,
    /// Prompts both policies answered with a value.
    pub n_pairs: usize,
    /// Mean of `policy - baseline` over the pairs.
    pub difference: f64,
    pub ci: [f64; 2],
    /// Two-sided sign-flip permutation p-value.
    pub p_value: f64,
    /// True when the p-value enumerated every sign pattern.
    pub exact: bool,
}

/// Everything a report needs: per-cell estimates and comparisons, in a stable order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub stats: StatsConfig,
    pub baseline: Option<String>,
    /// Policies in order of first appearance in the records.
    pub policies: Vec<String>,
    /// Contexts present, rlxf-data's standard order first; [`ALL_CONTEXTS`] is not listed.
    pub contexts: Vec<String>,
    pub metrics: Vec<MetricInfo>,
    pub cells: Vec<ResultCell>,
    pub comparisons: Vec<ComparisonCell>,
}

impl EvalResults {
    pub fn cell(&self, policy: &str, context: &str, metric: &str) -> Option<&ResultCell> {
        self.cells
            .iter()
            .find(|cell| cell.policy == policy && cell.context == context && cell.metric == metric)
    }

    pub fn comparison(&self, policy: &str, context: &str, metric: &str) -> Option<&ComparisonCell> {
        self.comparisons.iter().find(|comparison| {
            comparison.policy == policy
                && comparison.context == context
                && comparison.metric == metric
        })
    }

    /// Writes the results as pretty JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        rlxf_data::pair::write_atomic(path, |out| {
            serde_json::to_writer_pretty(&mut *out, self).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        })?;
        Ok(())
    }

    /// Reads results written by [`EvalResults::write_json`].
    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|error| EvalError::InvalidFile {
            path: path.to_path_buf(),
            line: error.line(),
            reason: error.to_string(),
        })
    }
}

impl Evaluator {
    pub fn new(metrics: Vec<Box<dyn Metric>>, set_metrics: Vec<Box<dyn SetMetric>>) -> Self {
        Self {
            metrics,
            set_metrics,
            stats: StatsConfig::default(),
            baseline: None,
        }
    }

    pub fn with_stats(mut self, stats: StatsConfig) -> Self {
        self.stats = stats;
        self
    }

    pub fn with_baseline(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = Some(baseline.into());
        self
    }

    /// Scores and aggregates in one go.
    pub fn evaluate(&self, records: Vec<ResponseRecord>) -> Result<EvalResults> {
        let scored = self.score(records)?;
        self.aggregate(&scored)
    }

    /// Runs every per-response metric over `records`.
    pub fn score(&self, records: Vec<ResponseRecord>) -> Result<ScoredRecords> {
        check_records(&records)?;
        let mut values = Vec::with_capacity(self.metrics.len());
        for metric in &self.metrics {
            let info = metric.info();
            let scores = metric.score(&records)?;
            check_scores(&info, &records, &scores)?;
            values.push(scores);
        }
        Ok(ScoredRecords {
            metrics: self.metrics.iter().map(|metric| metric.info()).collect(),
            records,
            values,
        })
    }

    /// Summarises scored records per policy × context, adds the set metrics, and compares every
    /// policy with the baseline.
    pub fn aggregate(&self, scored: &ScoredRecords) -> Result<EvalResults> {
        self.stats.validate()?;
        let records = &scored.records;
        let policies = policies_in_order(records);
        if let Some(baseline) = &self.baseline {
            if !policies.contains(baseline) {
                return Err(EvalError::invalid_argument(
                    "baseline",
                    format!(
                        "policy `{baseline}` has no responses (policies: {})",
                        policies.join(", ")
                    ),
                ));
            }
        }
        let contexts = contexts_in_order(records);
        let groups = group_indices(records, &policies, &contexts);

        let mut cells = Vec::new();
        for (policy, context, members) in &groups {
            for (info, values) in scored.metrics.iter().zip(&scored.values) {
                let present: Vec<f64> = members.iter().filter_map(|&r| values[r]).collect();
                let seed_key = format!("{policy}\u{1f}{context}\u{1f}{}", info.name);
                let estimate = if present.is_empty() {
                    None
                } else {
                    Some(bootstrap_mean(&present, &self.stats.keyed(&seed_key))?)
                };
                cells.push(ResultCell {
                    policy: policy.clone(),
                    context: context.clone(),
                    metric: info.name.clone(),
                    responses: members.len(),
                    n: present.len(),
                    value: estimate.map(|e| e.value),
                    ci: estimate.map(|e| [e.ci_low, e.ci_high]),
                });
            }
        }
        let set_infos: Vec<MetricInfo> = self
            .set_metrics
            .iter()
            .map(|metric| metric.info())
            .collect();
        for (metric, info) in self.set_metrics.iter().zip(&set_infos) {
            let statistic = metric.prepare(records)?;
            for (policy, context, members) in &groups {
                let value = statistic.value(members);
                let value = value.is_finite().then_some(value);
                let seed_key = format!("{policy}\u{1f}{context}\u{1f}{}", info.name);
                let ci = match value {
                    Some(point) if statistic.bootstrappable() => {
                        let estimate = bootstrap(
                            members.len(),
                            point,
                            &self.stats.keyed(&seed_key),
                            |picks| {
                                let resample: Vec<usize> =
                                    picks.iter().map(|&i| members[i]).collect();
                                statistic.value(&resample)
                            },
                        );
                        // A group too small for any finite resample has a value but no interval.
                        estimate.ok().map(|e| [e.ci_low, e.ci_high])
                    }
                    _ => None,
                };
                cells.push(ResultCell {
                    policy: policy.clone(),
                    context: context.clone(),
                    metric: info.name.clone(),
                    responses: members.len(),
                    n: members.len(),
                    value,
                    ci,
                });
            }
        }

        let comparisons = match &self.baseline {
            Some(baseline) => self.compare_with(baseline, scored, &policies, &groups)?,
            None => Vec::new(),
        };
        Ok(EvalResults {
            stats: self.stats,
            baseline: self.baseline.clone(),
            policies,
            contexts,
            metrics: scored.metrics.iter().cloned().chain(set_infos).collect(),
            cells,
            comparisons,
        })
    }

    fn compare_with(
        &self,
        baseline: &str,
        scored: &ScoredRecords,
        policies: &[String],
        groups: &[(String, String, Vec<usize>)],
    ) -> Result<Vec<ComparisonCell>> {
        let records = &scored.records;
        let group_of = |policy: &str, context: &str| {
            groups
                .iter()
                .find(|(p, c, _)| p == policy && c == context)
                .map(|(_, _, members)| members.as_slice())
        };
        let mut comparisons = Vec::new();
        for policy in policies.iter().filter(|policy| *policy != baseline) {
            for (_, context, members) in groups.iter().filter(|(p, _, _)| p == policy) {
                let Some(baseline_members) = group_of(baseline, context) else {
                    continue;
                };
                let baseline_by_prompt: HashMap<&str, usize> = baseline_members
                    .iter()
                    .map(|&r| (records[r].prompt_id.as_str(), r))
                    .collect();
                for (info, values) in scored.metrics.iter().zip(&scored.values) {
                    let (treatment, control): (Vec<f64>, Vec<f64>) = members
                        .iter()
                        .filter_map(|&r| {
                            let b = *baseline_by_prompt.get(records[r].prompt_id.as_str())?;
                            Some((values[r]?, values[b]?))
                        })
                        .unzip();
                    if treatment.is_empty() {
                        continue;
                    }
                    let seed_key =
                        format!("{policy}\u{1f}{baseline}\u{1f}{context}\u{1f}{}", info.name);
                    let comparison =
                        paired_comparison(&treatment, &control, &self.stats.keyed(&seed_key))?;
                    comparisons.push(ComparisonCell {
                        policy: policy.clone(),
                        baseline: baseline.to_string(),
                        context: context.clone(),
                        metric: info.name.clone(),
                        n_pairs: comparison.n,
                        difference: comparison.difference.value,
                        ci: [comparison.difference.ci_low, comparison.difference.ci_high],
                        p_value: comparison.p_value,
                        exact: comparison.exact,
                    });
                }
            }
        }
        Ok(comparisons)
    }
}

fn check_records(records: &[ResponseRecord]) -> Result<()> {
    let mut seen = HashSet::new();
    for record in records {
        for (field, value) in [("policy", &record.policy), ("prompt_id", &record.prompt_id)] {
            if value.trim().is_empty() {
                return Err(EvalError::InvalidRecord {
                    record: record.key(),
                    field: field.into(),
                    reason: "is empty".into(),
                });
            }
        }
        if record.context() == ALL_CONTEXTS {
            return Err(EvalError::InvalidRecord {
                record: record.key(),
                field: "context".into(),
                reason: format!(
                    "`{ALL_CONTEXTS}` is reserved for the pooled cells; rename the context"
                ),
            });
        }
        if !seen.insert((record.policy.as_str(), record.prompt_id.as_str())) {
            return Err(EvalError::InvalidRecord {
                record: record.key(),
                field: "prompt_id".into(),
                reason: "the policy answers this prompt twice; paired comparisons need one response per policy and prompt".into(),
            });
        }
    }
    Ok(())
}

fn check_scores(
    info: &MetricInfo,
    records: &[ResponseRecord],
    scores: &[Option<f64>],
) -> Result<()> {
    let failed = |record: &ResponseRecord, reason: String| EvalError::MetricFailed {
        metric: info.name.clone(),
        record: record.key(),
        reason,
    };
    if scores.len() != records.len() {
        let first = &records[0];
        return Err(failed(
            first,
            format!(
                "returned {} values for {} records",
                scores.len(),
                records.len()
            ),
        ));
    }
    for (record, score) in records.iter().zip(scores) {
        match *score {
            Some(value) if !value.is_finite() => {
                return Err(failed(record, format!("value {value} is not finite")))
            }
            Some(value) if info.kind == MetricKind::Rate && ![0.0, 0.5, 1.0].contains(&value) => {
                return Err(failed(
                    record,
                    format!("rate metric returned {value}, not 0, 1 or 0.5 (a tie)"),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn policies_in_order(records: &[ResponseRecord]) -> Vec<String> {
    let mut policies: Vec<String> = Vec::new();
    for record in records {
        if !policies.contains(&record.policy) {
            policies.push(record.policy.clone());
        }
    }
    policies
}

fn contexts_in_order(records: &[ResponseRecord]) -> Vec<String> {
    let present: BTreeSet<&str> = records.iter().map(ResponseRecord::context).collect();
    let standard = rlxf_data::STANDARD_CONTEXTS
        .iter()
        .copied()
        .filter(|c| present.contains(c));
    let others = present
        .iter()
        .copied()
        .filter(|c| !rlxf_data::STANDARD_CONTEXTS.contains(c));
    standard.chain(others).map(str::to_string).collect()
}

/// `(policy, context, record indices)` for every policy: first [`ALL_CONTEXTS`], then each context
/// the policy has responses in.
fn group_indices(
    records: &[ResponseRecord],
    policies: &[String],
    contexts: &[String],
) -> Vec<(String, String, Vec<usize>)> {
    let mut by_policy_context: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        by_policy_context
            .entry((record.policy.as_str(), record.context()))
            .or_default()
            .push(index);
    }
    let mut groups = Vec::new();
    for policy in policies {
        let all: Vec<usize> = (0..records.len())
            .filter(|&r| &records[r].policy == policy)
            .collect();
        groups.push((policy.clone(), ALL_CONTEXTS.to_string(), all));
        for context in contexts {
            if let Some(members) = by_policy_context.get(&(policy.as_str(), context.as_str())) {
                groups.push((policy.clone(), context.clone(), members.clone()));
            }
        }
    }
    groups
}
