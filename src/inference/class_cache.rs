//! Class embeddings cached on disk ([`ZeroShotClassifier::new_cached`]): a classifier over the same text
//! weights, tokenizer, labels and templates starts without running the text tower.
//!
//! The cache key is a 64-bit FNV-1a hash of the text tower's weights (names, shapes and values, as the
//! tower holds them: int8 and f16 tower weights hash differently from f32) and of the token ids of every
//! label sentence (which covers the tokenizer, the labels and the templates). One file per key,
//! `class-features-<key>.safetensors`, written atomically.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::nn::params::Params;
use crate::prompts::{self, Template};
use crate::weights::write_tensors;
use crate::{ActionClip, Error, Result, Tokenizer, ZeroShotClassifier};

/// FNV-1a over 32-bit words.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn word(&mut self, w: u32) {
        self.0 = (self.0 ^ u64::from(w)).wrapping_mul(0x0100_0000_01b3);
    }

    fn bytes(&mut self, b: &[u8]) {
        for &byte in b {
            self.word(u32::from(byte));
        }
        self.word(u32::MAX);
    }
}

/// The cache key of the class embeddings of `labels` x `templates` under `model`'s text tower.
fn cache_key<S: AsRef<str>>(
    model: &ActionClip,
    tokenizer: &Tokenizer,
    labels: &[S],
    templates: &[Template],
) -> Result<u64> {
    let mut hash = Fnv::new();
    let mut failure = None;
    model.text_encoder().visit(&mut |name, tensor| {
        hash.bytes(name.as_bytes());
        tensor.dims().iter().for_each(|&d| hash.word(d as u32));
        hash.bytes(tensor.dtype().as_str().as_bytes());
        let values = tensor.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>());
        match values {
            Ok(values) => values.iter().for_each(|v| hash.word(v.to_bits())),
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    for sentence in prompts::fill_all(templates, labels) {
        tokenizer.tokenize(&sentence, false)?.into_iter().for_each(|id| hash.word(id));
    }
    Ok(hash.0)
}

impl<'a> ZeroShotClassifier<'a> {
    /// [`ZeroShotClassifier::new`] with its class embeddings cached in `cache_dir` (created if needed):
    /// the embeddings are read from the cache when the text tower's weights, the tokenizer, the labels
    /// and the templates are the ones they were computed with, and computed and written there otherwise.
    /// A cache file that cannot be read is recomputed and replaced; a cache folder that cannot be
    /// written is an [`Error::Io`].
    pub fn new_cached<S: AsRef<str>>(
        model: &'a ActionClip,
        tokenizer: &'a Tokenizer,
        labels: &[S],
        templates: &[Template],
        cache_dir: impl AsRef<Path>,
    ) -> Result<Self> {
        let path = cache_file(cache_dir.as_ref(), cache_key(model, tokenizer, labels, templates)?);
        if let Some(cached) = read_cached(&path) {
            if let Ok(zs) = Self::from_class_features(model, tokenizer, labels, templates, cached) {
                return Ok(zs);
            }
        }
        let zs = Self::new(model, tokenizer, labels, templates)?;
        std::fs::create_dir_all(cache_dir.as_ref()).map_err(|e| Error::io(cache_dir.as_ref(), e))?;
        let features = zs.class_features().to_device(&Device::Cpu)?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_tensors(&[("class_features", &features)], metadata, &path)?;
        Ok(zs)
    }
}

fn cache_file(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("class-features-{key:016x}.safetensors"))
}

/// The cached embeddings, or `None` when there are none or they cannot be read.
fn read_cached(path: &Path) -> Option<Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).ok()?.remove("class_features")
}
