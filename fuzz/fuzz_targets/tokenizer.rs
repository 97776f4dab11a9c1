//! Feeds arbitrary bytes to the embedded CLIP tokenizer: the bytes as text (converted lossily when they are not
//! UTF-8) through `encode`, `encode_batch` and `encode_batch_truncated`, then `decode` of the ids that came out
//! and of ids read from the bytes themselves (in and a little past the vocabulary).
//!
//! A finding is a panic, abort, hang or runaway allocation; an `Err` (text too long for the context, an
//! unknown id) is a correct answer.
#![no_main]

use std::sync::LazyLock;

use actionclip::Tokenizer;
use candle_core::Device;
use libfuzzer_sys::fuzz_target;

static TOKENIZER: LazyLock<Tokenizer> = LazyLock::new(Tokenizer::new);

fuzz_target!(|data: &[u8]| {
    let tokenizer = &*TOKENIZER;
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = tokenizer.encode(&text) {
        let _ = tokenizer.decode(&ids);
    }
    let _ = tokenizer.encode_batch(&[text.as_ref(), "a video of archery"], &Device::Cpu);
    let _ = tokenizer.encode_batch_truncated(&[text.as_ref()], &Device::Cpu);
    let span = tokenizer.vocab_size() as u32 + 16;
    let ids: Vec<u32> = data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % span).collect();
    let _ = tokenizer.decode(&ids);
});
