//! Video data: UCF101 (official videos or TSN frame folders) and ActionCLIP list files, the reference's
//! segment sampling and preprocessing, a threaded loader, and a synthetic UCF101-layout dataset.
//!
//! What is public, by job (re-exported here; the submodules are private except [`synthetic`]):
//!
//! | job | items |
//! |---|---|
//! | one clip in one call | [`frame_count`], [`decode_frames`], [`test_clip`], the frame size limit [`MAX_FRAME_PIXELS`] |
//! | class lists | the class count limit [`MAX_CLASSES`] |
//! | datasets | [`VideoDataset`] (UCF101 splits, TSN list files), [`VideoSample`], [`Subset`], [`Storage`] |
//! | clip pipeline | [`ClipPipeline`] (sampling + transform + frame naming), [`ClipTransform`], [`ClipData`] |
//! | sampling | [`Sampling`] (TSN segments), [`SampleMode`], [`sample_rng`] |
//! | transforms | [`TestTransform`], [`TrainTransform`], [`ColorJitter`], [`TestCrops`], [`Filter`] (Pillow-exact resampling), [`CLIP_MEAN`], [`CLIP_STD`] |
//! | frame folders | [`FrameNaming`], [`FrameTemplate`] (`img_{:05d}.jpg` from 1 by default) |
//! | loader | [`Loader`], [`LoaderConfig`], [`Epoch`], [`Batch`], [`LoaderReport`], [`OnFailure`], [`SampleFailure`] |
//! | data-parallel shares | [`Shard`], [`ShardKind`]: one process's part of every epoch |
//! | video files (feature `video`) | [`probe`], [`VideoInfo`], [`count_frames`], [`write_video`], [`EncodeOptions`], [`VideoCodec`] |
//! | live and long inputs (feature `video`) | [`FrameStream`] (any FFmpeg input frame by frame), [`StreamOptions`], [`StreamFrame`], [`StreamInfo`], [`Watchdog`] |
//! | synthetic data | [`synthetic`]: a small generated dataset in the UCF101 layout |
//!
//! Video files need the `video` feature (FFmpeg's libraries); frame folders always work.
//!
//! ```no_run
//! # fn main() -> actionclip::Result<()> {
//! let n = actionclip::data::frame_count("v_Archery_g01_c01.avi")?;
//! let imgs = actionclip::data::decode_frames("v_Archery_g01_c01.avi", &[0, 10, 20])?;
//! let clip = actionclip::data::test_clip("v_Archery_g01_c01.avi", 8, 224)?; // [8, 3, 224, 224] f32
//! # Ok(()) }
//! ```
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

mod frames;
mod gather;
mod live;
mod loader;
mod pipeline;
mod resize;
mod sampling;
mod shard;
mod source;
pub mod synthetic;
mod transforms;
mod ucf101;
mod video;

pub use frames::FrameTemplate;
pub use live::{FrameStream, StreamFrame, StreamInfo, StreamOptions, Watchdog};
pub use loader::{Batch, Epoch, Loader, LoaderConfig, LoaderReport, OnFailure, SampleFailure};
pub use pipeline::{ClipData, ClipPipeline, ClipTransform};
pub use resize::Filter;
pub use sampling::{sample_rng, SampleMode, Sampling};
pub use shard::{Shard, ShardKind};
pub(crate) use source::ClipSource;
pub use source::FrameNaming;
pub use transforms::{ColorJitter, TestCrops, TestTransform, TrainTransform, CLIP_MEAN, CLIP_STD};
pub use ucf101::{Storage, Subset, VideoDataset, VideoSample};
pub use video::{count_frames, probe, write_video, EncodeOptions, VideoCodec, VideoInfo};

use crate::error::{catch_reader_panic, Result};
use frames::FrameFolder;

/// Largest frame the readers decode, in pixels: 8K UHD (7680 x 4320). A video or frame file with larger
/// frames is refused ([`crate::Error::Video`], [`crate::Error::Image`]) from its header, before any
/// pixel is decoded, so that the frames of a sampled clip (held at full size until they are resized)
/// stay within a few hundred megabytes.
pub const MAX_FRAME_PIXELS: u64 = 7680 * 4320;

/// Most classes a class list or a zero-shot label list may hold: 100,000, several times the largest label
/// sets in use (Kinetics-700, ImageNet-21k). A longer list is refused ([`crate::Error::ListFile`],
/// [`crate::Error::Labels`]) when it is read: its class embeddings (16 sentences a class) would take days to
/// compute and gigabytes to hold.
pub const MAX_CLASSES: usize = 100_000;

/// Why a `width` x `height` frame is refused, if it is ([`MAX_FRAME_PIXELS`]).
pub(crate) fn frame_size_problem(width: u32, height: u32) -> Option<String> {
    (u64::from(width) * u64::from(height) > MAX_FRAME_PIXELS)
        .then(|| format!("frames of {width}x{height} pixels exceed the {MAX_FRAME_PIXELS}-pixel limit (8K UHD)"))
}

/// Number of frames in a video file (feature `video`; the container's count, or a counting pass when
/// it has none) or in a frame folder (`img_{:05d}.jpg` files from 1; a gap is an error).
pub fn frame_count(path: impl AsRef<Path>) -> Result<usize> {
    let source = ClipSource::open(path.as_ref(), &FrameNaming::default(), None)?;
    Ok(source.len())
}

/// Reads the 0-based frames `indices` (any order, repeats allowed) of a video file or frame folder
/// as RGB images. Videos are decoded only up to the largest index.
pub fn decode_frames(path: impl AsRef<Path>, indices: &[usize]) -> Result<Vec<RgbImage>> {
    let path = path.as_ref();
    catch_reader_panic(
        || if path.is_dir() { FrameFolder::open(path)?.read(indices) } else { video::decode(path, indices) },
        |reason| source::decode_error(path, reason),
    )
}

/// The reference's single-view test input for a video file or frame folder: `frames` segment
/// centres, short side resized to `size * 256 / 224` (bicubic, as Pillow), centre crop `size`, CLIP
/// normalisation. Returns `[frames, 3, size, size]` f32 on the CPU.
pub fn test_clip(path: impl AsRef<Path>, frames: usize, size: u32) -> Result<Tensor> {
    let pipeline = ClipPipeline::test(frames, size)?;
    let clip = pipeline.load(path.as_ref(), None, &mut sample_rng(0, 0, 0))?;
    clip.to_tensor(DType::F32, &Device::Cpu)
}
