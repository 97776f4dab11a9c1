//! Training-step throughput: forward of both towers, the symmetric KL loss, backward and the AdamW step
//! ([`Trainer::train_step`]) for the mean-pooling model, 8 frames, one label sentence per video, every
//! weight trained, f32. A tiny model (32 px, width 64) and ViT-B/32 (224 px) at batch 4; random weights.
//!
//! `cargo bench --bench train` reports videos/s as `elem/s`; `tools/bench_pytorch.py --filter train/`
//! runs the same step in PyTorch (the openai-clip model, `torch.optim.AdamW`).
use actionclip::train::{StartFrom, TrainConfig, Trainer};
use actionclip::{prompts, ActionClipConfig, ClipConfig, Tokenizer, VisualPrompt};
use candle_core::Tensor;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::device;

const FRAMES: usize = 8;
const BATCH: usize = 4;

fn train_step(c: &mut Criterion) {
    let dev = device();
    let tok = Tokenizer::new();
    let labels: Vec<String> =
        include_str!("../weights/ucf101_classes.txt").lines().take(BATCH).map(prompts::humanize).collect();
    let sentences = prompts::fill_all(&prompts::ACTIONCLIP_TEMPLATES[..1], &labels);
    let tokens = tok.encode_batch(&sentences, &dev).expect("tokens");
    let targets: Vec<u32> = (0..BATCH as u32).collect();
    let mut group = c.benchmark_group("train");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    for (arch, clip) in [("tiny", ClipConfig::tiny()), ("ViT-B-32", ClipConfig::vit_b32())] {
        let size = clip.vision.image_size;
        let model_cfg = ActionClipConfig { clip, frames: FRAMES, prompt: VisualPrompt::default() };
        let cfg = TrainConfig { warmup_epochs: 0.0, plots: false, ..TrainConfig::default() };
        let mut trainer = Trainer::new(&model_cfg, StartFrom::Scratch, cfg, &dev).expect("trainer");
        let frames = Tensor::randn(0f32, 1., (BATCH, FRAMES, 3, size, size), &dev).expect("frames");
        group.bench_function(BenchmarkId::new(arch, format!("b{BATCH}")), |b| {
            b.iter(|| trainer.train_step(&frames, &tokens, &targets).expect("train step"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // No plots: criterion's plotting needs system fonts.
    config = Criterion::default().without_plots();
    targets = train_step
}
criterion_main!(benches);
