//! PNG plots of a run (plotters, bitmap backend, text in the embedded DejaVu Sans): training curves (loss per
//! step with the epoch means, learning rate per group, test top-1/top-5 per epoch) and a confusion matrix.
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

use super::eval::EvalReport;
use super::metrics::Record;
use crate::{Error, Result};

/// DejaVu Sans, embedded (see assets/README.md for its licence).
pub static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The font family name the plots use.
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The embedded font is valid; registration cannot fail for it.
            let _ = plotters::style::register_font(FONT, style, DEJAVU_SANS);
        }
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Image { path: path.to_path_buf(), reason: format!("cannot draw the plot: {e}") }
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5 * lo.abs().max(1e-3), hi + 0.5 * hi.abs().max(1e-3));
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

/// Draws `curves.png`: loss, learning rate and test accuracy against training progress.
pub fn plot_curves(records: &[Record], path: &Path) -> Result<()> {
    register_font();
    let steps: Vec<_> = records.iter().filter_map(|r| if let Record::Step(s) = r { Some(s) } else { None }).collect();
    let evals: Vec<_> = records.iter().filter_map(|r| if let Record::Eval(e) = r { (e.views <= 1).then_some(e) } else { None }).collect();
    let epochs: Vec<_> = records.iter().filter_map(|r| if let Record::Epoch(e) = r { Some(e) } else { None }).collect();

    let root = BitMapBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let panels = root.split_evenly((1, 3));
    let max_step = steps.iter().map(|s| s.step).max().unwrap_or(1).max(1) as f64;
    let per_epoch = |epoch: usize| -> f64 {
        // x position (in steps) of the end of an epoch
        epochs.iter().find(|e| e.epoch == epoch).map(|e| e.step as f64).unwrap_or(0.0)
    };

    // Loss.
    {
        let (lo, hi) = bounds(steps.iter().map(|s| s.loss).chain(epochs.iter().map(|e| e.train_loss)));
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("training loss", (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_step, lo.max(0.0)..hi)
            .map_err(|e| plot_err(path, e))?;
        chart.configure_mesh().x_desc("step").y_desc("loss").label_style((FONT, 14)).draw().map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(LineSeries::new(steps.iter().map(|s| (s.step as f64, s.loss)), BLUE.mix(0.5)))
            .map_err(|e| plot_err(path, e))?
            .label("per step")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        chart
            .draw_series(LineSeries::new(epochs.iter().map(|e| (e.step as f64, e.train_loss)), ORANGE.stroke_width(3)))
            .map_err(|e| plot_err(path, e))?
            .label("epoch mean")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], ORANGE.stroke_width(3)));
        chart.configure_series_labels().label_font((FONT, 14)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| plot_err(path, e))?;
    }

    // Learning rate.
    {
        let (_, hi) = bounds(steps.iter().flat_map(|s| [s.lr, s.lr_visual, s.lr_fusion]));
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("learning rate", (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..max_step, 0f64..hi.max(1e-12))
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("lr")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (name, color, get) in [
            ("text", BLUE, (|s: &super::metrics::StepLog| s.lr) as fn(&super::metrics::StepLog) -> f64),
            ("visual", GREEN, |s| s.lr_visual),
            ("fusion", ORANGE, |s| s.lr_fusion),
        ] {
            chart
                .draw_series(LineSeries::new(steps.iter().map(|s| (s.step as f64, get(s))), color.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().label_font((FONT, 14)).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| plot_err(path, e))?;
    }

    // Accuracy per epoch.
    {
        let max_epoch = evals.iter().map(|e| e.epoch).max().unwrap_or(1).max(1) as f64;
        let mut chart = ChartBuilder::on(&panels[2])
            .caption("test accuracy (template ensemble)", (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_epoch, 0f64..100f64)
            .map_err(|e| plot_err(path, e))?;
        chart.configure_mesh().x_desc("epoch (0 = starting weights)").y_desc("%").label_style((FONT, 14)).draw().map_err(|e| plot_err(path, e))?;
        for (name, color, top5) in [("top-1", BLUE, false), ("top-5", GREEN, true)] {
            let pts: Vec<(f64, f64)> = evals.iter().map(|e| (e.epoch as f64, 100.0 * if top5 { e.top5 } else { e.top1 })).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|e| plot_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    let _ = per_epoch;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// Draws `confusion.png`: rows are true classes, columns predictions, cells shaded by the row-normalised
/// rate; class names are written when there are at most 40 classes.
pub fn plot_confusion(report: &EvalReport, classes: &[String], path: &Path) -> Result<()> {
    register_font();
    let c = report.confusion.len().max(1);
    let show_names = c <= 40;
    let label_w: u32 = if show_names { 230 } else { 60 };
    let cell = ((900 / c).clamp(4, 60)) as u32;
    let grid = cell * c as u32;
    let (w, h) = (label_w + grid + 40, 70 + grid + label_w);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let title = format!(
        "confusion matrix: epoch {}, top-1 {:.1}%, top-5 {:.1}%, {} clips",
        report.epoch,
        100.0 * report.top1,
        100.0 * report.top5,
        report.samples
    );
    root.draw(&Text::new(title, (10, 10), (FONT, 20).into_font().color(&BLACK))).map_err(|e| plot_err(path, e))?;
    let (x0, y0) = (label_w as i32, 50i32);
    for (i, row) in report.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (j, &n) in row.iter().enumerate() {
            let rate = if total > 0 { n as f64 / total as f64 } else { 0.0 };
            let shade = (255.0 * (1.0 - rate)) as u8;
            let color = if i == j { RGBColor(shade, shade.saturating_add(((255 - shade) as f64 * 0.35) as u8), 255) } else { RGBColor(255, shade, shade) };
            let (x, y) = (x0 + (j as u32 * cell) as i32, y0 + (i as u32 * cell) as i32);
            root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], color.filled())).map_err(|e| plot_err(path, e))?;
            if cell >= 24 && n > 0 {
                let fg = if rate > 0.6 { WHITE } else { BLACK };
                let font = (FONT, (cell as f64 * 0.4) as u32).into_font().color(&fg).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                root.draw(&Text::new(n.to_string(), (x + cell as i32 / 2, y + cell as i32 / 2), font)).map_err(|e| plot_err(path, e))?;
            }
        }
    }
    root.draw(&Rectangle::new([(x0, y0), (x0 + grid as i32, y0 + grid as i32)], BLACK.stroke_width(1))).map_err(|e| plot_err(path, e))?;
    if show_names {
        let size = (cell as f64 * 0.55).clamp(9.0, 15.0) as u32;
        for (k, name) in classes.iter().enumerate().take(c) {
            let yc = y0 + (k as u32 * cell + cell / 2) as i32;
            let right = plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Right, plotters::style::text_anchor::VPos::Center);
            root.draw(&Text::new(name.clone(), (x0 - 6, yc), (FONT, size).into_font().color(&BLACK).pos(right))).map_err(|e| plot_err(path, e))?;
            let xc = x0 + (k as u32 * cell + cell / 2) as i32;
            let style = (FONT, size).into_font().transform(FontTransform::Rotate90).color(&BLACK);
            root.draw(&Text::new(name.clone(), (xc + size as i32 / 2, y0 + grid as i32 + 6), style)).map_err(|e| plot_err(path, e))?;
        }
    }
    let axis = (FONT, 15).into_font().color(&BLACK);
    root.draw(&Text::new("rows: true class, columns: predicted", (x0, h as i32 - 22), axis)).map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}
