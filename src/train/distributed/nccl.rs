//! NCCL through cudarc (the library candle's CUDA backend uses): one GPU per process, CUDA tensors,
//! ranks from the torchrun/Slurm/mpirun environment ([`LaunchEnv`]); rank 0 makes the communicator id
//! and hands it out over TCP ([`rendezvous`]). Collectives run on the device's stream, ordered with the
//! model's kernels.
use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, NcclType, ReduceOp as NcclOp};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{rendezvous, Collective, DistributedError, LaunchEnv, ReduceOp};
use crate::train::error::TrainResult;

/// How long the ranks may take to meet rank 0 and receive the communicator id.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes of an NCCL unique id.
const ID_BYTES: usize = 128;

/// This process's rank of an NCCL communicator, on the GPU `LOCAL_RANK` names.
pub struct Nccl {
    comm: Comm,
    rank: usize,
    world_size: usize,
    device: Device,
}

impl Nccl {
    /// Joins the job the launcher's environment describes ([`LaunchEnv::from_env`]).
    pub fn from_env() -> TrainResult<Self> {
        Self::from_launch(&LaunchEnv::from_env()?, RENDEZVOUS_TIMEOUT)
    }

    /// Joins the job `env` describes, meeting rank 0 within `timeout`.
    pub fn from_launch(env: &LaunchEnv, timeout: Duration) -> TrainResult<Self> {
        let failed = |reason: String| DistributedError::Backend { backend: "nccl", reason };
        let device = Device::new_cuda(env.local_rank)?;
        let id = match env.rank {
            0 => Some(Id::new().map_err(|e| failed(format!("cannot make a communicator id: {e:?}")))?),
            _ => None,
        };
        let mine: Option<Vec<u8>> = id.map(|id| id.internal().iter().map(|&c| c as u8).collect());
        let bytes = rendezvous(env, mine.as_deref(), ID_BYTES, timeout)?;
        let mut internal = [0 as std::ffi::c_char; ID_BYTES];
        for (dst, src) in internal.iter_mut().zip(bytes) {
            *dst = src as std::ffi::c_char;
        }
        let stream = device.as_cuda_device()?.cuda_stream();
        let comm = Comm::from_rank(stream, env.rank, env.world_size, Id::uninit(internal))
            .map_err(|e| failed(format!("rank {} of {} cannot join: {e:?}", env.rank, env.world_size)))?;
        Ok(Self { comm, rank: env.rank, world_size: env.world_size, device })
    }

    /// Runs `operation` on `tensor` (made contiguous) on the GPU.
    fn run(&self, operation: Operation, tensor: &Tensor) -> TrainResult<Tensor> {
        let op = NcclCall { comm: &self.comm, operation, world_size: self.world_size };
        Ok(tensor.contiguous()?.apply_op1_no_bwd(&op)?)
    }
}

/// The NCCL collective a [`NcclCall`] makes.
#[derive(Clone, Copy)]
enum Operation {
    AllReduce,
    AllGather,
    Broadcast,
}

/// One NCCL collective as a candle op: reads the input's device buffer, writes a new one.
struct NcclCall<'a> {
    comm: &'a Comm,
    operation: Operation,
    world_size: usize,
}

impl NcclCall<'_> {
    fn call<T: CudaDType + DeviceRepr + NcclType>(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
        out_len: usize,
    ) -> candle_core::Result<CudaStorage> {
        let device: CudaDevice = storage.device().clone();
        let start = layout.start_offset();
        let src = storage.as_cuda_slice::<T>()?.slice(start..start + layout.shape().elem_count());
        // SAFETY: NCCL writes every element of `dst` before anything reads it.
        let mut dst = unsafe { device.alloc::<T>(out_len)? };
        let done = match self.operation {
            Operation::AllReduce => self.comm.all_reduce(&src, &mut dst, &NcclOp::Sum),
            Operation::AllGather => self.comm.all_gather(&src, &mut dst),
            Operation::Broadcast => self.comm.broadcast(Some(&src), &mut dst, 0),
        };
        done.map_err(|e| candle_core::Error::Msg(format!("nccl {}: {e:?}", self.name())))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, device))
    }
}

impl CustomOp1 for NcclCall<'_> {
    fn name(&self) -> &'static str {
        match self.operation {
            Operation::AllReduce => "all-reduce",
            Operation::AllGather => "all-gather",
            Operation::Broadcast => "broadcast",
        }
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nccl {} moves CUDA tensors only", self.name())
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let shape = match self.operation {
            Operation::AllGather => {
                let mut dims = layout.dims().to_vec();
                dims[0] *= self.world_size;
                Shape::from(dims)
            }
            _ => layout.shape().clone(),
        };
        let n = shape.elem_count();
        let out = match storage.dtype() {
            DType::F32 => self.call::<f32>(storage, layout, n)?,
            DType::F64 => self.call::<f64>(storage, layout, n)?,
            DType::U32 => self.call::<u32>(storage, layout, n)?,
            DType::U8 => self.call::<u8>(storage, layout, n)?,
            other => candle_core::bail!("nccl {} takes f32, f64, u32 or u8, not {other:?}", self.name()),
        };
        Ok((out, shape))
    }
}

impl Collective for Nccl {
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
        let sum = self.run(Operation::AllReduce, bucket)?;
        Ok(match op {
            ReduceOp::Sum => sum,
            ReduceOp::Mean => (sum / self.world_size as f64)?,
        })
    }

    fn broadcast(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        self.run(Operation::Broadcast, tensor)
    }

    fn all_gather(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        self.run(Operation::AllGather, tensor)
    }

    fn barrier(&self) -> TrainResult<()> {
        let one = Tensor::ones(1, DType::F32, &self.device)?;
        self.run(Operation::AllReduce, &one)?.to_vec1::<f32>()?;
        Ok(())
    }

    /// NCCL cannot end the other processes: this one exits, its communicator is aborted, and the others
    /// fail in their next collective (the launcher, torchrun or srun, then ends the job).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
