//! `rlxf generate`: continue prompts with a model, in its dialogue format unless `--raw`.
//!
//! Also holds what `rlxf generate` and `rlxf logprobs` share: loading a model with its tokenizer
//! and dialogue template, reading JSONL inputs with line-and-field errors, writing JSONL outputs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};
use clap::Args;
use rlxf_model::loading::resolve_source;
use rlxf_model::{
    generate_keyed, load_tokenizer, ChatTemplate, GenerationConfig, LoadedModel, Tokenizer,
};
use serde_json::{json, Map, Value};

use crate::commands::BadInput;
use crate::{progress, Ctx};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json or a GPT-2-family config),
    /// a registered name fetched with `rlxf model fetch` (smollm2-135m-instruct), or a Hugging Face
    /// model id (needs network access).
    #[arg(long)]
    model: String,

    /// One prompt, as plain text.
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    prompt: Option<String>,

    /// JSONL file of prompts, one {"prompt": "..."} object per line.
    #[arg(long, value_name = "FILE.jsonl")]
    prompts: Option<PathBuf>,

    /// Most tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,

    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,

    /// Sample only among the K most likely tokens.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,

    /// Sample only among the most likely tokens holding probability mass P, in (0, 1].
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,

    /// Random seed: the same seed gives the same replies, whatever the batch size.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Prompts generated together in one batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,

    /// Feed prompts verbatim instead of wrapping them in the model's dialogue format
    /// ("\n\nHuman: ...\n\nAssistant:" for GPT-Neo/GPT-2, ChatML for SmolLM2) and stopping at
    /// the end of the reply.
    #[arg(long)]
    raw: bool,

    /// Also stop a reply at this string (repeatable).
    #[arg(long = "stop", value_name = "STRING")]
    stop: Vec<String>,

    /// Write one JSON object per prompt (prompt, completion, reply, token_ids, logprobs,
    /// finish_reason) to this JSONL file instead of printing the replies.
    #[arg(long, value_name = "FILE.jsonl")]
    out: Option<PathBuf>,
}

/// A model ready to use from the command line.
pub struct CliModel {
    pub model: LoadedModel,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

/// Loads the model at `source` (directory or hub id) with its tokenizer and dialogue template.
pub fn load_cli_model(source: &str) -> anyhow::Result<CliModel> {
    let dir = resolve_source(source).with_context(|| format!("cannot find model {source}"))?;
    let device = Device::cuda_if_available(0).context("cannot open the compute device")?;
    let model = LoadedModel::load_dir(&dir, &device, DType::F32)
        .and_then(LoadedModel::into_inference)
        .with_context(|| format!("cannot load model from {}", dir.display()))?;
    let tokenizer = load_tokenizer(&dir)?;
    let template = ChatTemplate::for_model_dir(&dir)?;
    Ok(CliModel {
        model,
        tokenizer,
        template,
    })
}

/// The JSON objects of a JSONL file with their 1-based line numbers; blank lines are skipped.
pub fn read_jsonl_objects(path: &Path) -> anyhow::Result<Vec<(usize, Map<String, Value>)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| BadInput(format!("cannot read {}: {err}", path.display())))?;
    let mut objects = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => objects.push((line_no, object)),
            Ok(_) => {
                return Err(BadInput(format!(
                    "{}:{line_no}: expected a JSON object",
                    path.display()
                ))
                .into())
            }
            Err(err) => {
                return Err(
                    BadInput(format!("{}:{line_no}: invalid JSON: {err}", path.display())).into(),
                )
            }
        }
    }
    if objects.is_empty() {
        return Err(BadInput(format!("{}: no JSON objects in the file", path.display())).into());
    }
    Ok(objects)
}

/// The string field `field` of a JSONL object, or an error naming file, line and field.
pub fn string_field(
    object: &Map<String, Value>,
    field: &str,
    path: &Path,
    line_no: usize,
) -> anyhow::Result<String> {
    match object.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(BadInput(format!(
            "{}:{line_no}: field `{field}`: expected a string, found {other}",
            path.display()
        ))
        .into()),
        None => Err(BadInput(format!(
            "{}:{line_no}: missing field `{field}`",
            path.display()
        ))
        .into()),
    }
}

/// Writes one JSON value per line to `path` atomically.
pub fn write_jsonl(path: &Path, rows: &[Value]) -> anyhow::Result<()> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&row.to_string());
        text.push('\n');
    }
    rlxf_model::weights::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: GenerateArgs, ctx: Ctx) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        return Err(BadInput("--batch-size must be at least 1".to_string()).into());
    }
    let texts: Vec<String> = match (&args.prompt, &args.prompts) {
        (Some(prompt), _) => vec![prompt.clone()],
        (None, Some(path)) => read_jsonl_objects(path)?
            .iter()
            .map(|(line_no, object)| string_field(object, "prompt", path, *line_no))
            .collect::<anyhow::Result<_>>()?,
        (None, None) => unreachable!("clap requires --prompt or --prompts"),
    };
    let cli_model = load_cli_model(&args.model)?;
    let CliModel {
        model,
        tokenizer,
        template,
    } = &cli_model;

    let mut stop_strings = args.stop.clone();
    if !args.raw {
        stop_strings.extend(template.stop_strings());
    }
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop_strings,
        stop_at_eos: true,
    };
    config.validate()?;

    let prompt_ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|text| {
            let prompt = if args.raw {
                text.clone()
            } else {
                template.format_user_message(text)
            };
            tokenizer.encode(&prompt)
        })
        .collect::<Result<_, _>>()?;

    let bar = progress::bar(ctx, texts.len() as u64, "prompts");
    bar.set_message("generating");
    let mut generations = Vec::with_capacity(texts.len());
    for (batch_index, batch) in prompt_ids.chunks(args.batch_size).enumerate() {
        // Rows are keyed by their index in the whole input, so replies do not depend on batching.
        let first = (batch_index * args.batch_size) as u64;
        let keys: Vec<u64> = (first..first + batch.len() as u64).collect();
        generations.extend(generate_keyed(model, tokenizer, batch, &keys, &config)?);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();

    let reply = |text: &str| {
        if args.raw {
            text.to_string()
        } else {
            template.reply_text(text).to_string()
        }
    };
    match &args.out {
        Some(out) => {
            let rows: Vec<Value> = texts
                .iter()
                .zip(&generations)
                .map(|(prompt, generation)| {
                    json!({
                        "prompt": prompt,
                        "completion": generation.text,
                        "reply": reply(&generation.text),
                        "token_ids": generation.token_ids,
                        "logprobs": generation.logprobs,
                        "finish_reason": generation.finish_reason.as_str(),
                    })
                })
                .collect();
            write_jsonl(out, &rows)?;
            tracing::info!("wrote {} generations to {}", rows.len(), out.display());
        }
        None if generations.len() == 1 => println!("{}", reply(&generations[0].text)),
        None => {
            for (index, generation) in generations.iter().enumerate() {
                println!("=== {} ===\n{}\n", index + 1, reply(&generation.text));
            }
        }
    }
    Ok(())
}
