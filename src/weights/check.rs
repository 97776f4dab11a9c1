//! Shape validation with errors a user can act on: the missing key with similar keys that were found, or the
//! key with the shape found and the shape expected.
use std::collections::HashMap;

use candle_core::Tensor;

use super::FUSION_PREFIX;
use crate::{ActionClipConfig, Error, PostNetwork, Result};

/// Feed-forward width of the reference's `Transf_cls` encoder layers (PyTorch's default 2048).
pub(crate) const TRANSF_CLS_FFN: usize = 2048;
/// Rows of the `Transf` head's frame position embedding (an `nn.Embedding(77, D)` in the reference).
pub(crate) const TRANSF_POSITIONS: usize = 77;

/// The shape of every tensor of a map, by name.
pub(crate) fn shapes_of(tensors: &HashMap<String, Tensor>) -> HashMap<String, Vec<usize>> {
    tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect()
}

/// Checks that every `(key, shape)` of `expected` is in `tensors` with that shape. Extra tensors are allowed.
///
/// The first problem, in the order of `expected`, is returned: [`Error::MissingKey`] with a hint listing
/// similar keys that were found, or [`Error::KeyShape`] with the shape found and the shape expected.
pub(crate) fn check_shapes(tensors: &HashMap<String, Tensor>, expected: &[(String, Vec<usize>)]) -> Result<()> {
    for (key, shape) in expected {
        match tensors.get(key) {
            None => return Err(Error::MissingKey { key: key.clone(), hint: similar_keys_hint(key, tensors.keys()) }),
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::KeyShape { key: key.clone(), found: t.dims().to_vec(), expected: shape.clone() })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A hint for a missing key: keys with the same ending, else keys under the longest shared prefix.
pub(crate) fn similar_keys_hint<'a>(key: &str, keys: impl Iterator<Item = &'a String>) -> Option<String> {
    let keys: Vec<&String> = keys.collect();
    let list = |mut v: Vec<&String>| {
        v.sort();
        let n = v.len();
        let shown: Vec<&str> = v.iter().take(5).map(|s| s.as_str()).collect();
        format!("{}{}", shown.join(", "), if n > 5 { format!(" and {} more", n - 5) } else { String::new() })
    };
    if key.starts_with(FUSION_PREFIX) && !keys.iter().any(|k| k.starts_with(FUSION_PREFIX)) {
        return Some("the checkpoint has no post-network head weights (no fusion_model.* keys)".into());
    }
    let parts: Vec<&str> = key.split('.').collect();
    let suffix_len = parts.len().min(2);
    let suffix = parts[parts.len() - suffix_len..].join(".");
    let same_end: Vec<&String> = keys
        .iter()
        .copied()
        .filter(|k| k.as_str() != key && (k.as_str() == suffix || k.ends_with(&format!(".{suffix}"))))
        .collect();
    if !same_end.is_empty() {
        return Some(format!("keys with the same ending: {}", list(same_end)));
    }
    for n in (1..parts.len()).rev() {
        let prefix = format!("{}.", parts[..n].join("."));
        let under: Vec<&String> = keys.iter().copied().filter(|k| k.starts_with(&prefix)).collect();
        if !under.is_empty() {
            return Some(format!("keys under {prefix}: {}", list(under)));
        }
    }
    if keys.is_empty() {
        Some("the checkpoint holds no tensors".into())
    } else {
        None
    }
}

fn push_block(out: &mut Vec<(String, Vec<usize>)>, prefix: &str, w: usize) {
    let entries: [(&str, Vec<usize>); 12] = [
        ("ln_1.weight", vec![w]),
        ("ln_1.bias", vec![w]),
        ("attn.in_proj_weight", vec![3 * w, w]),
        ("attn.in_proj_bias", vec![3 * w]),
        ("attn.out_proj.weight", vec![w, w]),
        ("attn.out_proj.bias", vec![w]),
        ("ln_2.weight", vec![w]),
        ("ln_2.bias", vec![w]),
        ("mlp.c_fc.weight", vec![4 * w, w]),
        ("mlp.c_fc.bias", vec![4 * w]),
        ("mlp.c_proj.weight", vec![w, 4 * w]),
        ("mlp.c_proj.bias", vec![w]),
    ];
    for (name, shape) in entries {
        out.push((format!("{prefix}{name}"), shape));
    }
}

/// Every canonical key a model with `config` needs and its shape (CLIP towers, `visual.time_embedding` when
/// joint, and the post-network head under `fusion_model.`), in a stable order. Pass it to [`check_shapes`]
/// before building a model for clear errors.
pub(crate) fn expected_shapes(config: &ActionClipConfig) -> Vec<(String, Vec<usize>)> {
    let v = &config.clip.vision;
    let t = &config.clip.text;
    let e = config.clip.embed_dim;
    let w = v.width;
    let mut out: Vec<(String, Vec<usize>)> = vec![
        ("visual.conv1.weight".into(), vec![w, 3, v.patch_size, v.patch_size]),
        ("visual.class_embedding".into(), vec![w]),
        ("visual.positional_embedding".into(), vec![v.tokens(), w]),
        ("visual.ln_pre.weight".into(), vec![w]),
        ("visual.ln_pre.bias".into(), vec![w]),
    ];
    for i in 0..v.layers {
        push_block(&mut out, &format!("visual.transformer.resblocks.{i}."), w);
    }
    out.extend([
        ("visual.ln_post.weight".into(), vec![w]),
        ("visual.ln_post.bias".into(), vec![w]),
        ("visual.proj".into(), vec![w, e]),
        ("token_embedding.weight".into(), vec![t.vocab_size, t.width]),
        ("positional_embedding".into(), vec![t.context_length, t.width]),
    ]);
    for i in 0..t.layers {
        push_block(&mut out, &format!("transformer.resblocks.{i}."), t.width);
    }
    out.extend([
        ("ln_final.weight".into(), vec![t.width]),
        ("ln_final.bias".into(), vec![t.width]),
        ("text_projection".into(), vec![t.width, e]),
        ("logit_scale".into(), vec![]),
    ]);
    if config.prompt.joint {
        out.push(("visual.time_embedding".into(), vec![config.frames, w]));
    }
    let d = e;
    let f = FUSION_PREFIX;
    match config.prompt.post {
        PostNetwork::MeanPool => {}
        PostNetwork::Conv1d { .. } => out.push((format!("{f}shift.weight"), vec![d, 1, 3])),
        PostNetwork::Lstm => {
            out.push((format!("{f}lstm_visual.weight_ih_l0"), vec![4 * d, d]));
            out.push((format!("{f}lstm_visual.weight_hh_l0"), vec![4 * d, d]));
            out.push((format!("{f}lstm_visual.bias_ih_l0"), vec![4 * d]));
            out.push((format!("{f}lstm_visual.bias_hh_l0"), vec![4 * d]));
        }
        PostNetwork::Transformer { layers } => {
            out.push((format!("{f}frame_position_embeddings.weight"), vec![TRANSF_POSITIONS, d]));
            for i in 0..layers {
                push_block(&mut out, &format!("{f}transformer.resblocks.{i}."), d);
            }
        }
        PostNetwork::TransformerCls { layers } => {
            out.push((format!("{f}transformer.cls_token"), vec![1, 1, d]));
            out.push((format!("{f}transformer.pos_embed"), vec![1, config.frames + 1, d]));
            for i in 0..layers {
                let p = format!("{f}transformer.transformer_enc.layers.{i}.");
                let entries: [(&str, Vec<usize>); 12] = [
                    ("self_attn.in_proj_weight", vec![3 * d, d]),
                    ("self_attn.in_proj_bias", vec![3 * d]),
                    ("self_attn.out_proj.weight", vec![d, d]),
                    ("self_attn.out_proj.bias", vec![d]),
                    ("linear1.weight", vec![TRANSF_CLS_FFN, d]),
                    ("linear1.bias", vec![TRANSF_CLS_FFN]),
                    ("linear2.weight", vec![d, TRANSF_CLS_FFN]),
                    ("linear2.bias", vec![d]),
                    ("norm1.weight", vec![d]),
                    ("norm1.bias", vec![d]),
                    ("norm2.weight", vec![d]),
                    ("norm2.bias", vec![d]),
                ];
                for (name, shape) in entries {
                    out.push((format!("{p}{name}"), shape));
                }
            }
            out.push((format!("{f}transformer.transformer_enc.norm.weight"), vec![d]));
            out.push((format!("{f}transformer.transformer_enc.norm.bias"), vec![d]));
        }
    }
    out
}
