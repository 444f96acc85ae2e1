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

    /// Worker threads for all tensor math [default: RAYON_NUM_THREADS if set, else the CPUs this
    /// process may use].
    #[arg(
        long,
        global = true,
        value_name = "N",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

// Variant docs are `--help` text, written for the terminal: `runs/<name>/` is not an HTML tag.
#[allow(rustdoc::invalid_html_tags)]
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
    /// Worker threads every command computes with (`--threads`).
    pub threads: usize,
}

/// Training allocates and frees tensors of up to hundreds of megabytes every step. glibc's malloc
/// maps each one afresh and unmaps it on free, so every step page-faults its whole working set in
/// again (a quarter of the CPU time went to the kernel, millions of faults per step); mimalloc
/// with purging off keeps freed memory for the next step's tensors (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v3 `include/mimalloc.h`; the Rust crate
/// exports no constant for it, hence the pinned `libmimalloc-sys` version).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed memory back to the OS (`-1`): the default 10 ms delay purges between training
/// steps, and the next step faults every page in again.
fn keep_freed_memory() {
    // SAFETY: sets a process-wide allocator option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let threads = use_threads(cli.threads);
    init_logging(cli.quiet, cli.verbose);
    tracing::debug!("computing with {threads} worker threads");
    let ctx = Ctx {
        quiet: cli.quiet,
        threads,
    };
    // A command runs on a worker of rayon's pool: every parallel call it makes (gemm, the fused
    // kernels; about a hundred per decoding step or per layer of a training step) then shares its
    // work with the other workers directly, instead of handing it to the pool and sleeping until
    // it is done, two context switches per call on the calling thread. Not `serve`: its accept
    // loop would hold a worker for good while request threads wait on the pool.
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(args, ctx),
        command => rayon::scope(|_| run_command(command, ctx)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(commands::exit_code(&err))
        }
    }
}

fn run_command(command: Command, ctx: Ctx) -> anyhow::Result<()> {
    match command {
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
    }
}

/// Sizes every thread pool the tensor math runs on, before any of them starts: rayon's global
/// pool (gemm's matmuls, rlxf's kernels) and candle's own pools, which read RAYON_NUM_THREADS and
/// CANDLE_NUM_THREADS when first used. Returns the thread count.
fn use_threads(flag: Option<usize>) -> usize {
    let threads = flag
        .or_else(|| {
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|value| value.parse().ok())
                .filter(|&threads| threads > 0)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    for variable in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        std::env::set_var(variable, threads.to_string());
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("the global thread pool is built once, before any parallel work");
    threads
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
