//! Model configuration: the CLIP towers ([`ClipConfig`]), the temporal visual prompt ([`VisualPrompt`])
//! and the whole model ([`ActionClipConfig`]). All of it is serde-serialisable, so a run directory can
//! carry the exact model it trained.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Width of one attention head in every released CLIP model.
pub(crate) const HEAD_DIM: usize = 64;
/// Token context of the CLIP text tower.
pub(crate) const CONTEXT_LENGTH: usize = 77;
/// Vocabulary size of the OpenAI CLIP BPE.
pub(crate) const VOCAB_SIZE: usize = 49408;
/// Most residual blocks a tower or a temporal head may have: far above any released CLIP (48), and a bound
/// on the work that a config read from a checkpoint makes the constructors do.
pub(crate) const MAX_LAYERS: usize = 1024;

/// The image tower (a ViT in the OpenAI layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Residual stream width.
    pub width: usize,
    /// Number of residual blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Side of the square input image in pixels.
    pub image_size: usize,
}

impl VisionConfig {
    /// Patches per image side.
    pub(crate) fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens per frame: the patches and one class token.
    pub(crate) fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// The text tower (a causal transformer in the OpenAI layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Residual stream width.
    pub width: usize,
    /// Number of residual blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Rows of the token embedding.
    pub vocab_size: usize,
    /// Maximum tokens per text (77 for CLIP).
    pub context_length: usize,
}

/// Both CLIP towers and their shared embedding width.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// The image tower.
    pub vision: VisionConfig,
    /// The text tower.
    pub text: TextConfig,
    /// Width of the joint video/text embedding space.
    pub embed_dim: usize,
}

impl ClipConfig {
    fn preset(width: usize, layers: usize, patch: usize, image: usize, text_width: usize, embed: usize) -> Self {
        Self {
            vision: VisionConfig { width, layers, heads: width / HEAD_DIM, patch_size: patch, image_size: image },
            text: TextConfig {
                width: text_width,
                layers: 12,
                heads: text_width / HEAD_DIM,
                vocab_size: VOCAB_SIZE,
                context_length: CONTEXT_LENGTH,
            },
            embed_dim: embed,
        }
    }

    /// OpenAI CLIP ViT-B/32 (224 px).
    pub fn vit_b32() -> Self {
        Self::preset(768, 12, 32, 224, 512, 512)
    }
    /// OpenAI CLIP ViT-B/16 (224 px).
    pub fn vit_b16() -> Self {
        Self::preset(768, 12, 16, 224, 512, 512)
    }
    /// OpenAI CLIP ViT-L/14 (224 px).
    pub fn vit_l14() -> Self {
        Self::preset(1024, 24, 14, 224, 768, 768)
    }
    /// OpenAI CLIP ViT-L/14@336px.
    pub fn vit_l14_336() -> Self {
        Self::preset(1024, 24, 14, 336, 768, 768)
    }

    /// A tiny CLIP (vision width 64 x 2 layers, patch 8, 32 px; text width 64 x 2 layers; embedding 64)
    /// for demos and tests: a forward takes milliseconds on a CPU.
    pub fn tiny() -> Self {
        Self {
            vision: VisionConfig { width: 64, layers: 2, heads: 1, patch_size: 8, image_size: 32 },
            text: TextConfig { width: 64, layers: 2, heads: 1, vocab_size: VOCAB_SIZE, context_length: CONTEXT_LENGTH },
            embed_dim: 64,
        }
    }

    /// A preset by its usual name: `ViT-B/32`, `ViT-B/16`, `ViT-L/14`, `ViT-L/14@336px`
    /// (case-insensitive; `-`, `/` and `_` are interchangeable).
    pub fn by_name(name: &str) -> Result<Self> {
        let key: String = name.to_lowercase().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '@').collect();
        match key.as_str() {
            "vitb32" => Ok(Self::vit_b32()),
            "vitb16" => Ok(Self::vit_b16()),
            "vitl14" => Ok(Self::vit_l14()),
            "vitl14@336px" | "vitl14336" | "vitl14@336" => Ok(Self::vit_l14_336()),
            _ => Err(Error::Config(format!(
                "unknown CLIP architecture {name:?}; known: ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px"
            ))),
        }
    }

    /// Infers every dimension from the tensor shapes of a state dict in OpenAI names
    /// (`visual.conv1.weight`, `visual.positional_embedding`, `token_embedding.weight`, ...).
    pub(crate) fn from_shapes(shapes: &HashMap<String, Vec<usize>>) -> Result<Self> {
        let get = |key: &str, rank: usize| -> Result<&Vec<usize>> {
            let shape = shapes.get(key).ok_or_else(|| Error::MissingKey {
                key: key.to_string(),
                hint: Some("needed to infer the CLIP dimensions".into()),
            })?;
            if shape.len() != rank {
                return Err(Error::Checkpoint {
                    path: Default::default(),
                    reason: format!("key {key} has shape {shape:?}, expected rank {rank}"),
                });
            }
            Ok(shape)
        };
        let count_blocks = |prefix: &str| {
            shapes.keys().filter(|k| k.starts_with(prefix) && k.ends_with(".attn.in_proj_weight")).count()
        };
        let conv = get("visual.conv1.weight", 4)?;
        let (width, patch) = (conv[0], conv[2]);
        let positions = get("visual.positional_embedding", 2)?[0];
        let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
        if grid * grid + 1 != positions {
            return Err(Error::Checkpoint {
                path: Default::default(),
                reason: format!("visual.positional_embedding has {positions} rows, not a square grid plus one"),
            });
        }
        let embed_dim = get("visual.proj", 2)?[1];
        let token = get("token_embedding.weight", 2)?;
        let context_length = get("positional_embedding", 2)?[0];
        let text_width = token[1];
        let config = Self {
            vision: VisionConfig {
                width,
                layers: count_blocks("visual.transformer.resblocks."),
                heads: (width / HEAD_DIM).max(1),
                patch_size: patch,
                image_size: grid * patch,
            },
            text: TextConfig {
                width: text_width,
                layers: count_blocks("transformer.resblocks."),
                heads: (text_width / HEAD_DIM).max(1),
                vocab_size: token[0],
                context_length,
            },
            embed_dim,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the dimensions are consistent (widths divisible by heads, non-empty towers).
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let problems = [
            (v.layers == 0, "the image tower has no blocks".to_string()),
            (t.layers == 0, "the text tower has no blocks".to_string()),
            (v.layers > MAX_LAYERS, format!("the image tower has {} blocks, more than {MAX_LAYERS}", v.layers)),
            (t.layers > MAX_LAYERS, format!("the text tower has {} blocks, more than {MAX_LAYERS}", t.layers)),
            (
                v.heads == 0 || !v.width.is_multiple_of(v.heads),
                format!("vision width {} is not divisible by {} heads", v.width, v.heads),
            ),
            (
                t.heads == 0 || !t.width.is_multiple_of(t.heads),
                format!("text width {} is not divisible by {} heads", t.width, t.heads),
            ),
            (
                v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size),
                format!("image size {} is not a multiple of patch size {}", v.image_size, v.patch_size),
            ),
            (self.embed_dim == 0, "embed_dim is 0".to_string()),
        ];
        match problems.into_iter().find(|(bad, _)| *bad) {
            Some((_, msg)) => Err(Error::Config(msg)),
            None => Ok(()),
        }
    }
}

/// The post-network visual prompt: how per-frame features become one video feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostNetwork {
    /// Mean over frames (`meanP`).
    MeanPool,
    /// Depthwise temporal convolution (`Conv_1D`), residual, then mean over frames.
    Conv1d {
        /// Reproduce the reference's `view(-1, D, T)` reshape instead of convolving along time; needed for
        /// checkpoints trained by the reference code.
        reference_reshape: bool,
    },
    /// One-layer LSTM (`LSTM`), residual, then mean over frames.
    Lstm,
    /// Temporal transformer with frame position embeddings (`Transf`), residual, then mean over frames.
    Transformer {
        /// Number of residual blocks (6 in ActionCLIP).
        layers: usize,
    },
    /// Transformer encoder with a class token (`Transf_cls`); returns the class token's output.
    TransformerCls {
        /// Number of encoder layers (6 in ActionCLIP).
        layers: usize,
    },
}

impl PostNetwork {
    /// The reference's `sim_header` name of this head.
    pub fn reference_name(&self) -> &'static str {
        match self {
            PostNetwork::MeanPool => "meanP",
            PostNetwork::Conv1d { .. } => "Conv_1D",
            PostNetwork::Lstm => "LSTM",
            PostNetwork::Transformer { .. } => "Transf",
            PostNetwork::TransformerCls { .. } => "Transf_cls",
        }
    }

    /// Parses a reference `sim_header` name (`meanP`, `Conv_1D`, `LSTM`, `Transf`, `Transf_cls`) with the
    /// reference's defaults (6 layers; the reference reshape for `Conv_1D`).
    pub fn from_reference_name(name: &str) -> Result<Self> {
        match name {
            "meanP" => Ok(PostNetwork::MeanPool),
            "Conv_1D" => Ok(PostNetwork::Conv1d { reference_reshape: true }),
            "LSTM" => Ok(PostNetwork::Lstm),
            "Transf" => Ok(PostNetwork::Transformer { layers: 6 }),
            "Transf_cls" => Ok(PostNetwork::TransformerCls { layers: 6 }),
            other => Err(Error::Config(format!(
                "unknown sim_header {other:?}; known: meanP, Conv_1D, LSTM, Transf, Transf_cls"
            ))),
        }
    }
}

/// The visual prompt: pre-network (`joint`), in-network (`temporal_shift`) and post-network (`post`)
/// temporal modelling, in any combination that makes sense (see [`VisualPrompt::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisualPrompt {
    /// Pre-network: all frames' patch tokens (plus a learned time embedding) attend jointly in one sequence.
    pub joint: bool,
    /// In-network: shift 1/4 of the patch-token channels by one frame before every vision block.
    pub temporal_shift: bool,
    /// Post-network: the head that turns frame features into a video feature.
    pub post: PostNetwork,
}

impl Default for VisualPrompt {
    /// ActionCLIP's final choice: the post-network temporal transformer with 6 layers.
    fn default() -> Self {
        Self { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 6 } }
    }
}

impl VisualPrompt {
    /// Rejects combinations that cannot work: a joint space-time tower yields one vector per video, so it
    /// neither shifts frames nor feeds a temporal head (only `MeanPool`, an identity on one vector, fits).
    pub fn validate(&self) -> Result<()> {
        if self.joint && self.temporal_shift {
            return Err(Error::InvalidPrompt(
                "joint space-time tokens and temporal shift cannot be combined: the joint tower has no per-frame tokens to shift".into(),
            ));
        }
        if self.joint && self.post != PostNetwork::MeanPool {
            return Err(Error::InvalidPrompt(format!(
                "joint space-time tokens give one feature per video; post-network head {} needs per-frame features (use MeanPool)",
                self.post.reference_name()
            )));
        }
        match self.post {
            PostNetwork::Transformer { layers: 0 } | PostNetwork::TransformerCls { layers: 0 } => {
                Err(Error::InvalidPrompt("a transformer head needs at least one layer".into()))
            }
            PostNetwork::Transformer { layers } | PostNetwork::TransformerCls { layers } if layers > MAX_LAYERS => {
                Err(Error::InvalidPrompt(format!("a transformer head of {layers} layers has more than {MAX_LAYERS}")))
            }
            _ => Ok(()),
        }
    }
}

/// The whole model: CLIP towers, the number of frames per video and the visual prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionClipConfig {
    /// The CLIP towers.
    pub clip: ClipConfig,
    /// Frames per video (T) the model is built for; joint and TransformerCls need exactly this many.
    pub frames: usize,
    /// The temporal visual prompt.
    pub prompt: VisualPrompt,
}

impl ActionClipConfig {
    /// Checks the CLIP dimensions, the prompt combination and the frame count.
    pub fn validate(&self) -> Result<()> {
        self.clip.validate()?;
        self.prompt.validate()?;
        if self.frames == 0 {
            return Err(Error::Config("frames must be at least 1".into()));
        }
        if matches!(self.prompt.post, PostNetwork::Transformer { .. }) && self.frames > CONTEXT_LENGTH {
            return Err(Error::FrameCount {
                part: "Transformer head",
                found: self.frames,
                reason: format!("its frame position embedding has {CONTEXT_LENGTH} rows"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_by_name() {
        assert_eq!(ClipConfig::by_name("ViT-B/16").unwrap(), ClipConfig::vit_b16());
        assert_eq!(ClipConfig::by_name("vit_l14@336px").unwrap().vision.image_size, 336);
        assert!(matches!(ClipConfig::by_name("RN50"), Err(Error::Config(_))));
    }

    #[test]
    fn invalid_prompt_combinations_are_rejected() {
        let joint_transf =
            VisualPrompt { joint: true, temporal_shift: false, post: PostNetwork::Transformer { layers: 6 } };
        assert!(matches!(joint_transf.validate(), Err(Error::InvalidPrompt(_))));
        let joint_shift = VisualPrompt { joint: true, temporal_shift: true, post: PostNetwork::MeanPool };
        assert!(matches!(joint_shift.validate(), Err(Error::InvalidPrompt(_))));
        let ok = VisualPrompt { joint: false, temporal_shift: true, post: PostNetwork::Lstm };
        assert!(ok.validate().is_ok());
        let deep = VisualPrompt { post: PostNetwork::TransformerCls { layers: MAX_LAYERS + 1 }, ..ok };
        assert!(matches!(deep.validate(), Err(Error::InvalidPrompt(_))));
    }

    #[test]
    fn layer_counts_are_bounded() {
        let mut clip = ClipConfig::tiny();
        clip.vision.layers = MAX_LAYERS;
        assert!(clip.validate().is_ok());
        clip.text.layers = 1 << 40;
        assert!(matches!(clip.validate(), Err(Error::Config(m)) if m.contains("text tower")));
    }
}
