//! `rlxf run CONFIG.toml`: the experiment runner (see `crate::runner`).

use std::path::PathBuf;

use clap::Args;

use crate::runner::{self, ExperimentConfig};
use crate::Ctx;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment config (TOML): models, seeds, methods, and each stage's settings. See
    /// configs/quickstart.toml.
    config: PathBuf,

    /// Override a config field: `section.field=value` (TOML value), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(args: RunArgs, ctx: Ctx) -> anyhow::Result<()> {
    let config = ExperimentConfig::read(&args.config, &args.set)?;
    let summary = runner::run(&config, &args.config, ctx)?;
    println!(
        "{} stages run, {} reused; report: {}",
        summary.ran.len(),
        summary.reused.len(),
        summary.report_dir.join("report.html").display()
    );
    Ok(())
}
