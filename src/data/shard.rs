//! One process's share of an epoch in data-parallel training: every rank draws the same seeded clip order,
//! then keeps its own part of it.
//!
//! Training ([`Shard::training`]) splits each global batch (`world_size` loader batches) into contiguous
//! blocks, one per rank in rank order, so the concatenation of the ranks' k-th batches is exactly the k-th
//! batch a single process with a `world_size` times larger batch would load. The order is first padded, by
//! repeating its start, to a multiple of `world_size` (as PyTorch's `DistributedSampler`); with `drop_last`
//! the clips that cannot fill a whole global batch are dropped instead. Either way every rank takes the
//! same number of batches and optimizer steps.
//!
//! Evaluation ([`Shard::evaluation`]) pads nothing: rank `r` takes the r-th contiguous block of the order
//! (blocks differ by at most one clip), so every clip is scored exactly once and the ranks' results, put
//! side by side in rank order, are the single-process results in the loader's order.
use crate::error::{Error, Result};

/// How an epoch is split between the processes of a data-parallel job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Training split (padded, equal batch counts) or evaluation split (each clip once).
    pub kind: ShardKind,
}

/// The two ways of splitting an epoch (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKind {
    /// Padded (or, with `drop_last`, trimmed) so every rank takes the same number of batches.
    Training,
    /// Contiguous blocks without padding: every clip exactly once.
    Evaluation,
}

impl Shard {
    /// The training share of `rank` in a job of `world_size` processes.
    pub fn training(rank: usize, world_size: usize) -> Result<Self> {
        Self::new(rank, world_size, ShardKind::Training)
    }

    /// The evaluation share of `rank` in a job of `world_size` processes.
    pub fn evaluation(rank: usize, world_size: usize) -> Result<Self> {
        Self::new(rank, world_size, ShardKind::Evaluation)
    }

    fn new(rank: usize, world_size: usize, kind: ShardKind) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            return Err(Error::Config(format!("rank {rank} is outside a world of {world_size} processes")));
        }
        Ok(Self { rank, world_size, kind })
    }

    /// This rank's part of the epoch's full `order`, loaded in batches of `batch_size` (per process).
    pub fn select(&self, order: &[usize], batch_size: usize, drop_last: bool) -> Vec<usize> {
        match self.kind {
            ShardKind::Training => self.select_training(order, batch_size, drop_last),
            ShardKind::Evaluation => {
                let block = |r: usize| r * order.len() / self.world_size;
                order[block(self.rank)..block(self.rank + 1)].to_vec()
            }
        }
    }

    fn select_training(&self, order: &[usize], batch_size: usize, drop_last: bool) -> Vec<usize> {
        let world = self.world_size;
        let global_batch = batch_size * world;
        let used: Vec<usize> = if drop_last {
            order[..order.len() / global_batch * global_batch].to_vec()
        } else if order.is_empty() {
            Vec::new()
        } else {
            let padded = order.len().div_ceil(world) * world;
            order.iter().copied().cycle().take(padded).collect()
        };
        used.chunks(global_batch)
            .flat_map(|batch| {
                let per_rank = batch.len() / world;
                batch[self.rank * per_rank..(self.rank + 1) * per_rank].to_vec()
            })
            .collect()
    }

    /// The clips this rank loads from a dataset of `len` clips.
    pub fn len(&self, len: usize, batch_size: usize, drop_last: bool) -> usize {
        let world = self.world_size;
        match self.kind {
            ShardKind::Training if drop_last => len / (batch_size * world) * batch_size,
            ShardKind::Training => len.div_ceil(world),
            ShardKind::Evaluation => (self.rank + 1) * len / world - self.rank * len / world,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(kind: ShardKind, world: usize) -> Vec<Shard> {
        (0..world).map(|rank| Shard::new(rank, world, kind).unwrap()).collect()
    }

    #[test]
    fn training_batches_concatenate_to_the_single_process_batches() {
        let order: Vec<usize> = (0..12).rev().collect();
        let parts: Vec<Vec<usize>> =
            shards(ShardKind::Training, 2).iter().map(|s| s.select(&order, 3, false)).collect();
        assert_eq!(parts[0], [11, 10, 9, 5, 4, 3]);
        assert_eq!(parts[1], [8, 7, 6, 2, 1, 0]);
        let mut joined = Vec::new();
        for k in 0..2 {
            for part in &parts {
                joined.extend_from_slice(&part[k * 3..(k + 1) * 3]);
            }
        }
        assert_eq!(joined, order, "global batch k = rank 0's batch k, then rank 1's");
    }

    #[test]
    fn training_pads_or_drops_to_equal_shares() {
        let order: Vec<usize> = (0..7).collect();
        for world in 1..5 {
            for batch in 1..4 {
                for drop_last in [false, true] {
                    let parts: Vec<Vec<usize>> = shards(ShardKind::Training, world)
                        .iter()
                        .map(|s| {
                            let part = s.select(&order, batch, drop_last);
                            assert_eq!(part.len(), s.len(order.len(), batch, drop_last));
                            part
                        })
                        .collect();
                    assert!(parts.iter().all(|p| p.len() == parts[0].len()), "{world} {batch} {drop_last}");
                    let mut seen: Vec<usize> = parts.concat();
                    seen.sort();
                    seen.dedup();
                    if drop_last {
                        assert_eq!(parts[0].len(), 7 / (batch * world) * batch);
                    } else {
                        assert_eq!(seen.len(), 7, "padding repeats clips, it loses none");
                    }
                }
            }
        }
    }

    #[test]
    fn evaluation_scores_every_clip_once_in_order() {
        let order: Vec<usize> = (0..7).collect();
        for world in 1..9 {
            let parts: Vec<Vec<usize>> = shards(ShardKind::Evaluation, world)
                .iter()
                .map(|s| {
                    let part = s.select(&order, 2, false);
                    assert_eq!(part.len(), s.len(7, 2, false));
                    part
                })
                .collect();
            assert_eq!(parts.concat(), order, "world {world}");
        }
    }

    #[test]
    fn ranks_outside_the_world_are_refused() {
        assert!(Shard::training(2, 2).is_err());
        assert!(Shard::evaluation(0, 0).is_err());
    }
}
