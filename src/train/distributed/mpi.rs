//! MPI through the `mpi` crate (Open MPI, MPICH): CPU tensors, ranks from `mpirun`. A watchdog thread
//! ends the whole job with `MPI_Abort` (error code 124) when one collective waits longer than the
//! timeout: the last resort when a rank hangs without failing.
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, WithDType};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use mpi::Threading;

use super::{Collective, DistributedError, ReduceOp};
use crate::train::error::TrainResult;

/// How long a collective may wait for the other ranks by default (PyTorch's default for NCCL too).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The exit code of a job the watchdog ends (`timeout`'s).
const TIMEOUT_EXIT_CODE: i32 = 124;

/// The MPI world of this process (one per process: MPI is initialised once and finalised on drop).
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    world_size: usize,
    device: Device,
    watchdog: Watchdog,
    /// Finalises MPI when dropped, after the fields above.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI (ranks come from `mpirun`; a process started alone is a world of one) with the
    /// default collective timeout of 30 minutes.
    pub fn init() -> TrainResult<Self> {
        Self::with_timeout(DEFAULT_TIMEOUT)
    }

    /// [`Mpi::init`] with a collective timeout of `timeout`.
    pub fn with_timeout(timeout: Duration) -> TrainResult<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Multiple).ok_or(DistributedError::Backend {
            backend: "mpi",
            reason: "MPI is already initialised in this process".into(),
        })?;
        let world = universe.world();
        let (rank, world_size) = (world.rank() as usize, world.size() as usize);
        Ok(Self {
            world,
            rank,
            world_size,
            device: Device::Cpu,
            watchdog: Watchdog::start(timeout),
            _universe: universe,
        })
    }

    /// Checks that `tensor` is a CPU tensor of a dtype MPI moves here.
    fn check(&self, operation: &str, tensor: &Tensor) -> TrainResult<()> {
        if !tensor.device().is_cpu() || !matches!(tensor.dtype(), DType::F32 | DType::F64 | DType::U32 | DType::U8) {
            return Err(DistributedError::Backend {
                backend: "mpi",
                reason: format!(
                    "{operation} takes CPU tensors of f32, f64, u32 or u8, not {:?} on {:?}",
                    tensor.dtype(),
                    tensor.device()
                ),
            }
            .into());
        }
        Ok(())
    }

    fn reduce<T: WithDType + Equivalence>(&self, t: &Tensor) -> TrainResult<Tensor> {
        let send = t.flatten_all()?.to_vec1::<T>()?;
        let mut recv = vec![T::zero(); send.len()];
        self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        Ok(Tensor::from_vec(recv, t.shape(), &self.device)?)
    }

    fn gather<T: WithDType + Equivalence>(&self, t: &Tensor) -> TrainResult<Tensor> {
        let send = t.flatten_all()?.to_vec1::<T>()?;
        let mut recv = vec![T::zero(); send.len() * self.world_size];
        self.world.all_gather_into(&send[..], &mut recv[..]);
        let mut dims = t.dims().to_vec();
        dims[0] *= self.world_size;
        Ok(Tensor::from_vec(recv, dims, &self.device)?)
    }

    fn bcast<T: WithDType + Equivalence>(&self, t: &Tensor) -> TrainResult<Tensor> {
        let mut buf = t.flatten_all()?.to_vec1::<T>()?;
        self.world.process_at_rank(0).broadcast_into(&mut buf[..]);
        Ok(Tensor::from_vec(buf, t.shape(), &self.device)?)
    }
}

/// Calls `$f::<T>` for the Rust type of `$t`'s dtype (checked beforehand by [`Mpi::check`]).
macro_rules! by_dtype {
    ($self:ident . $f:ident ($t:expr)) => {
        match $t.dtype() {
            DType::F32 => $self.$f::<f32>($t),
            DType::F64 => $self.$f::<f64>($t),
            DType::U32 => $self.$f::<u32>($t),
            _ => $self.$f::<u8>($t),
        }
    };
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn all_reduce(&self, bucket: &Tensor, op: ReduceOp) -> TrainResult<Tensor> {
        self.check("all-reduce", bucket)?;
        let sum = {
            let _watch = self.watchdog.watch();
            by_dtype!(self.reduce(bucket))?
        };
        Ok(match op {
            ReduceOp::Sum => sum,
            ReduceOp::Mean => (sum / self.world_size as f64)?,
        })
    }

    fn broadcast(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        self.check("broadcast", tensor)?;
        let _watch = self.watchdog.watch();
        by_dtype!(self.bcast(tensor))
    }

    fn all_gather(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        self.check("all-gather", tensor)?;
        let _watch = self.watchdog.watch();
        by_dtype!(self.gather(tensor))
    }

    fn barrier(&self) -> TrainResult<()> {
        let _watch = self.watchdog.watch();
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// A thread that aborts the job when one collective outlasts the timeout.
struct Watchdog {
    shared: Arc<(Mutex<Watched>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Watched {
    /// When the collective in progress began.
    since: Option<Instant>,
    closed: bool,
}

/// Marks a collective in progress until dropped.
struct Watch<'a>(&'a Watchdog);

impl Watchdog {
    fn start(timeout: Duration) -> Self {
        let shared = Arc::new((Mutex::new(Watched::default()), Condvar::new()));
        let watched = shared.clone();
        let thread = std::thread::spawn(move || {
            let (lock, wake) = &*watched;
            let Ok(mut w) = lock.lock() else { return };
            while !w.closed {
                if w.since.is_some_and(|t| t.elapsed() > timeout) {
                    // SAFETY: MPI was initialised with `Threading::Multiple` and is finalised only after this
                    // thread has been joined.
                    unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, TIMEOUT_EXIT_CODE) };
                }
                w = match wake.wait_timeout(w, Duration::from_secs(1)) {
                    Ok((w, _)) => w,
                    Err(_) => return,
                };
            }
        });
        Self { shared, thread: Some(thread) }
    }

    fn watch(&self) -> Watch<'_> {
        if let Ok(mut w) = self.shared.0.lock() {
            w.since = Some(Instant::now());
        }
        Watch(self)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.0.shared.0.lock() {
            w.since = None;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.0.lock() {
            w.closed = true;
        }
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
