//! `benchmarks.png`: throughput, time to console, CPU per GB and connection
//! rate, both systems side by side.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::shared_chart::{COLORS, register_font};

/// One panel: groups of bars, one bar per system in each group.
pub struct Panel {
    pub title: String,
    pub unit: String,
    /// (group label, [consolegate, sshd])
    pub groups: Vec<(String, [f64; 2])>,
}

/// At most this many panels side by side; more go on further rows.
const COLUMNS: usize = 3;

/// Draws `panels` into `path`, [`COLUMNS`] to a row.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font()?;
    let columns = panels.len().clamp(1, COLUMNS);
    let rows = panels.len().max(1).div_ceil(columns);
    let (width, height) = (560 * columns as u32, 420 * rows as u32);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((rows, columns));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, panel).map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), Box<dyn std::error::Error>> {
    let max = panel
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.35;
    let n = panel.groups.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..max)?;
    let labels: Vec<String> = panel.groups.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(panel.groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(&panel.unit)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (s, name) in ["consolegate", "sshd"].iter().enumerate() {
        let color = COLORS[s];
        let bars = panel.groups.iter().enumerate().map(move |(i, (_, v))| {
            let x0 = i as f64 + 0.1 + 0.4 * s as f64;
            let y = if v[s].is_finite() { v[s] } else { 0.0 };
            Rectangle::new([(x0, 0.0), (x0 + 0.4, y)], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        let values = panel.groups.iter().enumerate().map(move |(i, (_, v))| {
            let x = i as f64 + 0.3 + 0.4 * s as f64;
            let y = if v[s].is_finite() { v[s] } else { 0.0 };
            Text::new(label(y), (x - 0.1, y + max * 0.06), ("sans-serif", 13))
        });
        chart.draw_series(values)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// A bar's value: three decimals for sub-unit figures (echo in
/// ms), one decimal otherwise.
fn label(y: f64) -> String {
    if y.abs() < 1.0 {
        format!("{y:.3}")
    } else {
        format!("{y:.1}")
    }
}
