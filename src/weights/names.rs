//! Key canonicalisation: `module.` prefixes, temporal-shift `.net.` names, the ActionCLIP fusion head, and
//! Hugging Face `transformers` CLIP names, all mapped onto OpenAI names (+ `fusion_model.`).
use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use super::FUSION_PREFIX;
use crate::{Error, Result};

/// The result of canonicalising one state dict.
#[derive(Debug, Default)]
pub(crate) struct Canonical {
    /// Tensors under canonical names.
    pub tensors: HashMap<String, Tensor>,
    /// Whether `.net.` temporal-shift names were found.
    pub temporal_shift: bool,
    /// Source keys that were dropped, with the reason.
    pub dropped: Vec<String>,
}

/// Strips any number of leading `module.` (DataParallel / DistributedDataParallel wrappers).
pub(crate) fn strip_module(key: &str) -> &str {
    let mut k = key;
    while let Some(rest) = k.strip_prefix("module.") {
        k = rest;
    }
    k
}

/// `visual.transformer.resblocks.{i}.net.X` -> `visual.transformer.resblocks.{i}.X`.
pub(crate) fn strip_temporal_shift(key: &str) -> Option<String> {
    let rest = key.strip_prefix("visual.transformer.resblocks.")?;
    let (idx, tail) = rest.split_once('.')?;
    if !is_index(idx) {
        return None;
    }
    let tail = tail.strip_prefix("net.")?;
    Some(format!("visual.transformer.resblocks.{idx}.{tail}"))
}

fn is_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Keys that are buffers or Python ints rather than weights.
fn droppable(key: &str) -> bool {
    matches!(key, "input_resolution" | "context_length" | "vocab_size")
        || key.ends_with("position_ids")
        || key.ends_with("attn_mask")
        || key.ends_with("num_batches_tracked")
}

/// Whether a (module-stripped) key uses Hugging Face `transformers` CLIP names.
pub(crate) fn is_hf_key(key: &str) -> bool {
    let k = strip_module(key);
    k.starts_with("vision_model.")
        || k.starts_with("text_model.")
        || k == "visual_projection.weight"
        || k == "text_projection.weight"
}

/// Whether a (module-stripped) key looks like an OpenAI CLIP / canonical name.
pub(crate) fn is_openai_key(key: &str) -> bool {
    let k = strip_module(key);
    ["visual.", "token_embedding.", "transformer.resblocks.", "ln_final.", FUSION_PREFIX]
        .iter()
        .any(|p| k.starts_with(p))
        || matches!(k, "positional_embedding" | "text_projection" | "logit_scale")
}

fn insert(
    out: &mut Canonical,
    origin: &mut HashMap<String, String>,
    key: String,
    source_key: &str,
    tensor: Tensor,
    path: &Path,
) -> Result<()> {
    if let Some(previous) = origin.insert(key.clone(), source_key.to_string()) {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("keys {previous} and {source_key} both map to {key}"),
        });
    }
    out.tensors.insert(key, tensor);
    Ok(())
}

/// Canonicalises a state dict in OpenAI names (possibly `module.`-prefixed, possibly with `.net.` names).
/// With `fusion` set, the keys are a reference `fusion_model_state_dict` and get `fusion_model.` in front.
pub(crate) fn canonicalize_openai(
    entries: Vec<(String, Tensor)>,
    fusion: bool,
    out: &mut Canonical,
    origin: &mut HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    for (source_key, tensor) in entries {
        let k = strip_module(&source_key);
        if droppable(k) {
            out.dropped.push(format!("{source_key} (buffer, not a weight)"));
            continue;
        }
        let key = if fusion {
            if k.starts_with(FUSION_PREFIX) {
                k.to_string()
            } else {
                format!("{FUSION_PREFIX}{k}")
            }
        } else if let Some(unshifted) = strip_temporal_shift(k) {
            out.temporal_shift = true;
            unshifted
        } else {
            k.to_string()
        };
        insert(out, origin, key, &source_key, tensor, path)?;
    }
    Ok(())
}

/// Where a Hugging Face key goes.
#[derive(Debug, PartialEq, Eq)]
enum HfTarget {
    /// Renamed, tensor unchanged.
    Rename(String),
    /// Renamed and transposed (the projections).
    Transpose(String),
    /// One of q (0), k (1), v (2) of a fused `in_proj` tensor.
    Qkv(String, usize),
    /// A buffer that is not a weight.
    Drop,
    /// Not a CLIP name: kept as it is.
    Keep,
}

fn map_hf_key(key: &str) -> HfTarget {
    use HfTarget::*;
    if droppable(key) {
        return Drop;
    }
    match key {
        "visual_projection.weight" => return Transpose("visual.proj".into()),
        "text_projection.weight" => return Transpose("text_projection".into()),
        "logit_scale" => return Rename("logit_scale".into()),
        _ => {}
    }
    if let Some(rest) = key.strip_prefix("vision_model.") {
        let direct = match rest {
            "embeddings.patch_embedding.weight" => Some("visual.conv1.weight".to_string()),
            "embeddings.class_embedding" => Some("visual.class_embedding".to_string()),
            "embeddings.position_embedding.weight" => Some("visual.positional_embedding".to_string()),
            _ => None,
        };
        if let Some(d) = direct {
            return Rename(d);
        }
        for (hf, oa) in [("pre_layrnorm.", "visual.ln_pre."), ("post_layernorm.", "visual.ln_post.")] {
            if let Some(p) = rest.strip_prefix(hf) {
                return Rename(format!("{oa}{p}"));
            }
        }
        return map_hf_layer(rest, "visual.transformer.resblocks.");
    }
    if let Some(rest) = key.strip_prefix("text_model.") {
        match rest {
            "embeddings.token_embedding.weight" => return Rename("token_embedding.weight".into()),
            "embeddings.position_embedding.weight" => return Rename("positional_embedding".into()),
            _ => {}
        }
        if let Some(p) = rest.strip_prefix("final_layer_norm.") {
            return Rename(format!("ln_final.{p}"));
        }
        return map_hf_layer(rest, "transformer.resblocks.");
    }
    Keep
}

fn map_hf_layer(rest: &str, prefix: &str) -> HfTarget {
    use HfTarget::*;
    let Some(rest) = rest.strip_prefix("encoder.layers.") else { return Keep };
    let Some((i, tail)) = rest.split_once('.') else { return Keep };
    if !is_index(i) {
        return Keep;
    }
    let block = format!("{prefix}{i}.");
    for (n, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        if let Some(wb) = tail.strip_prefix(&format!("self_attn.{part}.")) {
            return match wb {
                "weight" => Qkv(format!("{block}attn.in_proj_weight"), n),
                "bias" => Qkv(format!("{block}attn.in_proj_bias"), n),
                _ => Keep,
            };
        }
    }
    for (hf, oa) in [
        ("self_attn.out_proj.", "attn.out_proj."),
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
    ] {
        if let Some(p) = tail.strip_prefix(hf) {
            return Rename(format!("{block}{oa}{p}"));
        }
    }
    Keep
}

/// The Hugging Face key of part `n` (q, k, v) of a fused OpenAI `in_proj` key, for error messages.
fn hf_qkv_name(target: &str, n: usize) -> String {
    let part = ["q_proj", "k_proj", "v_proj"][n.min(2)];
    let wb = if target.ends_with("weight") { "weight" } else { "bias" };
    let (tower, rest) = match target.strip_prefix("visual.transformer.resblocks.") {
        Some(r) => ("vision_model", r),
        None => ("text_model", target.strip_prefix("transformer.resblocks.").unwrap_or(target)),
    };
    let i = rest.split('.').next().unwrap_or("?");
    format!("{tower}.encoder.layers.{i}.self_attn.{part}.{wb}")
}

/// Canonicalises a state dict in Hugging Face `transformers` CLIP names.
pub(crate) fn canonicalize_hf(
    entries: Vec<(String, Tensor)>,
    out: &mut Canonical,
    origin: &mut HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let mut qkv: HashMap<String, [Option<Tensor>; 3]> = HashMap::new();
    for (source_key, tensor) in entries {
        let k = strip_module(&source_key);
        match map_hf_key(k) {
            HfTarget::Drop => out.dropped.push(format!("{source_key} (buffer, not a weight)")),
            HfTarget::Keep => insert(out, origin, k.to_string(), &source_key, tensor, path)?,
            HfTarget::Rename(key) => insert(out, origin, key, &source_key, tensor, path)?,
            HfTarget::Transpose(key) => {
                if tensor.rank() != 2 {
                    return Err(Error::Checkpoint {
                        path: path.to_path_buf(),
                        reason: format!("key {source_key} has shape {:?}, expected a matrix", tensor.dims()),
                    });
                }
                let t = tensor.t()?.contiguous()?;
                insert(out, origin, key, &source_key, t, path)?
            }
            HfTarget::Qkv(key, n) => {
                let slot = qkv.entry(key).or_default();
                if slot[n].is_some() {
                    return Err(Error::Checkpoint {
                        path: path.to_path_buf(),
                        reason: format!("key {source_key} appears twice"),
                    });
                }
                slot[n] = Some(tensor);
            }
        }
    }
    let mut targets: Vec<_> = qkv.into_iter().collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, parts) in targets {
        let mut ts = Vec::with_capacity(3);
        for (n, part) in parts.into_iter().enumerate() {
            match part {
                Some(t) => ts.push(t),
                None => {
                    return Err(Error::MissingKey {
                        key: hf_qkv_name(&key, n),
                        hint: Some(format!("q, k and v are all needed to build {key}")),
                    })
                }
            }
        }
        let shapes: Vec<_> = ts.iter().map(|t| t.dims().to_vec()).collect();
        if shapes.iter().any(|s| s.is_empty() || s.len() != shapes[0].len() || s[1..] != shapes[0][1..])
            || ts.iter().any(|t| t.dtype() != ts[0].dtype())
        {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("q, k, v parts of {key} disagree: shapes {shapes:?}"),
            });
        }
        let fused = Tensor::cat(&ts, 0)?;
        let source = hf_qkv_name(&key, 0);
        insert(out, origin, key, &source, fused, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_and_net_prefixes() {
        assert_eq!(strip_module("module.module.visual.proj"), "visual.proj");
        assert_eq!(
            strip_temporal_shift("visual.transformer.resblocks.11.net.attn.in_proj_weight").as_deref(),
            Some("visual.transformer.resblocks.11.attn.in_proj_weight")
        );
        assert_eq!(strip_temporal_shift("visual.transformer.resblocks.1.ln_1.weight"), None);
        assert_eq!(strip_temporal_shift("transformer.resblocks.1.net.ln_1.weight"), None);
    }

    #[test]
    fn hf_names_map_to_openai() {
        use HfTarget::*;
        let cases = [
            ("vision_model.embeddings.patch_embedding.weight", Rename("visual.conv1.weight".into())),
            ("vision_model.pre_layrnorm.bias", Rename("visual.ln_pre.bias".into())),
            ("vision_model.post_layernorm.weight", Rename("visual.ln_post.weight".into())),
            (
                "vision_model.encoder.layers.3.self_attn.k_proj.bias",
                Qkv("visual.transformer.resblocks.3.attn.in_proj_bias".into(), 1),
            ),
            ("text_model.encoder.layers.0.mlp.fc2.weight", Rename("transformer.resblocks.0.mlp.c_proj.weight".into())),
            ("text_model.final_layer_norm.weight", Rename("ln_final.weight".into())),
            ("text_model.embeddings.position_embedding.weight", Rename("positional_embedding".into())),
            ("text_model.embeddings.position_ids", Drop),
            ("visual_projection.weight", Transpose("visual.proj".into())),
            ("something.else", Keep),
        ];
        for (hf, want) in cases {
            assert_eq!(map_hf_key(hf), want, "{hf}");
        }
        assert_eq!(
            hf_qkv_name("transformer.resblocks.4.attn.in_proj_weight", 2),
            "text_model.encoder.layers.4.self_attn.v_proj.weight"
        );
    }
}
