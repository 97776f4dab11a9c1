//! Time per training step of the real architectures (ViT-B/32, ViT-B/16; Transf head, 8 frames, 224 px) on
//! this machine. Ignored by default (minutes of CPU); run with
//! `cargo test --release --test train_timing -- --ignored --nocapture` (env `TIMING_ARCH=ViT-B/32`,
//! `TIMING_BATCH=2`, `TIMING_STEPS=2`, `TIMING_PRECISION=f32|bf16|f16`, `TIMING_DEVICE=cpu|cuda` to choose).
use std::time::Instant;

use actionclip::train::{Precision, StartFrom, TrainConfig, Trainer};
use actionclip::{ActionClipConfig, ClipConfig, PostNetwork, VisualPrompt};
use candle_core::{DType, Device, Tensor};

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

#[test]
#[ignore]
fn time_per_training_step() {
    let arch = env("TIMING_ARCH", "ViT-B/32");
    let batch: usize = env("TIMING_BATCH", "2").parse().unwrap();
    let steps: usize = env("TIMING_STEPS", "2").parse().unwrap();
    let device = match env("TIMING_DEVICE", "cpu").as_str() {
        "cuda" => Device::new_cuda(0).unwrap(),
        _ => Device::Cpu,
    };
    let precision = Precision::parse(&env("TIMING_PRECISION", "f32"), &device).unwrap();
    let cfg = ActionClipConfig {
        clip: ClipConfig::by_name(&arch).unwrap(),
        frames: 8,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 6 } },
    };
    let t0 = Instant::now();
    let train = TrainConfig { precision, ..TrainConfig::default() };
    let mut trainer = Trainer::new(&cfg, StartFrom::Scratch, train, &device).unwrap();
    eprintln!("{arch}: model built in {:.1} s", t0.elapsed().as_secs_f64());
    let frames = Tensor::randn(0f32, 1.0, (batch, 8, 3, 224, 224), &device).unwrap();
    let tok = actionclip::Tokenizer::new();
    let texts: Vec<String> = (0..batch).map(|i| format!("a video of action number {i}")).collect();
    let tokens = tok.encode_batch(&texts, &device).unwrap();
    let labels: Vec<u32> = (0..batch as u32).collect();
    for step in 0..steps {
        let t = Instant::now();
        let out = trainer.train_step(&frames.to_dtype(DType::F32).unwrap(), &tokens, &labels).unwrap();
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "{arch} {precision:?} batch {batch} x 8 frames: step {step}: {s:.2} s ({:.2} clips/s), loss {:.4}",
            batch as f64 / s,
            out.loss
        );
    }
}
