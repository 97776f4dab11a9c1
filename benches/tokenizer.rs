//! Tokenizer throughput on this machine's CPU: the 16 ActionCLIP templates filled with the 101 UCF101 labels
//! (humanized), 1,616 sentences tokenized into one `[1616, 77]` tensor, as zero-shot classification does;
//! with the embedded vocabulary, and with Hugging Face's CLIP `tokenizer.json` (the test fixture
//! `tests/fixtures/tokenizer/clip_tokenizer.json.gz`, skipped when it is absent).
//!
//! `cargo bench --bench tokenizer` runs it.
use std::io::Read;

use actionclip::{prompts, Tokenizer};
use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const HF_TOKENIZER_GZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/clip_tokenizer.json.gz");

fn ucf101_sentences() -> Vec<String> {
    let labels: Vec<String> = include_str!("../weights/ucf101_classes.txt").lines().map(prompts::humanize).collect();
    prompts::fill_all(&prompts::ACTIONCLIP_TEMPLATES, &labels)
}

/// The fixture `tokenizer.json`, decompressed into a temporary folder and loaded.
fn hf_tokenizer() -> Option<(tempfile::TempDir, Tokenizer)> {
    let gz = std::fs::read(HF_TOKENIZER_GZ).ok()?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut json).expect("gzip");
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).expect("write tokenizer.json");
    let tok = Tokenizer::from_file(&path).expect("tokenizer.json");
    Some((dir, tok))
}

fn tokenizer(c: &mut Criterion) {
    let sentences = ucf101_sentences();
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("tokenizer");
    group.throughput(Throughput::Elements(sentences.len() as u64));
    let tok = Tokenizer::new();
    group.bench_function("embedded/101x16", |b| b.iter(|| tok.encode_batch(&sentences, &dev).expect("tokens")));
    if let Some((_dir, tok)) = hf_tokenizer() {
        group.bench_function("from_file/101x16", |b| b.iter(|| tok.encode_batch(&sentences, &dev).expect("tokens")));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // No plots: criterion's plotting needs system fonts.
    config = Criterion::default().without_plots();
    targets = tokenizer
}
criterion_main!(benches);
