//! Safetensors: reading (OpenAI, Hugging Face or our names; the config from `__metadata__`) and writing.
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype as StDtype, SafeTensors, View};

use super::names::{self, Canonical};
use super::{describe_keys, Format, LoadedWeights};
use crate::{ActionClipConfig, Error, Result};

/// The safetensors `__metadata__` key under which [`save_safetensors`] stores the model config as JSON.
pub const CONFIG_METADATA_KEY: &str = "actionclip_config";

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// Which naming a list of keys uses; `None` when neither.
fn naming(path: &Path, keys: &[String]) -> Result<bool> {
    if keys.iter().any(|k| names::is_hf_key(k)) {
        Ok(true)
    } else if keys.iter().any(|k| names::is_openai_key(k)) {
        Ok(false)
    } else {
        Err(Error::UnknownFormat {
            path: path.to_path_buf(),
            found: format!(
                "a safetensors file with neither OpenAI CLIP nor Hugging Face CLIP names: {}",
                describe_keys(keys.iter().map(String::as_str))
            ),
        })
    }
}

/// Tells the format from the header alone.
pub(crate) fn detect(path: &Path) -> Result<Format> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad(path, format!("safetensors header of {n} bytes is implausibly large")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(path, format!("invalid safetensors header: {e}")))?;
    let obj = value.as_object().ok_or_else(|| bad(path, "safetensors header is not a JSON object"))?;
    let keys: Vec<String> = obj.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let has_config =
        obj.get("__metadata__").and_then(|m| m.as_object()).is_some_and(|m| m.contains_key(CONFIG_METADATA_KEY));
    Ok(match (naming(path, &keys)?, has_config) {
        (true, _) => Format::HuggingFaceSafetensors,
        (false, true) => Format::ActionClipSafetensors,
        (false, false) => Format::OpenAiSafetensors,
    })
}

/// Reads a safetensors file into canonical names.
pub(crate) fn load(path: &Path) -> Result<LoadedWeights> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&data).map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let (_, metadata) =
        SafeTensors::read_metadata(&data).map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let config =
        match metadata.metadata().as_ref().and_then(|m| m.get(CONFIG_METADATA_KEY)) {
            None => None,
            Some(json) => Some(serde_json::from_str::<ActionClipConfig>(json).map_err(|e| {
                bad(path, format!("metadata {CONFIG_METADATA_KEY} is not a valid actionclip config: {e}"))
            })?),
        };
    let mut dropped = Vec::new();
    let mut entries = Vec::new();
    for (name, view) in st.tensors() {
        if DType::try_from(view.dtype()).is_err() {
            dropped.push(format!("{name} (unsupported dtype {:?})", view.dtype()));
            continue;
        }
        let tensor = view.load(&Device::Cpu).map_err(|e| bad(path, format!("cannot read tensor {name}: {e}")))?;
        entries.push((name, tensor));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    let hf = naming(path, &keys)?;
    let mut out = Canonical { dropped, ..Default::default() };
    let mut origin = HashMap::new();
    if hf {
        names::canonicalize_hf(entries, &mut out, &mut origin, path)?;
    } else {
        names::canonicalize_openai(entries, false, &mut out, &mut origin, path)?;
    }
    let format = match (hf, config.is_some()) {
        (true, _) => Format::HuggingFaceSafetensors,
        (false, true) => Format::ActionClipSafetensors,
        (false, false) => Format::OpenAiSafetensors,
    };
    Ok(LoadedWeights {
        tensors: out.tensors,
        format,
        temporal_shift: out.temporal_shift,
        config,
        path: path.to_path_buf(),
        dropped: out.dropped,
    })
}

/// One tensor's bytes, ready for serialisation.
struct Raw {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn le_bytes<T: candle_core::WithDType, const N: usize>(t: &Tensor, f: impl Fn(T) -> [u8; N]) -> Result<Vec<u8>> {
    Ok(t.to_vec1::<T>()?.into_iter().flat_map(f).collect())
}

fn to_raw(key: &str, tensor: &Tensor) -> Result<Raw> {
    let flat = tensor.flatten_all()?.to_device(&Device::Cpu)?;
    let (dtype, data) = match tensor.dtype() {
        DType::F16 => (StDtype::F16, le_bytes::<half::f16, 2>(&flat, |x| x.to_le_bytes())?),
        DType::BF16 => (StDtype::BF16, le_bytes::<half::bf16, 2>(&flat, |x| x.to_le_bytes())?),
        DType::F32 => (StDtype::F32, le_bytes::<f32, 4>(&flat, |x| x.to_le_bytes())?),
        DType::F64 => (StDtype::F64, le_bytes::<f64, 8>(&flat, |x| x.to_le_bytes())?),
        DType::U8 => (StDtype::U8, flat.to_vec1::<u8>()?),
        DType::U32 => (StDtype::U32, le_bytes::<u32, 4>(&flat, |x| x.to_le_bytes())?),
        DType::I16 => (StDtype::I16, le_bytes::<i16, 2>(&flat, |x| x.to_le_bytes())?),
        DType::I32 => (StDtype::I32, le_bytes::<i32, 4>(&flat, |x| x.to_le_bytes())?),
        DType::I64 => (StDtype::I64, le_bytes::<i64, 8>(&flat, |x| x.to_le_bytes())?),
        other => {
            return Err(Error::Checkpoint {
                path: PathBuf::new(),
                reason: format!("tensor {key} has dtype {other:?}, which cannot be saved"),
            })
        }
    };
    Ok(Raw { dtype, shape: tensor.dims().to_vec(), data })
}

/// Writes `tensors` (canonical names expected: OpenAI CLIP + `visual.time_embedding` + `fusion_model.` head)
/// to a safetensors file, with `config` as JSON in the metadata key [`CONFIG_METADATA_KEY`] (and
/// `format: pt`, as `transformers` expects). Tensors keep their dtype and values bit for bit; they may live on
/// any device. The file is written to a temporary name in the same directory and renamed, so a reader never
/// sees a partial file.
pub fn save_safetensors(
    tensors: &HashMap<String, Tensor>,
    config: Option<&ActionClipConfig>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(config) = config {
        let json = serde_json::to_string(config).map_err(|e| bad(path, format!("cannot serialise the config: {e}")))?;
        metadata.insert(CONFIG_METADATA_KEY.to_string(), json);
    }
    let tensors: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    write_tensors(&tensors, metadata, path)
}

/// Writes `tensors` with `metadata` to `path` through a temporary file in the same folder and a rename,
/// so a reader never sees a partial file.
pub(crate) fn write_tensors(tensors: &[(&str, &Tensor)], metadata: HashMap<String, String>, path: &Path) -> Result<()> {
    let raws = tensors
        .iter()
        .map(|(key, tensor)| Ok((key.to_string(), to_raw(key, tensor).map_err(|e| with_path(e, path))?)))
        .collect::<Result<Vec<_>>>()?;
    let file_name =
        path.file_name().ok_or_else(|| bad(path, "the output path has no file name"))?.to_string_lossy().into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let views = raws.iter().map(|(k, r)| (k.as_str(), r));
    if let Err(e) = safetensors::serialize_to_file(views, Some(metadata), &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(path, io),
            other => bad(path, format!("cannot write safetensors: {other}")),
        });
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Checkpoint { path: p, reason } if p.as_os_str().is_empty() => {
            Error::Checkpoint { path: path.to_path_buf(), reason }
        }
        other => other,
    }
}
