//! `rlxf data ...`: inspect a preference source, or prepare it into seeded splits.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use rlxf_data::{
    ContextRules, FieldNames, Format, HubOptions, LoadOptions, LoadReport, Percentiles,
    PreferencePair, PrepareOptions, Source, SplitRatios, Summary, TokenBudget,
};

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Show counts, length percentiles, the context distribution, a sample pair and the problems
    /// found in a source.
    Inspect(InspectArgs),
    /// Tag contexts, dedupe, cap and split a source into train / validation / test JSONL plus a
    /// manifest.json, written atomically into a folder.
    Prepare(PrepareArgs),
}

/// Where the pairs come from and how to read them.
// Field docs are `--help` text, written for the terminal: brackets there are not rustdoc links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// A file or folder (.jsonl, .jsonl.gz, .parquet), hf://datasets/OWNER/NAME[@REVISION][/FILTER]
    /// (e.g. hf://datasets/Dahoas/rm-static/test), or `embedded` for the built-in set.
    source: String,

    /// Input format: hh (Anthropic chosen/rejected transcripts), jsonl (prompt/chosen/rejected
    /// fields) or parquet. Detected from the extension and first record when not given.
    #[arg(long, value_parser = Format::NAMES)]
    format: Option<String>,

    /// Field (JSONL) or column (Parquet) names as ROLE=NAME pairs, roles being prompt, chosen,
    /// rejected, id and context, e.g. `prompt=question,chosen=good,rejected=bad`.
    #[arg(long, value_name = "ROLE=NAME,...")]
    fields: Option<String>,

    /// Context rules TOML to use instead of the built-in ones (same shape as
    /// crates/rlxf-data/contexts.toml).
    #[arg(long, value_name = "FILE")]
    contexts: Option<PathBuf>,

    /// Skip and count malformed records (bad JSON, missing or mistyped field, non-UTF-8 line)
    /// instead of failing.
    #[arg(long)]
    skip_invalid: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// Print the summary and load report as JSON instead of text.
    #[arg(long)]
    json: bool,

    /// How many problems to list (all are counted).
    #[arg(long, default_value_t = 10, value_name = "N")]
    show_problems: usize,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    source: SourceArgs,

    /// Output folder for train.jsonl, validation.jsonl, test.jsonl and manifest.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Train, validation and test fractions, summing to 1.
    #[arg(long, default_value = "0.8,0.1,0.1", value_name = "TRAIN,VAL,TEST")]
    split: String,

    /// Seed of the shuffle that picks the capped subset and the splits.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Keep at most this many pairs (a seeded random subset), after dedupe.
    #[arg(long, value_name = "N")]
    max_samples: Option<usize>,

    /// Keep only the first pair of each distinct prompt.
    #[arg(long)]
    dedupe: bool,

    /// Drop pairs whose prompt + chosen or prompt + rejected is longer than this many tokens.
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,

    /// Model folder whose tokenizer counts tokens for --max-tokens (its tokenizer.json, or the
    /// GPT-2 BPE for gpt2 / gpt_neo configs); the built-in GPT-2 BPE when not given.
    #[arg(long, value_name = "MODEL_DIR", requires = "max_tokens")]
    tokenizer: Option<PathBuf>,

    /// Replace the output folder if it exists and is not empty.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(cmd: DataCommand, ctx: Ctx) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Inspect(args) => inspect(args, ctx),
        DataCommand::Prepare(args) => prepare(args, ctx),
    }
}

/// The parsed source and everything needed to read and tag it.
struct Resolved {
    source: Source,
    load: LoadOptions,
    rules: ContextRules,
    rules_label: String,
}

fn resolve(args: &SourceArgs, ctx: Ctx) -> anyhow::Result<Resolved> {
    let source: Source = args.source.parse()?;
    let format = args
        .format
        .as_deref()
        .map(str::parse::<Format>)
        .transpose()?;
    let fields = match &args.fields {
        Some(spec) => FieldNames::default().with_overrides(spec)?,
        None => FieldNames::default(),
    };
    let (rules, rules_label) = match &args.contexts {
        Some(path) => (ContextRules::from_path(path)?, path.display().to_string()),
        None => (ContextRules::embedded(), "embedded".to_string()),
    };
    Ok(Resolved {
        source,
        load: LoadOptions {
            format,
            fields,
            skip_invalid: args.skip_invalid,
            hub: HubOptions {
                progress: !ctx.quiet,
                ..HubOptions::default()
            },
        },
        rules,
        rules_label,
    })
}

fn inspect(args: InspectArgs, ctx: Ctx) -> anyhow::Result<()> {
    let resolved = resolve(&args.source, ctx)?;
    let loaded = rlxf_data::load_pairs(&resolved.source, &resolved.load)
        .with_context(|| format!("reading {}", resolved.source))?;
    let summary = Summary::of(&loaded.pairs, &resolved.rules);
    if args.json {
        let json = serde_json::json!({
            "source": resolved.source.to_string(),
            "summary": summary,
            "report": loaded.report,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    print!(
        "{}",
        render_inspection(
            &resolved.source,
            &summary,
            &loaded.report,
            loaded.pairs.first(),
            args.show_problems
        )
    );
    Ok(())
}

fn render_inspection(
    source: &Source,
    summary: &Summary,
    report: &LoadReport,
    sample: Option<&PreferencePair>,
    show_problems: usize,
) -> String {
    use rlxf_data::ProblemKind::{InvalidRecord, NoSharedPrompt};
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "source: {source}");
    for input in &report.inputs {
        let _ = writeln!(
            out,
            "  {} ({}, {} records, sha256 {})",
            input.path.display(),
            input.format,
            input.records,
            &input.sha256[..16]
        );
    }
    let _ = writeln!(
        out,
        "pairs: {} from {} records; problems: {} ({} without a shared prompt, {} invalid skipped)",
        summary.pairs,
        report.records_read,
        report.problems.len(),
        report.count(NoSharedPrompt),
        report.count(InvalidRecord)
    );
    let _ = writeln!(
        out,
        "distinct prompts: {}; identical replies: {}; empty replies: {}; chosen longer than rejected: {}",
        summary.distinct_prompts,
        summary.identical_replies,
        summary.empty_replies,
        summary
            .chosen_longer_share
            .map_or("-".to_string(), |share| format!("{:.1}%", share * 100.0))
    );
    let _ = writeln!(
        out,
        "\nlengths        {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8}",
        "min", "p10", "p25", "p50", "p75", "p90", "p99", "max", "mean"
    );
    for (name, stats) in [
        ("prompt", summary.prompt),
        ("chosen", summary.chosen),
        ("rejected", summary.rejected),
    ] {
        let Some(stats) = stats else { continue };
        for (unit, p) in [("chars", stats.chars), ("words", stats.words)] {
            let _ = writeln!(
                out,
                "{:<14} {}",
                format!("{name} {unit}"),
                percentile_row(&p)
            );
        }
    }
    let _ = writeln!(out, "\ncontexts:");
    for (tag, count) in &summary.contexts {
        let share = *count as f64 / summary.pairs.max(1) as f64 * 100.0;
        let _ = writeln!(out, "  {tag:<20} {count:>7} {share:>6.1}%");
    }
    if let Some(pair) = sample {
        let _ = writeln!(out, "\nsample pair {}:", pair.id);
        for (name, text) in [
            ("prompt", &pair.prompt),
            ("chosen", &pair.chosen),
            ("rejected", &pair.rejected),
        ] {
            let _ = writeln!(out, "  {name:<8} {}", shorten(text, 300));
        }
    }
    if !report.problems.is_empty() {
        let shown = show_problems.min(report.problems.len());
        let _ = writeln!(
            out,
            "\nproblems (first {shown} of {}):",
            report.problems.len()
        );
        for problem in report.problems.iter().take(shown) {
            let _ = writeln!(
                out,
                "  {}: {}: {}",
                problem.path.display(),
                problem.position,
                problem.message
            );
        }
    }
    out
}

fn percentile_row(p: &Percentiles) -> String {
    format!(
        "{:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8.1}",
        p.min, p.p10, p.p25, p.p50, p.p75, p.p90, p.p99, p.max, p.mean
    )
}

/// The text with escapes visible (newlines matter in transcripts), cut to `max` characters.
fn shorten(text: &str, max: usize) -> String {
    let escaped = format!("{text:?}");
    if escaped.chars().count() <= max {
        escaped
    } else {
        let cut: String = escaped.chars().take(max).collect();
        format!("{cut}… ({} chars in all)", text.chars().count())
    }
}

fn prepare(args: PrepareArgs, ctx: Ctx) -> anyhow::Result<()> {
    let resolved = resolve(&args.source, ctx)?;
    let split: SplitRatios = args.split.parse()?;
    let tokenizer = match &args.tokenizer {
        Some(dir) => rlxf_model::load_tokenizer(dir)
            .with_context(|| format!("loading the tokenizer of {}", dir.display()))?,
        None => rlxf_model::Tokenizer::gpt2(),
    };
    // A text the tokenizer cannot encode fits no budget; such pairs are counted in the manifest's
    // over_token_budget with the rest.
    let count_tokens = |text: &str| tokenizer.encode(text).map_or(usize::MAX, |ids| ids.len());
    let token_budget = args.max_tokens.map(|max_tokens| TokenBudget {
        max_tokens,
        tokenizer: args
            .tokenizer
            .as_ref()
            .map_or("gpt2 (built in)".to_string(), |dir| {
                dir.display().to_string()
            }),
        count_tokens: &count_tokens,
    });
    let options = PrepareOptions {
        seed: args.seed,
        split,
        max_samples: args.max_samples,
        dedupe: args.dedupe,
        token_budget,
        contexts: &resolved.rules,
        contexts_label: resolved.rules_label.clone(),
        overwrite: args.overwrite,
    };
    let manifest = rlxf_data::prepare(&resolved.source, &resolved.load, &options, &args.out)
        .with_context(|| format!("preparing {} into {}", resolved.source, args.out.display()))?;
    let counts = &manifest.counts;
    if !ctx.quiet {
        println!(
            "wrote {}: train {}, validation {}, test {} (from {} pairs: {} duplicates removed, {} over the token budget, {} over the cap; {} without a shared prompt, {} invalid skipped)",
            args.out.display(),
            counts.train,
            counts.validation,
            counts.test,
            counts.pairs_loaded,
            counts.duplicates_removed,
            counts.over_token_budget,
            counts.capped_out,
            counts.no_shared_prompt,
            counts.invalid_skipped,
        );
    }
    Ok(())
}
