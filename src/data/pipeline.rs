//! From a clip on disk to model input: open, sample frame indices, read only those frames, transform,
//! normalise. One [`ClipPipeline`] serves both [`crate::data::test_clip`] and the loader's workers.
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use super::sampling::{SampleMode, Sampling};
use super::source::{ClipSource, FrameNaming};
use super::transforms::{TestTransform, TrainTransform};
use crate::error::{Error, Result};

/// The spatial transform of a pipeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ClipTransform {
    /// Training augmentation (random crop, flip, colour).
    Train(TrainTransform),
    /// Deterministic test transform (resize + centre or three crops).
    Test(TestTransform),
}

impl ClipTransform {
    fn output_size(&self) -> u32 {
        match self {
            ClipTransform::Train(t) => t.input_size,
            ClipTransform::Test(t) => t.crop_size,
        }
    }

    fn crops(&self) -> usize {
        match self {
            ClipTransform::Train(_) => 1,
            ClipTransform::Test(t) => t.num_crops(),
        }
    }
}

/// Sampling + transform + frame naming: everything needed to turn a path into a clip tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipPipeline {
    /// Training (random positions) or test (segment centres) sampling.
    pub mode: SampleMode,
    /// Segment layout: T segments of `seg_length` frames.
    pub sampling: Sampling,
    /// Temporal views per clip in test mode (1: the reference's single view).
    pub temporal_views: usize,
    /// The spatial transform.
    pub transform: ClipTransform,
    /// How frame folders are named.
    pub naming: FrameNaming,
}

/// A loaded clip: values and their shape, `[T, 3, H, W]` for one view or `[V, T, 3, H, W]` for
/// `V = temporal views x crops` views (view-major: all crops of temporal view 0 first).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipData {
    /// Normalised values, row-major in `shape`.
    pub data: Vec<f32>,
    /// The shape of `data`.
    pub shape: Vec<usize>,
    /// The 0-based frame indices that were read (concatenated over temporal views).
    pub indices: Vec<usize>,
}

impl ClipData {
    /// The clip as a tensor of `dtype` on `device`.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.data.clone(), self.shape.as_slice(), device)?.to_dtype(dtype)?)
    }
}

impl ClipPipeline {
    /// The reference's training pipeline: `frames` segments, random positions, full augmentation.
    pub fn train(frames: usize, input_size: u32) -> Result<Self> {
        Ok(Self {
            mode: SampleMode::Train,
            sampling: Sampling::new(frames)?,
            temporal_views: 1,
            transform: ClipTransform::Train(TrainTransform::new(input_size)),
            naming: FrameNaming::default(),
        })
    }

    /// The reference's test pipeline: segment centres, short side to `input_size*256/224` bicubic,
    /// centre crop `input_size`.
    pub fn test(frames: usize, input_size: u32) -> Result<Self> {
        Ok(Self {
            mode: SampleMode::Test,
            sampling: Sampling::new(frames)?,
            temporal_views: 1,
            transform: ClipTransform::Test(TestTransform::new(input_size)),
            naming: FrameNaming::default(),
        })
    }

    /// Multi-view test: `clips` temporal views x `crops` (1 centre or 3) spatial views per video.
    pub fn multi_view(frames: usize, input_size: u32, clips: usize, three_crops: bool) -> Result<Self> {
        let transform =
            if three_crops { TestTransform::three_crop(input_size) } else { TestTransform::new(input_size) };
        Ok(Self {
            mode: SampleMode::Test,
            sampling: Sampling::new(frames)?,
            temporal_views: clips.max(1),
            transform: ClipTransform::Test(transform),
            naming: FrameNaming::default(),
        })
    }

    /// Views per clip: temporal views x crops (1 for the single-view pipelines).
    pub fn views(&self) -> usize {
        match self.mode {
            SampleMode::Train => 1,
            SampleMode::Test => self.temporal_views.max(1) * self.transform.crops(),
        }
    }

    /// Shape of one loaded clip: `[T, 3, S, S]`, or `[V, T, 3, S, S]` with several views.
    pub fn clip_shape(&self) -> Vec<usize> {
        let s = self.transform.output_size() as usize;
        let t = self.sampling.total_length();
        match self.views() {
            1 => vec![t, 3, s, s],
            v => vec![v, t, 3, s, s],
        }
    }

    /// Values in one loaded clip (the product of [`ClipPipeline::clip_shape`]).
    pub(crate) fn clip_len(&self) -> usize {
        self.clip_shape().iter().product()
    }

    /// Loads the clip at `path` (video file or frame folder). `num_frames` skips counting when known;
    /// `rng` drives training sampling and augmentation (unused in test mode).
    pub fn load<R: Rng + ?Sized>(&self, path: &Path, num_frames: Option<usize>, rng: &mut R) -> Result<ClipData> {
        let mut data = vec![0f32; self.clip_len()];
        let indices = self.load_into(path, num_frames, rng, &mut data)?;
        Ok(ClipData { data, shape: self.clip_shape(), indices })
    }

    /// Like [`ClipPipeline::load`], writing the values into `out` (length [`ClipPipeline::clip_len`]);
    /// returns the frame indices that were read. On error `out` may be partly written.
    pub(crate) fn load_into<R: Rng + ?Sized>(
        &self,
        path: &Path,
        num_frames: Option<usize>,
        rng: &mut R,
        out: &mut [f32],
    ) -> Result<Vec<usize>> {
        if out.len() != self.clip_len() {
            return Err(Error::Config(format!(
                "clip buffer holds {} values, the pipeline makes {}",
                out.len(),
                self.clip_len()
            )));
        }
        let source = ClipSource::open(path, &self.naming, num_frames)?;
        let n = source.len();
        let views: Vec<Vec<usize>> = match self.mode {
            SampleMode::Train => vec![self.sampling.train_indices(n, rng)],
            SampleMode::Test => self.sampling.test_views(n, self.temporal_views),
        };
        let all: Vec<usize> = views.concat();
        let frames = source.read(&all)?;
        let t = self.sampling.total_length();
        let per_view = out.len() / views.len().max(1);
        for (v, (chunk, dst)) in frames.chunks(t).zip(out.chunks_mut(per_view)).enumerate() {
            if chunk.len() != t {
                return Err(Error::Video {
                    path: path.to_path_buf(),
                    reason: format!("view {v}: {} frames read, {t} expected", chunk.len()),
                });
            }
            match &self.transform {
                ClipTransform::Train(tr) => tr.apply_into(chunk, rng, dst)?,
                ClipTransform::Test(tr) => tr.apply_into(chunk, dst)?,
            }
        }
        Ok(all)
    }
}
