//! Feeds arbitrary bytes as a video file through FFmpeg (feature `video`): `data::probe`, `data::frame_count`
//! and `data::decode_frames` of the first three frames.
//!
//! A finding is a panic, abort, hang over 10 s or an allocation over 2 GiB; a typed `Err` (not a video, a
//! damaged stream, an oversized frame) is the correct answer.
#![no_main]

use actionclip::data;
use actionclip_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = scratch_file("clip", bytes);
    let _ = data::probe(&path);
    let _ = data::frame_count(&path);
    let _ = data::decode_frames(&path, &[0, 1, 2]);
});
