//! Parity with the reference's preprocessing and sampling (goldens made by tools/make_data_fixture.py
//! with torchvision/Pillow and the reference's own formulas).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use actionclip::data::{sample_rng, ClipPipeline, FrameNaming, FrameTemplate, Sampling, TestTransform, CLIP_STD};
use candle_core::{DType, Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

const IMAGES: [&str; 5] = ["ucf_320x240", "small_171x128", "large_400x300", "portrait_180x320", "hd_640x360"];

fn load_png(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_rgb8()
}

/// Our resize + centre crop equals Pillow's (torchvision Resize(256, BICUBIC) + CenterCrop(224)).
#[test]
fn test_transform_matches_pil_bit_for_bit() {
    let t = TestTransform::new(224);
    let mut report = Vec::new();
    for name in IMAGES {
        let input = load_png(&fixtures().join(format!("preprocess/{name}.png")));
        let want = load_png(&fixtures().join(format!("preprocess/{name}.out.png")));
        let got = t.apply_frame(&input).unwrap().remove(0);
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let total = want.as_raw().len();
        let exact = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a == b).count();
        let max = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        report.push(format!("{name}: {exact}/{total} exact, max diff {max}"));
        assert!(max <= 1, "{name}: max diff {max}");
        assert!(exact as f64 >= 0.999 * total as f64, "{name}: only {exact}/{total} values exact");
    }
    eprintln!("{}", report.join("\n"));
}

/// The whole test pipeline (frame folder -> sampling -> resize/crop -> normalise) against the
/// reference's normalised tensors: within 1/255 (on the 0..1 scale) on >= 99.9% of values.
#[test]
fn test_pipeline_matches_torchvision_tensors() {
    let golden = candle_core::safetensors::load(fixtures().join("preprocess.safetensors"), &Device::Cpu).unwrap();
    assert!(golden.len() >= 2);
    for (name, want) in &golden {
        // A frame folder of 8 identical PNG frames, read through the public pipeline.
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures().join(format!("preprocess/{name}.png"));
        for i in 1..=8 {
            std::fs::copy(&src, dir.path().join(format!("img_{i:05}.png"))).unwrap();
        }
        let mut pipeline = ClipPipeline::test(8, 224).unwrap();
        pipeline.naming = FrameNaming { template: FrameTemplate::parse("img_{:05d}.png").unwrap(), first_index: 1 };
        let clip = pipeline.load(dir.path(), None, &mut sample_rng(0, 0, 0)).unwrap();
        let got = clip.to_tensor(DType::F32, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), &[8, 3, 224, 224]);
        let want = want.to_dtype(DType::F32).unwrap();
        let std = Tensor::new(&CLIP_STD, &Device::Cpu).unwrap().reshape((3, 1, 1)).unwrap();
        for t in 0..8 {
            // Back to the 0..1 pixel scale: |a - b| * std.
            let diff = got.get(t).unwrap().sub(&want).unwrap().abs().unwrap().broadcast_mul(&std).unwrap();
            let diff: Vec<f32> = diff.flatten_all().unwrap().to_vec1().unwrap();
            let within = diff.iter().filter(|d| **d <= 1.0 / 255.0).count();
            let max = diff.iter().cloned().fold(0f32, f32::max);
            assert!(
                within as f64 >= 0.999 * diff.len() as f64,
                "{name} frame {t}: {within}/{} within 1/255",
                diff.len()
            );
            if t == 0 {
                eprintln!("{name}: {within}/{} values within 1/255, max |diff| {max:.2e} (0..1 scale)", diff.len());
            }
        }
    }
}

/// Lines `kind T L N: values` of sampling.txt.
fn sampling_golden() -> BTreeMap<(String, usize, usize, usize), Vec<usize>> {
    let text = std::fs::read_to_string(fixtures().join("sampling.txt")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (head, values) = line.split_once(':').unwrap();
        let h: Vec<&str> = head.split_whitespace().collect();
        let key = (h[0].to_string(), h[1].parse().unwrap(), h[2].parse().unwrap(), h[3].parse().unwrap());
        out.insert(key, values.split_whitespace().map(|v| v.parse().unwrap()).collect());
    }
    out
}

#[test]
fn test_sampling_matches_reference_exactly() {
    let golden = sampling_golden();
    let mut checked = 0;
    for ((kind, t, l, n), want) in &golden {
        if kind != "test" {
            continue;
        }
        let s = Sampling::with_seg_length(*t, *l).unwrap();
        assert_eq!(&s.test_indices(*n), want, "test indices T={t} L={l} N={n}");
        checked += 1;
    }
    assert_eq!(checked, 5 * 300);
}

#[test]
fn train_sampling_follows_reference_segments() {
    let golden = sampling_golden();
    for ((kind, t, l, n), ticks) in &golden {
        if kind != "ticks" || *t == 1 {
            continue;
        }
        let s = Sampling::with_seg_length(*t, *l).unwrap();
        // Every start lies in [tick_i, tick_{i+1} - L], frames within a segment are consecutive, and
        // over enough draws every allowed start of segment 0 appears.
        let mut seen0 = BTreeSet::new();
        for seed in 0..64u64 {
            let idx = s.train_indices(*n, &mut sample_rng(seed, 0, *n as u64));
            assert_eq!(idx.len(), t * l);
            for i in 0..*t {
                let start = idx[i * l];
                assert!(
                    start >= ticks[i] && start + l <= ticks[i + 1],
                    "T={t} L={l} N={n} segment {i}: start {start}, ticks {ticks:?}"
                );
                for j in 0..*l {
                    assert_eq!(idx[i * l + j], start + j);
                }
            }
            seen0.insert(idx[0]);
        }
        let room = ticks[1] - ticks[0] - l + 1;
        if room <= 4 {
            assert_eq!(seen0.len(), room, "T={t} L={l} N={n}: starts seen {seen0:?}");
        }
    }
    // Short clips: every frame once plus sorted extras.
    let s = Sampling::new(8).unwrap();
    for n in 1..=8 {
        for seed in 0..8 {
            let idx = s.train_indices(n, &mut sample_rng(seed, 1, 2));
            assert_eq!(idx.len(), 8);
            assert!(idx.windows(2).all(|w| w[0] <= w[1]));
            assert!((0..n).all(|f| idx.contains(&f)), "N={n}: {idx:?}");
        }
    }
}
