//! [`VideoEncoder`]: the CLIP image tower plus the visual prompt, frames in, one feature per video out.
use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::{
    clip::VisionTransformer,
    config::ActionClipConfig,
    nn::{params::Params, TowerWeights},
    temporal::TemporalHead,
    Error, Result,
};

/// Token rows (frames x tokens per frame) per image-tower call on the CPU inference path; see
/// [`VideoEncoder::in_video_chunks`].
const CPU_CHUNK_TOKENS: usize = 2048;

/// The video side of ActionCLIP. Image-tower weights live under `visual.`, the temporal head under
/// `fusion_model.`.
#[derive(Clone, Debug)]
pub struct VideoEncoder {
    visual: VisionTransformer,
    head: TemporalHead,
    cfg: ActionClipConfig,
}

impl VideoEncoder {
    /// Builds the encoder for `cfg` from `vb` at the checkpoint root.
    pub fn new(vb: VarBuilder, cfg: &ActionClipConfig) -> Result<Self> {
        cfg.validate()?;
        let clip = &cfg.clip;
        let joint_frames = cfg.prompt.joint.then_some(cfg.frames);
        let visual = VisionTransformer::new(vb.pp("visual"), &clip.vision, clip.embed_dim, joint_frames)?;
        let heads = (clip.text.width / crate::config::HEAD_DIM).max(1);
        let head = TemporalHead::new(vb.pp("fusion_model"), &cfg.prompt.post, clip.embed_dim, heads, cfg.frames)?;
        Ok(Self { visual, head, cfg: cfg.clone() })
    }

    /// The same encoder with the linear weights of its image tower's blocks held as `format` says (the
    /// temporal head keeps its weights).
    pub fn with_tower_weights(&self, format: TowerWeights) -> Result<Self> {
        Ok(Self { visual: self.visual.with_block_weights(format)?, ..self.clone() })
    }

    /// The image tower.
    pub fn visual(&self) -> &VisionTransformer {
        &self.visual
    }

    /// The post-network head.
    pub fn head(&self) -> &TemporalHead {
        &self.head
    }

    /// Checks a frame batch against the model: rank 5, 3 channels, the tower's resolution, a frame count
    /// the prompt can take. Returns (B, T).
    pub fn check_frames(&self, frames: &Tensor) -> Result<(usize, usize)> {
        let size = self.cfg.clip.vision.image_size;
        let expected = || format!("[B, T, 3, {size}, {size}]");
        let (b, t) = match frames.dims() {
            &[b, t, 3, h, w] if h == size && w == size && b > 0 && t > 0 => (b, t),
            dims => return Err(Error::InputShape { what: "frames", expected: expected(), found: dims.to_vec() }),
        };
        if self.cfg.prompt.joint && t != self.cfg.frames {
            return Err(Error::FrameCount {
                part: "joint space-time prompt",
                found: t,
                reason: format!("its time embedding was built for exactly {} frames", self.cfg.frames),
            });
        }
        self.head.check_frames(t)?;
        Ok((b, t))
    }

    /// Per-frame features from the image tower (with the temporal shift when configured); not available
    /// for the joint prompt, which has no per-frame features.
    // [B, T, 3, H, W] -> [B, T, D]
    pub fn frame_features_t(&self, frames: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t) = self.check_frames(frames)?;
        if self.cfg.prompt.joint {
            return Err(Error::InvalidPrompt("the joint space-time prompt has no per-frame features".into()));
        }
        let shift = self.cfg.prompt.temporal_shift.then_some(t);
        let features = self.in_video_chunks(frames, train, |images| self.visual.forward_t(images, shift, train))?;
        Ok(features.reshape((b, t, self.cfg.clip.embed_dim))?)
    }

    /// Runs `encode` on the frames of whole videos at a time and concatenates its outputs along the first
    /// dimension. On the CPU inference path a batch is split into chunks of about [`CPU_CHUNK_TOKENS`]
    /// token rows (at least one video), so that a block's activations stay in the last-level cache: every
    /// video is encoded on its own, so the result is the same, and on a 32 MiB L3 four 8-frame ViT-B/16
    /// videos run 1.2x faster in chunks than in one call. Training and other devices take the batch whole.
    // [B, T, 3, H, W] -> encode([b*T, 3, H, W]) per chunk of b videos, concatenated
    fn in_video_chunks(
        &self,
        frames: &Tensor,
        train: bool,
        encode: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = (frames.dim(0)?, frames.dim(1)?);
        let per_chunk = if train || !frames.device().is_cpu() {
            b
        } else {
            (CPU_CHUNK_TOKENS / (t * self.cfg.clip.vision.tokens())).max(1)
        };
        if per_chunk >= b {
            return encode(&frames.flatten_to(1)?);
        }
        let chunks = (0..b)
            .step_by(per_chunk)
            .map(|start| encode(&frames.narrow(0, start, per_chunk.min(b - start))?.flatten_to(1)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&chunks, 0)?)
    }

    /// Video features; `train` selects the differentiable path.
    // [B, T, 3, H, W] -> [B, D]
    pub fn forward_t(&self, frames: &Tensor, train: bool) -> Result<Tensor> {
        let (_, t) = self.check_frames(frames)?;
        if self.cfg.prompt.joint {
            return self.in_video_chunks(frames, train, |images| self.visual.forward_joint_t(images, t, train));
        }
        let features = self.frame_features_t(frames, train)?;
        self.head.forward_t(&features, train)
    }

    /// Video features (inference path). Features are not normalised.
    // [B, T, 3, H, W] -> [B, D]
    pub fn forward(&self, frames: &Tensor) -> Result<Tensor> {
        self.forward_t(frames, false)
    }
}

impl Params for VideoEncoder {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.visual.visit(f);
        self.head.visit(f);
    }
}
