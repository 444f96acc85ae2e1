//! `prepare`: load, tag, dedupe, filter, cap and split a source, and write the splits plus a
//! manifest into a folder, atomically.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::context::ContextRules;
use crate::error::{DataError, Result};
use crate::format::{FieldNames, Format};
use crate::load::{load_pairs, InputFile, LoadOptions, Problem, ProblemKind};
use crate::pair::{write_atomic, write_jsonl};
use crate::select::{dedupe_by_prompt, filter_by_token_length, shuffle_cap_split, SplitRatios};
use crate::source::Source;

/// The file names `prepare` writes into its output folder.
pub const SPLIT_FILES: [&str; 3] = ["train.jsonl", "validation.jsonl", "test.jsonl"];
pub const MANIFEST_FILE: &str = "manifest.json";

/// A token budget: pairs whose prompt + reply exceeds `max_tokens` (as counted by `count_tokens`)
/// are dropped.
pub struct TokenBudget<'a> {
    pub max_tokens: usize,
    /// What counts the tokens (a tokenizer name or path), recorded in the manifest.
    pub tokenizer: String,
    pub count_tokens: &'a dyn Fn(&str) -> usize,
}

/// How to prepare a dataset.
pub struct PrepareOptions<'a> {
    pub seed: u64,
    pub split: SplitRatios,
    pub max_samples: Option<usize>,
    pub dedupe: bool,
    pub token_budget: Option<TokenBudget<'a>>,
    /// Tags pairs that carry no context of their own.
    pub contexts: &'a ContextRules,
    /// What the rules are called in the manifest (`embedded` or the rule file's path).
    pub contexts_label: String,
    /// Replace an existing, non-empty output folder.
    pub overwrite: bool,
}

/// `manifest.json`: everything needed to tell whether a prepared folder matches its inputs.
/// It holds no time stamps or temporary paths, so equal inputs and options give equal bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub rlxf_version: String,
    pub source: String,
    pub inputs: Vec<InputFile>,
    pub options: ManifestOptions,
    pub counts: Counts,
    /// Pairs per context tag over all three splits, sorted by tag.
    pub contexts: std::collections::BTreeMap<String, usize>,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestOptions {
    /// `None`: detected per file (each input lists its format).
    pub format: Option<Format>,
    pub fields: FieldNames,
    pub skip_invalid: bool,
    pub seed: u64,
    pub split: SplitRatios,
    pub max_samples: Option<usize>,
    pub dedupe: bool,
    pub max_tokens: Option<usize>,
    pub tokenizer: Option<String>,
    pub contexts: String,
    pub contexts_sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub records_read: usize,
    pub pairs_loaded: usize,
    pub no_shared_prompt: usize,
    pub invalid_skipped: usize,
    pub duplicates_removed: usize,
    pub over_token_budget: usize,
    pub capped_out: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}

/// Prepares `source` into `out_dir` (`train.jsonl`, `validation.jsonl`, `test.jsonl`,
/// `manifest.json`) and returns the manifest. The files are written into a temporary folder next
/// to `out_dir` that is renamed into place at the end, so a failure leaves no partial output.
pub fn prepare(
    source: &Source,
    load: &LoadOptions,
    options: &PrepareOptions<'_>,
    out_dir: &Path,
) -> Result<Manifest> {
    let existing = out_dir.exists();
    if existing && !options.overwrite && !is_empty_dir(out_dir)? {
        return Err(DataError::OutputExists {
            path: out_dir.to_path_buf(),
        });
    }
    let loaded = load_pairs(source, load)?;
    let pairs_loaded = loaded.pairs.len();
    let mut pairs = loaded.pairs;
    for pair in &mut pairs {
        if pair.context.is_none() {
            pair.context = Some(options.contexts.tag(&pair.prompt).to_string());
        }
    }
    let duplicates_removed = if options.dedupe {
        let (kept, dropped) = dedupe_by_prompt(pairs);
        pairs = kept;
        dropped
    } else {
        0
    };
    let over_token_budget = match &options.token_budget {
        Some(budget) => {
            let (kept, dropped) =
                filter_by_token_length(pairs, budget.max_tokens, budget.count_tokens);
            pairs = kept;
            dropped
        }
        None => 0,
    };
    let (splits, capped_out) =
        shuffle_cap_split(pairs, options.seed, options.max_samples, options.split);
    let mut contexts = std::collections::BTreeMap::new();
    for pair in splits
        .train
        .iter()
        .chain(&splits.validation)
        .chain(&splits.test)
    {
        let tag = pair.context.clone().unwrap_or_default();
        *contexts.entry(tag).or_insert(0usize) += 1;
    }
    let report = loaded.report;
    let manifest = Manifest {
        rlxf_version: env!("CARGO_PKG_VERSION").to_string(),
        source: source.to_string(),
        options: ManifestOptions {
            format: load.format,
            fields: load.fields.clone(),
            skip_invalid: load.skip_invalid,
            seed: options.seed,
            split: options.split,
            max_samples: options.max_samples,
            dedupe: options.dedupe,
            max_tokens: options.token_budget.as_ref().map(|b| b.max_tokens),
            tokenizer: options.token_budget.as_ref().map(|b| b.tokenizer.clone()),
            contexts: options.contexts_label.clone(),
            contexts_sha256: options.contexts.sha256().to_string(),
        },
        counts: Counts {
            records_read: report.records_read,
            pairs_loaded,
            no_shared_prompt: report.count(ProblemKind::NoSharedPrompt),
            invalid_skipped: report.count(ProblemKind::InvalidRecord),
            duplicates_removed,
            over_token_budget,
            capped_out,
            train: splits.train.len(),
            validation: splits.validation.len(),
            test: splits.test.len(),
        },
        contexts,
        inputs: report.inputs,
        problems: report.problems,
    };

    let parent = match out_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".rlxf-prepare-")
        .tempdir_in(&parent)
        .map_err(|e| DataError::io(&parent, e))?;
    for (name, part) in SPLIT_FILES
        .iter()
        .zip([&splits.train, &splits.validation, &splits.test])
    {
        write_jsonl(&staging.path().join(name), part)?;
    }
    let manifest_path = staging.path().join(MANIFEST_FILE);
    write_atomic(&manifest_path, |out| {
        serde_json::to_writer_pretty(&mut *out, &manifest).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    })?;
    replace_dir(staging, out_dir, existing)?;
    Ok(manifest)
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    if !path.is_dir() {
        return Ok(false);
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| DataError::io(path, e))?;
    Ok(entries.next().is_none())
}

/// Moves the finished staging folder to `out_dir`. An existing `out_dir` is first moved aside (and
/// deleted only once the new folder is in place), so at every moment either the old or the new
/// complete output is there.
fn replace_dir(staging: tempfile::TempDir, out_dir: &Path, existing: bool) -> Result<()> {
    let staged = staging.keep();
    let io_err = |e| DataError::io(out_dir, e);
    if !existing {
        return std::fs::rename(&staged, out_dir).map_err(io_err);
    }
    let aside = staged.with_extension("old");
    std::fs::rename(out_dir, &aside).map_err(io_err)?;
    if let Err(e) = std::fs::rename(&staged, out_dir) {
        // Put the old output back rather than leave nothing.
        let _ = std::fs::rename(&aside, out_dir);
        return Err(io_err(e));
    }
    let remove = if aside.is_dir() {
        std::fs::remove_dir_all(&aside)
    } else {
        std::fs::remove_file(&aside)
    };
    remove.map_err(|e| DataError::io(&aside, e))
}
