//! What a checkpoint says about the model: CLIP dimensions from shapes, the visual prompt from key names,
//! the frame count from the shapes of frame-sized parameters.
use std::collections::BTreeSet;
use std::path::Path;

use super::{LoadedWeights, FUSION_PREFIX};
use crate::{ActionClipConfig, ClipConfig, Error, PostNetwork, Result, VisualPrompt};

/// Frames per video assumed when neither a stored config nor a frame-sized parameter tells.
pub const DEFAULT_FRAMES: usize = 8;

const TRANSF_BLOCKS: &str = "fusion_model.transformer.resblocks.";
const TRANSF_CLS_LAYERS: &str = "fusion_model.transformer.transformer_enc.layers.";
/// Key prefixes found only in a Transf_cls head.
const TRANSF_CLS_MARKERS: [&str; 3] = [
    "fusion_model.transformer.cls_token",
    "fusion_model.transformer.pos_embed",
    "fusion_model.transformer.transformer_enc.",
];
/// Keys named in an [`Error::UnknownHead`].
const SHOWN_KEYS: usize = 8;

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Checkpoint { path: p, reason } if p.as_os_str().is_empty() => {
            Error::Checkpoint { path: path.to_path_buf(), reason }
        }
        other => other,
    }
}

impl LoadedWeights {
    fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.keys().any(|k| k.starts_with(prefix))
    }

    /// Number of blocks under `prefix` (`prefix{i}.`), checking that the indices are 0..n.
    fn block_count(&self, prefix: &str) -> Result<usize> {
        let indices: BTreeSet<usize> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next())
            .filter_map(|i| i.parse().ok())
            .collect();
        let n = indices.len();
        if indices.iter().next_back().is_some_and(|&max| max + 1 != n) {
            return Err(Error::Checkpoint {
                path: self.path.clone(),
                reason: format!("the blocks under {prefix} are not numbered 0..{n}: found {indices:?}"),
            });
        }
        Ok(n)
    }

    /// The CLIP towers' dimensions, inferred from the shapes of the canonical tensors (`visual.conv1.weight`,
    /// `visual.positional_embedding`, `token_embedding.weight`, ...).
    pub fn clip_config(&self) -> Result<ClipConfig> {
        ClipConfig::from_shapes(&self.shapes()).map_err(|e| with_path(e, &self.path))
    }

    /// The post-network head: the stored config's when there is one, else the one told by the
    /// `fusion_model.` keys. Those keys tell the heads apart by their modules: `shift.*` (Conv_1D),
    /// `lstm_visual.*` (LSTM), `transformer.resblocks.*` (Transf) and
    /// `transformer.{cls_token, pos_embed, transformer_enc.*}` (Transf_cls); no such key gives
    /// [`PostNetwork::MeanPool`], and layer counts come from the block indices. A Conv_1D head from a
    /// file without a config was trained by the reference's code, so it gets `reference_reshape: true`.
    /// Keys of several heads, or `fusion_model.` keys of none, are an [`Error::UnknownHead`].
    pub fn post_network(&self) -> Result<PostNetwork> {
        match &self.config {
            Some(c) => Ok(c.prompt.post),
            None => self.inferred_post_network(),
        }
    }

    /// The post-network head told by the `fusion_model.` keys alone, from the modules that tell the heads
    /// apart: `shift.*` (Conv_1D), `lstm_visual.*` (LSTM), `transformer.resblocks.*` (Transf) and
    /// `transformer.{cls_token, pos_embed, transformer_enc.*}` (Transf_cls). No key gives
    /// [`PostNetwork::MeanPool`]; layer counts come from the block indices. `frame_position_embeddings`
    /// tells nothing by itself: the reference creates it for every head but meanP. A Conv_1D head from a
    /// file without a config was trained by the reference's code, so it gets `reference_reshape: true`.
    /// Keys of several heads, or `fusion_model.` keys of none, are an [`Error::UnknownHead`].
    pub(crate) fn inferred_post_network(&self) -> Result<PostNetwork> {
        let mut found = Vec::new();
        if self.has_prefix("fusion_model.shift.") {
            found.push(PostNetwork::Conv1d { reference_reshape: self.format.is_reference() });
        }
        if self.has_prefix("fusion_model.lstm_visual.") {
            found.push(PostNetwork::Lstm);
        }
        if self.has_prefix(TRANSF_BLOCKS) {
            found.push(PostNetwork::Transformer { layers: self.block_count(TRANSF_BLOCKS)? });
        }
        if TRANSF_CLS_MARKERS.iter().any(|m| self.has_prefix(m)) {
            let layers = self.block_count(TRANSF_CLS_LAYERS)?;
            if layers == 0 {
                return Err(Error::MissingKey {
                    key: format!("{TRANSF_CLS_LAYERS}0.self_attn.in_proj_weight"),
                    hint: Some("the checkpoint has Transf_cls tokens but no encoder layers".into()),
                });
            }
            found.push(PostNetwork::TransformerCls { layers });
        }
        match found.as_slice() {
            [] if !self.has_prefix(FUSION_PREFIX) => Ok(PostNetwork::MeanPool),
            [head] => Ok(*head),
            heads => Err(Error::UnknownHead {
                path: self.path.clone(),
                keys: self.fusion_keys(),
                reason: if heads.is_empty() {
                    "they hold none of the modules that tell the heads apart (shift, lstm_visual, transformer)".into()
                } else {
                    let names: Vec<&str> = heads.iter().map(|p| p.reference_name()).collect();
                    format!(
                        "they hold the weights of several heads ({}); give the head in the config",
                        names.join(", ")
                    )
                },
            }),
        }
    }

    /// The `fusion_model.` keys, sorted, at most [`SHOWN_KEYS`] of them and a count of the rest.
    fn fusion_keys(&self) -> String {
        let mut keys: Vec<&str> =
            self.tensors.keys().filter(|k| k.starts_with(FUSION_PREFIX)).map(String::as_str).collect();
        keys.sort_unstable();
        let rest = keys.len().saturating_sub(SHOWN_KEYS);
        keys.truncate(SHOWN_KEYS);
        let shown = keys.join(", ");
        if rest > 0 {
            format!("{shown} and {rest} more")
        } else {
            shown
        }
    }

    /// Frames per video: the stored config's, else the one told by the shapes of
    /// `fusion_model.transformer.pos_embed` `[1, T+1, D]` or `visual.time_embedding` `[T, width]`; `None`
    /// when neither tells (the caller picks a default, usually [`DEFAULT_FRAMES`]).
    pub fn frames(&self) -> Option<usize> {
        match &self.config {
            Some(c) => Some(c.frames),
            None => self.inferred_frames(),
        }
    }

    /// Frames per video told by the shapes: `fusion_model.transformer.pos_embed` `[1, T+1, D]` or
    /// `visual.time_embedding` `[T, width]`; `None` when neither is present (the caller picks a default,
    /// usually [`DEFAULT_FRAMES`]).
    pub(crate) fn inferred_frames(&self) -> Option<usize> {
        if let Some(t) = self.tensors.get("fusion_model.transformer.pos_embed") {
            if let [1, n, _] = t.dims() {
                if *n > 1 {
                    return Some(n - 1);
                }
            }
        }
        match self.tensors.get("visual.time_embedding").map(|t| t.dims()) {
            Some([t, _]) if *t > 0 => Some(*t),
            _ => None,
        }
    }

    /// The full model config: the stored one when the checkpoint has one, else [`Self::infer_config`] with
    /// [`DEFAULT_FRAMES`] when the frame count cannot be inferred.
    pub fn action_clip_config(&self) -> Result<ActionClipConfig> {
        match &self.config {
            Some(c) => Ok(c.clone()),
            None => self.infer_config(DEFAULT_FRAMES),
        }
    }

    /// The model config inferred from the tensors alone (ignoring any stored config), with `default_frames`
    /// when no frame-sized parameter tells the frame count. The result is validated.
    pub fn infer_config(&self, default_frames: usize) -> Result<ActionClipConfig> {
        let config = ActionClipConfig {
            clip: self.clip_config()?,
            frames: self.inferred_frames().unwrap_or(default_frames),
            prompt: VisualPrompt {
                joint: self.tensors.contains_key("visual.time_embedding"),
                temporal_shift: self.temporal_shift,
                post: self.inferred_post_network()?,
            },
        };
        config.validate()?;
        Ok(config)
    }
}
