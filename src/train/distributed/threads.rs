//! Ranks as threads of one process, exchanging CPU tensors through shared memory: a world for tests and
//! for trying a data-parallel set-up without MPI.
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::{Collective, DistributedError, ReduceOp};
use crate::train::error::TrainResult;

/// One rank of a group of threads (move each into its own thread).
#[derive(Debug)]
pub struct ThreadRank {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    shared: Arc<Shared>,
    device: Device,
}

#[derive(Debug)]
struct Shared {
    round: Mutex<Round>,
    turned: Condvar,
}

/// One exchange: every rank deposits a tensor; the last to arrive publishes them all.
#[derive(Debug)]
struct Round {
    /// Exchanges completed so far.
    generation: u64,
    deposited: Vec<Option<Tensor>>,
    arrived: usize,
    /// The tensors of the last completed exchange, in rank order.
    published: Arc<Vec<Tensor>>,
}

impl ThreadRank {
    /// The ranks of a world of `world_size` threads; an operation that waits longer than `timeout` for
    /// the others fails with [`DistributedError::Timeout`].
    pub fn group(world_size: usize, timeout: Duration) -> Vec<ThreadRank> {
        let shared = Arc::new(Shared {
            round: Mutex::new(Round {
                generation: 0,
                deposited: vec![None; world_size],
                arrived: 0,
                published: Arc::new(Vec::new()),
            }),
            turned: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| ThreadRank { rank, world_size, timeout, shared: shared.clone(), device: Device::Cpu })
            .collect()
    }

    /// Deposits `mine` and returns every rank's tensor, in rank order.
    fn exchange(&self, operation: &'static str, mine: &Tensor) -> TrainResult<Arc<Vec<Tensor>>> {
        let poisoned = || DistributedError::Backend { backend: "threads", reason: "a rank panicked".into() };
        let mut round = self.shared.round.lock().map_err(|_| poisoned())?;
        let generation = round.generation;
        round.deposited[self.rank] = Some(mine.clone());
        round.arrived += 1;
        if round.arrived == self.world_size {
            round.published = Arc::new(round.deposited.iter_mut().filter_map(Option::take).collect());
            round.arrived = 0;
            round.generation += 1;
            self.shared.turned.notify_all();
            return Ok(round.published.clone());
        }
        let deadline = Instant::now() + self.timeout;
        while round.generation == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DistributedError::Timeout { operation, seconds: self.timeout.as_secs_f64() }.into());
            }
            round = self.shared.turned.wait_timeout(round, left).map_err(|_| poisoned())?.0;
        }
        Ok(round.published.clone())
    }
}

impl Collective for ThreadRank {
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
        let all = self.exchange("all-reduce", bucket)?;
        let mut sum = all[0].clone();
        for t in &all[1..] {
            sum = (sum + t)?;
        }
        Ok(match op {
            ReduceOp::Sum => sum,
            ReduceOp::Mean => (sum / self.world_size as f64)?,
        })
    }

    fn broadcast(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        Ok(self.exchange("broadcast", tensor)?[0].clone())
    }

    fn all_gather(&self, tensor: &Tensor) -> TrainResult<Tensor> {
        Ok(Tensor::cat(&self.exchange("all-gather", tensor)?, 0)?)
    }

    fn barrier(&self) -> TrainResult<()> {
        self.exchange("barrier", &Tensor::zeros(1, candle_core::DType::U8, &self.device)?)?;
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_reduce_gather_and_broadcast() {
        let ranks = ThreadRank::group(3, Duration::from_secs(30));
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|r| {
                    s.spawn(move || {
                        let mine = Tensor::new(&[r.rank() as f32, 1.0], &Device::Cpu).unwrap();
                        let sum = r.all_reduce(&mine, ReduceOp::Sum).unwrap().to_vec1::<f32>().unwrap();
                        let mean = r.all_reduce(&mine, ReduceOp::Mean).unwrap().to_vec1::<f32>().unwrap();
                        let gathered = r.all_gather(&mine.reshape((1, 2)).unwrap()).unwrap();
                        let first = r.broadcast(&mine).unwrap().to_vec1::<f32>().unwrap();
                        r.barrier().unwrap();
                        (sum, mean, gathered.to_vec2::<f32>().unwrap(), first)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (sum, mean, gathered, first) in results {
            assert_eq!(sum, [3.0, 3.0]);
            assert_eq!(mean, [1.0, 1.0]);
            assert_eq!(gathered, [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]);
            assert_eq!(first, [0.0, 1.0]);
        }
    }

    #[test]
    fn a_missing_rank_times_out() {
        let ranks = ThreadRank::group(2, Duration::from_millis(50));
        let err = ranks[0].barrier().unwrap_err();
        assert!(err.to_string().contains("barrier waited"), "{err}");
    }
}
