//! A world of one process: every collective is the identity.
use candle_core::{Device, Tensor};

use super::{Collective, ReduceOp};
use crate::train::error::TrainResult;

/// The collective of a job with one process (the trainer's default).
#[derive(Clone, Debug)]
pub struct SingleProcess {
    device: Device,
}

impl SingleProcess {
    /// A world of one process whose tensors live on `device`.
    pub fn new(device: &Device) -> Self {
        Self { device: device.clone() }
    }
}

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn all_reduce(&self, bucket: &Tensor, _op: ReduceOp) -> TrainResult<Tensor> {
        Ok(bucket.clone())
    }

    fn broadcast(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        Ok(tensor.clone())
    }

    fn all_gather(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        Ok(tensor.clone())
    }

    fn barrier(&self) -> TrainResult<()> {
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
