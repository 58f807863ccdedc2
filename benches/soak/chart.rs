//! `soak.png`: the gateway's RSS, its open files and the sessions held,
//! over time, one panel each from zero, and the steady state's RSS again
//! with its axis zoomed to the range it moved in; the steady state's
//! fitted lines drawn over the RSS and fds panels.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::samples::{Fit, Sample};
use crate::shared_chart::{COLORS, register_font};

/// One panel: a series over minutes, with an optional fitted line.
struct Panel<'a> {
    title: String,
    unit: &'a str,
    points: Vec<(f64, f64)>,
    fit: Option<Fit>,
    /// The steady state only, the value axis fitted to its range.
    zoom: bool,
}

/// Draws the three panels into `path`; `ramp_end_s` is marked on each.
pub fn draw(
    path: &Path,
    title: &str,
    samples: &[Sample],
    ramp_end_s: f64,
    rss: Fit,
    fds: Fit,
) -> Result<()> {
    register_font()?;
    let at = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (s.t_s / 60.0, f(s))).collect()
    };
    let rss_mib = Fit {
        slope: rss.slope / 1024.0,
        intercept: rss.intercept / 1024.0,
        ..rss
    };
    let panels = [
        Panel {
            title: format!("Gateway RSS (steady state: {:+.0} KiB/min)", rss.slope),
            unit: "MiB",
            points: at(|s| s.rss_kib as f64 / 1024.0),
            fit: Some(rss_mib),
            zoom: false,
        },
        Panel {
            title: "Gateway RSS, steady state only (value axis zoomed)".into(),
            unit: "MiB",
            points: at(|s| s.rss_kib as f64 / 1024.0)
                .into_iter()
                .filter(|p| p.0 >= rss.from_min)
                .collect(),
            fit: Some(rss_mib),
            zoom: true,
        },
        Panel {
            title: format!("Gateway open fds (steady state: {:+.2} /min)", fds.slope),
            unit: "fds",
            points: at(|s| s.fds as f64),
            fit: Some(fds),
            zoom: false,
        },
        Panel {
            title: "Console sessions held by the load".into(),
            unit: "sessions",
            points: at(|s| s.held as f64),
            fit: None,
            zoom: false,
        },
    ];
    let root = BitMapBackend::new(path, (1000, 1240)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (head, body) = root.split_vertically(40);
    head.draw_text(title, &("sans-serif", 20).into_text_style(&head), (12, 10))
        .map_err(|e| anyhow!("{e}"))?;
    let areas = body.split_evenly((panels.len(), 1));
    let end_min = samples.last().map_or(1.0, |s| s.t_s / 60.0).max(0.1);
    for (i, (panel, area)) in panels.iter().zip(areas.iter()).enumerate() {
        let color = COLORS[[0, 0, 1, 2][i]];
        draw_panel(area, panel, color, end_min, ramp_end_s / 60.0).map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel<'_>,
    color: RGBColor,
    end_min: f64,
    ramp_end_min: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let max = panel.points.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let min = panel.points.iter().map(|p| p.1).fold(max, f64::min);
    let (x0, bottom, top) = if panel.zoom {
        let pad = ((max - min) * 0.15).max(0.5);
        (ramp_end_min, (min - pad).max(0.0), max + pad)
    } else {
        (0.0, 0.0, (max * 1.15).max(1.0))
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..end_min.max(x0 + 0.01), bottom..top)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(panel.unit)
        .label_style(("sans-serif", 13))
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(ramp_end_min, bottom), (ramp_end_min, top)],
        BLACK.mix(0.35).stroke_width(1),
    ))?;
    chart
        .draw_series(LineSeries::new(
            panel.points.iter().copied(),
            color.stroke_width(2),
        ))?
        .label(panel.unit)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    if let Some(fit) = panel.fit.filter(|f| f.slope.is_finite()) {
        let y = |x: f64| fit.intercept + fit.slope * x;
        chart
            .draw_series(LineSeries::new(
                [(fit.from_min, y(fit.from_min)), (fit.to_min, y(fit.to_min))],
                BLACK.stroke_width(1),
            ))?
            .label("least-squares fit, steady state")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}
