//! Encoder throughput on this machine's CPU (or a GPU with `--features cuda`/`metal`): video encoding of
//! 8-frame clips (ViT-B/32 and ViT-B/16, batch 1 and 4, every post head, temporal shift on), the text
//! encoder on 101 classes x 16 templates, and the tokenizer. Random weights of real size.
//!
//! `cargo bench --bench encoders -- 'video/ViT-B-16'` runs one group; `tools/bench_pytorch.py` prints
//! the same shapes for PyTorch.
use actionclip::{prompts, ActionClip, ActionClipConfig, ClipConfig, PostNetwork, Tokenizer, VisualPrompt};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FRAMES: usize = 8;

fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return d;
    }
    #[cfg(feature = "metal")]
    if let Ok(d) = Device::new_metal(0) {
        return d;
    }
    Device::Cpu
}

fn random_model(clip: ClipConfig, prompt: VisualPrompt, device: &Device) -> ActionClip {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    ActionClip::new(vb, &ActionClipConfig { clip, frames: FRAMES, prompt }).expect("model")
}

fn video(c: &mut Criterion) {
    let dev = device();
    let heads = [
        ("meanP", PostNetwork::MeanPool),
        ("Transf", PostNetwork::Transformer { layers: 6 }),
        ("Conv_1D", PostNetwork::Conv1d { reference_reshape: false }),
        ("LSTM", PostNetwork::Lstm),
        ("Transf_cls", PostNetwork::TransformerCls { layers: 6 }),
    ];
    for (arch, clip) in [("ViT-B-16", ClipConfig::vit_b16()), ("ViT-B-32", ClipConfig::vit_b32())] {
        let mut group = c.benchmark_group(format!("video/{arch}"));
        group.sample_size(10);
        for (head, post) in heads {
            for shift in [false, true] {
                // The full grid for ViT-B/32; ViT-B/16 (slow on a CPU) measures the main variants.
                if arch == "ViT-B-16" && (shift || !matches!(post, PostNetwork::MeanPool | PostNetwork::Transformer { .. })) {
                    continue;
                }
                let model = random_model(clip.clone(), VisualPrompt { joint: false, temporal_shift: shift, post }, &dev);
                for batch in [1usize, 4] {
                    let frames = Tensor::randn(0f32, 1., (batch, FRAMES, 3, 224, 224), &dev).expect("frames");
                    group.throughput(Throughput::Elements(batch as u64));
                    let id = format!("{head}{}", if shift { "+tsm" } else { "" });
                    group.bench_with_input(BenchmarkId::new(id, format!("b{batch}")), &frames, |b, f| {
                        b.iter(|| model.encode_video(f).expect("forward").to_vec2::<f32>().expect("sync"))
                    });
                }
            }
        }
        group.finish();
    }
}

fn text(c: &mut Criterion) {
    let dev = device();
    let model = random_model(ClipConfig::vit_b16(), VisualPrompt::default(), &dev);
    let tok = Tokenizer::new();
    let labels: Vec<String> = include_str!("../weights/ucf101_classes.txt").lines().map(prompts::humanize).collect();
    let sentences = prompts::fill_all(&prompts::ACTIONCLIP_TEMPLATES, &labels);
    let mut group = c.benchmark_group("text");
    group.sample_size(10);
    group.throughput(Throughput::Elements(sentences.len() as u64));
    group.bench_function("tokenize/1616", |b| b.iter(|| tok.encode_batch(&sentences, &dev).expect("tokens")));
    let tokens = tok.encode_batch(&sentences, &dev).expect("tokens");
    group.bench_function("encode/101x16", |b| b.iter(|| model.encode_text(&tokens).expect("text").to_vec2::<f32>().expect("sync")));
    group.finish();
}

criterion_group! {
    name = benches;
    // No plots: criterion's plotting needs system fonts.
    config = Criterion::default().without_plots();
    targets = video, text
}
criterion_main!(benches);
