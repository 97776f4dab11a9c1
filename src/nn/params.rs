//! Walking a model's weights by checkpoint name, for saving and parameter grouping.
use candle_core::Tensor;

/// A module whose weights can be listed under their checkpoint names.
pub trait Params {
    /// Calls `f(name, tensor)` for every weight, `prefix` being the module's own name with a trailing dot
    /// (or empty at the root).
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor));
}

/// Joins a prefix and a name into a checkpoint key (`"visual."` + `"proj"` -> `"visual.proj"`).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}
