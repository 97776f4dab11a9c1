//! Predictions drawn onto frames: the true label (when known), the video-level prediction and the
//! current window's prediction, each on its own semi-transparent box in the top-left corner.
use image::{imageops::FilterType, Rgb, RgbImage};

use super::draw::{self, LabelStyle, Rect};

/// Text colour of a prediction that matches the true label.
pub(crate) const CORRECT: Rgb<u8> = Rgb([120, 255, 120]);
/// Text colour of a prediction that does not match the true label.
pub(crate) const WRONG: Rgb<u8> = Rgb([255, 120, 120]);
/// Text colour when there is no true label to compare with.
pub(crate) const NEUTRAL: Rgb<u8> = Rgb([255, 255, 255]);

/// What one annotated frame shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The true label, when known.
    pub truth: Option<String>,
    /// The video-level prediction and its probability.
    pub video: (String, f32),
    /// The current window's frame range `[start, end)`, prediction and probability.
    pub window: Option<(usize, usize, String, f32)>,
}

/// One line of an annotation: `prefix` + `label` + `suffix`; only the label is shortened to fit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AnnotationLine {
    /// Text before the label (`video: `).
    pub(crate) prefix: String,
    /// The label.
    pub(crate) label: String,
    /// Text after the label (` 87.5%`).
    pub(crate) suffix: String,
    /// Text colour.
    pub(crate) color: Rgb<u8>,
}

impl AnnotationLine {
    /// The line within `max_width` pixels at `px`: the label is cut (with an ellipsis) first.
    pub(crate) fn fitted(&self, px: f32, max_width: f32) -> String {
        let fixed = draw::text_width(&self.prefix, px) + draw::text_width(&self.suffix, px);
        let label = draw::fit_text(&self.label, px, (max_width - fixed).max(0.0));
        draw::fit_text(&format!("{}{}{}", self.prefix, label, self.suffix), px, max_width)
    }
}

impl Annotation {
    /// The lines drawn, top to bottom.
    pub(crate) fn lines(&self) -> Vec<AnnotationLine> {
        let color = |label: &str| match &self.truth {
            Some(t) if t == label => CORRECT,
            Some(_) => WRONG,
            None => NEUTRAL,
        };
        let line = |prefix: String, label: &str, suffix: String, color| AnnotationLine {
            prefix,
            label: label.to_string(),
            suffix,
            color,
        };
        let mut out = Vec::with_capacity(3);
        if let Some(t) = &self.truth {
            out.push(line("truth: ".into(), t, String::new(), NEUTRAL));
        }
        let (label, p) = &self.video;
        out.push(line("video: ".into(), label, format!(" {:.1}%", 100.0 * p), color(label)));
        if let Some((s, e, label, p)) = &self.window {
            out.push(line(
                format!("frames {s}-{}: ", e.saturating_sub(1)),
                label,
                format!(" {:.1}%", 100.0 * p),
                color(label),
            ));
        }
        out
    }
}

/// How annotations are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnnotateStyle {
    /// Text size in pixels; `None`: a sixteenth of the frame height, between 11 and 40.
    pub font_px: Option<f32>,
    /// Opacity of the boxes behind the text.
    pub box_alpha: f32,
    /// Distance of the boxes from the frame edge, and between boxes, in pixels.
    pub margin: u32,
}

impl Default for AnnotateStyle {
    fn default() -> Self {
        Self { font_px: None, box_alpha: 0.6, margin: 4 }
    }
}

impl AnnotateStyle {
    /// The text size for a frame `height` pixels tall.
    pub(crate) fn px_for(&self, height: u32) -> f32 {
        self.font_px.unwrap_or((height as f32 / 16.0).clamp(11.0, 40.0))
    }
}

/// Draws `ann` onto `frame` and returns the boxes that were drawn (nothing outside them changes). A line
/// too wide for the frame has its label cut with an ellipsis.
pub fn annotate_frame(frame: &mut RgbImage, ann: &Annotation, style: &AnnotateStyle) -> Vec<Rect> {
    let px = style.px_for(frame.height());
    let base = LabelStyle { alpha: style.box_alpha, ..LabelStyle::new(px) };
    let max_text = frame.width() as f32 - 2.0 * style.margin as f32 - 2.0 * base.pad as f32;
    let mut y = style.margin as i32;
    let mut boxes = Vec::new();
    for line in ann.lines() {
        let text = line.fitted(px, max_text);
        let rect = draw::draw_label(frame, &text, style.margin as i32, y, &base.with_color(line.color));
        y += rect.h as i32 + style.margin as i32;
        boxes.push(rect);
    }
    boxes
}

/// `frame` scaled up (bilinear, aspect kept) so that its shorter side is at least `min_side`, with
/// even width and height (what the MP4 encoders need); frames already large enough are only trimmed
/// to even sizes.
pub fn prepare_frame(frame: &RgbImage, min_side: u32) -> RgbImage {
    let (w, h) = frame.dimensions();
    let short = w.min(h).max(1);
    let scale = if short < min_side { min_side as f64 / short as f64 } else { 1.0 };
    let (nw, nh) = (((w as f64 * scale).round() as u32).max(2) & !1, ((h as f64 * scale).round() as u32).max(2) & !1);
    if (nw, nh) == (w, h) {
        return frame.clone();
    }
    if scale == 1.0 {
        return image::imageops::crop_imm(frame, 0, 0, nw, nh).to_image();
    }
    image::imageops::resize(frame, nw, nh, FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{render_clip, SyntheticConfig};

    #[test]
    fn annotation_changes_only_its_boxes_and_draws_glyphs() {
        let cfg = SyntheticConfig { width: 160, height: 120, frames: 4, ..Default::default() };
        let source = prepare_frame(&render_clip(&cfg, 0, 0).unwrap()[2], 256);
        assert_eq!(source.dimensions(), (340, 256), "341 rounded down to even");
        let ann = Annotation {
            truth: Some("shape moves right".into()),
            video: ("shape moves left".into(), 0.873),
            window: Some((8, 16, "a label far too long to fit into the frame without being cut short".into(), 0.5)),
        };
        let style = AnnotateStyle::default();
        let mut annotated = source.clone();
        let boxes = annotate_frame(&mut annotated, &ann, &style);
        assert_eq!(boxes.len(), 3);
        // Outside the boxes nothing changed.
        for (x, y, p) in annotated.enumerate_pixels() {
            if !boxes.iter().any(|b| b.contains(x, y)) {
                assert_eq!(p, source.get_pixel(x, y), "pixel ({x}, {y}) outside the boxes changed");
            }
        }
        // Inside every box there is text: compared with the box alone (same blend, no text), many pixels
        // differ, and the text colour shows up.
        let mut boxes_only = source.clone();
        for b in &boxes {
            draw::fill_rect(&mut boxes_only, *b, Rgb([0, 0, 0]), style.box_alpha);
            assert!(b.x >= 0 && b.y >= 0 && (b.x as u32 + b.w) <= annotated.width(), "box {b:?} inside the frame");
        }
        for (i, b) in boxes.iter().enumerate() {
            let mut glyph_pixels = 0;
            for y in b.y as u32..b.y as u32 + b.h {
                for x in b.x as u32..b.x as u32 + b.w {
                    let (a, o) = (annotated.get_pixel(x, y), boxes_only.get_pixel(x, y));
                    if a.0.iter().zip(o.0).any(|(p, q)| p.abs_diff(q) > 60) {
                        glyph_pixels += 1;
                    }
                }
            }
            assert!(glyph_pixels > 100, "box {i} holds {glyph_pixels} glyph pixels");
        }
        // The truth line is white, the wrong prediction red-ish.
        let lines = ann.lines();
        assert_eq!(lines[0].color, NEUTRAL);
        assert_eq!(lines[1].color, WRONG);
        // The long window line keeps its probability and ends inside the frame.
        let px = style.px_for(annotated.height());
        let fitted = lines[2].fitted(px, 300.0);
        assert!(fitted.contains('\u{2026}') && fitted.ends_with(" 50.0%"), "{fitted}");
        // A correct prediction is green; a blank frame gets the same boxes.
        let ok = Annotation { truth: Some("x".into()), video: ("x".into(), 1.0), window: None };
        assert_eq!(ok.lines()[1].color, CORRECT);
        let mut blank = RgbImage::new(340, 256);
        assert_eq!(annotate_frame(&mut blank, &ann, &style), boxes);
    }
}
