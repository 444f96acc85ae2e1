//! Preference pairs and prompt sets for rlxf.
//!
//! Everything rlxf trains and evaluates on passes through this crate as canonical
//! [`PreferencePair`]s (and [`Prompt`]s): `prompt` is the conversation so far in Anthropic HH
//! transcript form, ending with the final `"\n\nAssistant:"`, and `chosen` / `rejected` are the two
//! final replies exactly as they follow it (leading space kept), so `prompt + chosen` is the original
//! chosen transcript byte for byte.
//!
//! # Sources and formats
//!
//! A [`Source`] is a local file or folder, a Hugging Face Hub dataset
//! (`hf://datasets/Dahoas/rm-static[@REVISION][/FILTER]`, fetched into the standard HF cache with
//! `hf-hub`; cached files are used without network), or `embedded`, the small hand-written set
//! compiled into rlxf ([`embedded_default_pairs`], [`embedded_eval_prompts`]). Each file is read
//! as one [`Format`], detected from its extension and first record unless given:
//!
//! * [`Format::Hh`]: Anthropic HH-RLHF JSONL or JSONL.gz, `{"chosen": transcript, "rejected":
//!   transcript}`. Each pair is split at the last `"\n\nAssistant:"` both transcripts share
//!   ([`split_hh_pair`]); pairs whose conversations differ earlier are reported, not dropped silently.
//! * [`Format::Jsonl`]: JSONL (or .gz) with prompt / chosen / rejected fields: rlxf's own files,
//!   Dahoas/rm-static and full-hh-rlhf as JSONL, or any JSONL with [`FieldNames`] overrides.
//! * [`Format::Parquet`]: Dahoas/rm-static and full-hh-rlhf Parquet (columns prompt, response,
//!   chosen, rejected; `response` is ignored).
//!
//! ```no_run
//! use rlxf_data::{load_pairs, LoadOptions, Source};
//!
//! let source: Source = "../shared/data/hh-rlhf-harmless-base/test.jsonl.gz".parse()?;
//! let loaded = load_pairs(&source, &LoadOptions::default())?;
//! println!("{} pairs, {} problems", loaded.pairs.len(), loaded.report.problems.len());
//! # Ok::<(), rlxf_data::DataError>(())
//! ```
//!
//! # Errors
//!
//! Every [`DataError`] names the file and, where it applies, the line or row and the field. Record
//! errors (malformed JSON, missing field, wrong type, non-UTF-8 line) fail the load unless
//! [`LoadOptions::skip_invalid`] turns them into counted [`Problem`]s; whole-file errors (empty
//! file, corrupt gzip, Parquet without the needed columns) always fail.
//! [`DataError::is_bad_input`] tells user mistakes from runtime failures.
//!
//! # Selection and splits
//!
//! [`dedupe_by_prompt`], [`filter_by_token_length`] (with the caller's tokenizer) and
//! [`shuffle_cap_split`] (seeded shuffle, `max_samples` cap, train / validation / test) are
//! deterministic; [`prepare()`] chains them, tags contexts and writes the splits and a
//! [`Manifest`] atomically.
//!
//! # Context tags
//!
//! [`ContextRules`] tags a prompt as `mental_health`, `harmful_request`, `emotional_support`,
//! `medical`, `legal_financial`, `sensitive_question` or `general` from keyword and regex rules on
//! its human turns; the rules and the matching rule are in `contexts.toml` at the crate root (the
//! default, compiled in), and a user may supply their own file.

pub mod atomic_file;
pub mod context;
pub mod embedded;
pub mod error;
pub mod format;
pub mod hh;
pub mod hub;
pub mod jsonl;
pub mod load;
pub mod pair;
pub mod prepare;
mod record;
pub mod select;
pub mod source;
pub mod summary;

pub use context::{ContextRules, DEFAULT_RULES_TOML, STANDARD_CONTEXTS};
pub use embedded::{embedded_default_pairs, embedded_eval_prompts, read_prompts_jsonl};
pub use error::{DataError, Position, Result};
pub use format::{detect_format, FieldNames, Format};
pub use hh::{split_hh_pair, SplitTranscripts, TranscriptMismatch};
pub use hub::{HubOptions, HubSource};
pub use load::{
    load_jsonl_bytes, load_pairs, read_pairs_jsonl, InputFile, LoadOptions, LoadReport,
    LoadedPairs, Problem, ProblemKind,
};
pub use pair::{write_jsonl, PreferencePair, Prompt};
pub use prepare::{
    prepare, Counts, Manifest, PrepareOptions, TokenBudget, MANIFEST_FILE, SPLIT_FILES,
};
pub use select::{
    dedupe_by_prompt, filter_by_token_length, shuffle_cap_split, SplitRatios, Splits,
};
pub use source::Source;
pub use summary::{LengthStats, Percentiles, Summary};
