//! `rlxf model ...`: create models in Hugging Face format.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use rlxf_model::{DType, Device, Gpt2Config, GptNeoConfig, LoadedModel, ModelConfig};

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a randomly initialised model (config.json + model.safetensors) in Hugging Face format,
    /// loadable by rlxf and by `transformers.AutoModelForCausalLM.from_pretrained`.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Architecture: gpt-neo (alternating global and sliding-window attention) or gpt2.
    #[arg(long, value_enum)]
    arch: Arch,

    /// Size: tiny (4 layers, hidden 64, for tests and smoke runs) or 125m (the shapes of
    /// EleutherAI/gpt-neo-125M, or of OpenAI gpt2 for --arch gpt2).
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Size {
    Tiny,
    #[value(name = "125m")]
    M125,
}

pub fn run(cmd: ModelCommand, _ctx: Ctx) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let config = match (args.arch, args.size) {
        (Arch::GptNeo, Size::Tiny) => ModelConfig::GptNeo(GptNeoConfig::tiny()),
        (Arch::GptNeo, Size::M125) => ModelConfig::GptNeo(GptNeoConfig::gpt_neo_125m()),
        (Arch::Gpt2, Size::Tiny) => ModelConfig::Gpt2(Gpt2Config::tiny()),
        (Arch::Gpt2, Size::M125) => ModelConfig::Gpt2(Gpt2Config::gpt2_124m()),
    };
    let model = LoadedModel::init_random(config, args.seed, &Device::Cpu, DType::F32)
        .context("initialising the model")?;
    model
        .save_pretrained(&args.out)
        .with_context(|| format!("saving the model to {}", args.out.display()))?;
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
