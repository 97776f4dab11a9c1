//! Encoder throughput on this machine's CPU (or a GPU with `--features cuda`/`metal`): video encoding of
//! 8-frame clips (ViT-B/32 and ViT-B/16, batch 1 and 4, every post head, temporal shift on, and the
//! mean-pooling model with f16, packed f32 and int8 tower weights), the text encoder on 101 classes x 16 templates,
//! the tokenizer, and zero-shot classification end to end (101 UCF101 labels x 16 templates encoded once,
//! then videos classified). Random weights of real size.
//!
//! `cargo bench --bench encoders -- 'video/ViT-B-16'` runs one group; `tools/bench_pytorch.py` prints
//! the same shapes for PyTorch and `tools/bench_compare.sh` runs both and prints the ratios.
use actionclip::{
    prompts, ActionClip, ActionClipConfig, ClipConfig, PostNetwork, Tokenizer, TowerWeights, VisualPrompt,
    ZeroShotClassifier,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::device;

const FRAMES: usize = 8;

fn random_model(clip: ClipConfig, prompt: VisualPrompt, device: &Device) -> ActionClip {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    ActionClip::new(vb, &ActionClipConfig { clip, frames: FRAMES, prompt }).expect("model")
}

/// Tower weight formats benchmarked on the mean-pooling model, with the suffix of their bench id. Int8
/// and packed f32 are CPU formats.
fn weight_formats(dev: &Device) -> Vec<(TowerWeights, &'static str)> {
    let mut formats = vec![(TowerWeights::Full, ""), (TowerWeights::F16, "-f16")];
    if dev.is_cpu() {
        formats.extend([(TowerWeights::Packed, "-packed"), (TowerWeights::Int8, "-int8")]);
    }
    formats
}

fn ucf101_labels() -> Vec<String> {
    include_str!("../weights/ucf101_classes.txt").lines().map(prompts::humanize).collect()
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
                if arch == "ViT-B-16"
                    && (shift || !matches!(post, PostNetwork::MeanPool | PostNetwork::Transformer { .. }))
                {
                    continue;
                }
                let full = random_model(clip.clone(), VisualPrompt { joint: false, temporal_shift: shift, post }, &dev);
                let formats = if matches!(post, PostNetwork::MeanPool) && !shift {
                    weight_formats(&dev)
                } else {
                    vec![(TowerWeights::Full, "")]
                };
                for (format, suffix) in formats {
                    let model = full.with_tower_weights(format).expect("tower weights");
                    for batch in [1usize, 4] {
                        let frames = Tensor::randn(0f32, 1., (batch, FRAMES, 3, 224, 224), &dev).expect("frames");
                        group.throughput(Throughput::Elements(batch as u64));
                        let id = format!("{head}{}{suffix}", if shift { "+tsm" } else { "" });
                        group.bench_with_input(BenchmarkId::new(id, format!("b{batch}")), &frames, |b, f| {
                            b.iter(|| model.encode_video(f).expect("forward").to_vec2::<f32>().expect("sync"))
                        });
                    }
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
    let labels = ucf101_labels();
    let sentences = prompts::fill_all(&prompts::ACTIONCLIP_TEMPLATES, &labels);
    let mut group = c.benchmark_group("text");
    group.sample_size(10);
    group.throughput(Throughput::Elements(sentences.len() as u64));
    group.bench_function("tokenize/1616", |b| b.iter(|| tok.encode_batch(&sentences, &dev).expect("tokens")));
    let tokens = tok.encode_batch(&sentences, &dev).expect("tokens");
    group.bench_function("encode/101x16", |b| {
        b.iter(|| model.encode_text(&tokens).expect("text").to_vec2::<f32>().expect("sync"))
    });
    group.finish();
}

/// Zero-shot classification as a user runs it: the classifier encodes 101 labels x 16 templates once
/// (`build`), then each call encodes a batch of videos and ranks the labels (`classify`).
fn zero_shot(c: &mut Criterion) {
    let dev = device();
    let labels = ucf101_labels();
    let tok = Tokenizer::new();
    for (arch, clip) in [("ViT-B-32", ClipConfig::vit_b32()), ("ViT-B-16", ClipConfig::vit_b16())] {
        let mut group = c.benchmark_group(format!("zero_shot/{arch}"));
        group.sample_size(10);
        let full = random_model(clip, VisualPrompt::default(), &dev);
        for (format, suffix) in weight_formats(&dev) {
            let model = full.with_tower_weights(format).expect("tower weights");
            group.throughput(Throughput::Elements(labels.len() as u64));
            group.bench_function(format!("build{suffix}/101x16"), |b| {
                b.iter(|| {
                    ZeroShotClassifier::new(&model, &tok, &labels, &prompts::ACTIONCLIP_TEMPLATES).expect("classifier")
                })
            });
            let classifier =
                ZeroShotClassifier::new(&model, &tok, &labels, &prompts::ACTIONCLIP_TEMPLATES).expect("classifier");
            for batch in [1usize, 4] {
                let frames = Tensor::randn(0f32, 1., (batch, FRAMES, 3, 224, 224), &dev).expect("frames");
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(
                    BenchmarkId::new(format!("classify{suffix}"), format!("b{batch}")),
                    &frames,
                    |b, f| b.iter(|| classifier.classify(f, 5).expect("classify")),
                );
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // No plots: criterion's plotting needs system fonts.
    config = Criterion::default().without_plots();
    targets = video, text, zero_shot
}
criterion_main!(benches);
