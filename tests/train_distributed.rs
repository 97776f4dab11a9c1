//! Data-parallel training with the ranks as threads of this process (no MPI needed): the gathered loss
//! and summed gradients equal one process with the whole batch, sharded evaluation counts every clip once,
//! a failing rank stops every rank with its error, and a stopped run resumes exactly. The same scenarios
//! run over MPI processes in tests/distributed_mpi.rs.
mod distributed_common;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use actionclip::train::distributed::ThreadRank;
use distributed_common::Shared;

/// Runs `scenario` on every rank of a world of two threads.
fn two_ranks(scenario: impl Fn(Shared) + Sync) {
    // Long enough for any step of the tiny model: only a rank that stopped waits this long.
    let ranks = ThreadRank::group(2, Duration::from_secs(300));
    std::thread::scope(|s| {
        for rank in ranks {
            let scenario = &scenario;
            s.spawn(move || scenario(Rc::new(rank)));
        }
    });
}

/// A fresh directory holding the scenarios' dataset.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("actionclip_train_distributed_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    distributed_common::dataset(&dir);
    dir
}

#[test]
fn two_ranks_equal_one_process_with_twice_the_batch() {
    let root = scratch("equivalence");
    two_ranks(|c| {
        if let Some(diff) = distributed_common::equivalence(&c, &root) {
            eprintln!("2 ranks x batch 2 vs 1 process x batch 4: weights differ by at most {diff:e} of their scale");
        }
    });
}

#[test]
fn sharded_evaluation_counts_every_clip_once() {
    let root = scratch("evaluation");
    two_ranks(|c| distributed_common::evaluation(&c, &root));
}

#[test]
fn a_failing_rank_stops_every_rank_with_its_error() {
    let root = scratch("fault");
    two_ranks(|c| distributed_common::nan_on_one_rank(&c, &root.join("run")));
    two_ranks(|c| distributed_common::bad_data_on_one_rank(&c, &root));
}

#[test]
fn a_stopped_run_resumes_to_the_uninterrupted_weights() {
    let root = scratch("resume");
    two_ranks(|c| distributed_common::resume(&c, &root, &root.join("run")));
}
