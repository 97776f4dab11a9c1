//! A synthetic dataset in the official UCF101 layout, for tests, examples and demos that must not
//! download anything.
//!
//! Every clip shows one textured shape on a textured background. Classes differ by motion (moving
//! right / left / up / down, rotating clockwise / counter-clockwise, growing, shrinking), so a single
//! frame cannot tell most of them apart; the second group of eight classes repeats the motions with a
//! different shape (a cross), so appearance separates the groups. Every motion starts from its own
//! canonical state, jittered: a translation near the side it leaves, a growing shape small, a rotating
//! shape with its marker band up (within 45 degrees), so that the direction of a rotation is a
//! first-order property of the clip (where the band goes) like that of a translation, rather than the
//! sign of an angular velocity from a random start, which tiny models trained from scratch do not
//! discover. Shape colour, size, start position and angle, speed and background vary per clip, all drawn
//! from the seed.
//!
//! The writer produces `classInd.txt`, `trainlist0{1,2,3}.txt`, `testlist0{1,2,3}.txt` and
//! `Class/v_Class_gXX_c01.avi` (MPEG-4 Part 2 through FFmpeg, feature `video`) or
//! `Class/v_Class_gXX_c01/img_00001.jpg...` frame folders.
use std::f32::consts::PI;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::sampling::keyed_rng;
use super::video::{write_video, EncodeOptions};
use crate::error::{Error, Result};

const SYNTH_DOMAIN: u64 = 0x5359_4e54_4845_5449; // "SYNTHETI"

/// The motions, in class order.
const MOTIONS: [(&str, Motion); 8] = [
    ("MovesRight", Motion::Right),
    ("MovesLeft", Motion::Left),
    ("MovesUp", Motion::Up),
    ("MovesDown", Motion::Down),
    ("RotatesClockwise", Motion::RotateCw),
    ("RotatesCounterclockwise", Motion::RotateCcw),
    ("Grows", Motion::Grow),
    ("Shrinks", Motion::Shrink),
];

/// The most classes the generator knows.
pub const MAX_CLASSES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Motion {
    Right,
    Left,
    Up,
    Down,
    RotateCw,
    RotateCcw,
    Grow,
    Shrink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Square,
    Disc,
    Cross,
}

/// How clips are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SyntheticFormat {
    /// MPEG-4 Part 2 AVI files (needs the `video` feature).
    Avi,
    /// JPEG frame folders (`img_00001.jpg`, ...).
    FrameFolders,
}

impl Default for SyntheticFormat {
    /// AVI with the `video` feature, frame folders without.
    fn default() -> Self {
        if cfg!(feature = "video") {
            SyntheticFormat::Avi
        } else {
            SyntheticFormat::FrameFolders
        }
    }
}

/// Generator settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyntheticConfig {
    /// Number of classes (1..=16): the 8 motions with a square or disc, then the same with a cross.
    pub num_classes: usize,
    /// Clips per class (each is its own UCF "group").
    pub clips_per_class: usize,
    /// Clips per class in each test list (the rest are training clips).
    pub test_clips_per_class: usize,
    /// Frames per clip.
    pub frames: usize,
    /// Frame width (even, for MPEG-4).
    pub width: u32,
    /// Frame height (even, for MPEG-4).
    pub height: u32,
    /// Frames per second written into the AVI files.
    pub fps: u32,
    /// Seed of everything random.
    pub seed: u64,
    /// Storage format.
    pub format: SyntheticFormat,
    /// Per-pixel noise amplitude added to every frame (0..255 scale).
    pub noise: f32,
}

impl Default for SyntheticConfig {
    /// 8 classes x 12 clips (3 test clips per class), 32 frames of 64x64 at 25 fps, seed 0.
    fn default() -> Self {
        Self {
            num_classes: 8,
            clips_per_class: 12,
            test_clips_per_class: 3,
            frames: 32,
            width: 64,
            height: 64,
            fps: 25,
            seed: 0,
            format: SyntheticFormat::default(),
            noise: 6.0,
        }
    }
}

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticDataset {
    /// The dataset root (class folders and split files).
    pub root: PathBuf,
    /// Class names, by 0-based label.
    pub classes: Vec<String>,
    /// Storage format.
    pub format: SyntheticFormat,
    /// Training clips in split 1.
    pub train_clips: usize,
    /// Test clips in split 1.
    pub test_clips: usize,
}

/// The first `n` class names (`ShapeMovesRight`, ..., `CrossShrinks`).
pub fn class_names(n: usize) -> Vec<String> {
    (0..n.min(MAX_CLASSES))
        .map(|k| {
            let prefix = if k < MOTIONS.len() { "Shape" } else { "Cross" };
            format!("{prefix}{}", MOTIONS[k % MOTIONS.len()].0)
        })
        .collect()
}

fn check(cfg: &SyntheticConfig) -> Result<()> {
    let bad = |m: String| Err(Error::Config(format!("synthetic dataset: {m}")));
    if cfg.num_classes == 0 || cfg.num_classes > MAX_CLASSES {
        return bad(format!("num_classes must be 1..={MAX_CLASSES}, not {}", cfg.num_classes));
    }
    if cfg.clips_per_class < 2 || cfg.test_clips_per_class == 0 || cfg.test_clips_per_class >= cfg.clips_per_class {
        return bad(format!(
            "need 1 <= test_clips_per_class ({}) < clips_per_class ({})",
            cfg.test_clips_per_class, cfg.clips_per_class
        ));
    }
    if cfg.frames == 0 || cfg.width < 16 || cfg.height < 16 || cfg.fps == 0 {
        return bad("frames, fps must be positive and the size at least 16x16".into());
    }
    if cfg.format == SyntheticFormat::Avi && (!cfg.width.is_multiple_of(2) || !cfg.height.is_multiple_of(2)) {
        return bad(format!("AVI clips need an even size, not {}x{}", cfg.width, cfg.height));
    }
    if cfg.clips_per_class > 99 {
        return bad("at most 99 clips per class (UCF group numbers have two digits)".into());
    }
    Ok(())
}

/// Renders clip `clip` of class `class` (deterministic in the config's seed): `frames` RGB images.
pub fn render_clip(cfg: &SyntheticConfig, class: usize, clip: usize) -> Result<Vec<RgbImage>> {
    check(cfg)?;
    if class >= cfg.num_classes {
        return Err(Error::Config(format!("class {class} out of range (num_classes {})", cfg.num_classes)));
    }
    let mut rng = keyed_rng(cfg.seed, class as u64, clip as u64, SYNTH_DOMAIN);
    let motion = MOTIONS[class % MOTIONS.len()].1;
    let shape = if class >= MOTIONS.len() {
        Shape::Cross
    } else if rng.gen::<bool>() {
        Shape::Square
    } else {
        Shape::Disc
    };
    Ok(Scene::draw(cfg, motion, shape, &mut rng).frames(cfg, &mut rng))
}

/// One clip's drawn parameters.
struct Scene {
    shape: Shape,
    /// Start and end centre, in pixels.
    c0: (f32, f32),
    c1: (f32, f32),
    /// Start and end half-size, in pixels.
    r0: f32,
    r1: f32,
    /// Start and end angle, radians.
    a0: f32,
    a1: f32,
    colors: [[f32; 3]; 2],
    stripes: f32,
    background: Vec<[f32; 3]>,
}

impl Scene {
    fn draw(cfg: &SyntheticConfig, motion: Motion, shape: Shape, rng: &mut ChaCha8Rng) -> Self {
        let (w, h) = (cfg.width as f32, cfg.height as f32);
        let m = w.min(h);
        let r = m * rng.gen_range(0.12..0.18);
        let a0 = rng.gen_range(0.0..2.0 * PI);
        let travel_x = w * rng.gen_range(0.35..0.5);
        let travel_y = h * rng.gen_range(0.35..0.5);
        let start_x = w * rng.gen_range(0.2..0.3);
        let start_y = h * rng.gen_range(0.2..0.3);
        let across_x = w * rng.gen_range(0.3..0.7);
        let across_y = h * rng.gen_range(0.3..0.7);
        // (start centre, end centre, start half-size, end half-size, start angle, end angle)
        let (c0, c1, r0, r1, a0, a1) = match motion {
            Motion::Right => ((start_x, across_y), (start_x + travel_x, across_y), r, r, a0, a0),
            Motion::Left => ((w - start_x, across_y), (w - start_x - travel_x, across_y), r, r, a0, a0),
            Motion::Down => ((across_x, start_y), (across_x, start_y + travel_y), r, r, a0, a0),
            Motion::Up => ((across_x, h - start_y), (across_x, h - start_y - travel_y), r, r, a0, a0),
            Motion::RotateCw | Motion::RotateCcw => {
                let turn = rng.gen_range(0.6..1.0) * PI;
                let centre = (w * rng.gen_range(0.4..0.6), h * rng.gen_range(0.4..0.6));
                // Angle 0 puts the marker band on top; image y points down, so a growing angle turns
                // clockwise on screen.
                let start = rng.gen_range(-0.25..0.25) * PI;
                let end = if motion == Motion::RotateCw { start + turn } else { start - turn };
                (centre, centre, r * 1.4, r * 1.4, start, end)
            }
            Motion::Grow | Motion::Shrink => {
                let small = m * rng.gen_range(0.07..0.1);
                let big = small * rng.gen_range(2.2..2.8);
                let (r0, r1) = if motion == Motion::Grow { (small, big) } else { (big, small) };
                let centre = (w * rng.gen_range(0.4..0.6), h * rng.gen_range(0.4..0.6));
                (centre, centre, r0, r1, a0, a0)
            }
        };
        let hue = rng.gen_range(0.0..1.0f32);
        let colors = [hsv(hue, 0.85, 0.95), hsv((hue + 0.5) % 1.0, 0.9, 0.55)];
        let stripes = rng.gen_range(2.0..3.5);
        // Background: a dim two-colour gradient with static blotchy texture.
        let bg_a = hsv(rng.gen_range(0.0..1.0), 0.3, rng.gen_range(0.15..0.35));
        let bg_b = hsv(rng.gen_range(0.0..1.0), 0.3, rng.gen_range(0.15..0.35));
        let (wi, hi) = (cfg.width as usize, cfg.height as usize);
        let (fx, fy, ph) = (rng.gen_range(0.05..0.2), rng.gen_range(0.05..0.2), rng.gen_range(0.0..2.0 * PI));
        let mut background = Vec::with_capacity(wi * hi);
        for y in 0..hi {
            for x in 0..wi {
                let t = (x + y) as f32 / (wi + hi) as f32;
                let tex = 0.08 * ((x as f32 * fx + ph).sin() * (y as f32 * fy).cos()) + rng.gen_range(-0.03..0.03);
                background.push(std::array::from_fn(|c| (bg_a[c] * (1.0 - t) + bg_b[c] * t + tex).clamp(0.0, 1.0)));
            }
        }
        Scene { shape, c0, c1, r0, r1, a0, a1, colors, stripes, background }
    }

    /// Shape colour at local coordinates `(u, v)` in [-1, 1]^2, or `None` outside the shape.
    fn shade(&self, u: f32, v: f32) -> Option<[f32; 3]> {
        let inside = match self.shape {
            Shape::Square => u.abs() <= 1.0 && v.abs() <= 1.0,
            Shape::Disc => u * u + v * v <= 1.0,
            Shape::Cross => (u.abs() <= 1.0 && v.abs() <= 0.35) || (v.abs() <= 1.0 && u.abs() <= 0.35),
        };
        if !inside {
            return None;
        }
        // A marker band on one side makes rotation visible; stripes give texture.
        if v < -0.55 {
            return Some(self.colors[1]);
        }
        let k = 0.75 + 0.25 * (u * self.stripes * PI).sin().signum();
        Some(self.colors[0].map(|c| c * k))
    }

    fn frames(&self, cfg: &SyntheticConfig, rng: &mut ChaCha8Rng) -> Vec<RgbImage> {
        let (w, h) = (cfg.width, cfg.height);
        let n = cfg.frames;
        (0..n)
            .map(|f| {
                let t = if n > 1 { f as f32 / (n - 1) as f32 } else { 0.0 };
                let lerp = |a: f32, b: f32| a + (b - a) * t;
                let (cx, cy) = (lerp(self.c0.0, self.c1.0), lerp(self.c0.1, self.c1.1));
                let r = lerp(self.r0, self.r1).max(1.0);
                let ang = lerp(self.a0, self.a1);
                let (s, c) = ang.sin_cos();
                RgbImage::from_fn(w, h, |x, y| {
                    let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                    // Rotate the pixel into the shape's frame.
                    let (u, v) = ((c * dx + s * dy) / r, (-s * dx + c * dy) / r);
                    let base = self.shade(u, v).unwrap_or(self.background[(y * w + x) as usize]);
                    let noise = if cfg.noise > 0.0 { rng.gen_range(-cfg.noise..=cfg.noise) } else { 0.0 };
                    Rgb(base.map(|v| (v * 255.0 + noise).round().clamp(0.0, 255.0) as u8))
                })
            })
            .collect()
    }
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Test groups (1-based) of `split` (1..=3): a block of `test` groups, shifted per split.
fn is_test(cfg: &SyntheticConfig, split: usize, group: usize) -> bool {
    let n = cfg.clips_per_class;
    let start = ((split - 1) * cfg.test_clips_per_class) % n;
    let pos = (group - 1 + n - start) % n;
    pos < cfg.test_clips_per_class
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

/// Writes the dataset under `root` (created if needed) and returns what was written.
pub fn write_dataset(root: impl AsRef<Path>, cfg: &SyntheticConfig) -> Result<SyntheticDataset> {
    check(cfg)?;
    let root = root.as_ref().to_path_buf();
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let classes = class_names(cfg.num_classes);
    let class_ind: String = classes.iter().enumerate().map(|(i, c)| format!("{} {c}\n", i + 1)).collect();
    write_text(&root.join("classInd.txt"), &class_ind)?;
    let mut train = vec![String::new(); 3];
    let mut test = vec![String::new(); 3];
    let opts = EncodeOptions { fps: cfg.fps, quality: 2, ..EncodeOptions::default() };
    for (k, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for clip in 0..cfg.clips_per_class {
            let group = clip + 1;
            let name = format!("v_{class}_g{group:02}_c01");
            let frames = render_clip(cfg, k, clip)?;
            match cfg.format {
                SyntheticFormat::Avi => write_video(dir.join(format!("{name}.avi")), &frames, &opts)?,
                SyntheticFormat::FrameFolders => write_frames(&dir.join(&name), &frames)?,
            }
            let rel = format!("{class}/{name}.avi");
            for split in 1..=3 {
                if is_test(cfg, split, group) {
                    test[split - 1].push_str(&format!("{rel}\n"));
                } else {
                    train[split - 1].push_str(&format!("{rel} {}\n", k + 1));
                }
            }
        }
    }
    for split in 1..=3 {
        write_text(&root.join(format!("trainlist0{split}.txt")), &train[split - 1])?;
        write_text(&root.join(format!("testlist0{split}.txt")), &test[split - 1])?;
    }
    let test_clips = cfg.num_classes * cfg.test_clips_per_class;
    Ok(SyntheticDataset {
        root,
        classes,
        format: cfg.format,
        train_clips: cfg.num_classes * cfg.clips_per_class - test_clips,
        test_clips,
    })
}

/// Writes frames as `img_00001.jpg`, ... (JPEG quality 95) into `dir`.
fn write_frames(dir: &Path, frames: &[RgbImage]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (i, f) in frames.iter().enumerate() {
        let path = dir.join(format!("img_{:05}.jpg", i + 1));
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = std::io::BufWriter::new(file);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 95)
            .encode_image(f)
            .map_err(|e| Error::Image { path: path.clone(), reason: e.to_string() })?;
        w.flush().map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_splits() {
        let names = class_names(16);
        assert_eq!(names[0], "ShapeMovesRight");
        assert_eq!(names[15], "CrossShrinks");
        let cfg = SyntheticConfig::default();
        for split in 1..=3 {
            let n = (1..=cfg.clips_per_class).filter(|&g| is_test(&cfg, split, g)).count();
            assert_eq!(n, cfg.test_clips_per_class);
        }
        assert!(is_test(&cfg, 1, 1) && !is_test(&cfg, 2, 1));
    }

    #[test]
    fn clips_are_deterministic_and_move() {
        let cfg = SyntheticConfig { noise: 0.0, ..Default::default() };
        let a = render_clip(&cfg, 0, 3).unwrap();
        let b = render_clip(&cfg, 0, 3).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert_ne!(a[0], a[31]);
    }
}
