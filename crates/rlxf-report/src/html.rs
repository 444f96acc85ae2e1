//! `report.html`: one self-contained page (inline CSS and SVG, no scripts or fonts from the
//! network). A few lines of script count the plots the browser actually laid out and record the
//! number on `<body data-plots-rendered>`, which the headless-browser test reads back.

use std::fmt::Write;

use crate::plots::Plot;
use crate::tables::Table;
use crate::ReportInput;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;\
padding:0 1em;color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}\
figure{margin:1.5em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:0.9em}\
.note{color:#555;font-size:0.9em}";

/// Counts `figure > svg` elements with a non-empty layout box.
const COUNT_SCRIPT: &str = "document.addEventListener('DOMContentLoaded',function(){\
var n=0;document.querySelectorAll('figure.plot svg').forEach(function(s){\
var b=s.getBoundingClientRect();if(b.width>0&&b.height>0&&s.querySelectorAll('rect,path,polyline,circle').length>0){n++;}});\
document.body.setAttribute('data-plots-rendered',String(n));});";

fn table(out: &mut String, table: &Table) {
    let _ = writeln!(out, "<h3>{}</h3>", escape(&table.title));
    if !table.note.is_empty() {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(&table.note));
    }
    out.push_str("<table><thead><tr>");
    for header in &table.headers {
        let _ = write!(out, "<th>{}</th>", escape(header));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in &table.rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// The SVG document without its XML prolog, ready to inline.
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(start) => &svg[start..],
        None => svg,
    }
}

pub fn render(input: &ReportInput, tables: &[Table], plots: &[Plot]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{STYLE}</style></head>\n\
         <body data-plots=\"{plots}\">\n<h1>{title}</h1>\n",
        title = escape(&input.title),
        plots = plots.len()
    );
    if !input.summary.is_empty() {
        let _ = writeln!(out, "<p>{}</p>", escape(&input.summary));
    }
    out.push_str("<h2>Results</h2>\n");
    for t in tables {
        table(&mut out, t);
    }
    if !plots.is_empty() {
        out.push_str("<h2>Plots</h2>\n");
        for plot in plots {
            let _ = writeln!(
                out,
                "<figure class=\"plot\" id=\"{id}\">{svg}<figcaption>{caption}</figcaption></figure>",
                id = escape(plot.file_name.trim_end_matches(".svg")),
                svg = inline_svg(&plot.svg),
                caption = escape(&plot.caption)
            );
        }
    }
    let _ = writeln!(out, "<script>{COUNT_SCRIPT}</script>\n</body></html>");
    out
}
