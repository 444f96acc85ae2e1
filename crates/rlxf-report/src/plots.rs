//! SVG plots with `plotters`: bar charts with interval whiskers per context, training curves, and
//! a metric against model size.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;
use rlxf_eval::{MetricInfo, MetricKind, ALL_CONTEXTS};

use crate::{ReportError, ReportInput, Result};

/// One figure.
#[derive(Debug, Clone)]
pub struct Plot {
    pub title: String,
    /// File name under the report's plots folder (`metric-harmless.svg`).
    pub file_name: String,
    /// One sentence on how to read it.
    pub caption: String,
    pub svg: String,
}

/// Okabe–Ito: distinguishable for the common colour-vision deficiencies.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// A bootstrap interval `[low, high]`, when the statistic has one.
type Interval = Option<[f64; 2]>;

const HEIGHT: u32 = 420;
const FONT: &str = "sans-serif";

/// Every plot of the report, in reading order.
pub fn all_plots(input: &ReportInput) -> Result<Vec<Plot>> {
    let mut plots = Vec::new();
    for info in &input.results.metrics {
        plots.push(metric_by_context(input, info)?);
    }
    let mut by_metric: BTreeMap<&str, Vec<&crate::Curve>> = BTreeMap::new();
    for curve in &input.curves {
        by_metric.entry(&curve.metric).or_default().push(curve);
    }
    for (metric, curves) in by_metric {
        plots.push(training_curves(metric, &curves)?);
    }
    if let Some(plot) = metric_by_size(input)? {
        plots.push(plot);
    }
    Ok(plots)
}

/// A file-name-safe form of a metric name.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn plot_error<E: std::fmt::Debug>(plot: &str) -> impl Fn(E) -> ReportError + '_ {
    move |error| ReportError::Plot {
        plot: plot.to_string(),
        reason: format!("{error:?}"),
    }
}

/// The y range that shows every value and interval: `[0, 1]` for rates, otherwise the data's
/// range (including 0 for bars) with a margin.
fn y_range(kind: MetricKind, values: impl Iterator<Item = f64>, include_zero: bool) -> (f64, f64) {
    if kind == MetricKind::Rate {
        return (0.0, 1.0);
    }
    let (mut low, mut high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    if include_zero {
        low = low.min(0.0);
        high = high.max(0.0);
    }
    let pad = ((high - low) * 0.08).max(1e-3);
    (low - pad, high + pad)
}

fn y_label(info: &MetricInfo) -> String {
    match info.kind {
        MetricKind::Rate => format!("{} (%)", info.name),
        MetricKind::Mean => info.name.clone(),
    }
}

fn y_tick(kind: MetricKind, value: f64) -> String {
    match kind {
        MetricKind::Rate => format!("{:.0}", 100.0 * value),
        MetricKind::Mean => format!("{value:.2}"),
    }
}

/// Draws a vertical interval with caps at `x`, `half_width` wide.
fn whisker(x: f64, [low, high]: [f64; 2], half_width: f64) -> Vec<PathElement<(f64, f64)>> {
    let style = ShapeStyle::from(&BLACK).stroke_width(1);
    vec![
        PathElement::new(vec![(x, low), (x, high)], style),
        PathElement::new(vec![(x - half_width, low), (x + half_width, low)], style),
        PathElement::new(vec![(x - half_width, high), (x + half_width, high)], style),
    ]
}

/// Grouped bars: one group per context (and "all"), one bar per policy, with interval whiskers.
fn metric_by_context(input: &ReportInput, info: &MetricInfo) -> Result<Plot> {
    let results = &input.results;
    let mut groups: Vec<&str> = results.contexts.iter().map(String::as_str).collect();
    groups.push(ALL_CONTEXTS);
    let title = format!("{} by context", info.name);
    let bars: Vec<Vec<Option<(f64, Interval)>>> = results
        .policies
        .iter()
        .map(|policy| {
            groups
                .iter()
                .map(|context| {
                    let cell = results.cell(policy, context, &info.name)?;
                    Some((cell.value?, cell.ci))
                })
                .collect()
        })
        .collect();
    let extent = bars
        .iter()
        .flatten()
        .flatten()
        .flat_map(|(value, ci)| std::iter::once(*value).chain(ci.iter().flatten().copied()));
    let (y_low, y_high) = y_range(info.kind, extent, true);
    let width = (140 * groups.len() as u32).max(640);
    let mut svg = String::new();
    {
        let error = plot_error(&title);
        let (root, legend) = figure_areas(&mut svg, width, &error)?;
        let count = groups.len();
        let mut chart = framed(&root, &title)
            .build_cartesian_2d(-0.5f64..(count as f64 - 0.5), y_low..y_high)
            .map_err(&error)?;
        let label_of = |x: &f64| {
            let index = x.round();
            if (x - index).abs() < 1e-6 && index >= 0.0 && (index as usize) < count {
                groups[index as usize].replace('_', " ")
            } else {
                String::new()
            }
        };
        let tick = |y: &f64| y_tick(info.kind, *y);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(count)
            .x_label_formatter(&label_of)
            .y_label_formatter(&tick)
            .y_desc(y_label(info))
            .draw()
            .map_err(&error)?;
        let slot = 0.8 / results.policies.len().max(1) as f64;
        for (series, values) in bars.iter().enumerate() {
            let fill = color(series);
            let left = |group: usize| group as f64 - 0.4 + series as f64 * slot;
            let present: Vec<(usize, f64, Interval)> = values
                .iter()
                .enumerate()
                .filter_map(|(group, bar)| bar.map(|(value, ci)| (group, value, ci)))
                .collect();
            chart
                .draw_series(present.iter().map(|&(group, value, _)| {
                    Rectangle::new(
                        [
                            (left(group), 0f64.max(y_low)),
                            (left(group) + slot * 0.9, value),
                        ],
                        fill.filled(),
                    )
                }))
                .map_err(&error)?;
            chart
                .draw_series(
                    present
                        .iter()
                        .filter_map(|&(group, _, ci)| {
                            Some(whisker(left(group) + slot * 0.45, ci?, slot * 0.15))
                        })
                        .flatten(),
                )
                .map_err(&error)?;
        }
        let entries: Vec<(String, RGBColor)> = results
            .policies
            .iter()
            .enumerate()
            .map(|(series, policy)| (policy.clone(), color(series)))
            .collect();
        draw_legend(&legend, &entries, &error)?;
        root.present().map_err(&error)?;
    }
    Ok(Plot {
        file_name: format!("metric-{}.svg", slug(&info.name)),
        caption: format!(
            "{} per context and policy; whiskers: {:.0}% bootstrap intervals. {}",
            info.name,
            100.0 * results.stats.level,
            info.description
        ),
        title,
        svg,
    })
}

/// A chart builder with the title, margins and axis-label room every figure uses.
fn framed<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64);
    builder
}

/// Width of the legend column right of every chart, so the legend never covers data.
const LEGEND_WIDTH: u32 = 170;

/// A legend in its own column: a colour box and the series name per entry.
fn draw_legend(
    area: &DrawingArea<SVGBackend, Shift>,
    entries: &[(String, RGBColor)],
    error: &impl Fn(DrawingAreaErrorKind<std::io::Error>) -> ReportError,
) -> Result<()> {
    for (index, (name, fill)) in entries.iter().enumerate() {
        let top = 48 + 22 * index as i32;
        area.draw(&Rectangle::new([(8, top), (20, top + 12)], fill.filled()))
            .map_err(error)?;
        area.draw(&Text::new(name.clone(), (26, top), (FONT, 13)))
            .map_err(error)?;
    }
    Ok(())
}

/// The drawing areas of one figure: the chart, and the legend column right of it.
fn figure_areas<'a>(
    svg: &'a mut String,
    width: u32,
    error: &impl Fn(DrawingAreaErrorKind<std::io::Error>) -> ReportError,
) -> Result<(
    DrawingArea<SVGBackend<'a>, Shift>,
    DrawingArea<SVGBackend<'a>, Shift>,
)> {
    let root = SVGBackend::with_string(svg, (width + LEGEND_WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(error)?;
    Ok(root.split_horizontally(width))
}

/// One line per run for one training metric.
fn training_curves(metric: &str, curves: &[&crate::Curve]) -> Result<Plot> {
    let title = format!("training: {metric}");
    let points = || curves.iter().flat_map(|curve| curve.points.iter().copied());
    let (x_low, x_high) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| {
        (lo.min(x), hi.max(x))
    });
    let x_high = if x_high > x_low { x_high } else { x_low + 1.0 };
    let (y_low, y_high) = y_range(MetricKind::Mean, points().map(|(_, y)| y), false);
    let mut svg = String::new();
    {
        let error = plot_error(&title);
        let (root, legend) = figure_areas(&mut svg, 720, &error)?;
        let mut chart = framed(&root, &title)
            .build_cartesian_2d(x_low..x_high, y_low..y_high)
            .map_err(&error)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(metric)
            .draw()
            .map_err(&error)?;
        for (series, curve) in curves.iter().enumerate() {
            let stroke = color(series);
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().copied(),
                    stroke.stroke_width(2),
                ))
                .map_err(&error)?;
        }
        let entries: Vec<(String, RGBColor)> = curves
            .iter()
            .enumerate()
            .map(|(series, curve)| (curve.run.clone(), color(series)))
            .collect();
        draw_legend(&legend, &entries, &error)?;
        root.present().map_err(&error)?;
    }
    Ok(Plot {
        file_name: format!("curve-{}.svg", slug(metric)),
        caption: format!("{metric} per optimiser step, one line per run (from metrics.jsonl)."),
        title,
        svg,
    })
}

/// The size metric (over all contexts) against model parameters, one line per method; `None` when
/// fewer than two sizes were evaluated.
fn metric_by_size(input: &ReportInput) -> Result<Option<Plot>> {
    let results = &input.results;
    let info = match &input.size_metric {
        Some(name) => results.metrics.iter().find(|info| &info.name == name),
        None => results
            .metrics
            .iter()
            .find(|info| info.kind == MetricKind::Rate),
    };
    let Some(info) = info else {
        return Ok(None);
    };
    let mut by_method: BTreeMap<&str, Vec<(f64, f64, Interval)>> = BTreeMap::new();
    for policy in &input.policies {
        let Some(parameters) = policy.parameters else {
            continue;
        };
        let Some(cell) = results.cell(&policy.name, ALL_CONTEXTS, &info.name) else {
            continue;
        };
        let Some(value) = cell.value else { continue };
        let method = policy.method.as_deref().unwrap_or(policy.name.as_str());
        by_method
            .entry(method)
            .or_default()
            .push((parameters as f64, value, cell.ci));
    }
    let mut sizes: Vec<f64> = by_method.values().flatten().map(|p| p.0).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    if sizes.len() < 2 {
        return Ok(None);
    }
    for points in by_method.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let title = format!("{} by model size", info.name);
    let extent = by_method
        .values()
        .flatten()
        .flat_map(|(_, value, ci)| std::iter::once(*value).chain(ci.iter().flatten().copied()));
    let (y_low, y_high) = y_range(info.kind, extent, false);
    let (x_low, x_high) = (sizes[0] / 1.5, sizes[sizes.len() - 1] * 1.5);
    let mut svg = String::new();
    {
        let error = plot_error(&title);
        let (root, legend) = figure_areas(&mut svg, 720, &error)?;
        let mut chart = framed(&root, &title)
            .build_cartesian_2d((x_low..x_high).log_scale(), y_low..y_high)
            .map_err(&error)?;
        let tick = |y: &f64| y_tick(info.kind, *y);
        let size_tick = |x: &f64| format!("{:.0}M", x / 1e6);
        chart
            .configure_mesh()
            .x_desc("parameters (log scale)")
            .x_label_formatter(&size_tick)
            .y_label_formatter(&tick)
            .y_desc(y_label(info))
            .draw()
            .map_err(&error)?;
        for (series, points) in by_method.values().enumerate() {
            let stroke = color(series);
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(x, y, _)| (x, y)),
                    stroke.stroke_width(2),
                ))
                .map_err(&error)?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&(x, y, _)| Circle::new((x, y), 4, stroke.filled())),
                )
                .map_err(&error)?;
            chart
                .draw_series(points.iter().filter_map(|&(x, _, ci)| {
                    let [low, high] = ci?;
                    Some(PathElement::new(
                        vec![(x, low), (x, high)],
                        stroke.stroke_width(1),
                    ))
                }))
                .map_err(&error)?;
        }
        let entries: Vec<(String, RGBColor)> = by_method
            .keys()
            .enumerate()
            .map(|(series, method)| (method.to_string(), color(series)))
            .collect();
        draw_legend(&legend, &entries, &error)?;
        root.present().map_err(&error)?;
    }
    Ok(Some(Plot {
        file_name: format!("size-{}.svg", slug(&info.name)),
        caption: format!(
            "{} over all contexts against the policy model's parameters, one line per method; \
             bars: {:.0}% bootstrap intervals.",
            info.name,
            100.0 * results.stats.level
        ),
        title,
        svg,
    }))
}
