//! docs/benchmarks.svg: throughput and p99 of the probes next to the references (top), and
//! every ratio against its reference with its goal (bottom).

use crate::{Results, ratio};
use plotters::prelude::*;
use std::path::Path;

/// One measured ratio, its goal, and whether higher is better.
struct Ratio {
    label: String,
    value: f64,
    goal: Option<f64>,
    higher_is_better: bool,
}

impl Ratio {
    fn new(label: impl Into<String>, value: f64, goal: Option<f64>, higher: bool) -> Ratio {
        Ratio {
            label: label.into(),
            value,
            goal,
            higher_is_better: higher,
        }
    }

    fn met(&self) -> Option<bool> {
        self.goal.map(|goal| {
            if self.higher_is_better {
                self.value >= goal
            } else {
                self.value <= goal
            }
        })
    }
}

fn ratios(r: &Results) -> Vec<Ratio> {
    let bare = &r.bare.load;
    let mut out = vec![
        Ratio::new(
            "/readyz req/s vs bare",
            r.readyz.load.requests_per_second / bare.requests_per_second,
            Some(0.9),
            true,
        ),
        Ratio::new(
            "/readyz p99 vs bare",
            ratio(r.readyz.load.p99, bare.p99),
            Some(1.5),
            false,
        ),
        Ratio::new(
            "/livez req/s vs bare",
            r.livez.load.requests_per_second / bare.requests_per_second,
            Some(0.9),
            true,
        ),
    ];
    for route in &r.request_path {
        // Short enough for the label column.
        let name = route
            .route
            .replace(", broker away (relay and consumers idle)", " (broker away)");
        out.push(Ratio::new(
            format!("{name} req/s vs floor"),
            route.throughput(),
            route.goals.map(|goals| goals.throughput),
            true,
        ));
        out.push(Ratio::new(
            format!("{name} p99 vs floor"),
            route.p99(),
            route.goals.map(|goals| goals.p99),
            false,
        ));
    }
    out.push(Ratio::new(
        "relay vs lapin publisher",
        r.pipeline.relay_vs_raw(),
        Some(0.5),
        true,
    ));
    out.push(Ratio::new(
        "consumer vs relay",
        r.pipeline.consumer_vs_relay(),
        Some(0.9),
        true,
    ));
    out.push(Ratio::new(
        "RSS last minute vs minute 1",
        1.0 + r.soak.rss_growth(),
        Some(1.1),
        false,
    ));
    out.push(Ratio::new(
        "POST req/s traced vs not",
        r.soak.tracing_ratio(),
        None,
        true,
    ));
    out
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing docs/benchmarks.svg: {error}")
}

/// Horizontal bars, one per ratio, a black tick at its goal; green when the goal is met.
fn draw_ratios<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    rows: &[Ratio],
) -> anyhow::Result<()> {
    let top = rows
        .iter()
        .flat_map(|row| [row.value, row.goal.unwrap_or(0.0)])
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "ratio to its reference (black tick: goal; green: met)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(300)
        .build_cartesian_2d(0.0..top, (0..rows.len()).into_segmented())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => rows.get(*i).map(|r| r.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, row)| {
            let color = match row.met() {
                Some(true) => RGBColor(46, 125, 50),
                Some(false) => RGBColor(239, 108, 0),
                None => RGBColor(150, 150, 150),
            };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (row.value, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, row)| {
            row.goal.map(|goal| {
                PathElement::new(
                    vec![
                        (goal, SegmentValue::Exact(i)),
                        (goal, SegmentValue::Exact(i + 1)),
                    ],
                    BLACK.stroke_width(3),
                )
            })
        }))
        .map_err(plot_error)?;
    Ok(())
}

pub fn render(r: &Results, path: &Path) -> anyhow::Result<()> {
    let rows = [&r.bare, &r.livez, &r.readyz, &r.naive];
    let labels = ["bare actix", "/livez", "/readyz", "naive readiness"];
    let colors = [
        RGBColor(150, 150, 150),
        RGBColor(46, 125, 50),
        RGBColor(25, 118, 210),
        RGBColor(198, 40, 40),
    ];
    let rows_of_ratios = ratios(r);
    let height = 420 + 60 + 26 * rows_of_ratios.len() as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (probes, bottom) = root.split_vertically(420);
    draw_ratios(&bottom, &rows_of_ratios)?;
    let (left, right) = probes.split_horizontally(480);
    let panels = [
        (
            left,
            "requests/s (higher is better)",
            rows.iter()
                .map(|row| row.load.requests_per_second)
                .collect::<Vec<_>>(),
        ),
        (
            right,
            "p99 latency, ms (lower is better)",
            rows.iter()
                .map(|row| row.load.p99.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        ),
    ];
    for (area, title, values) in panels {
        let top = values.iter().cloned().fold(0.0_f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d((0..labels.len()).into_segmented(), 0.0..top.max(1e-6))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len())
            .x_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(i) => {
                    labels.get(*i).map(|l| (*l).to_owned()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    colors[i].filled(),
                );
                bar.set_margin(0, 0, 12, 12);
                bar
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}
