//! What the inference examples share: the model a command line asks for (a checkpoint, a hub id, or a
//! real-size model with random weights for timing) and the label list. Each example uses a part of it.
#![allow(dead_code)]
use actionclip::{inference, ActionClip, ActionClipConfig, ClipConfig, PostNetwork, TowerWeights, VisualPrompt};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

/// A real-size model with random weights (`vit-b32` or `vit-b16`, 8 frames, 6-layer temporal
/// transformer): the speed of a real checkpoint, meaningless predictions.
pub fn random_model(name: &str, device: &Device) -> Result<(ActionClip, ActionClipConfig)> {
    let clip = if name == "vit-b16" { ClipConfig::vit_b16() } else { ClipConfig::vit_b32() };
    let cfg = ActionClipConfig {
        clip,
        frames: 8,
        prompt: VisualPrompt { joint: false, temporal_shift: false, post: PostNetwork::Transformer { layers: 6 } },
    };
    let model = ActionClip::new(VarBuilder::from_varmap(&VarMap::new(), DType::F32, device), &cfg)?;
    Ok((model, cfg))
}

/// The model of `--weights` (any checkpoint format or a hub id) or `--random-weights`, with its tower
/// weights laid out as `--tower-weights` asks.
pub fn load_model(
    weights: Option<&str>,
    random_weights: Option<&str>,
    tower_weights: TowerWeights,
    device: &Device,
) -> Result<(ActionClip, ActionClipConfig)> {
    let (model, cfg) = match (weights, random_weights) {
        (_, Some(name)) => {
            eprintln!("{name} with random weights (timing only: predictions are meaningless)");
            random_model(name, device)?
        }
        (Some(w), None) => ActionClip::load(w, device, DType::F32)?,
        (None, None) => anyhow::bail!("--weights PATH|HUB_ID is required (or --random-weights vit-b32|vit-b16)"),
    };
    let model = model.with_tower_weights(tower_weights).context("laying out the tower weights")?;
    Ok((model, cfg))
}

/// The labels of `--labels` (`ucf101`, `hmdb51`, a file or a comma list), humanized unless `raw`;
/// repeated labels are reported on stderr and used once.
pub fn labels(spec: &str, raw: bool) -> Result<Vec<String>> {
    let list = inference::parse_labels(spec, !raw)?;
    if !list.repeated.is_empty() {
        eprintln!("warning: repeated labels are used once: {}", list.repeated.join(", "));
    }
    Ok(list.labels)
}

/// Where the examples cache class embeddings: `$XDG_CACHE_HOME/actionclip/class-features`, or
/// `~/.cache/actionclip/class-features`.
pub fn class_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("actionclip").join("class-features"))
}

/// The zero-shot classifier over `labels` in the 16 ActionCLIP templates, its class embeddings read
/// from the cache when they were computed before with the same weights (unless `no_cache`).
pub fn classifier<'a>(
    model: &'a ActionClip,
    tokenizer: &'a actionclip::Tokenizer,
    labels: &[String],
    no_cache: bool,
) -> Result<actionclip::ZeroShotClassifier<'a>> {
    let templates = &actionclip::prompts::ACTIONCLIP_TEMPLATES;
    Ok(match class_cache_dir().filter(|_| !no_cache) {
        Some(dir) => actionclip::ZeroShotClassifier::new_cached(model, tokenizer, labels, templates, dir)?,
        None => actionclip::ZeroShotClassifier::new(model, tokenizer, labels, templates)?,
    })
}
