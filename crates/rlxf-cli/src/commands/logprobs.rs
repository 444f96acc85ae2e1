//! `rlxf logprobs`: per-token log-probabilities of completions given prompts.

use std::path::PathBuf;

use clap::Args;
use rlxf_model::{continuation_logprobs_vec, CausalLm, Padding};
use serde_json::{json, Value};

use crate::commands::generate::{
    load_cli_model, read_jsonl_objects, string_field, write_jsonl, CliModel,
};
use crate::commands::BadInput;
use crate::{progress, Ctx};

#[derive(Debug, Args)]
pub struct LogprobsArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json or a GPT-2-family config),
    /// a registered name fetched with `rlxf model fetch` (smollm2-135m-instruct), or a Hugging Face
    /// model id (needs network access).
    #[arg(long)]
    model: String,

    /// JSONL file, one {"prompt": "...", "completion": "..."} object per line. Both are tokenized
    /// verbatim (no dialogue template), the completion right after the prompt.
    #[arg(long, value_name = "FILE.jsonl")]
    input: PathBuf,

    /// Write the results to this JSONL file instead of standard output: one {"prompt_ids",
    /// "completion_ids", "logprobs", "sum"} object per input line.
    #[arg(long, value_name = "FILE.jsonl")]
    out: Option<PathBuf>,

    /// Append the end-of-sequence token to each completion (score a finished reply).
    #[arg(long)]
    append_eos: bool,

    /// Lines scored together in one forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

pub fn run(args: LogprobsArgs, ctx: Ctx) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        return Err(BadInput("--batch-size must be at least 1".to_string()).into());
    }
    let objects = read_jsonl_objects(&args.input)?;
    let CliModel {
        model, tokenizer, ..
    } = load_cli_model(&args.model)?;

    // Tokenize and check every line before any model work, so a bad line fails fast.
    let mut prompts = Vec::with_capacity(objects.len());
    let mut completions = Vec::with_capacity(objects.len());
    for (line_no, object) in &objects {
        let at = |field: &str, message: String| {
            BadInput(format!(
                "{}:{line_no}: field `{field}`: {message}",
                args.input.display()
            ))
        };
        let prompt = tokenizer.encode(&string_field(object, "prompt", &args.input, *line_no)?)?;
        let mut completion =
            tokenizer.encode(&string_field(object, "completion", &args.input, *line_no)?)?;
        if args.append_eos {
            completion.push(tokenizer.eos_id());
        }
        if prompt.is_empty() {
            return Err(at(
                "prompt",
                "is empty; the first completion token is predicted from the prompt's last one"
                    .into(),
            )
            .into());
        }
        let length = prompt.len() + completion.len();
        if length > model.max_context() {
            return Err(at(
                "completion",
                format!("prompt + completion is {length} tokens, longer than the model's {}-token context", model.max_context()),
            )
            .into());
        }
        prompts.push(prompt);
        completions.push(completion);
    }

    let bar = progress::bar(ctx, objects.len() as u64, "lines");
    bar.set_message("scoring");
    let mut logprobs: Vec<Vec<f32>> = Vec::with_capacity(objects.len());
    for (batch_prompts, batch_completions) in prompts
        .chunks(args.batch_size)
        .zip(completions.chunks(args.batch_size))
    {
        // An empty completion has log-probability 0 and nothing to score; keep it out of the batch.
        let scored: Vec<usize> = (0..batch_prompts.len())
            .filter(|&i| !batch_completions[i].is_empty())
            .collect();
        let mut batch_logprobs = vec![Vec::new(); batch_prompts.len()];
        if !scored.is_empty() {
            let pick =
                |rows: &[Vec<u32>]| scored.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
            let rows = continuation_logprobs_vec(
                &model,
                &pick(batch_prompts),
                &pick(batch_completions),
                Padding::Left,
            )?;
            for (&i, row) in scored.iter().zip(rows) {
                batch_logprobs[i] = row;
            }
        }
        logprobs.extend(batch_logprobs);
        bar.inc(batch_prompts.len() as u64);
    }
    bar.finish_and_clear();

    let rows: Vec<Value> = prompts
        .iter()
        .zip(&completions)
        .zip(&logprobs)
        .map(|((prompt, completion), logprobs)| {
            let sum: f64 = logprobs.iter().map(|&logprob| logprob as f64).sum();
            json!({"prompt_ids": prompt, "completion_ids": completion, "logprobs": logprobs, "sum": sum})
        })
        .collect();
    match &args.out {
        Some(out) => {
            write_jsonl(out, &rows)?;
            tracing::info!("wrote {} lines to {}", rows.len(), out.display());
        }
        None => {
            for row in &rows {
                println!("{row}");
            }
        }
    }
    Ok(())
}
