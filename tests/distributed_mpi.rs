//! Data-parallel training over MPI processes. Run plainly (`cargo test --features mpi --test
//! distributed_mpi`), this binary launches itself under `mpirun --allow-run-as-root --oversubscribe -np 2`
//! once per scenario and checks how each job ends; under `mpirun` (`scenario=NAME` argument) it is one rank
//! of that scenario:
//! - `equivalence`: 2 ranks x batch 2 for 3 clipped, accumulated steps equal 1 process x batch 4;
//! - `evaluation`: a 5-clip split scored on 2 ranks counts every clip once, with one process's top-1;
//! - `fault`: NaN clips on rank 1 stop both ranks with rank 1's error and `last/` whole; bad data on rank 1
//!   stops `fit` on both ranks with rank 1's typed error;
//! - `resume`: a run stopped by rank 1 and resumed equals an uninterrupted run;
//! - `kill`: rank 1 SIGKILLs itself during training; the job must end (not hang) with a failure.
mod distributed_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actionclip::train::distributed::{Collective, Mpi};
use actionclip::train::TrainData;
use distributed_common::Shared;

const SCENARIOS: [&str; 5] = ["equivalence", "evaluation", "fault", "resume", "kill"];

/// How long a scenario's job may run before the driver ends it as hung.
const JOB_LIMIT: Duration = Duration::from_secs(600);

/// How long the `kill` job may run: the collective timeout and the time to start and train one step.
const KILL_JOB_LIMIT: Duration = Duration::from_secs(120);

/// The collective timeout of the `kill` scenario's ranks: a rank left waiting aborts the job after this.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let scenario = std::env::args().find_map(|a| a.strip_prefix("scenario=").map(str::to_string));
    match scenario {
        Some(name) => run_rank(&name),
        None => drive(),
    }
}

/// Launches every scenario under `mpirun -np 2` and checks how each ended.
fn drive() {
    let exe = std::env::current_exe().unwrap();
    let root = std::env::temp_dir().join(format!("actionclip_distributed_mpi_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    distributed_common::dataset(&root);
    for name in SCENARIOS {
        let started = Instant::now();
        let mut child = Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "RAYON_NUM_THREADS=1"])
            .arg(&exe)
            .arg(format!("scenario={name}"))
            .env("ACTIONCLIP_TEST_ROOT", &root)
            // Containers often forbid the cross-memory attach Open MPI's shared-memory transport tries first.
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mpirun (Open MPI) must be installed to run the MPI tests");
        let limit = if name == "kill" { KILL_JOB_LIMIT } else { JOB_LIMIT };
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("scenario {name}: the job still runs after {limit:?}: a rank hangs");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let seconds = started.elapsed().as_secs_f64();
        match name {
            "kill" => assert!(!status.success(), "scenario kill: the job should fail when a rank is killed"),
            _ => assert!(status.success(), "scenario {name}: {status}"),
        }
        eprintln!("scenario {name}: {status} after {seconds:.1} s");
    }
    let _ = std::fs::remove_dir_all(&root);
    eprintln!("distributed_mpi: {} scenarios passed", SCENARIOS.len());
}

/// This process's rank of scenario `name`.
fn run_rank(name: &str) {
    let root = PathBuf::from(std::env::var("ACTIONCLIP_TEST_ROOT").expect("launched by the driver"));
    let timeout = if name == "kill" { KILL_TIMEOUT } else { JOB_LIMIT };
    let mpi: Shared = Rc::new(Mpi::with_timeout(timeout).unwrap());
    assert_eq!(mpi.world_size(), 2, "run under mpirun -np 2");
    let rank = mpi.rank();
    let run = root.join(format!("{name}_run"));
    match name {
        "equivalence" => {
            if let Some(diff) = distributed_common::equivalence(&mpi, &root) {
                eprintln!(
                    "2 MPI ranks x batch 2 vs 1 process x batch 4: weights differ by at most {diff:e} of their scale"
                );
            }
        }
        "evaluation" => distributed_common::evaluation(&mpi, &root),
        "fault" => {
            distributed_common::nan_on_one_rank(&mpi, &run);
            distributed_common::bad_data_on_one_rank(&mpi, &root);
        }
        "resume" => distributed_common::resume(&mpi, &root, &run),
        "kill" => kill_rank_1(&mpi, &root),
        other => panic!("unknown scenario {other}"),
    }
    eprintln!("rank {rank}: scenario {name} passed");
}

/// Trains; rank 1 SIGKILLs itself after the first step, so rank 0 waits in its next collective until
/// `mpirun` (or the collective timeout) ends it.
fn kill_rank_1(mpi: &Shared, root: &Path) {
    struct KillAfterFirstStep(usize);
    impl actionclip::train::Observer for KillAfterFirstStep {
        fn event(&mut self, event: &actionclip::train::Event<'_>) {
            if let (1, actionclip::train::Event::Step(_)) = (self.0, event) {
                let pid = std::process::id().to_string();
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        }
    }
    let mut t = distributed_common::trainer(distributed_common::train_config(2), mpi);
    let data = TrainData { test: None, ..distributed_common::data(root, distributed_common::BATCH) };
    let _ = t.fit(&data, &mut KillAfterFirstStep(mpi.rank()));
    panic!("rank {}: training went on after rank 1 was killed", mpi.rank());
}
