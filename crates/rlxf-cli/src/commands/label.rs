//! `rlxf label`: AI preference labels for preference pairs, with a labeler bias audit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use rlxf_data::{
    load_pairs, shuffle_cap_split, ContextRules, LoadOptions, PreferencePair, Source, SplitRatios,
};
use rlxf_feedback::{
    audit, Audit, AuditItem, Engine, EngineStats, LabelCache, LabelerConfig, ResponsePair, Side,
    SoftLabel,
};
use serde_json::{json, Value};

use crate::commands::generate::{read_jsonl_objects, string_field, write_jsonl};
use crate::commands::BadInput;
use crate::{progress, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OwnSide {
    Chosen,
    Rejected,
}

// Field docs are `--help` text, written for the terminal: brackets there are not rustdoc links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Labeler config (TOML): [backend] kind = "local" (model = DIR) or kind = "openai" (base_url,
    /// model, endpoint, api_key_env, ...), [prompt] preamble/exemplars/ending/chain_of_thought,
    /// optional cache = PATH. See configs/labeler-local.toml and configs/labeler-openai.toml.
    #[arg(long, value_name = "CONFIG.toml")]
    labeler: PathBuf,

    /// Preference pairs: a file or folder (HH-RLHF .jsonl/.jsonl.gz, rlxf JSONL, Parquet), an
    /// hf://datasets/... source, or "embedded". The chosen reply is the human label the audit
    /// compares against.
    #[arg(long, value_name = "SOURCE")]
    pairs: String,

    /// Output folder: labels.jsonl, audit.json and (unless the config names one) cache.sqlite.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Label a seeded random subset of at most N pairs.
    #[arg(long, value_name = "N")]
    max_samples: Option<usize>,

    /// Seed of the subset drawn by --max-samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Label cache (SQLite); overrides the config's `cache`. Share it between runs to resume or to
    /// reuse answers.
    #[arg(long, value_name = "FILE.sqlite")]
    cache: Option<PathBuf>,

    /// Context-tag rules (TOML) for pairs without a context tag; default: the built-in rules.
    #[arg(long, value_name = "FILE.toml")]
    contexts: Option<PathBuf>,

    /// The labeler wrote this reply of every pair (for the self-preference audit).
    #[arg(long, value_enum, conflicts_with = "own")]
    own_side: Option<OwnSide>,

    /// Which reply the labeler wrote, per pair: JSONL of {"id": ..., "own": "chosen"|"rejected"}.
    #[arg(long, value_name = "FILE.jsonl")]
    own: Option<PathBuf>,

    /// Skip records that cannot be read (counted and reported) instead of stopping at the first.
    #[arg(long)]
    skip_invalid: bool,
}

/// Which reply of each pair is the labeler's own, by pair id.
fn own_sides(args: &LabelArgs) -> anyhow::Result<Option<HashMap<String, Side>>> {
    let Some(path) = &args.own else {
        return Ok(None);
    };
    let mut sides = HashMap::new();
    for (line_no, object) in read_jsonl_objects(path)? {
        let id = string_field(&object, "id", path, line_no)?;
        let side = match string_field(&object, "own", path, line_no)?.as_str() {
            "chosen" => Side::Chosen,
            "rejected" => Side::Rejected,
            other => {
                return Err(BadInput(format!(
                "{}:{line_no}: field `own`: expected \"chosen\" or \"rejected\", found {other:?}",
                path.display()
            ))
                .into())
            }
        };
        sides.insert(id, side);
    }
    Ok(Some(sides))
}

fn label_record(id: &str, context: &str, label: &SoftLabel) -> Value {
    json!({
        "id": id,
        // P(chosen is better): the soft label `rlxf train rm|dpo` read from `[data] labels`.
        "label": label.p_a,
        "context": context,
        "chosen_first": label.a_first,
        "rejected_first": label.b_first,
        "same_position_preferred": label.same_position_preferred(),
    })
}

pub fn run(args: LabelArgs, ctx: Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = LabelerConfig::read(&args.labeler)?;
    let own = own_sides(&args)?;
    let rules = match &args.contexts {
        Some(path) => ContextRules::from_path(path)?,
        None => ContextRules::embedded(),
    };

    let source: Source = args.pairs.parse()?;
    let options = LoadOptions {
        skip_invalid: args.skip_invalid,
        ..LoadOptions::default()
    };
    let loaded = load_pairs(&source, &options)?;
    if !loaded.report.problems.is_empty() {
        tracing::warn!(
            "{} records of {} could not be used",
            loaded.report.problems.len(),
            args.pairs
        );
    }
    let everything = SplitRatios {
        train: 1.0,
        validation: 0.0,
        test: 0.0,
    };
    let (splits, _) = shuffle_cap_split(loaded.pairs, args.seed, args.max_samples, everything);
    let pairs = splits.train;
    if pairs.is_empty() {
        return Err(BadInput(format!("{}: no preference pairs to label", args.pairs)).into());
    }
    let contexts = context_tags(&pairs, &rules);

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let cache_path = args
        .cache
        .clone()
        .or_else(|| config.cache.clone())
        .unwrap_or_else(|| args.out.join("cache.sqlite"));
    let own_side = |pair: &PreferencePair| match (&own, args.own_side) {
        (Some(sides), _) => sides.get(&pair.id).copied(),
        (None, Some(OwnSide::Chosen)) => Some(Side::Chosen),
        (None, Some(OwnSide::Rejected)) => Some(Side::Rejected),
        (None, None) => None,
    };
    let labeled = label_pairs(
        &config,
        &pairs,
        &contexts,
        &own_side,
        &cache_path,
        &args.out,
        ctx,
    )?;
    let run = json!({
        "pairs": args.pairs,
        "max_samples": args.max_samples,
        "seed": args.seed,
        "skipped_records": loaded.report.problems.len(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let audit_path = labeled.write_audit(&args.out, &config, &cache_path, run)?;
    let (report, stats, labels_path) = (labeled.audit, labeled.stats, labeled.labels_path);

    let rate = |value: Option<f64>| value.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    let overall = &report.overall;
    println!(
        "labeled {} pairs ({} answers from the cache, {} computed)\n\
         agreement with human labels {}  position bias {}  length bias (corr) {}\n\
         wrote {} and {}",
        overall.n,
        stats.cached,
        stats.computed,
        rate(overall.agreement),
        rate(overall.position_bias_rate),
        rate(overall.length_bias.correlation),
        labels_path.display(),
        audit_path.display()
    );
    Ok(())
}

/// Each pair's context tag: its own, or the one `rules` give its prompt.
pub fn context_tags(pairs: &[PreferencePair], rules: &ContextRules) -> Vec<String> {
    pairs
        .iter()
        .map(|pair| {
            pair.context
                .clone()
                .unwrap_or_else(|| rules.tag(&pair.prompt).to_string())
        })
        .collect()
}

/// What [`label_pairs`] produced.
pub struct Labeled {
    pub identity: String,
    pub audit: Audit,
    pub stats: EngineStats,
    pub labels_path: PathBuf,
}

/// Labels `pairs` (chosen as A, rejected as B, both orders) with the labeler `config` describes,
/// writes `out/labels.jsonl` (`label` = P(chosen is better), what `rlxf train rm|dpo` read) and
/// returns the audit. `contexts` tags each pair; `own` says which reply the labeler wrote, if any.
pub fn label_pairs(
    config: &LabelerConfig,
    pairs: &[PreferencePair],
    contexts: &[String],
    own: &dyn Fn(&PreferencePair) -> Option<Side>,
    cache_path: &Path,
    out: &Path,
    ctx: Ctx,
) -> anyhow::Result<Labeled> {
    let labeler = config.pairwise_labeler()?;
    let cache = LabelCache::open(cache_path)?;
    let device = rlxf_model::Device::cuda_if_available(0).context("cannot open the device")?;
    let engine = Engine::new(config.backend(&device)?, Some(cache));
    tracing::info!("labeler {}", engine.identity());
    let inputs: Vec<ResponsePair<'_>> = pairs
        .iter()
        .map(|pair| ResponsePair {
            prompt: &pair.prompt,
            a: &pair.chosen,
            b: &pair.rejected,
        })
        .collect();
    let bar = progress::bar(
        ctx,
        (pairs.len() * labeler.answers_per_pair()) as u64,
        "answers",
    );
    bar.set_message("labeling");
    let labels = labeler.label(&engine, &inputs, &mut |done| bar.inc(done as u64))?;
    bar.finish_and_clear();

    let records: Vec<Value> = pairs
        .iter()
        .zip(contexts)
        .zip(&labels)
        .map(|((pair, context), label)| label_record(&pair.id, context, label))
        .collect();
    let labels_path = out.join("labels.jsonl");
    write_jsonl(&labels_path, &records)?;

    let items: Vec<AuditItem<'_>> = pairs
        .iter()
        .zip(contexts)
        .zip(&labels)
        .map(|((pair, context), label)| AuditItem {
            label,
            context,
            chosen: &pair.chosen,
            rejected: &pair.rejected,
            own: own(pair),
        })
        .collect();
    Ok(Labeled {
        identity: engine.identity(),
        audit: audit(&items),
        stats: engine.stats(),
        labels_path,
    })
}

impl Labeled {
    /// Writes `out/audit.json`, one shape wherever pairs are labeled: the labeler, its config,
    /// the cache's share of the answers, the audit overall and per context, and `run` (what the
    /// caller knows about the run: source, seed, ...) under `"run"`. Returns its path.
    pub fn write_audit(
        &self,
        out: &Path,
        config: &LabelerConfig,
        cache_path: &Path,
        run: Value,
    ) -> anyhow::Result<PathBuf> {
        let path = out.join("audit.json");
        write_json(
            &path,
            &json!({
                "labeler": self.identity,
                "labeler_config": config,
                "run": run,
                "n_pairs": self.audit.overall.n,
                "cache": {
                    "path": cache_path,
                    "answers_from_cache": self.stats.cached,
                    "answers_computed": self.stats.computed,
                },
                "overall": self.audit.overall,
                "by_context": self.audit.by_context,
            }),
        )?;
        Ok(path)
    }
}

pub fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    rlxf_model::weights::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
