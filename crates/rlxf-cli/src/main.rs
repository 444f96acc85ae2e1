//! The `rlxf` binary: a thin command-line layer over the rlxf libraries.
//!
//! Exit codes: 0 success, 2 bad input (a file, flag or config the user gave us is wrong), 1 any other
//! failure.

mod commands;
mod progress;

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
    /// Inspect, convert and split preference data (HH-RLHF, rm-static, generic JSONL, Parquet).
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Create models in Hugging Face format (random initialisation for tests and experiments).
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Generate replies to prompts with a model (its dialogue format unless --raw).
    Generate(commands::generate::GenerateArgs),
    /// Per-token log-probabilities of completions given prompts, from a JSONL file.
    Logprobs(commands::logprobs::LogprobsArgs),
    /// Train from a TOML config: SFT, reward model, DPO, or the seed study's preset (checkpoints, --resume).
    #[command(subcommand)]
    Train(commands::train::TrainCommand),
    /// Use a trained reward model.
    #[command(subcommand)]
    Rm(commands::train::RmCommand),
    /// Measure training-step and generation throughput on GPT-Neo shapes against PyTorch.
    Bench(commands::bench::BenchArgs),
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
        Command::Data(cmd) => commands::data::run(cmd, ctx),
        Command::Model(cmd) => commands::model::run(cmd, ctx),
        Command::Generate(args) => commands::generate::run(args, ctx),
        Command::Logprobs(args) => commands::logprobs::run(args, ctx),
        Command::Train(cmd) => commands::train::run(cmd, ctx),
        Command::Rm(cmd) => commands::train::run_rm(cmd, ctx),
        Command::Bench(args) => commands::bench::run(args, ctx),
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
