//! Checkpoint readers and writers: one place that maps every naming users hold onto one canonical naming.
//!
//! Public: [`load`] and [`detect_format`] (any supported file, directory or hub id), the result
//! [`LoadedWeights`] (tensors in canonical names, the [`Format`] read, the config stored or inferred, a
//! `VarBuilder` or `VarMap` over the tensors), [`save_safetensors`] with [`CONFIG_METADATA_KEY`],
//! [`DEFAULT_FRAMES`], and with feature `hub` `hub_model`, `hub_model_with`, `hub_model_with_progress`,
//! `hub_model_id`, `DownloadProgress` and `HubOptions`.
//!
//! # Canonical names
//! The model builds from a [`candle_nn::VarBuilder`] over *canonical* names only:
//! - the OpenAI CLIP state-dict names (`visual.conv1.weight`, `visual.class_embedding`,
//!   `visual.transformer.resblocks.{i}.attn.in_proj_weight`, `visual.proj`, `token_embedding.weight`,
//!   `transformer.resblocks.{i}.*`, `ln_final.*`, `text_projection`, `logit_scale`, ...);
//! - `visual.time_embedding` `[T, width]` for the joint (pre-network) prompt;
//! - the post-network head under `fusion_model.` with the reference's module names:
//!   `fusion_model.shift.weight` (Conv_1D), `fusion_model.lstm_visual.*` (LSTM),
//!   `fusion_model.frame_position_embeddings.weight` + `fusion_model.transformer.resblocks.{i}.*` (Transf),
//!   `fusion_model.transformer.{cls_token,pos_embed,transformer_enc.*}` (Transf_cls). MeanPool has no keys.
//!   The reference also writes `fusion_model.frame_position_embeddings.weight` for Conv_1D, LSTM and
//!   Transf_cls, which do not read it; it is kept and saved again, so a round trip gives its layout back.
//!
//! # What can be read ([`load`])
//! | Input | [`Format`] |
//! |---|---|
//! | `.safetensors` written by this crate (config in the `__metadata__`) | [`Format::ActionClipSafetensors`] |
//! | `.safetensors` with OpenAI / open_clip names | [`Format::OpenAiSafetensors`] |
//! | `.safetensors` with Hugging Face `transformers` CLIP names | [`Format::HuggingFaceSafetensors`] |
//! | zip-format PyTorch file (`.pt`, `.pth`, `.bin`): a state dict, or one under `state_dict` / `model` | [`Format::OpenAiPt`] or [`Format::HuggingFacePt`] |
//! | ActionCLIP training checkpoint (`model_state_dict` + `fusion_model_state_dict`) | [`Format::ActionClipCheckpoint`] |
//! | OpenAI's TorchScript archive (the original `ViT-B-16.pt`) | [`Format::TorchScript`] |
//! | a directory holding `model.safetensors` (or `pytorch_model.bin`, ...) and maybe `config.json` | the inner file's format |
//!
//! The file's kind is told by its content, not its extension. While reading, keys are canonicalised:
//! `module.` prefixes (DataParallel) are stripped, temporal-shift names
//! `visual.transformer.resblocks.{i}.net.X` lose their `net.` (and [`LoadedWeights::temporal_shift`] is set),
//! an ActionCLIP checkpoint's `fusion_model_state_dict` keys get `fusion_model.` in front, and Hugging Face
//! names are renamed (q/k/v merged into `in_proj` in q, k, v order; projections transposed). Buffers that are
//! not weights (`position_ids`, `attn_mask`, `input_resolution`, `context_length`, `vocab_size`) are dropped.
//! Dtypes stay as stored (f16 stays f16); [`LoadedWeights::var_builder`] casts on access.
//!
//! # What is written ([`save_safetensors`])
//! Safetensors with canonical names and the [`ActionClipConfig`] as JSON in the
//! `__metadata__` key [`CONFIG_METADATA_KEY`]; reading the file back restores the config. The reference's
//! code can load the CLIP part of such a file as its `model_state_dict`, and the `fusion_model.` keys minus that
//! prefix as its `fusion_model_state_dict`.
//!
//! ```no_run
//! # fn main() -> actionclip::Result<()> {
//! use candle_core::{DType, Device};
//! let weights = actionclip::weights::load("model_best.pt")?;   // any supported format
//! let config = weights.action_clip_config()?;                   // stored config, or inferred from shapes
//! let vb = weights.var_builder(DType::F32, &Device::Cpu);       // canonical names, cast on access
//! # let _ = (config, vb);
//! # Ok(()) }
//! ```
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::error::catch_reader_panic;
use crate::{ActionClipConfig, Error, Result};

mod check;
#[cfg(feature = "hub")]
mod hub;
mod infer;
mod names;
mod pickle_guard;
mod pytorch;
mod st;

pub(crate) use check::{check_shapes, recorded_shapes, shapes_of};
#[cfg(feature = "hub")]
pub use hub::{hub_model, hub_model_with, hub_model_with_progress, DownloadProgress, HubOptions};
pub use infer::DEFAULT_FRAMES;
pub(crate) use st::write_tensors;
pub use st::{save_safetensors, CONFIG_METADATA_KEY};

/// Prefix of the post-network head's keys in canonical names.
pub(crate) const FUSION_PREFIX: &str = "fusion_model.";

/// The kind of file a checkpoint was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// A `.safetensors` file with OpenAI CLIP names (open_clip exports, converted checkpoints, or this crate's
    /// files saved without a config).
    OpenAiSafetensors,
    /// A `.safetensors` file written by this crate: canonical names and the model config in its metadata.
    ActionClipSafetensors,
    /// A `.safetensors` file with Hugging Face `transformers` CLIP names (`vision_model.encoder.layers.*`).
    HuggingFaceSafetensors,
    /// A zip-format PyTorch file holding a state dict with OpenAI names (at the top level or under
    /// `state_dict` / `model`).
    OpenAiPt,
    /// A zip-format PyTorch file (`pytorch_model.bin`) with Hugging Face `transformers` CLIP names.
    HuggingFacePt,
    /// An ActionCLIP training checkpoint (`torch.save` of a dict with `model_state_dict` and
    /// `fusion_model_state_dict`), as written by the reference's `train.py`.
    ActionClipCheckpoint,
    /// A TorchScript archive such as OpenAI's original `ViT-B-16.pt`; its parameters are read from the pickled
    /// module tree.
    TorchScript,
}

impl Format {
    /// Whether the file comes from the PyTorch reference world (its heads were trained with the reference's
    /// code, so a Conv_1D head needs the reference's reshape).
    pub(crate) fn is_reference(&self) -> bool {
        !matches!(self, Format::ActionClipSafetensors)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Format::OpenAiSafetensors => "safetensors (OpenAI CLIP names)",
            Format::ActionClipSafetensors => "safetensors (actionclip, with config)",
            Format::HuggingFaceSafetensors => "safetensors (Hugging Face transformers names)",
            Format::OpenAiPt => "PyTorch state dict (OpenAI CLIP names)",
            Format::HuggingFacePt => "PyTorch state dict (Hugging Face transformers names)",
            Format::ActionClipCheckpoint => "ActionCLIP training checkpoint",
            Format::TorchScript => "TorchScript archive",
        };
        f.write_str(s)
    }
}

/// A checkpoint read into canonical names (see the [module docs](self)), with what could be learnt about it.
///
/// All tensors live on the CPU in the dtype they were stored in.
#[derive(Clone, Debug)]
pub struct LoadedWeights {
    /// Every tensor under its canonical name.
    pub tensors: HashMap<String, Tensor>,
    /// The kind of file that was read.
    pub format: Format,
    /// Whether the model uses the in-network temporal shift: set when `.net.` names were found, or when the
    /// stored config says so.
    pub temporal_shift: bool,
    /// The model config stored with the weights (safetensors metadata or a `config.json` beside them), if any.
    pub config: Option<ActionClipConfig>,
    /// The file the tensors were read from (inside the directory when a directory was given).
    pub path: PathBuf,
    /// Keys of the file that were not kept, with the reason (buffers such as `position_ids`, unsupported dtypes).
    pub dropped: Vec<String>,
}

impl LoadedWeights {
    /// The shape of every tensor, by canonical name.
    pub(crate) fn shapes(&self) -> HashMap<String, Vec<usize>> {
        shapes_of(&self.tensors)
    }

    /// The tensor stored under a canonical name, or [`Error::MissingKey`] with similar keys as a hint.
    pub fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors.get(key).ok_or_else(|| Error::MissingKey {
            key: key.to_string(),
            hint: check::similar_keys_hint(key, self.tensors.keys()),
        })
    }

    /// A [`VarBuilder`] over the canonical tensors. Each tensor is moved to `device` and cast to `dtype` when
    /// the model asks for it (so an f16 file gives exact f32 weights); missing keys and shape mismatches are
    /// reported by candle with the key's name.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), dtype, device)
    }

    /// A new [`VarMap`] holding every floating-point tensor as a trainable variable, cast to `dtype` on
    /// `device` (integer buffers are skipped). A model built with `VarBuilder::from_varmap` over it starts from
    /// these weights; variables it creates that are not in the map get their initialiser.
    pub fn to_var_map(&self, dtype: DType, device: &Device) -> Result<VarMap> {
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            for (name, tensor) in &self.tensors {
                if !tensor.dtype().is_float() {
                    continue;
                }
                let t = tensor.to_device(device)?.to_dtype(dtype)?;
                data.insert(name.clone(), candle_core::Var::from_tensor(&t)?);
            }
        }
        Ok(varmap)
    }

    /// Copies the checkpoint's tensors into the variables of an already built `varmap` (each cast to the
    /// variable's dtype and device), for fine-tuning from pretrained weights. Returns the names of the
    /// variables the checkpoint does not hold (they keep their initial values), sorted. A tensor whose shape
    /// differs from its variable is an [`Error::KeyShape`].
    pub fn copy_into_var_map(&self, varmap: &VarMap) -> Result<Vec<String>> {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut missing = Vec::new();
        for (name, var) in data.iter() {
            match self.tensors.get(name) {
                None => missing.push(name.clone()),
                Some(t) => {
                    if t.dims() != var.dims() {
                        return Err(Error::KeyShape {
                            key: name.clone(),
                            found: t.dims().to_vec(),
                            expected: var.dims().to_vec(),
                        });
                    }
                    var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
                }
            }
        }
        missing.sort();
        Ok(missing)
    }

    /// Writes these weights (and [`LoadedWeights::config`], if any) with [`save_safetensors`].
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        save_safetensors(&self.tensors, self.config.as_ref(), path)
    }
}

/// Reads a checkpoint in any supported format (see the [module docs](self)) into canonical names.
///
/// `path` may be a file or a directory (this crate's checkpoint/run directory, or a Hugging Face snapshot
/// directory). With the `hub` feature, a path that does not exist and looks like a hub model id
/// (`openai/clip-vit-base-patch16`) is fetched with [`hub_model`] (cache first; see there). A `config.json` holding an [`ActionClipConfig`] in the directory (or
/// beside the file) takes precedence over the config in the safetensors metadata; a Hugging Face
/// `config.json` is ignored (dimensions are inferred from the shapes).
pub fn load(path: impl AsRef<Path>) -> Result<LoadedWeights> {
    let path = path.as_ref();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            #[cfg(feature = "hub")]
            if e.kind() == std::io::ErrorKind::NotFound {
                if let Some(id) = hub_model_id(path) {
                    let file = hub::hub_model(id).map_err(|err| match err {
                        Error::Hub { model, reason } => Error::Hub {
                            model,
                            reason: format!("{reason} (and no file or directory {} exists)", path.display()),
                        },
                        other => other,
                    })?;
                    return load(file);
                }
            }
            return Err(Error::io(path, e));
        }
    };
    let file = if meta.is_dir() { weights_file_in_dir(path)? } else { path.to_path_buf() };
    let mut loaded = load_file(&file)?;
    if let Some(dir) = file.parent() {
        if let Some(config) = read_config_json(&dir.join("config.json"))? {
            loaded.config = Some(config);
        }
    }
    if let Some(config) = &loaded.config {
        loaded.temporal_shift |= config.prompt.temporal_shift;
    }
    Ok(loaded)
}

/// `path` as a hub model id (`org/name`) when no file or directory of that name exists and it has the
/// form of one: what [`load`] fetches with [`hub_model`] instead of reading a file.
#[cfg(feature = "hub")]
pub fn hub_model_id(path: &Path) -> Option<&str> {
    if path.exists() {
        return None;
    }
    let s = path.to_str()?;
    let (org, name) = s.split_once('/')?;
    let ok = |p: &str| {
        !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let has_extension = [".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".json"].iter().any(|e| name.ends_with(e));
    (ok(org) && ok(name) && !has_extension).then_some(s)
}

/// Tells the format of a checkpoint file (or of the weights file in a directory) without reading tensor data.
pub fn detect_format(path: impl AsRef<Path>) -> Result<Format> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let file = if meta.is_dir() { weights_file_in_dir(path)? } else { path.to_path_buf() };
    match sniff(&file)? {
        FileKind::Safetensors => st::detect(&file),
        FileKind::Zip => pytorch::detect(&file),
    }
}

/// Weights file names looked for in a directory, in order of preference.
const DIR_WEIGHT_FILES: &[&str] = &[
    "model.safetensors",
    "open_clip_model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "model_best.pt",
    "last_model.pt",
];

fn weights_file_in_dir(dir: &Path) -> Result<PathBuf> {
    for name in DIR_WEIGHT_FILES {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let total = entries.len();
    entries.truncate(20);
    Err(Error::UnknownFormat {
        path: dir.to_path_buf(),
        found: format!(
            "a directory without a weights file (looked for {}); it holds {} entries{}{}",
            DIR_WEIGHT_FILES.join(", "),
            total,
            if total > 0 { ": " } else { "" },
            entries.join(", ") + if total > 20 { ", ..." } else { "" },
        ),
    })
}

/// Reads `config.json` if it exists and is an actionclip config; a JSON file without the actionclip fields
/// (for example a Hugging Face `config.json`) gives `None`.
fn read_config_json(path: &Path) -> Result<Option<ActionClipConfig>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("config.json is not valid JSON: {e}"),
    })?;
    let ours = value.as_object().is_some_and(|o| o.contains_key("clip") && o.contains_key("prompt"));
    if !ours {
        return Ok(None);
    }
    let config: ActionClipConfig = serde_json::from_value(value).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("config.json is not a valid actionclip config: {e}"),
    })?;
    Ok(Some(config))
}

enum FileKind {
    Safetensors,
    Zip,
}

/// Tells the container by the first bytes of the file.
fn sniff(path: &Path) -> Result<FileKind> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(FileKind::Zip);
    }
    if n >= 9 && head[8] == b'{' {
        return Ok(FileKind::Safetensors);
    }
    let found = if head.first() == Some(&0x80) {
        "a raw pickle stream: a legacy (pre-1.6) PyTorch file; re-save it with torch.save(obj, path) from \
         PyTorch >= 1.6 (the zip format) or convert it to safetensors"
            .to_string()
    } else if n == 0 {
        "an empty file".to_string()
    } else {
        format!("neither safetensors nor a zip-format PyTorch file (first bytes {:02x?})", head)
    };
    Err(Error::UnknownFormat { path: path.to_path_buf(), found })
}

/// "N tensors; first keys: a, b, ..." for error messages (sorted, at most 10 keys).
pub(crate) fn describe_keys<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let mut all: Vec<&str> = keys.collect();
    if all.is_empty() {
        return "no tensors".to_string();
    }
    all.sort_unstable();
    let n = all.len();
    let shown = all.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    format!("{n} tensors; first keys: {shown}{}", if n > 10 { ", ..." } else { "" })
}

fn load_file(path: &Path) -> Result<LoadedWeights> {
    let on_panic = |reason| Error::Checkpoint { path: path.to_path_buf(), reason };
    catch_reader_panic(
        || match sniff(path)? {
            FileKind::Safetensors => st::load(path),
            FileKind::Zip => pytorch::load(path),
        },
        on_panic,
    )
}

#[cfg(test)]
mod tests;
