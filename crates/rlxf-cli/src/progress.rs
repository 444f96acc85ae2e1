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
