//! Weights that keep the checkpoint names they were read under, so that a model lists its weights by name
//! (for saving and parameter grouping) without spelling any name a second time.
use std::ops::Deref;

use candle_core::{Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::Result;

/// A module whose weights can be listed under their checkpoint names.
pub trait Params {
    /// Calls `f(name, tensor)` for every weight, under the full checkpoint name its constructor read it
    /// under.
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor));
}

/// A value with the full checkpoint name it was read under (`visual.transformer.resblocks.0.ln_1.weight`).
#[derive(Clone, Debug)]
pub(crate) struct Named<T> {
    name: String,
    value: T,
}

impl Named<Tensor> {
    /// Reads `key` of `shape` under `vb`; a variable the builder creates starts as `init`.
    pub(crate) fn read(vb: &VarBuilder, shape: impl Into<Shape>, key: &str, init: Init) -> Result<Self> {
        let prefix = vb.prefix();
        let name = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        Ok(Self { value: vb.get_with_hints(shape, key, init)?, name })
    }
}

impl<T> Named<T> {
    /// The full checkpoint name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Another value under the same name: a converted copy or a view of this weight.
    pub(crate) fn with<U>(&self, value: U) -> Named<U> {
        Named { name: self.name.clone(), value }
    }

    /// The value converted by `f`, under the same name.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Named<U> {
        Named { name: self.name, value: f(self.value) }
    }
}

impl<T> Deref for Named<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl Params for Named<Tensor> {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&self.name, &self.value)
    }
}

impl<P: Params> Params for [P] {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.iter().for_each(|p| p.visit(f))
    }
}

impl<P: Params> Params for Option<P> {
    fn visit(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(p) = self {
            p.visit(f)
        }
    }
}
