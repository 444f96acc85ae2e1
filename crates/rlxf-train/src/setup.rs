//! What every algorithm sets up the same way: the model, the tokenizer and dialogue template, the
//! data split, token-length truncation and soft labels.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use rlxf_data::{load_pairs, shuffle_cap_split, LoadOptions, PreferencePair, Source, SplitRatios};
use rlxf_model::{
    load_tokenizer, ChatTemplate, Gpt2Config, GptNeoConfig, LlamaConfig, LoadedModel, ModelConfig,
    Tokenizer,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::trainer::LoopConfig;

/// Model sources that build a freshly initialised model instead of loading one, with the GPT-2
/// tokenizer: for tests, smoke runs, and from-scratch baselines.
pub const RANDOM_MODELS: [&str; 5] = [
    "random:gpt-neo-tiny",
    "random:gpt-neo-125m",
    "random:gpt2-tiny",
    "random:gpt2-124m",
    "random:llama-tiny",
];

/// A model, its tokenizer and its dialogue template.
pub struct ModelBundle {
    pub model: LoadedModel,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

/// Loads `source`: one of [`RANDOM_MODELS`] (initialised from `seed`), a local model directory, or
/// a Hugging Face model id. Training runs in f32 on the CPU.
pub fn load_model(source: &str, seed: u64) -> Result<ModelBundle> {
    let device = Device::Cpu;
    if let Some(name) = source.strip_prefix("random:") {
        let config = match name {
            "gpt-neo-tiny" => ModelConfig::GptNeo(GptNeoConfig::tiny()),
            "gpt-neo-125m" => ModelConfig::GptNeo(GptNeoConfig::gpt_neo_125m()),
            "gpt2-tiny" => ModelConfig::Gpt2(Gpt2Config::tiny()),
            "gpt2-124m" => ModelConfig::Gpt2(Gpt2Config::gpt2_124m()),
            "llama-tiny" => ModelConfig::Llama(LlamaConfig::tiny()),
            _ => {
                return Err(TrainError::InvalidInput(format!(
                    "unknown random model `{source}`; choose one of {}",
                    RANDOM_MODELS.join(", ")
                )))
            }
        };
        let template = ChatTemplate::for_model_type(config.model_type());
        let model = LoadedModel::init_random(config, seed, &device, DType::F32)?;
        return Ok(ModelBundle {
            model,
            tokenizer: Tokenizer::gpt2(),
            template,
        });
    }
    let dir = rlxf_model::loading::resolve_source(source)?;
    Ok(ModelBundle {
        model: LoadedModel::load_dir(&dir, &device, DType::F32)?,
        tokenizer: load_tokenizer(&dir)?,
        template: ChatTemplate::for_model_dir(&dir)?,
    })
}

/// [`load_model`] for a trainer: initialised from `train.seed`, its forward pass in
/// `train.precision` (the parameters stay f32).
pub fn load_model_for(source: &str, train: &LoopConfig) -> Result<ModelBundle> {
    let mut bundle = load_model(source, train.seed)?;
    bundle
        .model
        .set_compute_dtype(train.precision.compute_dtype())?;
    Ok(bundle)
}

/// Where the preference pairs come from (the `[data]` table of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training pairs: a file or folder (HH-RLHF jsonl(.gz), rlxf JSONL, Parquet), an
    /// `hf://datasets/...` source, or `embedded`.
    pub train: String,
    /// Held-out pairs; unset means `eval_fraction` of `train` is held out.
    pub eval: Option<String>,
    /// Fraction of the (shuffled, capped) training pairs held out when `eval` is unset.
    pub eval_fraction: f64,
    /// Use at most this many pairs (a seeded random subset) before holding any out.
    pub max_pairs: Option<usize>,
    /// Soft labels: JSONL of `{"id": pair id, "label": p}`, `p` the probability that `chosen` is
    /// the better reply (e.g. from an AI labeler). Pairs without a label count as `p = 1`.
    pub labels: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: "embedded".into(),
            eval: None,
            eval_fraction: 0.1,
            max_pairs: None,
            labels: None,
        }
    }
}

/// Training and held-out pairs.
pub struct DataSplit {
    pub train: Vec<PreferencePair>,
    pub eval: Vec<PreferencePair>,
}

fn load_source(text: &str) -> Result<Vec<PreferencePair>> {
    let source: Source = text.parse()?;
    Ok(load_pairs(&source, &LoadOptions::default())?.pairs)
}

/// Loads and splits the pairs `config` names, shuffled with `seed`.
pub fn load_data(config: &DataConfig, seed: u64) -> Result<DataSplit> {
    let pairs = load_source(&config.train)?;
    match &config.eval {
        Some(eval) => {
            let all = SplitRatios {
                train: 1.0,
                validation: 0.0,
                test: 0.0,
            };
            let (splits, _) = shuffle_cap_split(pairs, seed, config.max_pairs, all);
            Ok(DataSplit {
                train: splits.train,
                eval: load_source(eval)?,
            })
        }
        None => {
            let fraction = config.eval_fraction;
            let ratios = SplitRatios {
                train: 1.0 - fraction,
                validation: fraction,
                test: 0.0,
            };
            let (splits, _) = shuffle_cap_split(pairs, seed, config.max_pairs, ratios);
            Ok(DataSplit {
                train: splits.train,
                eval: splits.validation,
            })
        }
    }
}

/// Reads a soft-label file (see [`DataConfig::labels`]).
pub fn read_labels(path: &Path) -> Result<HashMap<String, f64>> {
    #[derive(Deserialize)]
    struct Label {
        id: String,
        label: f64,
    }
    let text = std::fs::read_to_string(path).map_err(|err| TrainError::io(path, err))?;
    let mut labels = HashMap::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
    {
        let record = || format!("line {}", index + 1);
        let label: Label = serde_json::from_str(line).map_err(|err| TrainError::InvalidRecord {
            origin: path.display().to_string(),
            record: record(),
            field: "(line)".into(),
            reason: err.to_string(),
        })?;
        crate::losses::check_label(label.label, &path.display().to_string(), &record())?;
        labels.insert(label.id, label.label);
    }
    Ok(labels)
}

/// Token budgets (TRL's `max_length` / `max_prompt_length`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lengths {
    /// Longest prompt + reply, in tokens.
    pub max_length: usize,
    /// When prompt + reply is too long the prompt is cut to its last `max_prompt_length` tokens
    /// (the end of a dialogue is what the reply answers), then the reply is cut to fit.
    pub max_prompt_length: usize,
}

impl Lengths {
    pub fn validate(&self, origin: &Path, model_context: usize) -> Result<()> {
        let invalid = |field: &str, reason: String| TrainError::InvalidConfig {
            path: origin.to_path_buf(),
            field: field.into(),
            reason,
        };
        if self.max_prompt_length == 0 || self.max_prompt_length >= self.max_length {
            return Err(invalid(
                "max_prompt_length",
                format!(
                    "must be at least 1 and below max_length ({})",
                    self.max_length
                ),
            ));
        }
        if self.max_length > model_context {
            return Err(invalid(
                "max_length",
                format!(
                    "{} exceeds the model's context of {model_context} tokens",
                    self.max_length
                ),
            ));
        }
        Ok(())
    }
}

/// A prompt and its replies as token ids, truncated to [`Lengths`]; replies end with EOS unless
/// truncation cut it off.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPair {
    pub id: String,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// Probability that `chosen` is better (1 for a hard label).
    pub label: f64,
}

/// Tokenizes and truncates a pair. As TRL does, the prompt is shortened when the longer reply does
/// not fit, so both replies see the same prompt.
pub fn encode_pair(
    bundle: &ModelBundle,
    pair: &PreferencePair,
    lengths: Lengths,
    label: f64,
) -> Result<EncodedPair> {
    let [chosen, rejected] = [&pair.chosen, &pair.rejected].map(|reply| {
        let reply = bundle.template.render_hh_reply(reply);
        bundle.template.completion_ids(&bundle.tokenizer, reply)
    });
    let (prompt, replies) = encode_truncated(
        bundle,
        &pair.prompt,
        &pair.id,
        vec![chosen?, rejected?],
        lengths,
    )?;
    let [chosen, rejected]: [Vec<u32>; 2] = replies.try_into().expect("two replies in, two out");
    Ok(EncodedPair {
        id: pair.id.clone(),
        prompt,
        chosen,
        rejected,
        label,
    })
}

/// Tokenizes an HH-format prompt and one reply (end of turn appended) in the model's dialogue
/// template and truncates them to `lengths`.
pub fn encode_reply(
    bundle: &ModelBundle,
    prompt: &str,
    reply: &str,
    lengths: Lengths,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let reply = bundle.template.render_hh_reply(reply);
    let reply = bundle.template.completion_ids(&bundle.tokenizer, reply)?;
    let (prompt, mut replies) = encode_truncated(bundle, prompt, "(prompt)", vec![reply], lengths)?;
    Ok((prompt, replies.remove(0)))
}

/// Tokenizes `prompt`; when it plus the longest reply exceeds `max_length`, keeps the prompt's last
/// `max_prompt_length` tokens, then cuts every reply to the room left.
fn encode_truncated(
    bundle: &ModelBundle,
    prompt: &str,
    record: &str,
    mut replies: Vec<Vec<u32>>,
    lengths: Lengths,
) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    // Pairs are stored in the HH format; a ChatML model sees the same turns in ChatML.
    let prompt = bundle.template.render_hh_prompt(prompt)?;
    let mut prompt = bundle.tokenizer.encode(&prompt)?;
    if prompt.is_empty() {
        return Err(TrainError::InvalidRecord {
            origin: "training data".into(),
            record: record.to_string(),
            field: "prompt".into(),
            reason: "the prompt is empty; a reply needs at least one prompt token".into(),
        });
    }
    let longest = replies.iter().map(Vec::len).max().unwrap_or(0);
    if prompt.len() + longest > lengths.max_length && prompt.len() > lengths.max_prompt_length {
        prompt.drain(..prompt.len() - lengths.max_prompt_length);
    }
    let room = lengths.max_length.saturating_sub(prompt.len());
    for reply in &mut replies {
        reply.truncate(room);
    }
    Ok((prompt, replies))
}

/// Encodes every pair, attaching soft labels by id (1 where a pair has none).
pub fn encode_pairs(
    bundle: &ModelBundle,
    pairs: &[PreferencePair],
    lengths: Lengths,
    labels: Option<&HashMap<String, f64>>,
) -> Result<Vec<EncodedPair>> {
    pairs
        .iter()
        .map(|pair| {
            let label = labels
                .and_then(|labels| labels.get(&pair.id))
                .copied()
                .unwrap_or(1.0);
            encode_pair(bundle, pair, lengths, label)
        })
        .collect()
}
