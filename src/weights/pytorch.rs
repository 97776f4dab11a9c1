//! Zip-format PyTorch files: `torch.save` state dicts, ActionCLIP training checkpoints and TorchScript
//! archives. The pickle is parsed with candle's [`candle_core::pickle::Stack`]; tensor data is read from the
//! archive directly (no printing, every error names the key).
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{Device, Tensor};
use zip::ZipArchive;

use super::names::{self, Canonical};
use super::{describe_keys, pickle_guard, Format, LoadedWeights};
use crate::{Error, Result};

/// Sub-dictionaries that may hold the state dict, in order of preference.
const STATE_DICT_KEYS: &[&str] = &["state_dict", "model", "model_state", "module", "net", "params"];

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// How a group of tensors is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    /// OpenAI CLIP names (possibly `module.` / `.net.`).
    OpenAi,
    /// An ActionCLIP `fusion_model_state_dict`: gets `fusion_model.` in front.
    Fusion,
    /// Hugging Face `transformers` names.
    HuggingFace,
}

/// What a file holds, before any tensor data is read.
struct Plan {
    format: Format,
    groups: Vec<(Naming, Vec<TensorInfo>)>,
    dropped: Vec<String>,
}

struct Archive {
    zip: ZipArchive<BufReader<File>>,
    /// `<root>/data`: the folder the tensor storages live in.
    data_dir: PathBuf,
    torchscript: bool,
    root: Object,
}

/// Most bytes reserved for a tensor before its storage is read; a larger one grows as its bytes arrive.
const MAX_PREALLOCATED_BYTES: usize = 64 << 20;

/// Largest `data.pkl` read: the pickle of a checkpoint holds tensor metadata only (a few megabytes).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

fn open(path: &Path) -> Result<Archive> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // PyTorch always writes zip64 end records; zip 9.8's archive-offset detection misreads them as 76 bytes
    // of prepended data ("Invalid Central Directory header"). PyTorch files never have prepended data.
    let config = zip::read::Config { archive_offset: zip::read::ArchiveOffset::Known(0) };
    let mut zip = ZipArchive::with_config(config, BufReader::new(file))
        .map_err(|e| bad(path, format!("not a readable zip-format PyTorch file: {e}")))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok()).map(|n| n.into_owned()).collect();
    let data_pkl = names
        .iter()
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .min_by_key(|n| n.len())
        .cloned()
        .ok_or_else(|| {
            let mut shown: Vec<&str> = names.iter().map(String::as_str).take(10).collect();
            if names.len() > 10 {
                shown.push("...");
            }
            Error::UnknownFormat {
                path: path.to_path_buf(),
                found: format!("a zip archive without a data.pkl (not a PyTorch file); entries: {}", shown.join(", ")),
            }
        })?;
    let root_dir = data_pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let torchscript =
        names.iter().any(|n| *n == format!("{root_dir}constants.pkl") || n.starts_with(&format!("{root_dir}code/")));
    let root = {
        let mut pickle = Vec::new();
        let reader = zip.by_name(&data_pkl).map_err(|e| bad(path, format!("cannot open {data_pkl}: {e}")))?;
        // The entry's declared size is not trusted: read at most one byte past the limit.
        reader
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut pickle)
            .map_err(|e| bad(path, format!("cannot read {data_pkl}: {e}")))?;
        if pickle.len() as u64 > MAX_PICKLE_BYTES {
            return Err(bad(path, format!("{data_pkl} is larger than {MAX_PICKLE_BYTES} bytes: not a checkpoint")));
        }
        pickle_guard::check(&pickle).map_err(|reason| bad(path, format!("refusing {data_pkl}: {reason}")))?;
        let mut stack = Stack::empty();
        let mut reader = pickle.as_slice();
        stack.read_loop(&mut reader).map_err(|e| bad(path, format!("cannot parse the pickle {data_pkl}: {e}")))?;
        stack.finalize().map_err(|e| bad(path, format!("cannot parse the pickle {data_pkl}: {e}")))?
    };
    Ok(Archive { zip, data_dir: PathBuf::from(format!("{root_dir}data")), torchscript, root })
}

/// A short description of a pickled value, for error messages.
fn describe(obj: &Object) -> String {
    match obj {
        Object::Dict(entries) => {
            let tensors = entries.iter().filter(|(_, v)| is_tensor(v)).count();
            format!("dict with {} entries, {tensors} tensors", entries.len())
        }
        Object::Int(_) | Object::Long(_) => "int".into(),
        Object::Float(_) => "float".into(),
        Object::Unicode(_) => "str".into(),
        Object::Bool(_) => "bool".into(),
        Object::None => "None".into(),
        Object::List(v) => format!("list of {}", v.len()),
        Object::Tuple(v) => format!("tuple of {}", v.len()),
        _ if is_tensor(obj) => "tensor".into(),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match class_of(callable) {
            Some(c) => format!("object of class {c}"),
            None => "object".into(),
        },
        _ => "object".into(),
    }
}

fn class_of(obj: &Object) -> Option<String> {
    match obj {
        Object::Class { module_name, class_name } => Some(format!("{module_name}.{class_name}")),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => class_of(callable),
        _ => None,
    }
}

/// Whether a pickled value is a tensor (as `torch.save` and TorchScript write them).
fn is_tensor(obj: &Object) -> bool {
    match obj {
        Object::Reduce { callable, .. } => matches!(
            callable.as_ref(),
            Object::Class { module_name, class_name }
                if (module_name == "torch._utils"
                    && matches!(class_name.as_str(), "_rebuild_tensor_v2" | "_rebuild_parameter"))
                    || (module_name == "torch._tensor" && class_name == "_rebuild_from_type_v2")
        ),
        _ => false,
    }
}

/// Whether a pickled value is a TorchScript module object.
fn is_script_module(obj: &Object) -> bool {
    match obj {
        Object::Build { callable, args } => {
            matches!(args.as_ref(), Object::Dict(_)) && class_of(callable).is_some_and(|c| c.starts_with("__torch__"))
        }
        _ => false,
    }
}

fn key_string(k: &Object) -> String {
    match k {
        Object::Unicode(s) => s.clone(),
        Object::Int(i) => i.to_string(),
        Object::Long(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// Tensor infos of a state dict; non-tensor entries are skipped, unsupported tensors are recorded.
fn state_dict_infos(
    entries: Vec<(Object, Object)>,
    data_dir: &Path,
    prefix: &str,
    dropped: &mut Vec<String>,
) -> Vec<TensorInfo> {
    let mut infos = Vec::new();
    for (k, v) in entries {
        let name = format!("{prefix}{}", key_string(&k));
        if !is_tensor(&v) {
            continue;
        }
        match tensor_info(v, &name, data_dir) {
            Ok(Some(info)) => infos.push(info),
            Ok(None) => {}
            Err(e) => dropped.push(format!("{name} ({e})")),
        }
    }
    infos
}

/// The tensor record `obj` as a [`TensorInfo`] named `name`; `None` when it is not a tensor.
///
/// candle's `into_tensor_info` indexes the rebuild call's argument tuples without checking their length and
/// scales the storage offset unchecked, so a malformed record would panic inside it: such a record is an
/// error here, before candle sees it.
fn tensor_info(obj: Object, name: &str, data_dir: &Path) -> std::result::Result<Option<TensorInfo>, String> {
    if let Some(problem) = malformed_tensor_record(&obj) {
        return Err(problem);
    }
    obj.into_tensor_info(Object::Unicode(name.to_string()), data_dir).map_err(|e| e.to_string())
}

fn is_class(obj: &Object, module: &str, name: &str) -> bool {
    matches!(obj, Object::Class { module_name, class_name } if module_name == module && class_name == name)
}

/// What in a tensor record candle's `into_tensor_info` would index past or overflow on, if anything:
/// `_rebuild_from_type_v2` takes 3 arguments, `_rebuild_tensor_v2` at least 4 with an offset that fits a
/// byte count, and the storage's persistent id is a 5-tuple.
fn malformed_tensor_record(obj: &Object) -> Option<String> {
    let Object::Reduce { callable, args } = obj else { return None };
    let (callable, args) = match (callable.as_ref(), args.as_ref()) {
        (c, Object::Tuple(a)) if is_class(c, "torch._tensor", "_rebuild_from_type_v2") => match a.as_slice() {
            [inner, _, inner_args, ..] => (inner, inner_args),
            _ => return Some(format!("_rebuild_from_type_v2 has {} arguments, expected 3 or more", a.len())),
        },
        (c, Object::Tuple(a)) if is_class(c, "torch._utils", "_rebuild_parameter") => match a.first() {
            Some(Object::Reduce { callable, args }) => (callable.as_ref(), args.as_ref()),
            _ => return None,
        },
        pair => pair,
    };
    let Object::Tuple(args) = args else { return None };
    if !is_class(callable, "torch._utils", "_rebuild_tensor_v2") {
        return None;
    }
    let [storage, offset, _, _, ..] = args.as_slice() else {
        return Some(format!("_rebuild_tensor_v2 has {} arguments, expected 4 or more", args.len()));
    };
    let offset = match offset {
        Object::Int(o) => i64::from(*o),
        Object::Long(o) => *o,
        _ => 0,
    };
    if usize::try_from(offset).map_or(true, |o| o > isize::MAX as usize / 16) {
        return Some(format!("storage offset {offset} is out of range"));
    }
    match storage {
        Object::PersistentLoad(id) => match id.as_ref() {
            Object::Tuple(id) if id.len() < 5 => {
                Some(format!("the storage's persistent id has {} fields, expected 5", id.len()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Walks a TorchScript module tree, naming tensors by their attribute path (`visual.conv1.weight`).
fn walk_module(obj: Object, prefix: &str, data_dir: &Path, infos: &mut Vec<TensorInfo>, dropped: &mut Vec<String>) {
    let Object::Build { args, .. } = obj else { return };
    let Object::Dict(attrs) = *args else { return };
    for (k, v) in attrs {
        let name = format!("{prefix}{}", key_string(&k));
        if is_script_module(&v) {
            walk_module(v, &format!("{name}."), data_dir, infos, dropped);
        } else if is_tensor(&v) {
            match tensor_info(v, &name, data_dir) {
                Ok(Some(info)) => infos.push(info),
                Ok(None) => {}
                Err(e) => dropped.push(format!("{name} ({e})")),
            }
        }
    }
}

fn naming_of(infos: &[TensorInfo]) -> Option<Naming> {
    if infos.iter().any(|i| names::is_hf_key(&i.name)) {
        Some(Naming::HuggingFace)
    } else if infos.iter().any(|i| names::is_openai_key(&i.name)) {
        Some(Naming::OpenAi)
    } else {
        None
    }
}

fn plan(path: &Path, archive: &mut Archive) -> Result<Plan> {
    let root = std::mem::replace(&mut archive.root, Object::None);
    let data_dir = archive.data_dir.clone();
    if archive.torchscript || is_script_module(&root) {
        return plan_torchscript(path, root, &data_dir);
    }
    match root {
        Object::Dict(entries) => plan_dict(path, entries, &data_dir),
        other => Err(Error::UnknownFormat {
            path: path.to_path_buf(),
            found: format!(
                "a PyTorch file holding {} instead of a state dict; save model.state_dict() instead of the model",
                describe(&other)
            ),
        }),
    }
}

/// The parameters of a TorchScript module tree, which must carry OpenAI CLIP names.
fn plan_torchscript(path: &Path, root: Object, data_dir: &Path) -> Result<Plan> {
    if !is_script_module(&root) {
        return Err(Error::UnknownFormat {
            path: path.to_path_buf(),
            found: format!(
                "a TorchScript archive whose data.pkl holds {} rather than a module; load it in PyTorch and \
                 save model.state_dict() with safetensors or torch.save",
                describe(&root)
            ),
        });
    }
    let mut dropped = Vec::new();
    let mut infos = Vec::new();
    walk_module(root, "", data_dir, &mut infos, &mut dropped);
    if naming_of(&infos) != Some(Naming::OpenAi) {
        return Err(Error::UnknownFormat {
            path: path.to_path_buf(),
            found: format!(
                "a TorchScript archive without OpenAI CLIP parameters ({}); load it in PyTorch with \
                 clip.load(..., jit=False) and save model.state_dict()",
                describe_keys(infos.iter().map(|i| i.name.as_str()))
            ),
        });
    }
    Ok(Plan { format: Format::TorchScript, groups: vec![(Naming::OpenAi, infos)], dropped })
}

/// A pickled dict: an ActionCLIP training checkpoint, a plain state dict, or one under a known key.
fn plan_dict(path: &Path, entries: Vec<(Object, Object)>, data_dir: &Path) -> Result<Plan> {
    let listing = entries
        .iter()
        .take(12)
        .map(|(k, v)| format!("{} ({})", key_string(k), describe(v)))
        .collect::<Vec<_>>()
        .join(", ")
        + if entries.len() > 12 { ", ..." } else { "" };
    let unknown = |what: &str| Error::UnknownFormat {
        path: path.to_path_buf(),
        found: format!(
            "{what}; top-level entries: {listing}. Expected a state dict with OpenAI or Hugging Face CLIP names, \
             an ActionCLIP checkpoint (model_state_dict + fusion_model_state_dict), or a dict with one of {}",
            STATE_DICT_KEYS.join(", ")
        ),
    };
    let mut dropped = Vec::new();
    let (top_tensors, mut by_key): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, v)| is_tensor(v));
    let mut take = |key: &str| by_key.iter().position(|(k, _)| key_string(k) == key).map(|i| by_key.swap_remove(i).1);

    if let Some(model) = take("model_state_dict") {
        let Object::Dict(model) = model else { return Err(unknown("model_state_dict is not a dict")) };
        let clip = state_dict_infos(model, data_dir, "", &mut dropped);
        let mut groups = vec![(naming_of(&clip).unwrap_or(Naming::OpenAi), clip)];
        if let Some(fusion) = take("fusion_model_state_dict") {
            let Object::Dict(fusion) = fusion else { return Err(unknown("fusion_model_state_dict is not a dict")) };
            groups.push((Naming::Fusion, state_dict_infos(fusion, data_dir, "", &mut dropped)));
        }
        return Ok(Plan { format: Format::ActionClipCheckpoint, groups, dropped });
    }
    if !top_tensors.is_empty() {
        let infos = state_dict_infos(top_tensors, data_dir, "", &mut dropped);
        return state_dict_plan(infos, dropped)
            .ok_or_else(|| unknown("a state dict with neither OpenAI CLIP nor Hugging Face CLIP names"));
    }
    for key in STATE_DICT_KEYS {
        let holds_tensors = |v: &Object| matches!(v, Object::Dict(sub) if sub.iter().any(|(_, v)| is_tensor(v)));
        if let Some(i) = by_key.iter().position(|(k, v)| key_string(k) == *key && holds_tensors(v)) {
            let Object::Dict(sub) = by_key.swap_remove(i).1 else { unreachable!("checked to be a dict") };
            let infos = state_dict_infos(sub, data_dir, "", &mut dropped);
            return state_dict_plan(infos, dropped).ok_or_else(|| {
                unknown(&format!("the {key} sub-dict has neither OpenAI CLIP nor Hugging Face CLIP names"))
            });
        }
    }
    Err(unknown("no state dict found"))
}

/// A plain state dict's plan, by its naming; `None` when it has neither OpenAI nor Hugging Face names.
fn state_dict_plan(infos: Vec<TensorInfo>, dropped: Vec<String>) -> Option<Plan> {
    let (format, naming) = match naming_of(&infos)? {
        Naming::HuggingFace => (Format::HuggingFacePt, Naming::HuggingFace),
        _ => (Format::OpenAiPt, Naming::OpenAi),
    };
    Some(Plan { format, groups: vec![(naming, infos)], dropped })
}

/// Tells the format of a zip-format PyTorch file from its pickle (no tensor data is read).
pub(crate) fn detect(path: &Path) -> Result<Format> {
    let mut archive = open(path)?;
    Ok(plan(path, &mut archive)?.format)
}

fn read_tensor(path: &Path, zip: &mut ZipArchive<BufReader<File>>, info: &TensorInfo) -> Result<Tensor> {
    let name = &info.name;
    let layout = &info.layout;
    let dims = layout.shape().dims().to_vec();
    let dtype = info.dtype;
    // The shape is the file's say-so: its byte count must not overflow (nor that of its non-zero dimensions,
    // which candle's contiguity checks multiply), and only the bytes actually in the storage entry are
    // allocated (the read below stops at its end).
    dims.iter()
        .try_fold(dtype.size_in_bytes(), |n, &d| n.checked_mul(d.max(1)))
        .ok_or_else(|| bad(path, format!("tensor {name}: shape {dims:?} is too large")))?;
    let n_bytes = dims.iter().product::<usize>() * dtype.size_in_bytes();
    let fortran = layout.is_fortran_contiguous() && dims.len() > 1 && !layout.is_contiguous();
    if !layout.is_contiguous() && !fortran {
        return Err(bad(
            path,
            format!(
                "tensor {name} is stored non-contiguously (strides {:?}); save .contiguous() tensors",
                layout.stride()
            ),
        ));
    }
    let mut reader = zip
        .by_name(&info.path)
        .map_err(|e| bad(path, format!("tensor {name}: storage {} not found: {e}", info.path)))?;
    let start = layout.start_offset() as u64;
    if start > 0 {
        std::io::copy(&mut reader.by_ref().take(start), &mut std::io::sink())
            .map_err(|e| bad(path, format!("tensor {name}: cannot read its storage: {e}")))?;
    }
    let mut buf = Vec::with_capacity(n_bytes.min(MAX_PREALLOCATED_BYTES));
    reader
        .take(n_bytes as u64)
        .read_to_end(&mut buf)
        .map_err(|e| bad(path, format!("tensor {name}: cannot read its storage: {e}")))?;
    if buf.len() != n_bytes {
        return Err(bad(
            path,
            format!("tensor {name}: storage {} holds {} bytes, shape {dims:?} needs {n_bytes}", info.path, buf.len()),
        ));
    }
    if fortran {
        let reversed: Vec<usize> = dims.iter().rev().copied().collect();
        let t = Tensor::from_raw_buffer(&buf, dtype, &reversed, &Device::Cpu)?;
        let perm: Vec<usize> = (0..dims.len()).rev().collect();
        Ok(t.permute(perm)?.contiguous()?)
    } else {
        Ok(Tensor::from_raw_buffer(&buf, dtype, &dims, &Device::Cpu)?)
    }
}

/// Reads a zip-format PyTorch file into canonical names.
pub(crate) fn load(path: &Path) -> Result<LoadedWeights> {
    let mut archive = open(path)?;
    let plan = plan(path, &mut archive)?;
    let mut out = Canonical { dropped: plan.dropped, ..Default::default() };
    let mut origin = HashMap::new();
    for (naming, infos) in plan.groups {
        let mut entries = Vec::with_capacity(infos.len());
        for info in &infos {
            entries.push((info.name.clone(), read_tensor(path, &mut archive.zip, info)?));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        match naming {
            Naming::OpenAi => names::canonicalize_openai(entries, false, &mut out, &mut origin, path)?,
            Naming::Fusion => names::canonicalize_openai(entries, true, &mut out, &mut origin, path)?,
            Naming::HuggingFace => names::canonicalize_hf(entries, &mut out, &mut origin, path)?,
        }
    }
    Ok(LoadedWeights {
        tensors: out.tensors,
        format: plan.format,
        temporal_shift: out.temporal_shift,
        config: None,
        path: path.to_path_buf(),
        dropped: out.dropped,
    })
}
