//! How numbers read in tables: rates as percentages, means with three significant decimals, and
//! always the interval and the sample count beside the value.

use rlxf_eval::{MetricInfo, MetricKind, ResultCell};

/// `value` in the metric's unit (percent for rates).
pub fn value(info: &MetricInfo, value: f64) -> String {
    match info.kind {
        MetricKind::Rate => format!("{:.1}%", 100.0 * value),
        MetricKind::Mean => format!("{value:.3}"),
    }
}

/// `62.0% [55.1, 68.3] (n=200)`; `–` for a cell without a value.
pub fn cell(info: &MetricInfo, cell: Option<&ResultCell>) -> String {
    let Some(cell) = cell else {
        return "–".into();
    };
    let Some(estimate) = cell.value else {
        return format!("– (n={})", cell.n);
    };
    match cell.ci {
        Some([low, high]) => format!(
            "{} [{}, {}] (n={})",
            value(info, estimate),
            bare(info, low),
            bare(info, high),
            cell.n
        ),
        None => format!("{} (n={})", value(info, estimate), cell.n),
    }
}

/// A difference between policies, in the metric's unit: percentage points for rates.
pub fn difference(info: &MetricInfo, difference: f64) -> String {
    match info.kind {
        MetricKind::Rate => format!("{:+.1} pp", 100.0 * difference),
        MetricKind::Mean => format!("{difference:+.3}"),
    }
}

/// An interval bound without the unit sign (the value beside it carries it).
pub fn bare(info: &MetricInfo, value: f64) -> String {
    match info.kind {
        MetricKind::Rate => format!("{:.1}", 100.0 * value),
        MetricKind::Mean => format!("{value:.3}"),
    }
}

pub fn p_value(p: f64) -> String {
    if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: MetricKind) -> MetricInfo {
        MetricInfo {
            name: "m".into(),
            kind,
            description: String::new(),
            higher_is_better: Some(true),
        }
    }

    fn result(value: Option<f64>, ci: Option<[f64; 2]>, n: usize) -> ResultCell {
        ResultCell {
            policy: "p".into(),
            context: "all".into(),
            metric: "m".into(),
            responses: n,
            n,
            value,
            ci,
        }
    }

    #[test]
    fn rates_read_as_percentages_with_interval_and_count() {
        let rate = info(MetricKind::Rate);
        let cell = result(Some(0.62), Some([0.551, 0.683]), 200);
        assert_eq!(
            super::cell(&rate, Some(&cell)),
            "62.0% [55.1, 68.3] (n=200)"
        );
        assert_eq!(difference(&rate, -0.031), "-3.1 pp");
    }

    #[test]
    fn means_and_missing_values() {
        let mean = info(MetricKind::Mean);
        let cell = result(Some(0.41234), None, 3);
        assert_eq!(super::cell(&mean, Some(&cell)), "0.412 (n=3)");
        assert_eq!(super::cell(&mean, Some(&result(None, None, 0))), "– (n=0)");
        assert_eq!(super::cell(&mean, None), "–");
        assert_eq!(p_value(0.0004), "<0.001");
        assert_eq!(p_value(0.04), "0.040");
    }
}
