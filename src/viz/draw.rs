//! Drawing on RGB images: rectangles (opaque or blended), and text in the embedded DejaVu Sans
//! rendered with `ab_glyph` (anti-aliased, kerned, alpha-blended onto the image).
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

/// DejaVu Sans (Bitstream Vera licence; see `assets/README.md`), embedded so that nothing depends on
/// system fonts.
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The embedded font.
pub(crate) fn font() -> FontRef<'static> {
    // The embedded file is a valid TrueType font (a unit test parses it); this cannot fail at runtime.
    FontRef::try_from_slice(FONT_BYTES).expect("the embedded DejaVu Sans parses")
}

/// An axis-aligned rectangle in pixels; `x`, `y` may be negative (drawing clips to the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    /// A rectangle from its top-left corner and size.
    pub(crate) fn new(x: i32, y: i32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    /// Whether pixel `(px, py)` lies inside.
    pub fn contains(&self, px: u32, py: u32) -> bool {
        let (px, py) = (px as i64, py as i64);
        px >= self.x as i64
            && py >= self.y as i64
            && px < self.x as i64 + self.w as i64
            && py < self.y as i64 + self.h as i64
    }

    /// The part inside a `width` x `height` image as `(x0, y0, x1, y1)` (exclusive ends); `None` when empty.
    pub(crate) fn clip(&self, width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
        let x0 = self.x.max(0) as i64;
        let y0 = self.y.max(0) as i64;
        let x1 = (self.x as i64 + self.w as i64).min(width as i64);
        let y1 = (self.y as i64 + self.h as i64).min(height as i64);
        (x1 > x0 && y1 > y0).then_some((x0 as u32, y0 as u32, x1 as u32, y1 as u32))
    }
}

/// `dst * (1 - a) + src * a`, per channel.
fn blend(dst: &mut Rgb<u8>, src: Rgb<u8>, a: f32) {
    let a = a.clamp(0.0, 1.0);
    for c in 0..3 {
        dst.0[c] = (dst.0[c] as f32 * (1.0 - a) + src.0[c] as f32 * a).round() as u8;
    }
}

/// Fills `rect` with `color` at opacity `alpha` (1 = opaque).
pub(crate) fn fill_rect(img: &mut RgbImage, rect: Rect, color: Rgb<u8>, alpha: f32) {
    let Some((x0, y0, x1, y1)) = rect.clip(img.width(), img.height()) else { return };
    for y in y0..y1 {
        for x in x0..x1 {
            blend(img.get_pixel_mut(x, y), color, alpha);
        }
    }
}

/// Draws the outline of `rect`, `thickness` pixels wide, inside the rectangle.
pub(crate) fn stroke_rect(img: &mut RgbImage, rect: Rect, color: Rgb<u8>, thickness: u32) {
    let t = thickness.min(rect.w / 2).min(rect.h / 2).max(1);
    fill_rect(img, Rect::new(rect.x, rect.y, rect.w, t), color, 1.0);
    fill_rect(img, Rect::new(rect.x, rect.y + (rect.h - t) as i32, rect.w, t), color, 1.0);
    fill_rect(img, Rect::new(rect.x, rect.y, t, rect.h), color, 1.0);
    fill_rect(img, Rect::new(rect.x + (rect.w - t) as i32, rect.y, t, rect.h), color, 1.0);
}

/// Line metrics of the font at `px` pixels: `(ascent, line height)`, rounded up.
pub(crate) fn line_metrics(px: f32) -> (f32, f32) {
    let f = font();
    let s = f.as_scaled(PxScale::from(px));
    (s.ascent().ceil(), (s.ascent() - s.descent()).ceil())
}

/// The advance width of `text` at `px` pixels, kerning included.
pub(crate) fn text_width(text: &str, px: f32) -> f32 {
    let f = font();
    let s = f.as_scaled(PxScale::from(px));
    let mut width = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(p) = prev {
            width += s.kern(p, id);
        }
        width += s.h_advance(id);
        prev = Some(id);
    }
    width
}

/// `text`, cut and ended with an ellipsis when it is wider than `max_width` pixels at `px`.
pub(crate) fn fit_text(text: &str, px: f32, max_width: f32) -> String {
    if text_width(text, px) <= max_width {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    for n in (0..chars.len()).rev() {
        let s: String = chars[..n].iter().collect::<String>().trim_end().to_string() + "\u{2026}";
        if text_width(&s, px) <= max_width {
            return s;
        }
    }
    String::new()
}

/// Draws `text` with its top-left corner at `(x, y)` (the top of the line, not the baseline) at `px`
/// pixels in `color`, anti-aliased. Returns the number of pixels that received ink.
pub(crate) fn draw_text(img: &mut RgbImage, text: &str, x: f32, y: f32, px: f32, color: Rgb<u8>) -> usize {
    let f = font();
    let s = f.as_scaled(PxScale::from(px));
    let baseline = y + s.ascent();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut caret = x;
    let mut prev = None;
    let mut inked = 0;
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(p) = prev {
            caret += s.kern(p, id);
        }
        let glyph = id.with_scale_and_position(s.scale(), point(caret, baseline));
        caret += s.h_advance(id);
        prev = Some(id);
        let Some(outlined) = f.outline_glyph(glyph) else { continue };
        let b = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let px_x = b.min.x as i64 + gx as i64;
            let px_y = b.min.y as i64 + gy as i64;
            if coverage > 0.0 && (0..w).contains(&px_x) && (0..h).contains(&px_y) {
                blend(img.get_pixel_mut(px_x as u32, px_y as u32), color, coverage);
                inked += 1;
            }
        });
    }
    inked
}

/// How [`draw_label`] draws: text size and colour, box colour, opacity and padding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LabelStyle {
    /// Text size in pixels.
    pub(crate) px: f32,
    /// Text colour.
    pub(crate) color: Rgb<u8>,
    /// Box colour.
    pub(crate) background: Rgb<u8>,
    /// Box opacity (0 = invisible, 1 = opaque).
    pub(crate) alpha: f32,
    /// Pixels between the text and the box edges.
    pub(crate) pad: u32,
}

impl LabelStyle {
    /// White text of `px` pixels on a 60 % black box.
    pub(crate) fn new(px: f32) -> Self {
        Self {
            px,
            color: Rgb([255, 255, 255]),
            background: Rgb([0, 0, 0]),
            alpha: 0.6,
            pad: (px / 4.0).round().max(2.0) as u32,
        }
    }

    /// The same style with another text colour.
    pub(crate) fn with_color(self, color: Rgb<u8>) -> Self {
        Self { color, ..self }
    }

    /// The size of the box around `text`.
    pub(crate) fn box_size(&self, text: &str) -> (u32, u32) {
        let (_, line) = line_metrics(self.px);
        (text_width(text, self.px).ceil() as u32 + 2 * self.pad, line as u32 + 2 * self.pad)
    }
}

/// A text label on a box: the box (`style.background` at opacity `style.alpha`, `style.pad` pixels
/// around the text) with its top-left corner at `(x, y)`, then the text. Returns the box.
pub(crate) fn draw_label(img: &mut RgbImage, text: &str, x: i32, y: i32, style: &LabelStyle) -> Rect {
    let (w, h) = style.box_size(text);
    let rect = Rect::new(x, y, w, h);
    fill_rect(img, rect, style.background, style.alpha);
    draw_text(img, text, (x + style.pad as i32) as f32, (y + style.pad as i32) as f32, style.px, style.color);
    rect
}

/// Draws `text` rotated a quarter turn counter-clockwise (reading bottom to top) with the bottom-left of
/// the rotated text at `(x, y_bottom)`. Used for column captions.
pub(crate) fn draw_text_vertical(img: &mut RgbImage, text: &str, x: i32, y_bottom: i32, px: f32, color: Rgb<u8>) {
    let (_, line) = line_metrics(px);
    let w = text_width(text, px).ceil().max(1.0) as u32;
    let h = line as u32;
    // Render onto a transparent-by-mask strip, then rotate and copy the ink.
    let mut mask = RgbImage::new(w, h);
    draw_text(&mut mask, text, 0.0, 0.0, px, Rgb([255, 255, 255]));
    let rotated = image::imageops::rotate270(&mask); // h x w
    let top = y_bottom - rotated.height() as i32;
    for (rx, ry, p) in rotated.enumerate_pixels() {
        let a = p.0[0] as f32 / 255.0;
        let (ix, iy) = (x + rx as i32, top + ry as i32);
        if a > 0.0 && ix >= 0 && iy >= 0 && (ix as u32) < img.width() && (iy as u32) < img.height() {
            blend(img.get_pixel_mut(ix as u32, iy as u32), color, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_renders_ink_inside_the_label() {
        let mut img = RgbImage::from_pixel(200, 40, Rgb([10, 20, 30]));
        let before = img.clone();
        let rect = draw_label(&mut img, "archery 97.5%", 4, 4, &LabelStyle::new(16.0));
        let mut bright = 0;
        for (x, y, p) in img.enumerate_pixels() {
            if !rect.contains(x, y) {
                assert_eq!(p, before.get_pixel(x, y));
            } else if p.0[0] > 128 {
                bright += 1;
            }
        }
        assert!(bright > 50, "{bright} glyph pixels");
    }

    #[test]
    fn long_text_is_cut_to_fit() {
        let s = fit_text("a very long label that does not fit", 14.0, 80.0);
        assert!(s.ends_with('\u{2026}') && text_width(&s, 14.0) <= 80.0, "{s}");
        assert_eq!(fit_text("ok", 14.0, 80.0), "ok");
    }
}
