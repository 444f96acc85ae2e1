//! `rlxf serve`: an OpenAI-compatible completions server over an rlxf model.

use std::io::Write;

use clap::Args;
use rlxf_feedback::{CompletionServer, FaultPlan, ServedModel};

use crate::commands::generate::{load_cli_model, CliModel};
use crate::Ctx;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json or a GPT-2-family config)
    /// or a Hugging Face model id (needs network access).
    #[arg(long)]
    model: String,

    /// Address to listen on. The default accepts local connections only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to listen on; 0 picks a free one (the address is printed on standard output).
    #[arg(long, default_value_t = 8000)]
    port: u16,

    /// Model name listed by /v1/models and echoed in responses (default: the --model value).
    #[arg(long)]
    name: Option<String>,

    /// Testing aid: misbehave on a fixed cycle of POST requests, e.g.
    /// "ok,429,500,slow:1500,malformed,drop".
    #[arg(long, hide = true, value_name = "SPEC")]
    inject_faults: Option<String>,
}

pub fn run(args: ServeArgs, _ctx: Ctx) -> anyhow::Result<()> {
    let faults: FaultPlan = match &args.inject_faults {
        Some(spec) => spec.parse()?,
        None => FaultPlan::default(),
    };
    let CliModel {
        model,
        tokenizer,
        template,
    } = load_cli_model(&args.model)?;
    let served = ServedModel {
        model,
        tokenizer,
        template,
        name: args.name.clone().unwrap_or_else(|| args.model.clone()),
    };
    let server = CompletionServer::bind(&format!("{}:{}", args.host, args.port), served, faults)?;
    let address = server.local_addr()?;
    // Printed (not logged) and flushed, so a script or test can read the address.
    println!("listening on http://{address}/v1");
    std::io::stdout().flush()?;
    tracing::info!(
        "endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions; Ctrl-C stops"
    );
    server.serve();
    Ok(())
}
