//! Data-parallel training across processes: a [`Collective`] moves tensors between the ranks of a job, and
//! the trainer builds on it (see [`Trainer::with_collective`](super::Trainer::with_collective)).
//!
//! | backend | tensors | launch |
//! |---|---|---|
//! | [`SingleProcess`] | any | none: a world of one, every operation is the identity |
//! | [`ThreadRank`] | CPU | ranks are threads of one process (tests, trying a set-up) |
//! | `Mpi` (feature `mpi`) | CPU | `mpirun -np N`: ranks from MPI |
//! | `Nccl` (feature `nccl`) | CUDA, one GPU per process | torchrun/Slurm environment ([`LaunchEnv`]) or `mpirun` |
//!
//! What a step does with them: every rank encodes its own clips, the video and text embeddings and labels
//! of every rank are all-gathered, and the contrastive loss is taken over the global batch with gradients
//! flowing through this rank's rows only (open_clip's `gather_with_grad`), so that the gradients summed
//! over the ranks are exactly those of one process with the whole batch. Gradients are summed in large
//! flat buckets (one call per bucket) before clipping; every step ends with an exchange of each rank's
//! status, so that a failing rank stops all of them with its own error instead of leaving them waiting.
use std::rc::Rc;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::error::TrainResult;

mod agree;
mod buckets;
mod gather;
mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod single;
mod threads;

pub use super::error::DistributedError;
pub(crate) use agree::{agree, sum_values};
pub(crate) use buckets::{all_reduce_grads, broadcast_tensors};
pub(crate) use gather::{gather_labels, gather_rows, global_logits, row_counts};
pub use launch::{rendezvous, LaunchEnv};
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;
pub use single::SingleProcess;
pub use threads::ThreadRank;

/// How [`Collective::all_reduce`] combines the ranks' tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The element-wise sum.
    Sum,
    /// The element-wise mean (the sum divided by the world size).
    Mean,
}

/// The collective operations of a data-parallel job. Every rank must call the same operations in the
/// same order with tensors of the same shape and dtype (f32, f64, u32 or u8) on [`Collective::device`].
pub trait Collective {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Processes in the job.
    fn world_size(&self) -> usize;

    /// The device whose tensors the operations take and return.
    fn device(&self) -> &Device;

    /// The element-wise sum or mean over the ranks of a flat buffer (one bucket of gradients).
    // [n] -> [n]
    fn all_reduce(&self, bucket: &Tensor, op: ReduceOp) -> TrainResult<Tensor>;

    /// Rank 0's tensor, on every rank.
    // [...] -> [...]
    fn broadcast(&self, tensor: &Tensor) -> TrainResult<Tensor>;

    /// Every rank's tensor stacked along the first dimension, in rank order.
    // [n, ...] -> [world_size * n, ...]
    fn all_gather(&self, tensor: &Tensor) -> TrainResult<Tensor>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> TrainResult<()>;

    /// Ends every process of the job at once with `code` (`MPI_Abort`): the last resort when a rank
    /// cannot tell the others that it failed.
    fn abort(&self, code: i32) -> !;
}

/// Shared collectives: one world serves several trainers of a process, one after another.
macro_rules! shared_collective {
    ($pointer:ident) => {
        impl<C: Collective + ?Sized> Collective for $pointer<C> {
            fn rank(&self) -> usize {
                (**self).rank()
            }

            fn world_size(&self) -> usize {
                (**self).world_size()
            }

            fn device(&self) -> &Device {
                (**self).device()
            }

            fn all_reduce(&self, bucket: &Tensor, op: ReduceOp) -> TrainResult<Tensor> {
                (**self).all_reduce(bucket, op)
            }

            fn broadcast(&self, tensor: &Tensor) -> TrainResult<Tensor> {
                (**self).broadcast(tensor)
            }

            fn all_gather(&self, tensor: &Tensor) -> TrainResult<Tensor> {
                (**self).all_gather(tensor)
            }

            fn barrier(&self) -> TrainResult<()> {
                (**self).barrier()
            }

            fn abort(&self, code: i32) -> ! {
                (**self).abort(code)
            }
        }
    };
}

shared_collective!(Rc);
shared_collective!(Arc);
