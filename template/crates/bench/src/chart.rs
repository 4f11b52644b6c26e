//! docs/benchmarks.svg: throughput and p99 of the probes next to the references.

use crate::Results;
use plotters::prelude::*;
use std::path::Path;

pub fn render(r: &Results, path: &Path) -> anyhow::Result<()> {
    let rows = [&r.bare, &r.livez, &r.readyz, &r.naive];
    let labels = ["bare actix", "/livez", "/readyz", "naive readiness"];
    let colors = [
        RGBColor(150, 150, 150),
        RGBColor(46, 125, 50),
        RGBColor(25, 118, 210),
        RGBColor(198, 40, 40),
    ];
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(480);
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
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
