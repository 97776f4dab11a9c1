//! The record of the names and shapes a model reads (taken from its constructor, so no name is spelled
//! twice), and shape validation against it with errors a user can act on: the missing key with similar keys
//! that were found, or the key with the shape found and the shape expected.
use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder};

use super::FUSION_PREFIX;
use crate::{Error, Result};

/// Every `(name, shape)` that `build` reads from the builder it is given, in the order it reads them.
/// The builder holds no weights (`contains_tensor` is false for every name, so optional weights are not
/// read) and hands out zero-stride views of one zero, so even a full-size model costs almost no memory.
pub(crate) fn recorded_shapes<T>(build: impl FnOnce(VarBuilder) -> Result<T>) -> Result<Vec<(String, Vec<usize>)>> {
    let record = Mutex::new(Vec::new());
    build(VarBuilder::from_backend(Box::new(ShapeRecorder(&record)), DType::F32, Device::Cpu))?;
    Ok(record.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Most elements a recorded weight may have: above any CLIP parameter (the largest, ViT-bigG's token
/// embedding, has 63M), and few enough that a constructor which reshapes the zero-stride view it gets (and so
/// copies it) stays within a few hundred megabytes whatever dimensions a config asks for.
const MAX_RECORDED_ELEMENTS: usize = 1 << 27;

/// The [`SimpleBackend`] of [`recorded_shapes`]: it appends every read to its record.
struct ShapeRecorder<'a>(&'a Mutex<Vec<(String, Vec<usize>)>>);

impl SimpleBackend for ShapeRecorder<'_> {
    fn get(&self, shape: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let elements = shape.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if elements.is_none_or(|n| n > MAX_RECORDED_ELEMENTS) {
            candle_core::bail!(
                "{name} would have shape {:?}, more than {MAX_RECORDED_ELEMENTS} elements: no CLIP weight is that large",
                shape.dims()
            )
        }
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), shape.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("reading {name} needs its shape, which a shape record cannot know")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

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
