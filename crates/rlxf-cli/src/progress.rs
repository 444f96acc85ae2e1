//! Progress bars for long work: rate and ETA, hidden with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};

use crate::Ctx;

/// A bar over `len` items of `unit` (e.g. "pairs", "tokens"), or a hidden one under `--quiet`.
#[allow(dead_code)] // used by the long-running commands as they land
pub fn bar(ctx: Ctx, len: u64, unit: &str) -> ProgressBar {
    if ctx.quiet {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(&format!(
        "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(len).with_style(style)
}

/// A spinner showing the current stage of work whose length is unknown (a download, a
/// conversion), or a hidden one under `--quiet`.
pub fn spinner(ctx: Ctx, message: &str) -> ProgressBar {
    if ctx.quiet {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner().with_message(message.to_string());
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}
