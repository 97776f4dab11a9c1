//! Feeds arbitrary bytes as a safetensors file (this crate's, with the model config as JSON in
//! `__metadata__`, or with OpenAI / Hugging Face names) through `weights::detect_format`, `weights::load` and
//! `ActionClip::load` on the CPU in f32 (config from the metadata or inferred, shape check, model build).
//!
//! A finding is a panic, abort, hang over 10 s or an allocation over 2 GiB; a typed `Err` is the correct
//! answer to a broken file or to a config that does not match the tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| actionclip_fuzz::load_checkpoint("model.safetensors", data));
