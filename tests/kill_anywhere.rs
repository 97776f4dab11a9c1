//! Kill-anywhere training: `examples/finetune_ucf101 --demo` (a tiny model on the synthetic dataset) runs in
//! a child process that is SIGKILLed at random moments and resumed with `--resume` each time. Every other
//! kill waits until a checkpoint swap is under way (a `.last.tmp`, `.best.tmp` or `.*.old` directory beside
//! the checkpoints), so kills land inside checkpoint writes too. After every kill `last/` and `best/` must
//! load (or their `.old` copy, during a swap, which is what a resume reads); the finished run's weights,
//! optimizer moments and metrics must equal an uninterrupted run's bit for bit.
//!
//! `ACTIONCLIP_KILLS` sets how many kills (3 by default, as in CI; the recorded campaign used more) and
//! `ACTIONCLIP_KILL_SEED` the seed that draws the moments (printed, to replay a failure).
#![cfg(unix)]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actionclip::train::checkpoint::read_state;
use actionclip::train::metrics::{read_records, Record};
use actionclip::ActionClip;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

/// Epochs of the demo run: enough that the kills fall in different epochs and that every resume has work
/// left.
const EPOCHS: usize = 6;

/// The demo fine-tune writing into `out`; with `resume`, continuing from `out/last`.
fn finetune(out: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(common::example("finetune_ucf101"));
    cmd.args(["--demo", "--demo-clips", "4", "--batch-size", "8", "--workers", "2", "--no-zero-shot"])
        .args(["--seed", "11", "--epochs", &EPOCHS.to_string(), "--output"])
        .arg(out);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::piped());
    cmd
}

/// Starts `cmd` and returns the child with a channel that yields once training has begun (the line
/// announcing it), after the demo dataset is written and the model is built.
fn spawn(mut cmd: Command) -> (Child, mpsc::Receiver<()>) {
    let mut child = cmd.spawn().expect("start finetune_ucf101");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("training:") || line.starts_with("resuming:") {
                let _ = tx.send(());
            }
        }
    });
    (child, rx)
}

/// Whether `dir` (the run directory) holds a checkpoint to resume from.
fn has_checkpoint(dir: &Path) -> bool {
    ["last", ".last.old"].iter().any(|n| dir.join(n).join("trainer_state.json").is_file())
}

/// The directories a checkpoint swap creates beside the checkpoints.
const SWAP_DIRS: [&str; 4] = [".last.tmp", ".best.tmp", ".last.old", ".best.old"];

/// Whether a checkpoint swap started in `dir` since `since` and is not finished: one of its directories
/// was created or renamed (its inode changed) after then, so leftovers of an earlier kill do not count.
fn swap_started_since(dir: &Path, since: SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    SWAP_DIRS.iter().filter_map(|n| std::fs::metadata(dir.join(n)).ok()).any(|m| {
        let changed = UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
        changed >= since
    })
}

/// The checkpoint a resume reads for `name` (`last` or `best`): the directory, or its `.old` copy while a
/// swap is between its two renames. `None` when neither has been written yet.
fn readable_checkpoint(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!(".{name}.old"))].into_iter().find(|d| d.join("trainer_state.json").is_file())
}

/// Every tensor of a safetensors file.
fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts two sets of tensors are equal bit for bit.
fn assert_bitwise_equal(what: &str, a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    assert_eq!(a.len(), b.len(), "{what}: tensor count");
    for (name, x) in a {
        let y = b.get(name).unwrap_or_else(|| panic!("{what}: {name} missing"));
        assert_eq!(x.dims(), y.dims(), "{what}: {name} shape");
        let bits = |t: &Tensor| -> Vec<u32> {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert!(bits(x) == bits(y), "{what}: {name} differs");
    }
}

/// The metrics that describe the run's history (timings left out): per step, evaluation and epoch.
fn history(dir: &Path) -> Vec<String> {
    read_records(&dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Record::Step(s) => {
                format!("step {} {} {} {:e} {:e} {:e}", s.epoch, s.step, s.batch, s.loss, s.lr, s.grad_norm)
            }
            Record::Eval(e) => format!("eval {} {} {} {:e} {:e}", e.epoch, e.step, e.samples, e.top1, e.top5),
            Record::Epoch(e) => {
                format!("epoch {} {} {:e} {:?} {:?}", e.epoch, e.step, e.train_loss, e.top1, e.best_top1)
            }
        })
        .collect()
}

/// Asserts a finished run in `dir` equals the uninterrupted one in `reference`.
fn assert_same_run(dir: &Path, reference: &Path) {
    for name in ["last", "best"] {
        assert_bitwise_equal(
            &format!("{name}/model"),
            &tensors(&dir.join(name).join("model.safetensors")),
            &tensors(&reference.join(name).join("model.safetensors")),
        );
        assert_bitwise_equal(
            &format!("{name}/optimizer"),
            &tensors(&dir.join(name).join("optimizer.safetensors")),
            &tensors(&reference.join(name).join("optimizer.safetensors")),
        );
    }
    assert_eq!(history(dir), history(reference), "metrics.jsonl");
}

/// Checks that the checkpoints a kill left behind load: the model, and the trainer state a resume reads.
fn assert_checkpoints_load(dir: &Path, seen: &mut [bool; 2]) {
    for (i, name) in ["last", "best"].into_iter().enumerate() {
        match readable_checkpoint(dir, name) {
            Some(ckpt) => {
                read_state(&ckpt).unwrap_or_else(|e| panic!("{}: {e}", ckpt.display()));
                ActionClip::load(&ckpt, &Device::Cpu, DType::F32).unwrap_or_else(|e| panic!("{}: {e}", ckpt.display()));
                seen[i] = true;
            }
            None => assert!(!seen[i], "{name}/ was written once and is gone"),
        }
    }
}

#[test]
fn training_killed_anywhere_resumes_to_the_same_weights() {
    let kills: usize = std::env::var("ACTIONCLIP_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seed: u64 = std::env::var("ACTIONCLIP_KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(2026);
    eprintln!("{kills} kills, seed {seed}");
    let root = tempfile::tempdir().unwrap();

    let reference = root.path().join("uninterrupted");
    let (mut child, started) = spawn(finetune(&reference, false));
    started.recv_timeout(Duration::from_secs(120)).expect("the demo starts training");
    let t0 = Instant::now();
    assert!(child.wait().unwrap().success(), "the uninterrupted run fails");
    let epoch_time = t0.elapsed() / EPOCHS as u32;
    eprintln!("uninterrupted: {:.2} s an epoch", epoch_time.as_secs_f64());

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = root.path().join("killed");
    let mut seen = [false; 2];
    let (mut done, mut finished_runs) = (0, 0);
    loop {
        let spawned = SystemTime::now();
        let (mut child, started) = spawn(finetune(&dir, has_checkpoint(&dir)));
        if done == kills {
            assert!(child.wait().unwrap().success(), "the last resume fails");
            assert_same_run(&dir, &reference);
            break;
        }
        let deadline = Duration::from_secs(120);
        started.recv_timeout(deadline).expect("the demo starts training");
        let during_swap = done % 2 == 1;
        let delay = epoch_time.mul_f64(rng.gen_range(0.0..2.0));
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < deadline {
            let due = if during_swap { swap_started_since(&dir, spawned) } else { t.elapsed() >= delay };
            if due {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if child.try_wait().unwrap().is_some() {
            // The run ended before its kill came: it must equal the reference; start again from nothing.
            assert!(child.wait().unwrap().success());
            assert_same_run(&dir, &reference);
            finished_runs += 1;
            std::fs::remove_dir_all(&dir).unwrap();
            seen = [false; 2];
            continue;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        done += 1;
        let swap_state = if swap_started_since(&dir, spawned) { "inside a checkpoint swap" } else { "outside a swap" };
        eprintln!("kill {done} after {:.3} s, {swap_state}", t.elapsed().as_secs_f64());
        assert_checkpoints_load(&dir, &mut seen);
    }
    eprintln!("{done} kills, every resume equal to the uninterrupted run ({finished_runs} runs finished early)");
}
