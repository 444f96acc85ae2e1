//! The `rlxf` binary: a thin command-line layer over the rlxf libraries.
//!
//! Exit codes: 0 success, 2 bad input (a file, flag or config the user gave us is wrong), 1 any other
//! failure.

mod commands;
mod progress;
mod runner;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// RLHF and RLAIF on small language models: data, training, AI feedback, evaluation and reports.
#[derive(Debug, Parser)]
#[command(name = "rlxf", version, propagate_version = true)]
struct Cli {
    /// Hide progress bars and informational logs (errors are still printed).
    #[arg(long, short, global = true)]
    quiet: bool,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides it.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole study from one TOML config: data, SFT, reward model, DPO, generation,
    /// evaluation and report, every stage cached and resumable in runs/<name>/.
    Run(commands::run::RunArgs),
    /// Inspect, convert and split preference data (HH-RLHF, rm-static, generic JSONL, Parquet).
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Create, fetch (smollm2-135m-instruct) and import (GGUF) models in Hugging Face format.
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Generate replies to prompts with a model (its dialogue format unless --raw).
    Generate(commands::generate::GenerateArgs),
    /// Per-token log-probabilities of completions given prompts, from a JSONL file.
    Logprobs(commands::logprobs::LogprobsArgs),
    /// Train from a TOML config: SFT, reward model, DPO, online RL (PPO, A2C, RLOO), or the seed
    /// study's preset (checkpoints, --resume).
    #[command(subcommand)]
    Train(commands::train::TrainCommand),
    /// Use a trained reward model.
    #[command(subcommand)]
    Rm(commands::train::RmCommand),
    /// Measure training-step and generation throughput on GPT-Neo shapes against PyTorch.
    Bench(commands::bench::BenchArgs),
    /// AI preference labels for pairs (both orders, soft labels, cached) and a labeler bias audit.
    Label(commands::label::LabelArgs),
    /// Serve a model over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, logprobs).
    Serve(commands::serve::ServeArgs),
}

/// What every command needs to know about how it was invoked.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    let ctx = Ctx { quiet: cli.quiet };
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args, ctx),
        Command::Data(cmd) => commands::data::run(cmd, ctx),
        Command::Model(cmd) => commands::model::run(cmd, ctx),
        Command::Generate(args) => commands::generate::run(args, ctx),
        Command::Logprobs(args) => commands::logprobs::run(args, ctx),
        Command::Train(cmd) => commands::train::run(cmd, ctx),
        Command::Rm(cmd) => commands::train::run_rm(cmd, ctx),
        Command::Bench(args) => commands::bench::run(args, ctx),
        Command::Label(args) => commands::label::run(args, ctx),
        Command::Serve(args) => commands::serve::run(args, ctx),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(commands::exit_code(&err))
        }
    }
}

fn init_logging(quiet: bool, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
