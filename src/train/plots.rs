//! PNG plots of a run (plotters, bitmap backend, text in the embedded DejaVu Sans): training curves (loss per
//! step with the epoch means, learning rate per group, test top-1/top-5 per epoch) and a confusion matrix.
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

use super::eval::EvalReport;
use super::metrics::{EpochLog, EvalLog, Record, StepLog};
use crate::{Error, Result};

/// DejaVu Sans, embedded (see assets/README.md for its licence).
pub(crate) static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

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
    let evals: Vec<_> = records
        .iter()
        .filter_map(|r| if let Record::Eval(e) = r { (e.views <= 1).then_some(e) } else { None })
        .collect();
    let epochs: Vec<_> = records.iter().filter_map(|r| if let Record::Epoch(e) = r { Some(e) } else { None }).collect();

    let root = BitMapBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let panels = root.split_evenly((1, 3));
    let max_step = steps.iter().map(|s| s.step).max().unwrap_or(1).max(1) as f64;
    draw_loss(&panels[0], &steps, &epochs, max_step, path)?;
    draw_learning_rates(&panels[1], &steps, max_step, path)?;
    draw_accuracy(&panels[2], &evals, path)?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// A panel of `curves.png`.
type Panel<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// The loss per step and the epoch means.
fn draw_loss(area: &Panel, steps: &[&StepLog], epochs: &[&EpochLog], max_step: f64, path: &Path) -> Result<()> {
    let (lo, hi) = bounds(steps.iter().map(|s| s.loss).chain(epochs.iter().map(|e| e.train_loss)));
    let mut chart = ChartBuilder::on(area)
        .caption("training loss", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, lo.max(0.0)..hi)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .x_labels(6)
        .x_label_formatter(&whole)
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| plot_err(path, e))?;
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
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// The learning rate of each parameter group per step.
fn draw_learning_rates(area: &Panel, steps: &[&StepLog], max_step: f64, path: &Path) -> Result<()> {
    let (_, hi) = bounds(steps.iter().flat_map(|s| [s.lr, s.lr_visual, s.lr_fusion]));
    let mut chart = ChartBuilder::on(area)
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
        .x_labels(6)
        .x_label_formatter(&whole)
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (name, color, get) in [
        ("text", BLUE, (|s: &StepLog| s.lr) as fn(&StepLog) -> f64),
        ("visual", GREEN, |s| s.lr_visual),
        ("fusion", ORANGE, |s| s.lr_fusion),
    ] {
        chart
            .draw_series(LineSeries::new(steps.iter().map(|s| (s.step as f64, get(s))), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// Test top-1 and top-5 per epoch (epoch 0: the starting weights).
fn draw_accuracy(area: &Panel, evals: &[&EvalLog], path: &Path) -> Result<()> {
    let max_epoch = evals.iter().map(|e| e.epoch).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("test accuracy (template ensemble)", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_epoch, 0f64..100f64)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch (0 = starting weights)")
        .y_desc("%")
        .x_label_formatter(&whole)
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (name, color, top5) in [("top-1", BLUE, false), ("top-5", GREEN, true)] {
        let pts: Vec<(f64, f64)> =
            evals.iter().map(|e| (e.epoch as f64, 100.0 * if top5 { e.top5 } else { e.top1 })).collect();
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
    Ok(())
}

/// Draws `confusion.png` (rows: true classes, columns: predictions) with the same renderer as the
/// inference reports ([`crate::viz::ConfusionMatrix`]).
pub fn plot_confusion(report: &EvalReport, classes: &[String], path: &Path) -> Result<()> {
    let matrix = crate::viz::ConfusionMatrix {
        rows: classes.to_vec(),
        cols: classes.to_vec(),
        counts: report.confusion.clone(),
    };
    matrix.save_png(path)
}

/// An axis label for a step or epoch count: the whole number.
fn whole(v: &f64) -> String {
    format!("{v:.0}")
}
