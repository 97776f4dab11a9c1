//! Why training stops with an error: [`TrainError`] (a model, data or file error, one of the loop's own, or a
//! [`DistributedError`] of the data-parallel machinery or another rank).
use std::path::{Path, PathBuf};

use crate::Error;

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A model, data or file error.
    #[error(transparent)]
    Model(#[from] Error),

    /// A split without a single clip.
    #[error("the {split} split is empty: no clips to {}", if split == "train" { "train on" } else { "evaluate" })]
    EmptySplit {
        /// `train`, `test` or `multi-view test`.
        split: String,
    },

    /// A clip whose label is not an index into the class list.
    #[error(
        "{split} clip {path}: label index {label} is outside the class list ({classes} classes, indices 0..{classes})"
    )]
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

    /// The data-parallel machinery failed, or another rank of the job did.
    #[error(transparent)]
    Distributed(#[from] DistributedError),

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
        TrainError::Model(Error::Candle(e))
    }
}

/// The result type of training.
pub type TrainResult<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// A weights error of the file at `path`, read as an architecture mismatch when a key is missing or has
    /// another shape (the file was made for another model).
    pub(crate) fn from_weights(path: &Path, e: Error) -> Self {
        match e {
            Error::KeyShape { key, found, expected } => TrainError::ArchitectureMismatch {
                path: path.to_path_buf(),
                reason: format!("{key} has shape {found:?} in the checkpoint, the model needs {expected:?}"),
            },
            Error::MissingKey { key, .. } => {
                TrainError::ArchitectureMismatch { path: path.to_path_buf(), reason: format!("{key} is missing") }
            }
            other => other.into(),
        }
    }
}

/// A failure of the data-parallel machinery, or of another rank of the job.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    /// The communication library refused or failed an operation.
    #[error("{backend}: {reason}")]
    Backend {
        /// `mpi`, `nccl` or `threads`.
        backend: &'static str,
        /// What failed.
        reason: String,
    },

    /// The launcher's environment is missing a variable or holds a value that cannot be used.
    #[error("launch environment: {var} {reason}")]
    Launch {
        /// The variable at fault (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`).
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Rank 0 could not hand out, or a rank could not receive, the communicator's id.
    #[error("rendezvous at {addr} (rank {rank}): {reason}")]
    Rendezvous {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// The rank that failed.
        rank: usize,
        /// What failed (a refused or closed connection, a timeout).
        reason: String,
    },

    /// A collective waited longer than the job's timeout for the other ranks.
    #[error("{operation} waited {seconds:.0} s for the other ranks: a rank has stopped or hangs")]
    Timeout {
        /// The collective (`all-reduce`, `all-gather`, `broadcast`, `barrier`).
        operation: &'static str,
        /// The timeout.
        seconds: f64,
    },

    /// Another rank failed; its own error, as it reported it.
    #[error("rank {rank} failed: {reason}")]
    PeerFailed {
        /// The rank that failed (the lowest one when several did).
        rank: usize,
        /// Its error message.
        reason: String,
    },
}
