//! Fine-tuning ActionCLIP: AdamW over the reference's parameter groups ([`optimizer`]), per-iteration
//! schedules ([`schedule`]), f32 master weights with optional half-precision compute ([`vars`]), the training
//! loop with evaluation, atomic checkpoints and exact resume ([`trainer`]), metrics and plots.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use actionclip::data::{ClipPipeline, Loader, LoaderConfig, Storage, Subset, VideoDataset};
//! use actionclip::train::{Silent, StartFrom, TrainConfig, TrainData, Trainer};
//! use candle_core::Device;
//!
//! let device = Device::Cpu;
//! let weights = actionclip::weights::load("ViT-B-16.safetensors")?;      // CLIP to start from
//! let mut model_cfg = weights.action_clip_config()?;
//! model_cfg.frames = 8;
//! model_cfg.prompt.post = actionclip::PostNetwork::Transformer { layers: 6 };
//! let train = VideoDataset::ucf101("UCF-101", 1, Subset::Train, Storage::Videos)?;
//! let test = VideoDataset::ucf101("UCF-101", 1, Subset::Test, Storage::Videos)?;
//! let data = TrainData {
//!     train: Loader::new(train, ClipPipeline::train(8, 224)?, LoaderConfig { batch_size: 32, ..Default::default() })?,
//!     test: Some(Loader::new(test, ClipPipeline::test(8, 224)?, LoaderConfig { batch_size: 32, shuffle: false, ..Default::default() })?),
//!     multi_view: None,
//! };
//! let mut trainer = Trainer::new(&model_cfg, StartFrom::Weights(Box::new(weights)), TrainConfig::default(), &device)?
//!     .with_run_dir("runs/ucf101");
//! let summary = trainer.fit(&data, &mut Silent)?;
//! println!("best top-1 {:?}", summary.best_top1);
//! # Ok(()) }
//! ```
use std::path::PathBuf;

pub mod checkpoint;
pub mod eval;
pub mod metrics;
pub mod optimizer;
pub mod plots;
pub mod schedule;
pub mod trainer;
pub mod vars;

pub use checkpoint::TrainerState;
pub use eval::EvalReport;
pub use optimizer::{clip_grad_norm, AdamW, AdamWConfig, Group};
pub use schedule::LrSchedule;
pub use trainer::{Event, LossScaleConfig, Observer, RunSummary, SchedulePolicy, Silent, StartFrom, StepOutput, TrainConfig, TrainData, Trainer};
pub use vars::{Freeze, ModelVars, Precision};

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A model, data or file error.
    #[error(transparent)]
    Model(#[from] crate::Error),

    /// A split without a single clip.
    #[error("the {split} split is empty: no clips to {}", if split == "train" { "train on" } else { "evaluate" })]
    EmptySplit {
        /// `train`, `test` or `multi-view test`.
        split: String,
    },

    /// A clip whose label is not an index into the class list.
    #[error("{split} clip {path}: label index {label} is outside the class list ({classes} classes, indices 0..{classes})")]
    LabelOutOfRange {
        /// The split.
        split: String,
        /// The clip.
        path: PathBuf,
        /// Its label.
        label: usize,
        /// Number of classes.
        classes: usize,
    },

    /// A checkpoint or weights file made for another architecture.
    #[error("{path}: {reason}")]
    ArchitectureMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// What differs.
        reason: String,
    },

    /// The loss became NaN or infinite; nothing was saved after it.
    #[error("the loss is {loss} at epoch {epoch}, iteration {step}: training stopped; {}", match last_good {
        Some(p) => format!("the last good checkpoint is {} (resume from it with a lower learning rate)", p.display()),
        None => "no checkpoint was written yet".to_string(),
    })]
    NonFiniteLoss {
        /// 0-based epoch.
        epoch: usize,
        /// Optimizer iterations done.
        step: usize,
        /// The loss value.
        loss: f64,
        /// The last checkpoint written, untouched.
        last_good: Option<PathBuf>,
    },

    /// A gradient became NaN or infinite in f32/bf16 (f16 skips such steps and lowers its loss scale).
    #[error("a gradient is not finite at epoch {epoch}, iteration {step}: training stopped")]
    NonFiniteGradient {
        /// 0-based epoch.
        epoch: usize,
        /// Optimizer iterations done.
        step: usize,
    },
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Model(crate::Error::Candle(e))
    }
}

/// The result type of training.
pub type TrainResult<T> = std::result::Result<T, TrainError>;
