//! Fine-tuning ActionCLIP: [`Trainer`] runs the epochs of a [`TrainConfig`] over [`TrainData`], reporting
//! [`Event`]s to an [`Observer`]; AdamW over the reference's parameter groups ([`optimizer`]), per-iteration
//! schedules ([`schedule`]), f32 master weights with optional half-precision compute ([`vars`]), evaluation
//! with the template ensemble ([`eval`]), atomic checkpoints and exact resume ([`checkpoint`]), metrics and
//! plots; the reference's YAML settings ([`recipe`]) and the synthetic demo ([`demo`]); data-parallel
//! training across processes, GPUs and machines on MPI or NCCL ([`distributed`]).
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
mod config;
mod error;
mod events;
mod run_dir;
mod step;
mod templates;
mod trainer;

pub mod checkpoint;
pub mod demo;
pub mod distributed;
pub mod eval;
pub mod metrics;
pub mod optimizer;
pub mod plots;
pub mod recipe;
pub mod schedule;
pub mod vars;

pub use checkpoint::TrainerState;
pub use config::{LossScaleConfig, SchedulePolicy, StartFrom, TrainConfig, TrainData};
pub use error::{TrainError, TrainResult};
pub use eval::EvalReport;
pub use events::{Event, Observer, RunSummary, Silent, StepOutput};
pub use optimizer::{clip_grad_norm, AdamW, AdamWConfig, Group};
pub use schedule::LrSchedule;
pub use trainer::Trainer;
pub use vars::{Freeze, Precision};
