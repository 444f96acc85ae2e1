//! Reports rendered from real evaluation results (rlxf-eval's lexical metrics on a small synthetic
//! set of responses), checked as text and, where Chromium is installed, as a page a browser lays
//! out with every plot.

use std::path::Path;
use std::process::Command;

use rlxf_eval::{distinct_metrics, lexical_metrics, EvalResults, Evaluator, ResponseRecord};
use rlxf_report::{curves_from_metrics, render, write, Curve, PolicyInfo, ReportInput};

const REPLIES: [(&str, &str); 3] = [
    ("sft-tiny", "Go away. I don't know."),
    (
        "dpo-tiny",
        "I'm sorry you're going through this. That sounds really hard, and I'm here.",
    ),
    (
        "dpo-small",
        "I can't help with that, but I understand how you feel and you are not alone.",
    ),
];

fn results() -> EvalResults {
    let contexts = ["emotional_support", "harmful_request", "general"];
    let mut records = Vec::new();
    for (index, context) in contexts.iter().enumerate() {
        for prompt in 0..6 {
            for (policy, reply) in REPLIES {
                records.push(ResponseRecord {
                    policy: policy.into(),
                    prompt_id: format!("{context}-{prompt}"),
                    prompt: format!("\n\nHuman: question {prompt} about {context}?\n\nAssistant:"),
                    // vary replies so intervals are not degenerate
                    response: if (prompt + index) % 3 == 0 {
                        format!("{reply} Thanks for asking!")
                    } else {
                        reply.to_string()
                    },
                    context: Some(context.to_string()),
                });
            }
        }
    }
    Evaluator::new(lexical_metrics(), distinct_metrics())
        .with_baseline("sft-tiny")
        .evaluate(records)
        .unwrap()
}

fn input() -> ReportInput {
    let mut input = ReportInput::new("Study <alpha> & \"beta\"", results());
    input.summary = "Three policies on synthetic prompts.".into();
    input.policies = vec![
        PolicyInfo {
            name: "sft-tiny".into(),
            method: Some("sft".into()),
            parameters: Some(3_000_000),
            size: Some("tiny".into()),
        },
        PolicyInfo {
            name: "dpo-tiny".into(),
            method: Some("dpo".into()),
            parameters: Some(3_000_000),
            size: Some("tiny".into()),
        },
        PolicyInfo {
            name: "dpo-small".into(),
            method: Some("dpo".into()),
            parameters: Some(30_000_000),
            size: Some("small".into()),
        },
    ];
    input.curves = vec![
        Curve {
            run: "dpo-tiny".into(),
            metric: "loss".into(),
            points: (0..20)
                .map(|s| (s as f64, 0.69 - 0.01 * s as f64))
                .collect(),
        },
        Curve {
            run: "dpo-small".into(),
            metric: "loss".into(),
            points: (0..20)
                .map(|s| (s as f64, 0.69 - 0.02 * s as f64))
                .collect(),
        },
    ];
    input
}

#[test]
fn report_has_every_table_and_plot_with_counts_and_intervals() {
    let input = input();
    let report = render(&input).unwrap();
    let metrics = input.results.metrics.len();
    // one bar chart per metric, one curve chart (loss), one size chart (two sizes of dpo)
    assert_eq!(
        report.plots.len(),
        metrics + 2,
        "{:?}",
        report
            .plots
            .iter()
            .map(|p| &p.file_name)
            .collect::<Vec<_>>()
    );
    assert!(report.plots.iter().any(|p| p.file_name == "curve-loss.svg"));
    assert!(report
        .plots
        .iter()
        .any(|p| p.file_name.starts_with("size-")));
    for plot in &report.plots {
        assert!(plot.svg.contains("<svg"), "{} is not SVG", plot.file_name);
        assert!(
            plot.svg.contains("<rect") || plot.svg.contains("<polyline"),
            "{} draws nothing",
            plot.file_name
        );
        // every plot is inline in the HTML
        assert!(report.html.contains(&format!(
            "id=\"{}\"",
            plot.file_name.trim_end_matches(".svg")
        )));
        assert!(report
            .markdown
            .contains(&format!("(plots/{})", plot.file_name)));
    }
    // each policy has a row in the overview with a sample count and an interval
    for (policy, _) in REPLIES {
        let row = report
            .markdown
            .lines()
            .find(|line| line.starts_with(&format!("| {policy} |")))
            .unwrap_or_else(|| panic!("no overview row for {policy}"));
        assert!(row.contains("(n=18)"), "{row}");
        assert!(row.contains('['), "{row}");
    }
    assert!(report
        .markdown
        .contains("Paired differences from the baseline `sft-tiny`"));
    // the title is escaped in HTML, raw in Markdown
    assert!(report
        .html
        .contains("Study &lt;alpha&gt; &amp; &quot;beta&quot;"));
    assert!(!report.html.contains("<alpha>"));
    assert!(report.markdown.starts_with("# Study <alpha> & \"beta\""));
}

#[test]
fn empathy_bars_follow_the_results() {
    // The bar heights in the SVG come from the cells: the most empathetic policy's bar is the
    // tallest in the "all" group. Check through the numbers the plot is drawn from.
    let input = input();
    let all = |policy: &str| {
        input
            .results
            .cell(policy, "all", "empathy")
            .unwrap()
            .value
            .unwrap()
    };
    assert!(all("dpo-tiny") > all("sft-tiny"));
    let report = render(&input).unwrap();
    let plot = report
        .plots
        .iter()
        .find(|p| p.file_name == "metric-empathy.svg")
        .unwrap();
    // three policies × four groups (three contexts + all) bars, each a filled rect
    let filled_rects = plot.svg.matches("<rect").count();
    assert!(filled_rects >= 12, "{filled_rects} rects");
}

#[test]
fn write_puts_report_and_plots_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let written = write(&input(), dir.path()).unwrap();
    assert!(dir.path().join("report.md").is_file());
    assert!(dir.path().join("report.html").is_file());
    assert!(dir.path().join("plots/curve-loss.svg").is_file());
    assert_eq!(written.len(), render(&input()).unwrap().plots.len() + 2);
}

#[test]
fn curves_come_from_metrics_jsonl_and_bad_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(
        &path,
        "{\"step\":1,\"loss\":0.7,\"lr\":1e-4}\n{\"step\":2,\"loss\":0.6}\n\n{\"step\":3,\"eval_loss\":0.5}\n",
    )
    .unwrap();
    let curves = curves_from_metrics(&path, "run", &["loss", "eval_loss", "kl"]).unwrap();
    assert_eq!(curves.len(), 2, "kl is absent and dropped");
    assert_eq!(curves[0].points, vec![(1.0, 0.7), (2.0, 0.6)]);
    assert_eq!(curves[1].points, vec![(3.0, 0.5)]);

    std::fs::write(&path, "{\"step\":1,\"loss\":0.7}\n{\"loss\":0.6}\n").unwrap();
    let error = curves_from_metrics(&path, "run", &["loss"])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("line 2") && error.contains("step"),
        "{error}"
    );
}

/// A Chromium binary: `RLXF_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("RLXF_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .map(String::from)
}

fn rendered_dom(browser: &str, page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn report_renders_in_headless_chromium_with_every_plot() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("RLXF_REQUIRE_CHROMIUM").is_none(),
            "RLXF_REQUIRE_CHROMIUM is set but no chromium was found (install Debian's `chromium`)"
        );
        eprintln!(
            "SKIPPED: no chromium on PATH (set RLXF_CHROMIUM or install Debian's `chromium`)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = input();
    write(&input, dir.path()).unwrap();
    let expected = render(&input).unwrap().plots.len();
    let dom = rendered_dom(&browser, &dir.path().join("report.html"));
    let marker = format!("data-plots-rendered=\"{expected}\"");
    assert!(
        dom.contains(&marker),
        "the browser laid out a different number of plots than the {expected} in the page: {}",
        dom.lines()
            .find(|l| l.contains("<body"))
            .unwrap_or("no <body>")
    );
}
