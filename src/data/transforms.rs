//! Clip transforms: the reference's test pipeline (short side to 256 bicubic, centre crop 224), the
//! 3-crop variant, and its training augmentation (multi-scale crop, flip, colour jitter, grayscale),
//! followed by CLIP normalisation into `[T, 3, H, W]` f32 planes.
//!
//! Every frame of a clip gets the same crop, flip and colour parameters. Resizing uses Pillow's exact
//! algorithm ([`crate::data::resize`]) so that test-time inputs match the reference to the last bit in
//! almost every pixel.
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;

use super::resize::{resize_region, Filter, Rect};
use crate::error::{Error, Result};

/// CLIP's per-channel mean (RGB, on the 0..1 scale), digits as the reference writes them.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's per-channel standard deviation (RGB, on the 0..1 scale), digits as the reference writes them.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Lookup tables `(v / 255 - mean[c]) / std[c]` for the three channels, computed in f32 in torch's order.
fn normalize_lut() -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    lut
}

/// Writes `img` as CLIP-normalised planes `[3, H, W]` into `out` (length `3*H*W`), mirrored when `flip`.
fn normalize_into(img: &RgbImage, flip: bool, out: &mut [f32]) -> Result<()> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if out.len() != 3 * w * h {
        return Err(Error::Config(format!(
            "normalize_into: output holds {} values, a {w}x{h} frame needs {}",
            out.len(),
            3 * w * h
        )));
    }
    let lut = normalize_lut();
    let (r, rest) = out.split_at_mut(w * h);
    let (g, b) = rest.split_at_mut(w * h);
    for (y, row) in img.as_raw().chunks_exact(w * 3).enumerate() {
        for (x, p) in row.chunks_exact(3).enumerate() {
            let ox = if flip { w - 1 - x } else { x };
            let o = y * w + ox;
            r[o] = lut[0][p[0] as usize];
            g[o] = lut[1][p[1] as usize];
            b[o] = lut[2][p[2] as usize];
        }
    }
    Ok(())
}

/// torchvision's `Resize(size)` output size for a `w x h` image: the short side becomes `size`, the long
/// side `int(size * long / short)`.
fn short_side_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as u32)
    } else {
        ((size as f64 * w as f64 / h as f64) as u32, size)
    }
}

/// torchvision's centre-crop offset `int(round((len - crop) / 2))` (Python rounds halves to even).
/// Negative when the crop is larger than the image (torchvision then pads with zeros).
fn center_offset(len: u32, crop: u32) -> i64 {
    ((len as f64 - crop as f64) / 2.0).round_ties_even() as i64
}

/// Resizes a `src` region of `img` to `out_w x out_h` and takes the `crop_w x crop_h` window at
/// `(left, top)` of that output, zero-filling whatever of the window falls outside it.
fn resize_and_crop(
    img: &RgbImage,
    src: Rect,
    out: (u32, u32),
    left: i64,
    top: i64,
    crop: (u32, u32),
    filter: Filter,
) -> Result<RgbImage> {
    let (ow, oh) = out;
    let (cw, ch) = crop;
    let x0 = left.max(0) as u32;
    let y0 = top.max(0) as u32;
    let x1 = ((left + cw as i64).min(ow as i64)).max(x0 as i64) as u32;
    let y1 = ((top + ch as i64).min(oh as i64)).max(y0 as i64) as u32;
    let inside_full = left >= 0 && top >= 0 && x1 - x0 == cw && y1 - y0 == ch;
    if inside_full {
        return resize_region(img, src, ow, oh, Rect::new(x0, y0, cw, ch), filter);
    }
    let mut canvas = RgbImage::new(cw, ch);
    if x1 > x0 && y1 > y0 {
        let part = resize_region(img, src, ow, oh, Rect::new(x0, y0, x1 - x0, y1 - y0), filter)?;
        image::imageops::replace(&mut canvas, &part, x0 as i64 - left, y0 as i64 - top);
    }
    Ok(canvas)
}

/// Which crops the test transform takes after resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TestCrops {
    /// One centre crop (the reference's single-view test).
    Center,
    /// Three crops along the long side: start, centre, end (`GroupFCSample`-style offsets).
    Three,
}

/// The test-time transform: short side to `scale_size` (bicubic), then crops of `crop_size`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TestTransform {
    /// Short side after resizing (the reference: `input_size * 256 // 224`).
    pub scale_size: u32,
    /// Square crop size (the model's input resolution).
    pub crop_size: u32,
    /// Centre crop or three crops.
    pub crops: TestCrops,
    /// Resampling filter (the reference: bicubic).
    pub filter: Filter,
}

impl TestTransform {
    /// The reference's pipeline for `input_size`: short side to `input_size * 256 / 224`, centre crop.
    pub fn new(input_size: u32) -> Self {
        Self {
            scale_size: input_size * 256 / 224,
            crop_size: input_size,
            crops: TestCrops::Center,
            filter: Filter::Bicubic,
        }
    }

    /// Three crops of `input_size` after scaling the short side to `input_size` (the usual 3-crop test).
    pub fn three_crop(input_size: u32) -> Self {
        Self { scale_size: input_size, crop_size: input_size, crops: TestCrops::Three, filter: Filter::Bicubic }
    }

    /// Number of crops per clip (1 or 3).
    pub fn num_crops(&self) -> usize {
        match self.crops {
            TestCrops::Center => 1,
            TestCrops::Three => 3,
        }
    }

    /// Transforms one frame into its crops (`num_crops` RGB images of `crop_size` squared).
    pub fn apply_frame(&self, img: &RgbImage) -> Result<Vec<RgbImage>> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Config("cannot transform an empty frame".into()));
        }
        let (ow, oh) = short_side_size(w, h, self.scale_size);
        let c = self.crop_size;
        let src = Rect::new(0, 0, w, h);
        let offsets: Vec<(i64, i64)> = match self.crops {
            TestCrops::Center => vec![(center_offset(ow, c), center_offset(oh, c))],
            TestCrops::Three => {
                let ws = (ow as i64 - c as i64).max(0) / 2;
                let hs = (oh as i64 - c as i64).max(0) / 2;
                vec![(0, 0), (ws, hs), (2 * ws, 2 * hs)]
            }
        };
        offsets.into_iter().map(|(l, t)| resize_and_crop(img, src, (ow, oh), l, t, (c, c), self.filter)).collect()
    }

    /// Transforms a clip of T frames: returns `num_crops` buffers, each `[T, 3, crop, crop]` normalised.
    pub fn apply(&self, frames: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let len = frames.len() * 3 * (self.crop_size as usize).pow(2);
        let mut out = vec![0f32; len * self.num_crops()];
        self.apply_into(frames, &mut out)?;
        Ok(out.chunks(len.max(1)).map(|c| c.to_vec()).collect())
    }

    /// Like [`TestTransform::apply`], written into `out` laid out `[num_crops, T, 3, crop, crop]`.
    pub(crate) fn apply_into(&self, frames: &[RgbImage], out: &mut [f32]) -> Result<()> {
        let c = self.crop_size as usize;
        let plane = 3 * c * c;
        let per_crop = frames.len() * plane;
        if out.len() != per_crop * self.num_crops() {
            return Err(Error::Config(format!(
                "test transform output holds {} values, {} crops of {} frames need {}",
                out.len(),
                self.num_crops(),
                frames.len(),
                per_crop * self.num_crops()
            )));
        }
        for (t, frame) in frames.iter().enumerate() {
            for (k, crop) in self.apply_frame(frame)?.iter().enumerate() {
                let at = k * per_crop + t * plane;
                normalize_into(crop, false, &mut out[at..at + plane])?;
            }
        }
        Ok(())
    }
}

/// torchvision's `ColorJitter` ranges, applied with probability `p` (the same draw for the whole clip).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ColorJitter {
    /// Probability of jittering a clip.
    pub p: f64,
    /// Brightness factor drawn from `[1-b, 1+b]`.
    pub brightness: f32,
    /// Contrast factor drawn from `[1-c, 1+c]`.
    pub contrast: f32,
    /// Saturation factor drawn from `[1-s, 1+s]`.
    pub saturation: f32,
    /// Hue shift drawn from `[-h, h]` (fraction of the hue circle, at most 0.5).
    pub hue: f32,
}

impl Default for ColorJitter {
    /// The reference's setting: p 0.8, brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1.
    fn default() -> Self {
        Self { p: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1 }
    }
}

/// One colour operation with its drawn factor.
#[derive(Debug, Clone, Copy)]
enum ColorOp {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
    Hue(f32),
}

/// The training transform: `GroupMultiScaleCrop` + flip + colour jitter + grayscale, as the reference.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainTransform {
    /// Output size (square).
    pub input_size: u32,
    /// Crop sizes as fractions of the short side (the reference: 1, .875, .75, .66).
    pub scales: Vec<f64>,
    /// Largest allowed index gap between the width and height scales (the reference: 1).
    pub max_distort: usize,
    /// Flip horizontally with probability 0.5.
    pub flip: bool,
    /// Colour jitter, if any.
    pub color_jitter: Option<ColorJitter>,
    /// Probability of converting the clip to grayscale (the reference: 0.2).
    pub grayscale_p: f64,
}

/// Parameters drawn for one clip by [`TrainTransform::draw`].
#[derive(Debug, Clone)]
struct TrainParams {
    /// Crop rectangle in the source frame.
    crop: Rect,
    /// Whether the clip is mirrored.
    flip: bool,
    /// Colour operations in application order.
    ops: Vec<ColorOp>,
    /// Whether the clip becomes grayscale.
    grayscale: bool,
}

impl TrainTransform {
    /// The reference's training augmentation for `input_size`.
    pub fn new(input_size: u32) -> Self {
        Self {
            input_size,
            scales: vec![1.0, 0.875, 0.75, 0.66],
            max_distort: 1,
            flip: true,
            color_jitter: Some(ColorJitter::default()),
            grayscale_p: 0.2,
        }
    }

    /// Only the multi-scale crop and flip (no colour changes).
    pub fn crop_flip(input_size: u32) -> Self {
        Self { color_jitter: None, grayscale_p: 0.0, ..Self::new(input_size) }
    }

    /// `GroupMultiScaleCrop.fill_fix_offset(more_fix_crop=True)`: the 13 fixed crop positions.
    fn fixed_offsets(image_w: u32, image_h: u32, crop_w: u32, crop_h: u32) -> Vec<(u32, u32)> {
        let ws = image_w.saturating_sub(crop_w) / 4;
        let hs = image_h.saturating_sub(crop_h) / 4;
        vec![
            (0, 0),
            (4 * ws, 0),
            (0, 4 * hs),
            (4 * ws, 4 * hs),
            (2 * ws, 2 * hs),
            (0, 2 * hs),
            (4 * ws, 2 * hs),
            (2 * ws, 4 * hs),
            (2 * ws, 0),
            (ws, hs),
            (3 * ws, hs),
            (ws, 3 * hs),
            (3 * ws, 3 * hs),
        ]
    }

    /// Draws the clip's parameters for frames of `w x h` (crop, flip, colour, grayscale, in that order).
    fn draw<R: Rng + ?Sized>(&self, w: u32, h: u32, rng: &mut R) -> Result<TrainParams> {
        if self.scales.is_empty() || self.input_size == 0 {
            return Err(Error::Config("training transform needs scales and a non-zero input size".into()));
        }
        let base = w.min(h) as f64;
        let input = self.input_size as i64;
        let sizes: Vec<u32> = self
            .scales
            .iter()
            .map(|s| {
                let x = (base * s) as i64;
                (if (x - input).abs() < 3 { input } else { x }).max(1) as u32
            })
            .collect();
        let mut pairs = Vec::new();
        for (i, &ch) in sizes.iter().enumerate() {
            for (j, &cw) in sizes.iter().enumerate() {
                if i.abs_diff(j) <= self.max_distort {
                    pairs.push((cw.min(w), ch.min(h)));
                }
            }
        }
        let (cw, ch) = pairs[rng.gen_range(0..pairs.len())];
        let offsets = Self::fixed_offsets(w, h, cw, ch);
        let (x, y) = offsets[rng.gen_range(0..offsets.len())];
        let flip = self.flip && rng.gen::<f64>() < 0.5;
        let mut ops = Vec::new();
        if let Some(j) = self.color_jitter {
            if rng.gen::<f64>() < j.p {
                let mut order = [0usize, 1, 2, 3];
                order.shuffle(rng);
                let b = rng.gen_range((1.0 - j.brightness).max(0.0)..=1.0 + j.brightness);
                let c = rng.gen_range((1.0 - j.contrast).max(0.0)..=1.0 + j.contrast);
                let s = rng.gen_range((1.0 - j.saturation).max(0.0)..=1.0 + j.saturation);
                let hh = rng.gen_range(-j.hue..=j.hue);
                for k in order {
                    ops.push(match k {
                        0 => ColorOp::Brightness(b),
                        1 => ColorOp::Contrast(c),
                        2 => ColorOp::Saturation(s),
                        _ => ColorOp::Hue(hh),
                    });
                }
            }
        }
        let grayscale = self.grayscale_p > 0.0 && rng.gen::<f64>() < self.grayscale_p;
        Ok(TrainParams { crop: Rect::new(x, y, cw, ch), flip, ops, grayscale })
    }

    /// Applies drawn parameters to one frame: crop, bilinear resize, colour, grayscale (not the flip,
    /// which [`normalize_into`] applies).
    fn apply_frame(&self, img: &RgbImage, p: &TrainParams) -> Result<RgbImage> {
        let s = self.input_size;
        let mut out = resize_region(img, p.crop, s, s, Rect::new(0, 0, s, s), Filter::Bilinear)?;
        for op in &p.ops {
            match *op {
                ColorOp::Brightness(f) => blend_const(&mut out, 0, f),
                ColorOp::Contrast(f) => {
                    let mean = mean_luma(&out);
                    blend_const(&mut out, mean, f)
                }
                ColorOp::Saturation(f) => blend_gray(&mut out, f),
                ColorOp::Hue(f) => shift_hue(&mut out, f),
            }
        }
        if p.grayscale {
            for px in out.pixels_mut() {
                let l = luma(px.0);
                px.0 = [l, l, l];
            }
        }
        Ok(out)
    }

    /// Transforms a clip of T frames (all of one size) into `[T, 3, S, S]` normalised values.
    pub fn apply<R: Rng + ?Sized>(&self, frames: &[RgbImage], rng: &mut R) -> Result<Vec<f32>> {
        let mut out = vec![0f32; frames.len() * 3 * (self.input_size as usize).pow(2)];
        self.apply_into(frames, rng, &mut out)?;
        Ok(out)
    }

    /// Like [`TrainTransform::apply`], written into `out` (`T * 3 * S * S` values).
    pub(crate) fn apply_into<R: Rng + ?Sized>(&self, frames: &[RgbImage], rng: &mut R, out: &mut [f32]) -> Result<()> {
        let s = self.input_size as usize;
        let plane = 3 * s * s;
        if out.len() != frames.len() * plane {
            return Err(Error::Config(format!(
                "training transform output holds {} values, {} frames need {}",
                out.len(),
                frames.len(),
                frames.len() * plane
            )));
        }
        let Some(first) = frames.first() else { return Ok(()) };
        let (w, h) = first.dimensions();
        let params = self.draw(w, h, rng)?;
        for (t, frame) in frames.iter().enumerate() {
            if frame.dimensions() != (w, h) {
                return Err(Error::Config(format!(
                    "frame {t} of a clip is {:?}, the first is {w}x{h}",
                    frame.dimensions()
                )));
            }
            let img = self.apply_frame(frame, &params)?;
            normalize_into(&img, params.flip, &mut out[t * plane..(t + 1) * plane])?;
        }
        Ok(())
    }
}

/// Pillow's `L` conversion: `(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`.
#[inline]
fn luma(p: [u8; 3]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `int(mean(L) + 0.5)`, as `ImageEnhance.Contrast`.
fn mean_luma(img: &RgbImage) -> u8 {
    let n = (img.width() * img.height()).max(1) as f64;
    let sum: u64 = img.pixels().map(|p| luma(p.0) as u64).sum();
    (sum as f64 / n + 0.5).min(255.0) as u8
}

/// Pillow's `Image.blend(degenerate, img, f)` value: truncation toward zero, clipped to 0..255.
#[inline]
fn blend(d: u8, v: u8, f: f32) -> u8 {
    let t = d as f32 + f * (v as f32 - d as f32);
    if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

fn blend_const(img: &mut RgbImage, d: u8, f: f32) {
    for v in img.iter_mut() {
        *v = blend(d, *v, f);
    }
}

fn blend_gray(img: &mut RgbImage, f: f32) {
    for px in img.pixels_mut() {
        let l = luma(px.0);
        for v in px.0.iter_mut() {
            *v = blend(l, *v, f);
        }
    }
}

/// torchvision's PIL `adjust_hue`: RGB -> HSV (Pillow's 8-bit conversion), `h += hue*255` (wrapping),
/// HSV -> RGB.
fn shift_hue(img: &mut RgbImage, hue: f32) {
    let shift = ((hue * 255.0) as i32).rem_euclid(256) as u8;
    for px in img.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(px.0);
        px.0 = hsv_to_rgb([h.wrapping_add(shift), s, v]);
    }
}

fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    let rc = (maxc - r) as f32 / cr;
    let gc = (maxc - g) as f32 / cr;
    let bc = (maxc - b) as f32 / cr;
    let h = if r == maxc {
        bc - gc
    } else if g == maxc {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = (h / 6.0 + 1.0) % 1.0;
    let clip = |x: f32| (x as i32).clamp(0, 255) as u8;
    [clip(h * 255.0), clip(s * 255.0), maxc]
}

fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hf = h as f32 * 6.0 / 255.0;
    let i = hf.floor() as i32;
    let f = hf - i as f32;
    let fs = s as f32 / 255.0;
    let vf = v as f32;
    let clip = |x: f32| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip(vf * (1.0 - fs));
    let q = clip(vf * (1.0 - fs * f));
    let t = clip(vf * (1.0 - fs * (1.0 - f)));
    match i.rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sampling::sample_rng;

    #[test]
    fn torchvision_sizes() {
        assert_eq!(short_side_size(320, 240, 256), (341, 256));
        assert_eq!(short_side_size(171, 128, 256), (342, 256));
        assert_eq!(short_side_size(180, 320, 256), (256, 455));
        assert_eq!(center_offset(341, 224), 58); // 58.5 rounds to even
        assert_eq!(center_offset(455, 224), 116); // 115.5 rounds to even
        assert_eq!(center_offset(342, 224), 59);
    }

    #[test]
    fn test_transform_shapes() {
        let img = RgbImage::from_pixel(320, 240, image::Rgb([10, 20, 30]));
        let t = TestTransform::new(224);
        let out = t.apply(&[img.clone(), img.clone()]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 2 * 3 * 224 * 224);
        let three = TestTransform::three_crop(224).apply(&[img]).unwrap();
        assert_eq!(three.len(), 3);
    }

    #[test]
    fn train_transform_is_deterministic_per_rng() {
        let img = RgbImage::from_fn(160, 120, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let t = TrainTransform::new(64);
        let a = t.apply(&[img.clone(), img.clone()], &mut sample_rng(0, 0, 1)).unwrap();
        let b = t.apply(&[img.clone(), img], &mut sample_rng(0, 0, 1)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2 * 3 * 64 * 64);
    }

    #[test]
    fn hsv_roundtrip_is_close() {
        for p in [[255u8, 0, 0], [10, 200, 30], [90, 90, 200], [17, 17, 17]] {
            let q = hsv_to_rgb(rgb_to_hsv(p));
            for c in 0..3 {
                assert!((p[c] as i32 - q[c] as i32).abs() <= 3, "{p:?} -> {q:?}");
            }
        }
    }
}
