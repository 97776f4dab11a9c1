//! Agreement between the ranks: every rank's outcome of a local part of the work is exchanged before the
//! next collective, so a failing rank stops every rank with its own error instead of leaving the others
//! waiting; and small metrics summed over the ranks.
use candle_core::{DType, Device, Tensor};

use super::{Collective, DistributedError, ReduceOp};
use crate::train::error::TrainResult;

/// Bytes of a rank's status: a failure flag and the start of its error message.
const STATUS_BYTES: usize = 1024;

/// `local` on every rank when every rank succeeded. When a rank failed, it returns its own error and every
/// other rank returns [`DistributedError::PeerFailed`] naming it (the lowest failing rank) with its message.
/// Doubles as a barrier.
pub(crate) fn agree<T>(collective: &dyn Collective, local: TrainResult<T>) -> TrainResult<T> {
    if collective.world_size() == 1 {
        return local;
    }
    let mut status = vec![0u8; STATUS_BYTES];
    if let Err(e) = &local {
        status[0] = 1;
        let message = e.to_string();
        let n = message.len().min(STATUS_BYTES - 1);
        status[1..1 + n].copy_from_slice(&message.as_bytes()[..n]);
    }
    let status = Tensor::from_vec(status, (1, STATUS_BYTES), &Device::Cpu)?.to_device(collective.device())?;
    let all = collective.all_gather(&status)?.to_vec2::<u8>()?;
    let value = local?;
    match all.iter().position(|row| row[0] == 1) {
        None => Ok(value),
        Some(rank) => {
            let message = &all[rank][1..];
            let end = message.iter().position(|&b| b == 0).unwrap_or(message.len());
            let reason = String::from_utf8_lossy(&message[..end]).into_owned();
            Err(DistributedError::PeerFailed { rank, reason }.into())
        }
    }
}

/// `values` summed over the ranks (counts and sums of metrics; exact for integers below 2^53).
pub(crate) fn sum_values(collective: &dyn Collective, values: &[f64]) -> TrainResult<Vec<f64>> {
    if collective.world_size() == 1 {
        return Ok(values.to_vec());
    }
    let t = Tensor::new(values, &Device::Cpu)?.to_device(collective.device())?;
    Ok(collective.all_reduce(&t, ReduceOp::Sum)?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::train::distributed::ThreadRank;
    use crate::train::TrainError;

    #[test]
    fn a_failing_rank_keeps_its_error_and_the_others_name_it() {
        let ranks = ThreadRank::group(3, Duration::from_secs(30));
        let outcomes: Vec<TrainResult<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|r| {
                    s.spawn(move || {
                        let local = match r.rank() {
                            1 => Err(TrainError::EmptySplit { split: "train".into() }),
                            rank => Ok(rank),
                        };
                        let agreed = agree(r, local);
                        assert_eq!(sum_values(r, &[1.0, r.rank() as f64]).unwrap(), [3.0, 3.0]);
                        agreed
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(matches!(&outcomes[1], Err(TrainError::EmptySplit { .. })));
        for rank in [0, 2] {
            match &outcomes[rank] {
                Err(TrainError::Distributed(DistributedError::PeerFailed { rank: 1, reason })) => {
                    assert!(reason.contains("the train split is empty"), "{reason}")
                }
                other => panic!("rank {rank}: {other:?}"),
            }
        }
    }
}
