//! GPU throughput of the ViT-B/16 ActionCLIP model (8 frames, 224 px, mean pooling, random weights) on the
//! first CUDA device: video encoding in bf16 at 1 and 16 videos per call and in f32 at 16, and a full
//! training step (video and text towers, symmetric KL loss, backward, AdamW on f32 master
//! weights) with bf16 compute at 4 and 32 videos. Throughput in videos/s.
//!
//! `cargo bench --features cuda --bench gpu`; `tools/gpu_bench.sh` runs it on the GPU machine together
//! with `tools/gpu_bench.py` (the same shapes in PyTorch) and prints the ratios.
use actionclip::train::{Precision, StartFrom, TrainConfig, Trainer};
use actionclip::{ActionClip, ActionClipConfig, ClipConfig, PostNetwork, Tokenizer, VisualPrompt};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FRAMES: usize = 8;

fn config() -> ActionClipConfig {
    ActionClipConfig {
        clip: ClipConfig::vit_b16(),
        frames: FRAMES,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::MeanPool },
    }
}

fn gpu() -> Device {
    Device::new_cuda(0).expect("the gpu bench needs a CUDA device")
}

fn inference(c: &mut Criterion) {
    let dev = gpu();
    let mut group = c.benchmark_group("gpu/infer/ViT-B-16");
    group.sample_size(20);
    for (dtype, name, batches) in [(DType::BF16, "bf16", &[1usize, 16][..]), (DType::F32, "f32", &[16][..])] {
        let varmap = VarMap::new();
        let model = ActionClip::new(VarBuilder::from_varmap(&varmap, dtype, &dev), &config()).expect("model");
        for &batch in batches {
            let frames = Tensor::randn(0f32, 1., (batch, FRAMES, 3, 224, 224), &dev).expect("frames");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(name, format!("b{batch}")), &frames, |b, f| {
                b.iter(|| {
                    let v = model.encode_video(f).expect("forward");
                    dev.synchronize().expect("sync");
                    v
                })
            });
        }
    }
    group.finish();
}

fn training(c: &mut Criterion) {
    let dev = gpu();
    let mut group = c.benchmark_group("gpu/train/ViT-B-16");
    group.sample_size(10);
    let tok = Tokenizer::new();
    for batch in [4usize, 32] {
        let train = TrainConfig { precision: Precision::Bf16, ..TrainConfig::default() };
        let mut trainer = Trainer::new(&config(), StartFrom::Scratch, train, &dev).expect("trainer");
        let frames = Tensor::randn(0f32, 1., (batch, FRAMES, 3, 224, 224), &dev).expect("frames");
        let texts: Vec<String> = (0..batch).map(|i| format!("a video of action number {i}")).collect();
        let tokens = tok.encode_batch(&texts, &dev).expect("tokens");
        let labels: Vec<u32> = (0..batch as u32).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("bf16", format!("b{batch}")), |b| {
            b.iter(|| {
                let out = trainer.train_step(&frames, &tokens, &labels).expect("step");
                dev.synchronize().expect("sync");
                out
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots().warm_up_time(std::time::Duration::from_secs(2)).measurement_time(std::time::Duration::from_secs(4));
    targets = inference, training
}
criterion_main!(benches);
