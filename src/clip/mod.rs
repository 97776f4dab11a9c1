//! The CLIP towers in the OpenAI layout and the CLIP tokenizer.
mod clean;
pub mod text;
pub(crate) mod tokenizer;
pub mod vision;

pub use text::{TextEncoder, TextTransformer};
pub use vision::{temporal_shift, VisionTransformer};
