//! A confusion matrix of true classes (rows) against predicted labels (columns), rendered as a PNG
//! heat map (row-normalised shading, counts written in the cells).
use std::path::Path;

use image::{Rgb, RgbImage};

use super::draw::{self, Rect};
use crate::error::{Error, Result};

/// Counts of (true class, predicted label) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// True classes, one per row.
    pub rows: Vec<String>,
    /// Predicted labels, one per column.
    pub cols: Vec<String>,
    /// `counts[r][c]`: videos of class `rows[r]` predicted as `cols[c]`.
    pub counts: Vec<Vec<usize>>,
}

impl ConfusionMatrix {
    /// An all-zero matrix.
    pub fn new(rows: Vec<String>, cols: Vec<String>) -> Self {
        let counts = vec![vec![0; cols.len()]; rows.len()];
        Self { rows, cols, counts }
    }

    /// Counts one video; a truth or prediction outside the row or column names is
    /// [`Error::Labels`].
    pub fn add(&mut self, truth: &str, predicted: &str) -> Result<()> {
        let r = self
            .rows
            .iter()
            .position(|x| x == truth)
            .ok_or_else(|| Error::Labels(format!("confusion matrix: no row for {truth:?}")))?;
        let c = self
            .cols
            .iter()
            .position(|x| x == predicted)
            .ok_or_else(|| Error::Labels(format!("confusion matrix: no column for {predicted:?}")))?;
        self.counts[r][c] += 1;
        Ok(())
    }

    /// Videos counted.
    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    /// Renders the heat map: cell shade = the cell's share of its row, counts in the cells, row names on
    /// the left, column names written upwards on top.
    pub fn render(&self) -> RgbImage {
        let n = self.rows.len().max(self.cols.len()).max(1);
        let cell: u32 = if n <= 12 {
            40
        } else if n <= 30 {
            24
        } else {
            12
        };
        let px = (cell as f32 * 0.4).clamp(9.0, 14.0);
        let label_px = 13.0;
        let gap = 8;
        let row_w =
            self.rows.iter().map(|r| draw::text_width(r, label_px)).fold(0.0f32, f32::max).min(260.0).ceil() as u32;
        let col_h =
            self.cols.iter().map(|c| draw::text_width(c, label_px)).fold(0.0f32, f32::max).min(260.0).ceil() as u32;
        let (_, line) = draw::line_metrics(label_px);
        let left = gap + row_w + gap;
        let top = gap + line as u32 + gap + col_h + gap;
        let width = left + self.cols.len() as u32 * cell + gap;
        let height = top + self.rows.len() as u32 * cell + gap;
        let mut img = RgbImage::from_pixel(width.max(200), height, Rgb([255, 255, 255]));
        let ink = Rgb([30, 30, 30]);
        draw::draw_text(
            &mut img,
            &format!("confusion matrix ({} videos; rows: truth, columns: prediction)", self.total()),
            gap as f32,
            gap as f32,
            label_px,
            ink,
        );
        for (r, name) in self.rows.iter().enumerate() {
            let name = draw::fit_text(name, label_px, row_w as f32);
            let y = top + r as u32 * cell + (cell - line as u32) / 2;
            let x = left - gap - draw::text_width(&name, label_px).ceil() as u32;
            draw::draw_text(&mut img, &name, x as f32, y as f32, label_px, ink);
        }
        for (c, name) in self.cols.iter().enumerate() {
            let name = draw::fit_text(name, label_px, col_h as f32);
            let x = left + c as u32 * cell + (cell - line as u32) / 2;
            draw::draw_text_vertical(&mut img, &name, x as i32, (top - gap) as i32, label_px, ink);
        }
        for (r, row) in self.counts.iter().enumerate() {
            let sum: usize = row.iter().sum();
            for (c, &count) in row.iter().enumerate() {
                let share = if sum == 0 { 0.0 } else { count as f32 / sum as f32 };
                // White to a deep blue.
                let shade =
                    Rgb([(255.0 - 215.0 * share) as u8, (255.0 - 160.0 * share) as u8, (255.0 - 55.0 * share) as u8]);
                let rect = Rect::new((left + c as u32 * cell) as i32, (top + r as u32 * cell) as i32, cell, cell);
                draw::fill_rect(&mut img, rect, shade, 1.0);
                draw::stroke_rect(&mut img, rect, Rgb([220, 220, 220]), 1);
                if count > 0 && cell >= 20 {
                    let text = count.to_string();
                    let color = if share > 0.55 { Rgb([255, 255, 255]) } else { ink };
                    let tx = rect.x as f32 + (cell as f32 - draw::text_width(&text, px)) / 2.0;
                    let ty = rect.y as f32 + (cell as f32 - draw::line_metrics(px).1) / 2.0;
                    draw::draw_text(&mut img, &text, tx, ty, px, color);
                }
            }
        }
        img
    }

    /// Renders the heat map into a PNG file.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.render().save(path).map_err(|e| Error::Image { path: path.to_path_buf(), reason: e.to_string() })
    }
}
