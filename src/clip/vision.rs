//! The CLIP image tower (ViT, OpenAI layout) with the two visual prompts that live inside it: the joint
//! space-time tokens (pre-network) and the temporal shift before every block (in-network).
use candle_core::{DType, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::{
    config::VisionConfig,
    nn::{
        forward_blocks_at,
        params::{Named, Params},
        LayerNorm, Linear, ResidualAttentionBlock, TowerWeights,
    },
    Error, Result,
};

/// LayerNorm epsilon of every CLIP tower.
pub(crate) const CLIP_LN_EPS: f64 = 1e-5;
/// Fraction of channels moved by the temporal shift in each direction (1/8 forward, 1/8 backward).
pub const SHIFT_FOLD_DIV: usize = 8;

/// The ViT image tower. Weights live under `visual.` in OpenAI checkpoints.
#[derive(Clone, Debug)]
pub struct VisionTransformer {
    cfg: VisionConfig,
    /// `conv1.weight` [W, 3, p, p] flattened to a bias-free linear layer [W, 3*p*p]: patchify is one GEMM.
    patch_embedding: Linear,
    conv1_weight: Named<Tensor>,
    class_embedding: Named<Tensor>,
    positional_embedding: Named<Tensor>,
    ln_pre: LayerNorm,
    blocks: Vec<ResidualAttentionBlock>,
    ln_post: LayerNorm,
    proj: Named<Tensor>,
    time_embedding: Option<Named<Tensor>>,
}

impl VisionTransformer {
    /// Reads the tower under `vb` (`visual`); `joint_frames` adds `time_embedding` [T, W] for the joint
    /// space-time prompt.
    pub fn new(vb: VarBuilder, cfg: &VisionConfig, embed_dim: usize, joint_frames: Option<usize>) -> Result<Self> {
        let (w, p) = (cfg.width, cfg.patch_size);
        let scale = Init::Randn { mean: 0., stdev: (w as f64).powf(-0.5) };
        let conv1_weight = Named::read(&vb, (w, 3, p, p), "conv1.weight", crate::nn::WEIGHT_INIT)?;
        let patch_embedding = Linear::from_named(conv1_weight.with(conv1_weight.reshape((w, 3 * p * p))?), None);
        let blocks = (0..cfg.layers)
            .map(|i| {
                ResidualAttentionBlock::new(vb.pp(format!("transformer.resblocks.{i}")), w, cfg.heads, CLIP_LN_EPS)
            })
            .collect::<Result<Vec<_>>>()?;
        let time_embedding = match joint_frames {
            Some(t) => Some(Named::read(&vb, (t, w), "time_embedding", scale)?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_embedding,
            conv1_weight,
            class_embedding: Named::read(&vb, w, "class_embedding", scale)?,
            positional_embedding: Named::read(&vb, (cfg.tokens(), w), "positional_embedding", scale)?,
            ln_pre: LayerNorm::new(vb.pp("ln_pre"), w, CLIP_LN_EPS)?,
            blocks,
            ln_post: LayerNorm::new(vb.pp("ln_post"), w, CLIP_LN_EPS)?,
            proj: Named::read(&vb, (w, embed_dim), "proj", scale)?,
            time_embedding,
        })
    }

    /// The same tower with the linear weights of its blocks held as `format` says.
    pub fn with_block_weights(&self, format: TowerWeights) -> Result<Self> {
        let blocks = self.blocks.iter().map(|b| b.with_weights(format)).collect::<Result<Vec<_>>>()?;
        Ok(Self { blocks, ..self.clone() })
    }

    /// The tower's configuration.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Patch tokens, class token and positional embedding of every image.
    // [N, 3, H, W] -> [N, 1 + g*g, W]
    fn embed(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let (n, _, _, _) = images.dims4()?;
        let (g, p, w) = (self.cfg.grid(), self.cfg.patch_size, self.cfg.width);
        let dtype = self.conv1_weight.dtype();
        let patches = images
            .to_dtype(dtype)?
            .reshape((n, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * g * g, 3 * p * p))?;
        let tokens = self.patch_embedding.forward_t(&patches, train)?.reshape((n, g * g, w))?;
        let cls = self.class_embedding.reshape((1, 1, w))?.broadcast_as((n, 1, w))?;
        Ok(crate::kernels::bias_add(&Tensor::cat(&[&cls, &tokens], 1)?, &self.positional_embedding)?)
    }

    /// Final LayerNorm of the class token and projection into the joint space.
    // [N, W] -> [N, D]
    fn head(&self, cls: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.ln_post.forward_t(cls, train)?.matmul(&self.proj)?)
    }

    /// Runs the blocks over `x` and returns the class token (position 0) of every sequence; the last
    /// block computes that token alone.
    // [N, L, W] -> [N, W]
    fn class_token(&self, x: &Tensor, shift_frames: Option<usize>, train: bool) -> Result<Tensor> {
        let cls = Tensor::zeros(x.dim(0)?, DType::U32, x.device())?;
        let Some(t) = shift_frames else {
            return forward_blocks_at(&self.blocks, x, &cls, false, train);
        };
        match self.blocks.split_last() {
            Some((last, body)) => {
                let x = body
                    .iter()
                    .try_fold(x.clone(), |x, block| block.forward_t(&temporal_shift(&x, t)?, false, train))?;
                last.forward_at(&temporal_shift(&x, t)?, &cls, false, train)
            }
            None => Ok(x.narrow(1, 0, 1)?.squeeze(1)?),
        }
    }

    /// Encodes every image on its own; with `shift_frames = Some(T)` the N = B*T images are frames of B
    /// videos and the temporal shift runs before every block.
    // [N, 3, H, W] -> [N, D]
    pub fn forward_t(&self, images: &Tensor, shift_frames: Option<usize>, train: bool) -> Result<Tensor> {
        let x = self.ln_pre.forward_t(&self.embed(images, train)?, train)?;
        self.head(&self.class_token(&x, shift_frames, train)?, train)
    }

    /// Joint space-time encoding: the patch tokens of all T frames of a video (each plus its frame's
    /// time embedding) and one class token attend together; one vector per video.
    // [B*T, 3, H, W] -> [B, D]
    pub fn forward_joint_t(&self, images: &Tensor, frames: usize, train: bool) -> Result<Tensor> {
        let time = self.time_embedding.as_ref().ok_or_else(|| {
            Error::InvalidPrompt("this image tower was built without a time embedding (joint = false)".into())
        })?;
        let (n, w) = (images.dim(0)?, self.cfg.width);
        let (b, l) = (n / frames, self.cfg.tokens());
        // [B, T, L, W]
        let x = self.embed(images, train)?.reshape((b, frames, l, w))?;
        let cls = x.narrow(1, 0, 1)?.narrow(2, 0, 1)?.reshape((b, 1, w))?;
        let patches = x.narrow(2, 1, l - 1)?.broadcast_add(&time.reshape((1, frames, 1, w))?.to_dtype(x.dtype())?)?;
        let seq = Tensor::cat(&[&cls, &patches.reshape((b, frames * (l - 1), w))?], 1)?;
        let cls = self.class_token(&self.ln_pre.forward_t(&seq, train)?, None, train)?;
        self.head(&cls, train)
    }
}

/// The in-network temporal shift (TSM) on the residual stream of B*T frames: patch-token channels
/// `[0, C/8)` take frame t+1, `[C/8, C/4)` take frame t-1 (zeros past the ends), the rest and the class
/// token stay.
// [B*T, L, C] -> [B*T, L, C]
pub fn temporal_shift(x: &Tensor, frames: usize) -> Result<Tensor> {
    let (n, l, c) = x.dims3()?;
    let (b, fold) = (n / frames, c / SHIFT_FOLD_DIV);
    let x4 = x.reshape((b, frames, l, c))?;
    let cls = x4.narrow(2, 0, 1)?;
    let patches = x4.narrow(2, 1, l - 1)?;
    let zeros = Tensor::zeros((b, 1, l - 1, fold), x.dtype(), x.device())?;
    let (forward, backward) = if frames > 1 {
        let next = patches.narrow(3, 0, fold)?.narrow(1, 1, frames - 1)?;
        let prev = patches.narrow(3, fold, fold)?.narrow(1, 0, frames - 1)?;
        (Tensor::cat(&[&next, &zeros], 1)?, Tensor::cat(&[&zeros, &prev], 1)?)
    } else {
        (zeros.clone(), zeros)
    };
    let rest = patches.narrow(3, 2 * fold, c - 2 * fold)?;
    let patches = Tensor::cat(&[&forward, &backward, &rest], D::Minus1)?;
    Ok(Tensor::cat(&[&cls, &patches], 2)?.reshape((n, l, c))?)
}

impl Params for VisionTransformer {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.conv1_weight.visit(f);
        self.class_embedding.visit(f);
        self.positional_embedding.visit(f);
        self.ln_pre.visit(f);
        self.blocks.visit(f);
        self.ln_post.visit(f);
        self.proj.visit(f);
        self.time_embedding.visit(f);
    }
}
