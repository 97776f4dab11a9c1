//! Helpers shared by the integration tests: the tiny golden model made by tools/make_fixtures.py.
#![allow(dead_code)]
use std::{collections::HashMap, path::PathBuf};

use actionclip::{ActionClip, ActionClipConfig, ClipConfig, PostNetwork, TextConfig, VisionConfig, VisualPrompt};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Largest absolute difference allowed between our f32 outputs and PyTorch's.
pub const TOL: f32 = 1e-5;

/// A file under tests/fixtures/tiny (`ACTIONCLIP_FIXTURES` names another fixtures folder, for test
/// binaries run away from their checkout, as on the GPU machine).
pub fn tiny(name: &str) -> PathBuf {
    fixtures_root().join("tiny").join(name)
}

/// A file under tests/fixtures/official: checkpoints written by the official ActionCLIP code
/// (tools/make_official_fixtures.py).
pub fn official(name: &str) -> PathBuf {
    fixtures_root().join("official").join(name)
}

fn fixtures_root() -> PathBuf {
    std::env::var_os("ACTIONCLIP_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

/// The tiny model's CLIP dimensions (tests/fixtures/tiny/config.json).
pub fn tiny_clip() -> ClipConfig {
    ClipConfig {
        vision: VisionConfig { width: 128, layers: 2, heads: 2, patch_size: 8, image_size: 32 },
        text: TextConfig { width: 128, layers: 2, heads: 2, vocab_size: 1000, context_length: 77 },
        embed_dim: 64,
    }
}

/// The tiny model with a given visual prompt (4 frames; heads with 2 layers as in the fixture).
pub fn tiny_config(joint: bool, temporal_shift: bool, post: PostNetwork) -> ActionClipConfig {
    ActionClipConfig { clip: tiny_clip(), frames: 4, prompt: VisualPrompt { joint, temporal_shift, post } }
}

/// The golden inputs and outputs.
pub fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny("io.safetensors"), &Device::Cpu).expect("tests/fixtures/tiny/io.safetensors")
}

/// The golden weights (f16 on disk, exact in f32).
pub fn weights() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny("weights.safetensors"), &Device::Cpu)
        .expect("tests/fixtures/tiny/weights.safetensors")
}

/// Max |a - b| over all elements, after checking the shapes agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts `ours` matches `golden` within [`TOL`], printing the difference.
pub fn assert_close(what: &str, ours: &Tensor, golden: &Tensor) {
    let d = max_abs_diff(ours, golden);
    eprintln!("{what}: max abs diff {d:.3e}");
    assert!(d <= TOL, "{what}: max abs diff {d} > {TOL}");
}

/// A tiny random model with the real vocabulary, so real sentences can be encoded (4 frames, 32 px,
/// 1-layer towers, a 1-layer Transf head).
pub fn tiny_random_model() -> ActionClip {
    let clip = ClipConfig {
        vision: VisionConfig { width: 64, layers: 1, heads: 1, patch_size: 8, image_size: 32 },
        text: TextConfig { width: 64, layers: 1, heads: 1, vocab_size: 49408, context_length: 77 },
        embed_dim: 32,
    };
    let cfg = ActionClipConfig {
        clip,
        frames: 4,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 1 } },
    };
    ActionClip::new(VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu), &cfg).expect("tiny random model")
}

/// Max |a - b| / max(1, |b|) after checking the shapes agree (infinite where only one is non-finite).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            if x == y {
                0.
            } else if (x - y).is_finite() {
                (x - y).abs() / y.abs().max(1.)
            } else {
                f32::INFINITY
            }
        })
        .fold(0., f32::max)
}

/// The path of a built example; `cargo test` builds the examples before it runs the integration tests
/// (a run limited with `--test` does not: build them with `cargo build --examples` first).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = target.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test --features video` (or `cargo build --examples`)",
        path.display()
    );
    path
}
