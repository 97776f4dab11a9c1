//! The names most programs need, for one glob import:
//!
//! ```no_run
//! use actionclip::prelude::*;
//!
//! # fn main() -> Result<()> {
//! let (model, _cfg) = ActionClip::load("model_best.pt", &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let tokenizer = Tokenizer::new();
//! let labels: Vec<String> = ["Archery", "Bowling"].iter().map(|l| prompts::humanize(l)).collect();
//! let classifier = ZeroShotClassifier::new(&model, &tokenizer, &labels, &prompts::ACTIONCLIP_TEMPLATES)?;
//! let frames = data::test_clip("v_Archery_g01_c01.avi", 8, 224)?.unsqueeze(0)?; // [1, 8, 3, 224, 224]
//! let top = classifier.classify(&frames, 1)?;
//! # let _ = top;
//! # Ok(()) }
//! ```
//!
//! It holds the model and its outputs ([`ActionClip`], [`ActionClipOutput`], [`ZeroShotClassifier`],
//! [`Tokenizer`]), the configuration ([`ActionClipConfig`], [`ClipConfig`], [`VisualPrompt`],
//! [`PostNetwork`], [`TowerWeights`]), the error type ([`Error`], [`Result`]), the modules [`prompts`],
//! [`loss`] and [`data`], and the data entry points for training ([`VideoDataset`], [`ClipPipeline`],
//! [`Loader`], [`LoaderConfig`]).
pub use crate::data::{self, ClipPipeline, Loader, LoaderConfig, VideoDataset};
pub use crate::{loss, prompts};
pub use crate::{
    ActionClip, ActionClipConfig, ActionClipOutput, ClipConfig, Error, PostNetwork, Result, Tokenizer, TowerWeights,
    VisualPrompt, ZeroShotClassifier,
};
