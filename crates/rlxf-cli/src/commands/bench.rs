//! `rlxf bench`: training-step and generation throughput on GPT-Neo shapes, side by side with the
//! PyTorch + transformers reference (`bench/reference_pytorch.py`) in the same run.
//!
//! Every workload runs in a child process of its own (this binary, with `--workload`), so each peak
//! RSS belongs to one workload only, as in the reference script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlxf_model::{
    generate, token_logprobs_from_hidden, CausalLm, GenerationConfig, GptNeoConfig, LoadedModel,
    ModelConfig, Tokenizer,
};
use rlxf_train::dpo::{reference_logprobs, DpoObjective};
use rlxf_train::losses::DpoLossConfig;
use rlxf_train::optim::{named_params, AdamW, AdamWConfig};
use rlxf_train::setup::EncodedPair;
use rlxf_train::sft::{SftExample, SftObjective};
use rlxf_train::{Objective, Precision};
use serde::{Deserialize, Serialize};

use crate::Ctx;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model shapes: 125m (EleutherAI/gpt-neo-125M, the seed's model) or tiny (checks the harness).
    #[arg(long, value_enum, default_value = "125m")]
    size: BenchSize,

    /// Timed repetitions of each workload, after one untimed warm-up.
    #[arg(long, default_value_t = 3)]
    steps: usize,

    /// Run only one kind of workload.
    #[arg(long, value_enum)]
    only: Option<WorkloadKind>,

    /// PyTorch reference script to run in the same invocation; omit with --no-reference.
    #[arg(long, default_value = "bench/reference_pytorch.py")]
    reference: PathBuf,

    /// Python interpreter with torch and transformers installed.
    #[arg(long, default_value = "python3")]
    python: String,

    /// Precisions both engines run the `train` workload in, comma-separated: `f32` and `bf16`
    /// (mixed precision: PyTorch's autocast; rlxf's `[train] precision = "bf16"`, bf16 compute
    /// over f32 master weights). Both multiply bf16 with AVX512-BF16 (or AMX) instructions where
    /// the CPU has them; elsewhere PyTorch's autocast is emulated and very slow, and rlxf widens
    /// the bf16 operands to f32.
    #[arg(
        long,
        alias = "reference-precisions",
        value_delimiter = ',',
        default_value = "f32,bf16"
    )]
    precisions: Vec<Precision>,

    /// Skip the PyTorch reference (rlxf numbers only).
    #[arg(long)]
    no_reference: bool,

    /// Repeat the whole comparison (rlxf's workloads, then the reference) this many times, print
    /// each round's table, and then every workload's median over the rounds. On a shared or
    /// virtual machine one round's speeds can move by tens of percent; the median of the
    /// per-round ratios is the figure to quote.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,

    /// Also write every result as JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Internal: run one workload in this process and print its result as JSON.
    #[arg(long, hide = true, value_enum)]
    workload: Option<WorkloadKind>,
    #[arg(long, hide = true, default_value_t = 4)]
    batch: usize,
    #[arg(long, hide = true, default_value_t = 128)]
    seq: usize,
    #[arg(long, hide = true, default_value = "f32")]
    precision: Precision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WorkloadKind {
    /// The raw step of the benchmark: next-token loss over every position.
    Train,
    /// A step of `rlxf train sft`: reply tokens only, through the SFT trainer's objective.
    Sft,
    /// A step of `rlxf train dpo`: chosen and rejected rows, cached reference log-probs.
    Dpo,
    Generate,
    /// RL rollout: sample `NEW_TOKENS` tokens per prompt at temperature 0.9, then score them under
    /// the policy (log-probs, entropy, values) and the frozen reference.
    Rollout,
    /// A whole `rlxf train ppo` step: rollout, reward, GAE, 4 epochs of clipped policy + value
    /// updates (TRL's defaults).
    Ppo,
}

impl WorkloadKind {
    fn name(self) -> &'static str {
        match self {
            WorkloadKind::Train => "train",
            WorkloadKind::Sft => "sft",
            WorkloadKind::Dpo => "dpo",
            WorkloadKind::Generate => "generate",
            WorkloadKind::Rollout => "rollout",
            WorkloadKind::Ppo => "ppo",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchSize {
    #[value(name = "125m")]
    M125,
    Tiny,
}

impl BenchSize {
    fn name(self) -> &'static str {
        match self {
            BenchSize::M125 => "125m",
            BenchSize::Tiny => "tiny",
        }
    }

    fn config(self) -> ModelConfig {
        ModelConfig::GptNeo(match self {
            BenchSize::M125 => GptNeoConfig::gpt_neo_125m(),
            BenchSize::Tiny => GptNeoConfig::tiny(),
        })
    }
}

/// Prompt length and new tokens of the generation workloads (the reference uses the same).
const PROMPT_LEN: usize = 32;
const NEW_TOKENS: usize = 64;

/// One measurement, in the reference script's JSON format.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchResult {
    workload: WorkloadKind,
    batch: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
    tokens_per_s: f64,
    /// Wall time of one step (training-like and RL workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seconds_per_step: Option<f64>,
    peak_rss_mb: f64,
}

impl BenchResult {
    fn label(&self) -> String {
        match self.workload {
            WorkloadKind::Train | WorkloadKind::Sft | WorkloadKind::Dpo => format!(
                "{} {}x{} {}",
                self.workload.name(),
                self.batch,
                self.seq.unwrap_or(0),
                self.precision.as_deref().unwrap_or("f32")
            ),
            WorkloadKind::Generate => format!("generate batch {}", self.batch),
            WorkloadKind::Rollout | WorkloadKind::Ppo => format!(
                "{} {}x{}+{NEW_TOKENS}",
                self.workload.name(),
                self.batch,
                self.seq.unwrap_or(0)
            ),
        }
    }
}

pub fn run(args: BenchArgs, ctx: Ctx) -> anyhow::Result<()> {
    if let Some(workload) = args.workload {
        let result = match workload {
            WorkloadKind::Train => bench_train(&args)?,
            WorkloadKind::Sft | WorkloadKind::Dpo => bench_objective(&args, workload)?,
            WorkloadKind::Generate => bench_generate(&args)?,
            WorkloadKind::Rollout | WorkloadKind::Ppo => bench_rl(&args, workload)?,
        };
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        let results = run_round(&args, &ctx)?;
        print_table(&pair_by_label(&results.ours, &results.reference));
        rounds.push(results);
        // After every round, so a failure in a later one keeps the rounds already measured.
        if let Some(out) = &args.out {
            write_results(out, &rounds, &args, &ctx)?;
        }
    }
    if args.rounds > 1 {
        println!("median of {} rounds", args.rounds);
        print_medians(&rounds);
    }
    Ok(())
}

/// Every result of `rounds` as a JSON line, with its engine, model size, thread count and round.
fn write_results(out: &Path, rounds: &[Round], args: &BenchArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut lines = String::new();
    for (round, results) in (1..).zip(rounds) {
        for (engine, results) in [("rlxf", &results.ours), ("pytorch", &results.reference)] {
            for result in results {
                let mut value = serde_json::to_value(result)?;
                value["engine"] = engine.into();
                value["size"] = args.size.name().into();
                value["threads"] = ctx.threads.into();
                value["round"] = round.into();
                lines.push_str(&serde_json::to_string(&value)?);
                lines.push('\n');
            }
        }
    }
    rlxf_data::atomic_file::write(out, lines.as_bytes())
        .with_context(|| format!("writing {}", out.display()))
}

/// One round's measurements: every rlxf workload in its own child process, then the reference.
struct Round {
    ours: Vec<BenchResult>,
    reference: Vec<BenchResult>,
}

fn run_round(args: &BenchArgs, ctx: &Ctx) -> anyhow::Result<Round> {
    let mut ours = Vec::new();
    for (workload, batch, seq, precision) in workloads(args.only, &args.precisions) {
        if !ctx.quiet {
            eprintln!(
                "rlxf: {workload:?} batch {batch} seq {seq} {} ...",
                precision.name()
            );
        }
        ours.push(run_child(
            args,
            ctx.threads,
            workload,
            batch,
            seq,
            precision,
        )?);
    }
    let reference = if args.no_reference {
        Vec::new()
    } else {
        if !ctx.quiet {
            eprintln!("reference: {} ...", args.reference.display());
        }
        run_reference(args, ctx.threads)?
    };
    Ok(Round { ours, reference })
}

/// Training-like steps at 4x128 and 4x256 tokens (the raw step in each of `precisions`, SFT,
/// DPO), greedy generation at batch 1 and 8, and an RL rollout and PPO step on 4 prompts; `only`
/// keeps one kind. The workloads other than `train` run in f32.
fn workloads(
    only: Option<WorkloadKind>,
    precisions: &[Precision],
) -> Vec<(WorkloadKind, usize, usize, Precision)> {
    let mut list = Vec::new();
    if only.is_none_or(|only| only == WorkloadKind::Train) {
        for &precision in precisions {
            for seq in [128, 256] {
                list.push((WorkloadKind::Train, 4, seq, precision));
            }
        }
    }
    for kind in [WorkloadKind::Sft, WorkloadKind::Dpo] {
        if only.is_none_or(|only| only == kind) {
            list.extend([
                (kind, 4, 128, Precision::F32),
                (kind, 4, 256, Precision::F32),
            ]);
        }
    }
    if only.is_none_or(|only| only == WorkloadKind::Generate) {
        list.extend([
            (WorkloadKind::Generate, 1, PROMPT_LEN, Precision::F32),
            (WorkloadKind::Generate, 8, PROMPT_LEN, Precision::F32),
        ]);
    }
    for kind in [WorkloadKind::Rollout, WorkloadKind::Ppo] {
        if only.is_none_or(|only| only == kind) {
            list.push((kind, 4, PROMPT_LEN, Precision::F32));
        }
    }
    list
}

/// Runs one workload in a child process with `threads` worker threads.
fn run_child(
    args: &BenchArgs,
    threads: usize,
    workload: WorkloadKind,
    batch: usize,
    seq: usize,
    precision: Precision,
) -> anyhow::Result<BenchResult> {
    let exe = std::env::current_exe().context("locating the rlxf binary")?;
    let workload_name = workload.name();
    let output = Command::new(exe)
        .args([
            "--quiet",
            "bench",
            "--workload",
            workload_name,
            "--size",
            args.size.name(),
        ])
        .args([
            "--steps",
            &args.steps.to_string(),
            "--batch",
            &batch.to_string(),
        ])
        .args(["--seq", &seq.to_string(), "--threads", &threads.to_string()])
        .args(["--precision", precision.name()])
        .output()
        .context("starting the benchmark child process")?;
    if !output.status.success() {
        bail!(
            "benchmark workload {workload_name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_result_line(&String::from_utf8_lossy(&output.stdout))
}

fn parse_result_line(stdout: &str) -> anyhow::Result<BenchResult> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .context("benchmark child printed no result")?;
    serde_json::from_str(line).with_context(|| format!("parsing benchmark result {line}"))
}

/// Runs the PyTorch reference with `threads` threads (`torch.set_num_threads`).
fn run_reference(args: &BenchArgs, threads: usize) -> anyhow::Result<Vec<BenchResult>> {
    let mut command = Command::new(&args.python);
    command
        .arg(&args.reference)
        .args([
            "--threads",
            &threads.to_string(),
            "--steps",
            &args.steps.to_string(),
        ])
        .args([
            "--size",
            args.size.name(),
            "--prompt-len",
            &PROMPT_LEN.to_string(),
        ])
        .args(["--new-tokens", &NEW_TOKENS.to_string()])
        .args(["--precisions", &precision_list(&args.precisions)]);
    if let Some(only) = args.only {
        command.args(["--only", only.name()]);
    }
    let output = command
        .output()
        .with_context(|| format!("running {} {}", args.python, args.reference.display()))?;
    if !output.status.success() {
        bail!(
            "the PyTorch reference failed (is torch + transformers installed for {}?):\n{}",
            args.python,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.trim_start().starts_with('{'))
        .map(|line| {
            serde_json::from_str(line).with_context(|| format!("parsing reference result {line}"))
        })
        .collect()
}

/// `precisions` as the reference script's `--precisions` takes them.
fn precision_list(precisions: &[Precision]) -> String {
    precisions
        .iter()
        .map(|precision| precision.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// A workload's label with rlxf's and the reference's result for it, where there is one.
type Row<'a> = (String, Option<&'a BenchResult>, Option<&'a BenchResult>);

/// rlxf's results in their order, each beside the reference result with the same label; the
/// reference's other results after them.
fn pair_by_label<'a>(ours: &'a [BenchResult], reference: &'a [BenchResult]) -> Vec<Row<'a>> {
    let mut rows: Vec<Row> = ours.iter().map(|r| (r.label(), Some(r), None)).collect();
    for theirs in reference {
        match rows
            .iter_mut()
            .find(|(label, _, _)| *label == theirs.label())
        {
            Some(row) => row.2 = Some(theirs),
            None => rows.push((theirs.label(), None, Some(theirs))),
        }
    }
    rows
}

fn ratio(mine: Option<&BenchResult>, theirs: Option<&BenchResult>) -> Option<f64> {
    mine.zip(theirs)
        .map(|(m, t)| m.tokens_per_s / t.tokens_per_s)
}

fn cell(value: Option<f64>, precision: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.precision$}"))
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<24} {:>14} {:>14} {:>8} {:>12} {:>12}",
        "workload", "rlxf tok/s", "torch tok/s", "ratio", "rlxf RSS MB", "torch RSS MB"
    );
    for (label, mine, theirs) in rows {
        println!(
            "{label:<24} {:>14} {:>14} {:>8} {:>12} {:>12}",
            cell(mine.map(|r| r.tokens_per_s), 1),
            cell(theirs.map(|r| r.tokens_per_s), 1),
            cell(ratio(*mine, *theirs), 2),
            cell(mine.map(|r| r.peak_rss_mb), 0),
            cell(theirs.map(|r| r.peak_rss_mb), 0),
        );
    }
}

/// One workload over all rounds: the medians of rlxf's speed, the reference's speed and the
/// per-round ratios (the ratio of medians would pair one round's rlxf with another's PyTorch).
#[derive(Debug, PartialEq)]
struct MedianRow {
    label: String,
    ours: Option<f64>,
    theirs: Option<f64>,
    ratio: Option<f64>,
    /// Every round's ratio, in round order.
    ratios: Vec<f64>,
}

fn median_rows(rounds: &[Round]) -> Vec<MedianRow> {
    let paired: Vec<Vec<Row>> = rounds
        .iter()
        .map(|round| pair_by_label(&round.ours, &round.reference))
        .collect();
    let Some(first) = paired.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|(label, _, _)| {
            let rows: Vec<&Row> = paired
                .iter()
                .filter_map(|rows| rows.iter().find(|row| row.0 == *label))
                .collect();
            let ratios: Vec<f64> = rows.iter().filter_map(|row| ratio(row.1, row.2)).collect();
            MedianRow {
                label: label.clone(),
                ours: median(rows.iter().filter_map(|row| row.1.map(|r| r.tokens_per_s))),
                theirs: median(rows.iter().filter_map(|row| row.2.map(|r| r.tokens_per_s))),
                ratio: median(ratios.iter().copied()),
                ratios,
            }
        })
        .collect()
}

/// The middle value (the mean of the two middle ones for an even count); `None` for none.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

fn print_medians(rounds: &[Round]) {
    println!(
        "{:<24} {:>14} {:>14} {:>8}  ratio per round",
        "workload", "rlxf tok/s", "torch tok/s", "ratio"
    );
    for row in median_rows(rounds) {
        let per_round: Vec<String> = row.ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<24} {:>14} {:>14} {:>8}  {}",
            row.label,
            cell(row.ours, 1),
            cell(row.theirs, 1),
            cell(row.ratio, 2),
            per_round.join(" ")
        );
    }
}

fn random_ids(batch: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    (0..batch)
        .map(|_| {
            (0..seq)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

/// Forward, backward and an AdamW step of next-token cross-entropy over every position, as
/// `model(input_ids=ids, labels=ids).loss.backward(); optimizer.step()` does in the reference;
/// in bf16 the forward computes in bf16 over the f32 parameters, as the reference's autocast.
fn bench_train(args: &BenchArgs) -> anyhow::Result<BenchResult> {
    let device = Device::Cpu;
    let mut model = LoadedModel::init_random(args.size.config(), 0, &device, DType::F32)?;
    model.set_compute_dtype(args.precision.compute_dtype())?;
    let vocab = model.vocab_size();
    let rows = random_ids(args.batch, args.seq, vocab);
    let ids = Tensor::new(rows, &device)?;
    let targets = ids.narrow(1, 1, args.seq - 1)?.flatten_all()?;
    let mut optimizer = AdamW::new(named_params(&model.varmap), AdamWConfig::default())?;
    let mut step = || -> anyhow::Result<()> {
        // The LM head runs on the `seq - 1` positions that have a target (transformers computes
        // logits for all `seq` and drops the last), and the loss is the fused LM-head + token
        // log-prob kernel the trainers use.
        let hidden = model.hidden_states(&ids, None, None)?;
        let predicting = hidden.narrow(1, 0, args.seq - 1)?.flatten_to(1)?;
        let loss = token_logprobs_from_hidden(&model, &predicting, &targets)?
            .mean_all()?
            .neg()?;
        let grads = loss.backward()?;
        let grads = optimizer.gradients(&grads);
        optimizer.step(&grads, 1e-5, 1.0)?;
        Ok(())
    };
    step()?;
    let seconds = timed(args.steps, &mut step)?;
    Ok(BenchResult {
        workload: WorkloadKind::Train,
        batch: args.batch,
        seq: Some(args.seq),
        precision: Some(args.precision.name().into()),
        tokens_per_s: (args.batch * args.seq) as f64 / seconds,
        seconds_per_step: Some(seconds),
        peak_rss_mb: peak_rss_mb()?,
    })
}

/// One optimiser step of the SFT or DPO trainer's own objective (the code `rlxf train` runs) on
/// `batch` rows of `seq` tokens: SFT rows are a `seq/2`-token prompt and a `seq/2`-token reply (loss
/// on the reply only); DPO takes `batch/2` pairs whose chosen and rejected rows are each a
/// `seq/2`-token prompt and reply, against reference log-probs cached before timing, as
/// `rlxf train dpo` caches them.
fn bench_objective(args: &BenchArgs, workload: WorkloadKind) -> anyhow::Result<BenchResult> {
    let device = Device::Cpu;
    let model = LoadedModel::init_random(args.size.config(), 0, &device, DType::F32)?;
    let pad_id = Tokenizer::gpt2().pad_id();
    let half = args.seq / 2;
    let rows = random_ids(args.batch * 3, half, model.vocab_size());
    let mut optimizer = AdamW::new(named_params(&model.varmap), AdamWConfig::default())?;
    let mut objective: Box<dyn Objective> = match workload {
        WorkloadKind::Sft => {
            let examples = rows
                .chunks(2)
                .take(args.batch)
                .map(|chunk| SftExample {
                    prompt: chunk[0].clone(),
                    reply: chunk[1].clone(),
                })
                .collect();
            Box::new(SftObjective::new(model, pad_id, examples, Vec::new(), 1))
        }
        WorkloadKind::Dpo => {
            let pairs: Vec<EncodedPair> = rows
                .chunks(3)
                .take((args.batch / 2).max(1))
                .enumerate()
                .map(|(index, chunk)| EncodedPair {
                    id: index.to_string(),
                    prompt: chunk[0].clone(),
                    chosen: chunk[1].clone(),
                    rejected: chunk[2].clone(),
                    label: 1.0,
                })
                .collect();
            let reference = reference_logprobs(&model, &pairs, pad_id, pairs.len())?;
            Box::new(DpoObjective::new(
                model,
                pad_id,
                DpoLossConfig::default(),
                pairs,
                Vec::new(),
                reference,
                1,
            )?)
        }
        other => bail!("{} is not a trainer objective", other.name()),
    };
    let everything: Vec<usize> = (0..objective.num_examples()).collect();
    let units = objective.loss_units(&everything);
    let mut tokens = 0;
    let mut step = || -> anyhow::Result<()> {
        let output = objective.micro_batch(&everything)?;
        tokens = output.tokens;
        let loss = (output.loss_sum / units)?;
        let grads = optimizer.gradients(&loss.backward()?);
        optimizer.step(&grads, 1e-5, 1.0)?;
        Ok(())
    };
    step()?;
    let seconds = timed(args.steps, &mut step)?;
    Ok(BenchResult {
        workload,
        batch: args.batch,
        seq: Some(args.seq),
        precision: Some("f32".into()),
        tokens_per_s: tokens as f64 / seconds,
        seconds_per_step: Some(seconds),
        peak_rss_mb: peak_rss_mb()?,
    })
}

/// Greedy decoding of exactly `NEW_TOKENS` tokens (EOS ignored) from random prompts.
fn bench_generate(args: &BenchArgs) -> anyhow::Result<BenchResult> {
    let device = Device::Cpu;
    // Inference only, as transformers' `generate` runs under `torch.no_grad()`.
    let model =
        LoadedModel::init_random(args.size.config(), 0, &device, DType::F32)?.into_inference()?;
    let tokenizer = Tokenizer::gpt2();
    let prompts = random_ids(args.batch, PROMPT_LEN, model.vocab_size());
    let config = GenerationConfig {
        max_new_tokens: NEW_TOKENS,
        temperature: 0.0,
        stop_at_eos: false,
        ..GenerationConfig::default()
    };
    let mut run = || -> anyhow::Result<()> {
        let generations = generate(&model, &tokenizer, &prompts, &config)?;
        if let Some(short) = generations.iter().find(|g| g.token_ids.len() != NEW_TOKENS) {
            bail!(
                "generation stopped after {} tokens, expected {NEW_TOKENS}",
                short.token_ids.len()
            );
        }
        Ok(())
    };
    run()?;
    let seconds = timed(args.steps, &mut run)?;
    Ok(BenchResult {
        workload: WorkloadKind::Generate,
        batch: args.batch,
        seq: None,
        precision: None,
        tokens_per_s: (args.batch * NEW_TOKENS) as f64 / seconds,
        seconds_per_step: None,
        peak_rss_mb: peak_rss_mb()?,
    })
}

/// The RL workloads on `batch` random prompts of `PROMPT_LEN` tokens with `NEW_TOKENS`-token
/// responses (a random model almost never emits EOS early): `rollout` times the library's
/// rollout (sampling plus policy and reference scoring); `ppo` runs `rlxf train ppo`'s loop for
/// one warm-up step and `steps` timed ones, reading each step's wall time from its metrics.
fn bench_rl(args: &BenchArgs, workload: WorkloadKind) -> anyhow::Result<BenchResult> {
    use rlxf_train::rl::kl::KlConfig;
    use rlxf_train::rl::ppo::Ppo;
    use rlxf_train::rl::rewards::TargetTokenFraction;
    use rlxf_train::rl::rollout::{rollout, RolloutConfig};
    use rlxf_train::rl::{train_rl, GuardConfig, Prompt, RlParts, RlSettings};

    let device = Device::Cpu;
    let policy = LoadedModel::init_random(args.size.config(), 0, &device, DType::F32)?;
    let reference = LoadedModel::init_random(args.size.config(), 0, &device, DType::F32)?;
    let prompts: Vec<Prompt> = random_ids(args.batch, PROMPT_LEN, policy.vocab_size())
        .into_iter()
        .map(|ids| Prompt {
            text: String::new(),
            ids,
        })
        .collect();
    let reward = Box::new(TargetTokenFraction { token_id: 262 });
    let mut parts = RlParts::new(
        policy,
        reference,
        Tokenizer::gpt2(),
        prompts,
        reward,
        true,
        0,
    )?;
    let rollout_config = RolloutConfig {
        temperature: 0.9,
        max_new_tokens: NEW_TOKENS,
        max_prompt_length: PROMPT_LEN,
    };
    let (tokens_per_s, seconds) = match workload {
        WorkloadKind::Rollout => {
            let prompt_ids: Vec<Vec<u32>> = parts.prompts.iter().map(|p| p.ids.clone()).collect();
            let mut tokens = 0;
            let mut run = || -> anyhow::Result<()> {
                let samples = rollout(
                    &parts.policy,
                    &parts.reference,
                    &parts.tokenizer,
                    &prompt_ids,
                    1,
                    &rollout_config,
                    0,
                    args.batch,
                )?;
                tokens = samples.iter().map(|s| s.response.len()).sum();
                Ok(())
            };
            run()?;
            let seconds = timed(args.steps, &mut run)?;
            (tokens as f64 / seconds, seconds)
        }
        _ => {
            let dir = std::env::temp_dir().join(format!("rlxf-bench-ppo-{}", std::process::id()));
            let train = rlxf_train::LoopConfig {
                max_steps: Some(args.steps as u64 + 1),
                batch_size: args.batch,
                learning_rate: Some(1e-5),
                ..rlxf_train::LoopConfig::default()
            };
            let (kl, guards) = (KlConfig::default(), GuardConfig::default());
            let settings = RlSettings {
                rollout: &rollout_config,
                kl: &kl,
                guards: &guards,
                train: &train,
                default_lr: 1e-5,
            };
            train_rl(
                &Ppo::default(),
                &mut parts,
                settings,
                &dir,
                "",
                &rlxf_train::RunOptions::default(),
                &mut rlxf_train::Silent,
            )?;
            let records = rlxf_train::metrics::read_metrics(&dir.join("metrics.jsonl"))?;
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            let timed_steps = &records[1..];
            let number = |record: &serde_json::Map<String, serde_json::Value>, key: &str| {
                record
                    .get(key)
                    .and_then(serde_json::Value::as_f64)
                    .unwrap_or(f64::NAN)
            };
            let seconds = timed_steps
                .iter()
                .map(|r| number(r, "step_seconds"))
                .sum::<f64>()
                / timed_steps.len() as f64;
            let tokens = timed_steps
                .iter()
                .map(|r| number(r, "response_length") * args.batch as f64)
                .sum::<f64>()
                / timed_steps.len() as f64;
            (tokens / seconds, seconds)
        }
    };
    Ok(BenchResult {
        workload,
        batch: args.batch,
        seq: Some(PROMPT_LEN),
        precision: None,
        tokens_per_s,
        seconds_per_step: Some(seconds),
        peak_rss_mb: peak_rss_mb()?,
    })
}

/// Mean seconds per call over `repetitions` calls.
fn timed(repetitions: usize, work: &mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let repetitions = repetitions.max(1);
    let start = Instant::now();
    for _ in 0..repetitions {
        work()?;
    }
    Ok(start.elapsed().as_secs_f64() / repetitions as f64)
}

/// Peak resident set size of this process (VmHWM), as `ru_maxrss` reports it in the reference.
fn peak_rss_mb() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM line in /proc/self/status")?;
    Ok(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(workload: WorkloadKind, tokens_per_s: f64) -> BenchResult {
        BenchResult {
            workload,
            batch: 4,
            seq: Some(128),
            precision: Some("f32".into()),
            tokens_per_s,
            seconds_per_step: None,
            peak_rss_mb: 1000.0,
        }
    }

    #[test]
    fn medians_are_taken_per_workload_and_the_ratio_per_round() {
        let round = |ours: f64, theirs: f64| Round {
            ours: vec![
                result(WorkloadKind::Sft, ours),
                result(WorkloadKind::Dpo, 2.0 * ours),
            ],
            // The reference lists its results in another order and has no DPO.
            reference: vec![
                result(WorkloadKind::Train, 7.0),
                result(WorkloadKind::Sft, theirs),
            ],
        };
        let rounds = [round(100.0, 50.0), round(120.0, 100.0), round(90.0, 60.0)];
        let rows = median_rows(&rounds);
        let labels: Vec<&str> = rows.iter().map(|row| row.label.as_str()).collect();
        assert_eq!(
            labels,
            ["sft 4x128 f32", "dpo 4x128 f32", "train 4x128 f32"]
        );
        // Ratios 2.0, 1.2 and 1.5: their median, not 100 / 60 (the ratio of the medians).
        assert_eq!(
            rows[0],
            MedianRow {
                label: "sft 4x128 f32".into(),
                ours: Some(100.0),
                theirs: Some(60.0),
                ratio: Some(1.5),
                ratios: vec![2.0, 1.2, 1.5],
            }
        );
        assert_eq!(
            (rows[1].ours, rows[1].theirs, rows[1].ratio),
            (Some(200.0), None, None)
        );
        assert_eq!((rows[2].ours, rows[2].theirs), (None, Some(7.0)));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median([3.0].into_iter()), Some(3.0));
        assert_eq!(median(std::iter::empty()), None);
    }
}
