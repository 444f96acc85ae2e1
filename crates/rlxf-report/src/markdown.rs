//! `report.md`: the tables inline, the plots as links to `plots/*.svg`.

use std::fmt::Write;

use crate::plots::Plot;
use crate::tables::Table;
use crate::{ReportInput, PLOTS_DIR};

/// Escapes the characters that would break a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

pub fn table(out: &mut String, table: &Table) {
    let _ = writeln!(out, "### {}\n", table.title);
    if !table.note.is_empty() {
        let _ = writeln!(out, "{}\n", table.note);
    }
    let headers: Vec<String> = table.headers.iter().map(|h| cell(h)).collect();
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(headers.len()));
    for row in &table.rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

pub fn render(input: &ReportInput, tables: &[Table], plots: &[Plot]) -> String {
    let mut out = format!("# {}\n\n", input.title);
    if !input.summary.is_empty() {
        let _ = writeln!(out, "{}\n", input.summary);
    }
    out.push_str("## Results\n\n");
    for t in tables {
        table(&mut out, t);
    }
    if !plots.is_empty() {
        out.push_str("## Plots\n\n");
        for plot in plots {
            let _ = writeln!(
                out,
                "![{}]({PLOTS_DIR}/{})\n\n{}\n",
                plot.title, plot.file_name, plot.caption
            );
        }
    }
    out
}
