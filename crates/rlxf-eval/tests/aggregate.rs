//! Aggregation per policy × context on records whose metric values are known by hand.

use std::collections::HashMap;

use rlxf_eval::{
    distinct_metrics, lexical_metrics, EvalResults, Evaluator, Metric, MetricInfo, MetricKind,
    PrecomputedMetric, RefusalMetric, ResponseRecord, StatsConfig, ALL_CONTEXTS,
};

fn record(policy: &str, id: &str, context: &str, response: &str) -> ResponseRecord {
    ResponseRecord {
        policy: policy.into(),
        prompt_id: id.into(),
        prompt: format!("\n\nHuman: question {id}\n\nAssistant:"),
        response: response.into(),
        context: Some(context.into()),
    }
}

const REFUSE: &str = "I can't help with that.";
const ANSWER: &str = "Here is an answer.";

/// `base` refuses every harmful request and answers medical ones; `tuned` refuses one of two
/// harmful requests and one of two medical ones.
fn records() -> Vec<ResponseRecord> {
    vec![
        record("base", "h1", "harmful_request", REFUSE),
        record("base", "h2", "harmful_request", REFUSE),
        record("base", "m1", "medical", ANSWER),
        record("base", "m2", "medical", ANSWER),
        record("tuned", "h1", "harmful_request", REFUSE),
        record("tuned", "h2", "harmful_request", ANSWER),
        record("tuned", "m1", "medical", ANSWER),
        record("tuned", "m2", "medical", REFUSE),
    ]
}

fn judge(values: &[(&str, &str, f64)]) -> PrecomputedMetric {
    let info = MetricInfo {
        name: "judge_score".into(),
        kind: MetricKind::Mean,
        description: "a score computed elsewhere".into(),
        higher_is_better: Some(true),
    };
    let values: HashMap<(String, String), f64> = values
        .iter()
        .map(|(policy, id, value)| ((policy.to_string(), id.to_string()), *value))
        .collect();
    PrecomputedMetric::new(info, values, false)
}

#[test]
fn rates_counts_and_intervals_per_policy_and_context() {
    let results = Evaluator::new(vec![Box::new(RefusalMetric)], distinct_metrics())
        .evaluate(records())
        .unwrap();
    assert_eq!(results.policies, ["base", "tuned"]);
    // rlxf-data's standard order: harmful_request before medical.
    assert_eq!(results.contexts, ["harmful_request", "medical"]);
    let expectations = [
        ("base", ALL_CONTEXTS, 4, 0.5),
        ("base", "harmful_request", 2, 1.0),
        ("base", "medical", 2, 0.0),
        ("tuned", ALL_CONTEXTS, 4, 0.5),
        ("tuned", "harmful_request", 2, 0.5),
        ("tuned", "medical", 2, 0.5),
    ];
    for (policy, context, n, rate) in expectations {
        let cell = results.cell(policy, context, "refusal").unwrap();
        assert_eq!(
            (cell.responses, cell.n, cell.value),
            (n, n, Some(rate)),
            "{policy}/{context}"
        );
        let [low, high] = cell.ci.unwrap();
        assert!(low <= rate && rate <= high && (0.0..=1.0).contains(&low) && high <= 1.0);
    }
    // A context where every reply is the same has a zero-width interval.
    assert_eq!(
        results
            .cell("base", "harmful_request", "refusal")
            .unwrap()
            .ci,
        Some([1.0, 1.0])
    );
    // distinct-1 of base/medical: "here is an answer ." twice -> 5 unique of 10 tokens.
    let distinct = results.cell("base", "medical", "distinct_1").unwrap();
    assert_eq!(
        (distinct.value, distinct.ci, distinct.n),
        (Some(0.5), None, 2)
    );
}

#[test]
fn comparisons_pair_by_prompt_and_skip_missing_values() {
    let metrics: Vec<Box<dyn Metric>> = vec![
        Box::new(RefusalMetric),
        // tuned/m2 has no judge score: the medical comparison has one pair.
        Box::new(judge(&[
            ("base", "h1", 1.0),
            ("base", "h2", 2.0),
            ("base", "m1", 3.0),
            ("base", "m2", 4.0),
            ("tuned", "h1", 2.0),
            ("tuned", "h2", 4.0),
            ("tuned", "m1", 3.5),
        ])),
    ];
    let results = Evaluator::new(metrics, Vec::new())
        .with_baseline("base")
        .evaluate(records())
        .unwrap();
    let refusal = results
        .comparison("tuned", "harmful_request", "refusal")
        .unwrap();
    // tuned - base per prompt: h1 0, h2 -1.
    assert_eq!((refusal.n_pairs, refusal.difference), (2, -0.5));
    // Exact sign flips of (0, -1): |sum| >= 1 in all four patterns.
    assert!(refusal.exact);
    assert_eq!(refusal.p_value, 1.0);
    let judged = results
        .comparison("tuned", "medical", "judge_score")
        .unwrap();
    assert_eq!((judged.n_pairs, judged.difference), (1, 0.5));
    let pooled = results
        .comparison("tuned", ALL_CONTEXTS, "judge_score")
        .unwrap();
    // Differences 1, 2, 0.5 over the three prompts both policies have.
    assert_eq!(pooled.n_pairs, 3);
    assert!((pooled.difference - 3.5 / 3.0).abs() < 1e-12);
    let cell = results.cell("tuned", "medical", "judge_score").unwrap();
    assert_eq!((cell.responses, cell.n, cell.value), (2, 1, Some(3.5)));
    // The baseline is not compared with itself.
    assert!(results.comparisons.iter().all(|c| c.policy == "tuned"));
}

#[test]
fn results_round_trip_through_json_and_are_deterministic() {
    let evaluate = || {
        Evaluator::new(lexical_metrics(), distinct_metrics())
            .with_stats(StatsConfig {
                seed: 7,
                ..StatsConfig::default()
            })
            .with_baseline("base")
            .evaluate(records())
            .unwrap()
    };
    let results = evaluate();
    assert_eq!(results, evaluate());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.json");
    results.write_json(&path).unwrap();
    assert_eq!(EvalResults::read_json(&path).unwrap(), results);
    let names: Vec<&str> = results.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sentiment",
            "empathy",
            "refusal",
            "length_words",
            "distinct_1",
            "distinct_2"
        ]
    );
}

#[test]
fn bad_records_and_bad_metrics_are_reported_by_name() {
    let mut duplicated = records();
    duplicated.push(record("base", "h1", "harmful_request", ANSWER));
    let error = Evaluator::new(lexical_metrics(), Vec::new())
        .evaluate(duplicated)
        .unwrap_err();
    assert!(error.is_bad_input());
    assert!(error.to_string().contains("base/h1"), "{error}");

    let not_a_rate = PrecomputedMetric::new(
        MetricInfo {
            name: "harmless".into(),
            kind: MetricKind::Rate,
            description: String::new(),
            higher_is_better: Some(true),
        },
        [(("base".to_string(), "h1".to_string()), 0.7)]
            .into_iter()
            .collect(),
        false,
    );
    let error = Evaluator::new(vec![Box::new(not_a_rate)], Vec::new())
        .evaluate(records())
        .unwrap_err();
    assert!(
        error.to_string().contains("harmless") && error.to_string().contains("0.7"),
        "{error}"
    );

    let error = Evaluator::new(lexical_metrics(), Vec::new())
        .with_baseline("missing")
        .evaluate(records())
        .unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
}
