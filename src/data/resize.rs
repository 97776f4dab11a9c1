//! Pillow's resampling (`ImagingResample`), reproduced bit for bit on 8-bit RGB.
//!
//! The reference resizes PIL images, so matching its preprocessing means matching Pillow: a separable
//! convolution whose filter support grows with the downscale factor (antialiasing), weights rounded to
//! 22-bit fixed point, a horizontal pass first with its result clipped to 8 bits, then a vertical pass.
//! Only the requested output window is computed, so resize-then-crop costs no more than the crop.
use image::RgbImage;

use crate::error::{Error, Result};

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A resampling filter, with Pillow's definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// Triangle filter, support 1 (`Image.BILINEAR`).
    Bilinear,
    /// Keys cubic with a = -0.5, support 2 (`Image.BICUBIC`).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// A rectangle in pixels: `x, y` of the top-left corner, `w x h` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    /// Left column.
    pub(crate) x: u32,
    /// Top row.
    pub(crate) y: u32,
    /// Width.
    pub(crate) w: u32,
    /// Height.
    pub(crate) h: u32,
}

impl Rect {
    /// A rectangle from its corner and size.
    pub(crate) fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }
}

/// Fixed-point filter taps for one axis: output `i` reads `len[i]` inputs from `start[i]`.
struct Coeffs {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for an axis of `in_size` -> `out_size`.
fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; then clamp to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize - xmin;
        let xmax = xmax.min(ksize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().take(xmax).enumerate() {
            let v = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        for x in 0..xmax {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        start.push(xmin);
        len.push(xmax);
    }
    Coeffs { ksize, start, len, k }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes the `src` region of `image` to `out_w x out_h` the way Pillow's `crop(src).resize((out_w,
/// out_h), filter)` does, and returns only the `window` of that output (a sub-rectangle of
/// `[0, out_w) x [0, out_h)`), so `resize + crop` is one call.
pub(crate) fn resize_region(
    image: &RgbImage,
    src: Rect,
    out_w: u32,
    out_h: u32,
    window: Rect,
    filter: Filter,
) -> Result<RgbImage> {
    let (iw, ih) = image.dimensions();
    if src.w == 0 || src.h == 0 || src.x + src.w > iw || src.y + src.h > ih {
        return Err(Error::Config(format!("resize source {src:?} does not fit in a {iw}x{ih} image")));
    }
    if out_w == 0
        || out_h == 0
        || window.w == 0
        || window.h == 0
        || window.x + window.w > out_w
        || window.y + window.h > out_h
    {
        return Err(Error::Config(format!("resize window {window:?} does not fit in the {out_w}x{out_h} output")));
    }
    let need_h = out_w != src.w;
    let (wy0, wh) = (window.y as usize, window.h as usize);

    // Vertical taps decide which source rows the horizontal pass must produce.
    let vert = (out_h != src.h).then(|| precompute(src.h as usize, out_h as usize, filter));
    let rows = match &vert {
        Some(c) => {
            let first = c.start[wy0];
            let last = (wy0..wy0 + wh).map(|y| c.start[y] + c.len[y]).max().unwrap_or(first);
            first..last.max(first + 1)
        }
        None => wy0..wy0 + wh,
    };
    let horizontal = need_h.then(|| precompute(src.w as usize, out_w as usize, filter));
    let tmp = horizontal_pass(image, src, window, rows.clone(), horizontal.as_ref());
    let out = match &vert {
        Some(c) => vertical_pass(&tmp, window, rows.start, c),
        None => tmp,
    };
    RgbImage::from_raw(window.w, window.h, out)
        .ok_or_else(|| Error::Config("internal: resize buffer size mismatch".into()))
}

/// Rows `rows` of the `src` region, resampled along x by `coeffs` (or copied when the width is kept),
/// columns of `window` only: `[rows.len(), window.w, 3]` bytes.
fn horizontal_pass(
    image: &RgbImage,
    src: Rect,
    window: Rect,
    rows: std::ops::Range<usize>,
    coeffs: Option<&Coeffs>,
) -> Vec<u8> {
    let stride = image.width() as usize * 3;
    let data = image.as_raw();
    let (wx0, ww) = (window.x as usize, window.w as usize);
    let mut tmp = vec![0u8; rows.len() * ww * 3];
    for (r, out_row) in rows.zip(tmp.chunks_exact_mut(ww * 3)) {
        let in_row = &data[(src.y as usize + r) * stride..][..stride];
        let Some(c) = coeffs else {
            let off = (src.x as usize + wx0) * 3;
            out_row.copy_from_slice(&in_row[off..off + ww * 3]);
            continue;
        };
        for (ox, o) in out_row.chunks_exact_mut(3).enumerate() {
            let xx = wx0 + ox;
            let (xmin, n) = (c.start[xx], c.len[xx]);
            let k = &c.k[xx * c.ksize..xx * c.ksize + n];
            let base = (src.x as usize + xmin) * 3;
            let half = 1i32 << (PRECISION_BITS - 1);
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (p, &kv) in in_row[base..base + n * 3].chunks_exact(3).zip(k) {
                s0 += p[0] as i32 * kv;
                s1 += p[1] as i32 * kv;
                s2 += p[2] as i32 * kv;
            }
            o[0] = clip8(s0);
            o[1] = clip8(s1);
            o[2] = clip8(s2);
        }
    }
    tmp
}

/// The rows of `window` resampled along y by `coeffs` from the horizontal pass's output `tmp`, whose first
/// row is source row `row0`: `[window.h, window.w, 3]` bytes.
fn vertical_pass(tmp: &[u8], window: Rect, row0: usize, c: &Coeffs) -> Vec<u8> {
    let (wy0, ww, wh) = (window.y as usize, window.w as usize, window.h as usize);
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; ww * wh * 3];
    let mut acc = vec![0i32; ww * 3];
    for (oy, out_row) in out.chunks_exact_mut(ww * 3).enumerate() {
        let yy = wy0 + oy;
        let (ymin, n) = (c.start[yy] - row0, c.len[yy]);
        let k = &c.k[yy * c.ksize..yy * c.ksize + n];
        acc.iter_mut().for_each(|a| *a = half);
        for (y, &kv) in k.iter().enumerate() {
            let row = &tmp[(ymin + y) * ww * 3..(ymin + y + 1) * ww * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * kv;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resizes a whole image to `out_w x out_h` (Pillow's `image.resize((out_w, out_h), filter)`).
    fn resize(image: &RgbImage, out_w: u32, out_h: u32, filter: Filter) -> Result<RgbImage> {
        let (w, h) = image.dimensions();
        resize_region(image, Rect::new(0, 0, w, h), out_w, out_h, Rect::new(0, 0, out_w, out_h), filter)
    }

    #[test]
    fn identity_is_exact() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 7]));
        let out = resize(&img, 7, 5, Filter::Bicubic).unwrap();
        assert_eq!(out, img);
    }

    #[test]
    fn constant_stays_constant() {
        let img = RgbImage::from_pixel(33, 21, image::Rgb([200, 13, 97]));
        for (w, h) in [(64, 40), (10, 7), (33, 50)] {
            for f in [Filter::Bicubic, Filter::Bilinear] {
                let out = resize(&img, w, h, f).unwrap();
                assert!(out.pixels().all(|p| p.0 == [200, 13, 97]), "{w}x{h} {f:?}");
            }
        }
    }

    #[test]
    fn window_equals_crop_of_full() {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x * y) % 256) as u8]));
        let full = resize(&img, 57, 43, Filter::Bicubic).unwrap();
        let win =
            resize_region(&img, Rect::new(0, 0, 40, 30), 57, 43, Rect::new(5, 9, 20, 17), Filter::Bicubic).unwrap();
        let crop = image::imageops::crop_imm(&full, 5, 9, 20, 17).to_image();
        assert_eq!(win, crop);
    }
}
