//! Feeds arbitrary bytes as a PyTorch checkpoint file (a `torch.save` zip, an ActionCLIP training checkpoint,
//! a TorchScript archive, a legacy raw pickle) through `weights::detect_format`, `weights::load` and
//! `ActionClip::load` on the CPU in f32.
//!
//! A finding is a panic, abort (a stack overflow included), hang over 10 s or an allocation over 2 GiB; a
//! typed `Err` naming the file is the correct answer to a broken or hostile file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| actionclip_fuzz::load_checkpoint("checkpoint.pt", data));
