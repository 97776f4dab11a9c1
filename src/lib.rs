#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly): mark items that need a feature with it.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod clip;
mod config;
pub mod data;
mod error;
pub mod inference;
mod kernels;
pub mod loss;
pub mod model;
pub(crate) mod nn;
pub mod prelude;
pub mod prompts;
pub mod temporal;
pub mod train;
pub mod video_encoder;
pub mod viz;
pub mod weights;

pub use clip::{tokenizer::Tokenizer, TextEncoder};
pub use config::{ActionClipConfig, ClipConfig, PostNetwork, TextConfig, VisionConfig, VisualPrompt};
pub use error::{Error, Result};
pub use model::{ActionClip, ActionClipOutput, ZeroShotClassifier};
pub use nn::TowerWeights;
pub use video_encoder::VideoEncoder;
