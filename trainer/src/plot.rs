//! `curves.png`: loss and accuracy per epoch (plotters, bitmap backend, PNG via `image`).
//!
//! Text needs a TrueType font; the first of `TRAINER_PLOT_FONT` and a few standard system
//! paths (DejaVu Sans, Liberation Sans) that exists is used. Without one, the curves and grid
//! are drawn without labels.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::EpochRecord;

/// File name of the plot in the run directory.
pub const CURVES_FILE: &str = "curves.png";

const SIZE: (u32, u32) = (1000, 420);
const FONT: &str = "sans-serif";
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system font with plotters once; returns whether text can be drawn.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let env = std::env::var("TRAINER_PLOT_FONT").ok();
        let candidates: Vec<String> = match env {
            Some(p) => vec![p],
            None => FONT_PATHS.iter().map(|s| s.to_string()).collect(),
        };
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type Series<'a> = [(&'a str, RGBColor, Vec<(f64, f64)>)];

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    series: &Series<'_>,
    y_range: (f64, f64),
    x_max: f64,
    text: bool,
    legend: SeriesLabelPosition,
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {title}: {e}");
    let mut builder = ChartBuilder::on(area);
    builder.margin(12);
    if text {
        builder
            .caption(title, (FONT, 20))
            .x_label_area_size(36)
            .y_label_area_size(56);
    }
    let mut chart = builder
        .build_cartesian_2d(0.5..x_max + 0.5, y_range.0..y_range.1)
        .map_err(|e| err(&e))?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if text {
        mesh.x_desc("epoch")
            .label_style((FONT, 14))
            .x_labels((x_max as usize).clamp(2, 12))
            .x_label_formatter(&|x| format!("{x:.0}"));
    }
    mesh.draw().map_err(|e| err(&e))?;
    for (name, color, points) in series {
        let color = *color;
        let drawn = chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if text {
            drawn.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    if text {
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    ((lo - pad).max(0.0), hi + pad)
}

/// Draws loss and accuracy curves of `history` into `path` (PNG), under `title`.
pub fn draw(path: &Path, title: &str, history: &[EpochRecord]) -> Result<()> {
    let text = font_available();
    let (w, h) = SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow!("drawing curves: {e}"))?;
        let root = if text {
            root.titled(title, (FONT, 22))
                .map_err(|e| anyhow!("drawing curves: {e}"))?
        } else {
            root
        };
        let (left, right) = root.split_horizontally(w / 2);
        let x_max = history.iter().map(|r| r.epoch).max().unwrap_or(1).max(1) as f64;
        // A partial epoch sits at the fraction of the epoch it reached.
        let x = |r: &EpochRecord| match (r.partial, history.iter().find(|h| !h.partial)) {
            (true, Some(full)) if full.epoch > 0 => {
                let per_epoch = full.step as f64 / full.epoch as f64;
                r.step as f64 / per_epoch.max(1.0)
            }
            _ => r.epoch as f64,
        };
        let pts = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            history
                .iter()
                .filter_map(|r| f(r).map(|v| (x(r), v)))
                .collect()
        };
        let blue = RGBColor(31, 119, 180);
        let orange = RGBColor(255, 127, 14);
        let loss = [
            ("train loss", blue, pts(|r| Some(r.train_loss))),
            ("validation loss", orange, pts(|r| r.val_loss)),
        ];
        let loss_range = range(loss.iter().flat_map(|s| s.2.iter().map(|p| p.1)));
        panel(
            &left,
            "loss",
            &loss,
            loss_range,
            x_max,
            text,
            SeriesLabelPosition::UpperRight,
        )?;
        let acc = [
            ("train accuracy", blue, pts(|r| Some(r.train_acc))),
            ("validation accuracy", orange, pts(|r| r.val_acc)),
        ];
        let (lo, _) = range(acc.iter().flat_map(|s| s.2.iter().map(|p| p.1)));
        panel(
            &right,
            "accuracy",
            &acc,
            (lo.min(0.9), 1.0),
            x_max,
            text,
            SeriesLabelPosition::LowerRight,
        )?;
        root.present().map_err(|e| anyhow!("drawing curves: {e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer has the wrong size")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .context("cannot encode curves.png")?;
    crate::checkpoint::write_atomic(path, &png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let history: Vec<EpochRecord> = (1..=3)
            .map(|e| EpochRecord {
                epoch: e,
                step: 10 * e as u64,
                lr: 0.1,
                train_loss: 1.0 / e as f64,
                train_acc: 0.5 + 0.1 * e as f64,
                val_loss: Some(1.2 / e as f64),
                val_acc: Some(0.45 + 0.1 * e as f64),
                val_top5: None,
                seconds: 1.0,
                images_per_sec: 100.0,
                partial: e == 3,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        draw(&p, "mlp on synthetic", &history).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), SIZE);
        draw(&p, "", &history[..1]).unwrap();
    }
}
