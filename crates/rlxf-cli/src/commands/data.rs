//! `rlxf data ...` (being written: inspect, prepare).

use clap::Subcommand;

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum DataCommand {}

pub fn run(cmd: DataCommand, _ctx: Ctx) -> anyhow::Result<()> {
    match cmd {}
}
