//! A contact sheet: the frames the model saw, in a grid with their frame numbers, a title, and a bar
//! chart of the top predictions.
use image::{imageops::FilterType, Rgb, RgbImage};

use super::draw::{self, LabelStyle, Rect};

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const MUTED: Rgb<u8> = Rgb([110, 110, 110]);
const BAR: Rgb<u8> = Rgb([70, 130, 200]);
const TRACK: Rgb<u8> = Rgb([232, 236, 242]);

/// Layout of a contact sheet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SheetStyle {
    /// Thumbnail height in pixels (width follows the frames' aspect ratio).
    pub thumb_height: u32,
    /// Thumbnails per row.
    pub columns: usize,
    /// Space around and between parts, in pixels.
    pub gap: u32,
    /// Text size in pixels.
    pub font_px: f32,
}

impl Default for SheetStyle {
    fn default() -> Self {
        Self { thumb_height: 128, columns: 4, gap: 8, font_px: 15.0 }
    }
}

/// What a contact sheet shows.
#[derive(Debug, Clone, PartialEq)]
pub struct SheetContent<'a> {
    /// Title (typically the file name).
    pub title: &'a str,
    /// The true label, when known (colours the top bar green or red).
    pub truth: Option<&'a str>,
    /// The sampled frames with their 0-based indices, in the order the model saw them.
    pub frames: &'a [(usize, RgbImage)],
    /// The top predictions (label, probability), most probable first.
    pub top: &'a [(String, f32)],
}

/// Renders the contact sheet.
pub fn contact_sheet(content: &SheetContent, style: &SheetStyle) -> RgbImage {
    let g = style.gap;
    let px = style.font_px;
    let (_, line) = draw::line_metrics(px);
    let line = line as u32;
    let cols = style.columns.clamp(1, content.frames.len().max(1));
    let rows = content.frames.len().div_ceil(cols) as u32;
    let (fw, fh) = content.frames.first().map(|(_, f)| f.dimensions()).unwrap_or((4, 3));
    let th = style.thumb_height.max(8);
    let tw = ((fw as f64 * th as f64 / fh.max(1) as f64).round() as u32).max(8);
    let grid_w = cols as u32 * tw + (cols as u32 - 1) * g;
    let width = (grid_w + 2 * g).max(480);
    let bar_row = line + 6;
    let title_h = 2 * line + g;
    let chart_h = line + 4 + content.top.len() as u32 * (bar_row + 4);
    let height = g + title_h + g + rows * th + rows.saturating_sub(1) * g + 2 * g + chart_h + g;
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);

    // Title and truth.
    let title = draw::fit_text(content.title, px * 1.15, (width - 2 * g) as f32);
    draw::draw_text(&mut img, &title, g as f32, g as f32, px * 1.15, INK);
    let sub = match content.truth {
        Some(t) => format!("truth: {t}    frames seen by the model: {}", content.frames.len()),
        None => format!("frames seen by the model: {}", content.frames.len()),
    };
    draw::draw_text(
        &mut img,
        &draw::fit_text(&sub, px, (width - 2 * g) as f32),
        g as f32,
        (g + line + g / 2) as f32,
        px,
        MUTED,
    );

    // The frame grid, each frame with its index on a box.
    let grid_top = g + title_h + g;
    let grid_left = (width - grid_w) / 2;
    let caption = LabelStyle { alpha: 0.65, ..LabelStyle::new((px * 0.85).round()) };
    for (k, (index, frame)) in content.frames.iter().enumerate() {
        let (c, r) = ((k % cols) as u32, (k / cols) as u32);
        let (x, y) = (grid_left + c * (tw + g), grid_top + r * (th + g));
        let thumb = image::imageops::resize(frame, tw, th, FilterType::Triangle);
        image::imageops::replace(&mut img, &thumb, x as i64, y as i64);
        draw::draw_label(&mut img, &format!("#{index}"), x as i32 + 2, y as i32 + 2, &caption);
    }

    // Bar chart of the top predictions.
    let chart_top = grid_top + rows * th + rows.saturating_sub(1) * g + 2 * g;
    draw::draw_text(&mut img, &format!("top {} (video-level)", content.top.len()), g as f32, chart_top as f32, px, INK);
    let longest = content.top.iter().map(|(l, _)| draw::text_width(l, px)).fold(0.0f32, f32::max).ceil() as u32;
    let label_w = longest.clamp(40, (width - 2 * g) / 2);
    let pct_w = draw::text_width("100.0%", px).ceil() as u32 + g;
    let bar_x = g + label_w + g;
    let bar_w = width.saturating_sub(bar_x + pct_w + g).max(10);
    for (i, (label, p)) in content.top.iter().enumerate() {
        let y = chart_top + line + 4 + i as u32 * (bar_row + 4);
        let color = match content.truth {
            Some(t) if t == label => CORRECT_BAR,
            Some(_) if i == 0 => WRONG_BAR,
            _ => BAR,
        };
        let text = draw::fit_text(label, px, label_w as f32);
        let tx = g + label_w - draw::text_width(&text, px).ceil() as u32;
        draw::draw_text(&mut img, &text, tx as f32, (y + 3) as f32, px, INK);
        draw::fill_rect(&mut img, Rect::new(bar_x as i32, y as i32, bar_w, bar_row), TRACK, 1.0);
        let filled = (bar_w as f32 * p.clamp(0.0, 1.0)).round() as u32;
        draw::fill_rect(&mut img, Rect::new(bar_x as i32, y as i32, filled, bar_row), color, 1.0);
        draw::draw_text(
            &mut img,
            &format!("{:.1}%", 100.0 * p),
            (bar_x + bar_w + g / 2) as f32,
            (y + 3) as f32,
            px,
            INK,
        );
    }
    img
}

/// The bar colour of a prediction that matches the truth (a darker green than the frames' text).
const CORRECT_BAR: Rgb<u8> = Rgb([46, 160, 67]);
/// The bar colour of a wrong top prediction.
const WRONG_BAR: Rgb<u8> = Rgb([208, 60, 60]);
