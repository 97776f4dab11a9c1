//! A threaded clip loader: worker threads build whole batches, a bounded window keeps at most
//! `workers + prefetch` batches ahead of the consumer (memory stays bounded), and batches come out in
//! order, so an epoch is the same for a given seed whatever the thread timing.
//!
//! A clip that cannot be loaded (missing file, corrupt or truncated video, missing frame, empty folder)
//! never ends the epoch: it is reported with its path and reason, then skipped or replaced by another
//! clip chosen deterministically, and counted in the epoch's [`LoaderReport`].
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;

use super::pipeline::ClipPipeline;
use super::sampling::{keyed_rng, sample_rng};
use super::shard::Shard;
use super::ucf101::VideoDataset;
use crate::error::{Error, Result};

const SHUFFLE_DOMAIN: u64 = 0x5348_5546_464c_4501; // "SHUFFLE"
const REPLACE_DOMAIN: u64 = 0x5245_504c_4143_4501; // "REPLACE"

/// What to do with a clip that cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OnFailure {
    /// Leave it out: the batch is one clip shorter.
    Skip,
    /// Load another clip instead (drawn deterministically from the epoch's seed and the position),
    /// up to `attempts` tries, then skip.
    Replace {
        /// Maximum replacement tries per failed clip.
        attempts: usize,
    },
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Clips per batch.
    pub batch_size: usize,
    /// Worker threads (0: load on the consumer's thread).
    pub workers: usize,
    /// Finished batches that may wait for the consumer. At most `workers + prefetch` batches exist at
    /// any time (being built or waiting), which bounds memory.
    pub prefetch: usize,
    /// Shuffle the clip order each epoch.
    pub shuffle: bool,
    /// Seed of the shuffle, the sampling and the augmentation.
    pub seed: u64,
    /// Drop the last batch when it is not full.
    pub drop_last: bool,
    /// Failed-clip policy.
    pub on_failure: OnFailure,
    /// Dtype of the frames tensor (F32, F16 or BF16).
    pub dtype: DType,
    /// Device the batches are moved to.
    pub device: Device,
}

impl Default for LoaderConfig {
    /// Batch 8, two workers, two batches of prefetch, shuffled with seed 0, failed clips replaced
    /// (3 tries), f32 on the CPU.
    fn default() -> Self {
        Self {
            batch_size: 8,
            workers: 2,
            prefetch: 2,
            shuffle: true,
            seed: 0,
            drop_last: false,
            on_failure: OnFailure::Replace { attempts: 3 },
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// A clip that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleFailure {
    /// Its index in the dataset.
    pub sample: usize,
    /// Its path.
    pub path: PathBuf,
    /// Why (the error's message, which names the file).
    pub reason: String,
    /// The dataset index of the clip that took its place, if one did.
    pub replaced_by: Option<usize>,
}

/// One batch of clips.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Frames `[B, T, 3, H, W]` (or `[B, V, T, 3, H, W]` for multi-view pipelines).
    pub frames: Tensor,
    /// Labels `[B]` u32.
    pub labels: Tensor,
    /// Dataset indices of the clips, in batch order.
    pub ids: Vec<usize>,
    /// Position of the batch in the epoch (0-based; a batch whose clips all failed is not yielded, so
    /// numbers can skip).
    pub index: usize,
    /// Clips of this batch that failed (already skipped or replaced).
    pub failures: Vec<SampleFailure>,
}

/// What happened in an epoch (so far, while it runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderReport {
    /// The epoch number.
    pub epoch: u64,
    /// Batches yielded.
    pub batches: usize,
    /// Clips delivered in those batches.
    pub samples: usize,
    /// Every failed clip, in batch order.
    pub failures: Vec<SampleFailure>,
}

impl LoaderReport {
    /// Number of failed clips.
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// Failed clips that were replaced.
    pub fn replaced(&self) -> usize {
        self.failures.iter().filter(|f| f.replaced_by.is_some()).count()
    }

    /// Failed clips that were left out.
    pub fn skipped(&self) -> usize {
        self.failures.iter().filter(|f| f.replaced_by.is_none()).count()
    }
}

/// Loads a dataset through a pipeline in batches.
#[derive(Debug, Clone)]
pub struct Loader {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dataset: VideoDataset,
    pipeline: ClipPipeline,
    cfg: LoaderConfig,
    /// This process's share of every epoch in a data-parallel job (`None`: the whole epoch).
    shard: Option<Shard>,
}

impl Loader {
    /// A loader over `dataset` with `pipeline`.
    pub fn new(dataset: VideoDataset, pipeline: ClipPipeline, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::Config("loader batch_size must be at least 1".into()));
        }
        if !matches!(cfg.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Config(format!("loader dtype must be f32, f16 or bf16, not {:?}", cfg.dtype)));
        }
        Ok(Self { shared: Arc::new(Shared { dataset, pipeline, cfg, shard: None }) })
    }

    /// The same loader reading only `shard`'s part of every epoch (data-parallel training or evaluation;
    /// see [`Shard`]). Every rank must build it from the same dataset, seed and settings.
    pub fn sharded(&self, shard: Shard) -> Self {
        let Shared { dataset, pipeline, cfg, .. } = &*self.shared;
        let shared =
            Shared { dataset: dataset.clone(), pipeline: pipeline.clone(), cfg: cfg.clone(), shard: Some(shard) };
        Self { shared: Arc::new(shared) }
    }

    /// The share of every epoch this loader reads (`None`: the whole epoch).
    pub fn shard(&self) -> Option<Shard> {
        self.shared.shard
    }

    /// The dataset.
    pub fn dataset(&self) -> &VideoDataset {
        &self.shared.dataset
    }

    /// The settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.cfg
    }

    /// Batches per epoch (before failures; this process's share when sharded).
    pub fn num_batches(&self) -> usize {
        let cfg = &self.shared.cfg;
        let (n, b) = (self.shared.dataset.len(), cfg.batch_size);
        let n = self.shared.shard.map_or(n, |s| s.len(n, b, cfg.drop_last));
        if cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The clip order of `epoch` (dataset indices; this process's share when sharded).
    fn order(&self, epoch: u64) -> Vec<usize> {
        let cfg = &self.shared.cfg;
        let mut order: Vec<usize> = (0..self.shared.dataset.len()).collect();
        if cfg.shuffle {
            order.shuffle(&mut keyed_rng(cfg.seed, epoch, 0, SHUFFLE_DOMAIN));
        }
        match self.shared.shard {
            Some(shard) => shard.select(&order, cfg.batch_size, cfg.drop_last),
            None => order,
        }
    }

    /// Starts `epoch`: an iterator of batches (errors only for tensor construction; clip failures are
    /// reported in [`Batch::failures`] and [`Epoch::report`]).
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let order = Arc::new(self.order(epoch));
        let num_batches = self.num_batches();
        let window = Arc::new((Mutex::new(Window { next: 0, delivered: 0, stop: false }), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        for _ in 0..self.shared.cfg.workers {
            let (shared, order, window, tx) = (self.shared.clone(), order.clone(), window.clone(), tx.clone());
            handles.push(std::thread::spawn(move || worker(&shared, epoch, &order, num_batches, &window, &tx)));
        }
        Epoch {
            shared: self.shared.clone(),
            epoch,
            order,
            num_batches,
            window,
            rx,
            handles,
            pending: BTreeMap::new(),
            report: LoaderReport { epoch, ..Default::default() },
        }
    }
}

#[derive(Debug)]
struct Window {
    /// Next batch index a worker may take.
    next: usize,
    /// Batches handed to the consumer.
    delivered: usize,
    stop: bool,
}

/// A built batch before it reaches the consumer (`None`: every clip of it failed).
struct Built {
    index: usize,
    batch: Result<Option<Ready>>,
    failures: Vec<SampleFailure>,
}

/// The loaded part of a batch: frames on the CPU, labels, dataset ids.
struct Ready {
    frames: Tensor,
    labels: Vec<u32>,
    ids: Vec<usize>,
}

fn worker(
    shared: &Shared,
    epoch: u64,
    order: &[usize],
    num_batches: usize,
    window: &(Mutex<Window>, Condvar),
    tx: &mpsc::Sender<Built>,
) {
    // Batches taken but not yet delivered: one per worker being built plus `prefetch` waiting.
    let ahead = shared.cfg.workers.max(1) + shared.cfg.prefetch;
    loop {
        let index = {
            let (lock, cv) = window;
            let Ok(mut w) = lock.lock() else { return };
            while !w.stop && w.next < num_batches && w.next >= w.delivered + ahead {
                w = match cv.wait(w) {
                    Ok(w) => w,
                    Err(_) => return,
                };
            }
            if w.stop || w.next >= num_batches {
                return;
            }
            w.next += 1;
            w.next - 1
        };
        // A panic inside a pipeline must not strand the consumer waiting for this batch.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build_batch(shared, epoch, order, index)))
            .unwrap_or_else(|_| Built {
                index,
                batch: Err(Error::Config(format!("a loader worker panicked while building batch {index}"))),
                failures: Vec::new(),
            });
        if tx.send(built).is_err() {
            return;
        }
    }
}

/// Loads one clip into `out`, replacing it on failure per the policy. Returns the id that was used.
fn load_slot(
    shared: &Shared,
    epoch: u64,
    position: usize,
    id: usize,
    out: &mut [f32],
    failures: &mut Vec<SampleFailure>,
) -> Option<usize> {
    let cfg = &shared.cfg;
    let attempts = match cfg.on_failure {
        OnFailure::Skip => 0,
        OnFailure::Replace { attempts } => attempts,
    };
    let mut replace_rng = keyed_rng(cfg.seed, epoch, position as u64, REPLACE_DOMAIN);
    let mut current = id;
    for attempt in 0..=attempts {
        let sample = &shared.dataset.samples[current];
        let mut rng = sample_rng(cfg.seed, epoch, current as u64);
        match shared.pipeline.load_into(&sample.path, sample.num_frames, &mut rng, out) {
            Ok(_) => return Some(current),
            Err(e) => {
                let next = (attempt < attempts && shared.dataset.len() > 1)
                    .then(|| replace_rng.gen_range(0..shared.dataset.len()));
                failures.push(SampleFailure {
                    sample: current,
                    path: sample.path.clone(),
                    reason: e.to_string(),
                    replaced_by: next,
                });
                match next {
                    Some(n) => current = n,
                    None => return None,
                }
            }
        }
    }
    None
}

fn build_batch(shared: &Shared, epoch: u64, order: &[usize], index: usize) -> Built {
    let b = shared.cfg.batch_size;
    let ids = &order[index * b..((index + 1) * b).min(order.len())];
    let mut failures = Vec::new();
    // Clips are written straight into the batch buffer; a failed slot is overwritten by the next clip.
    let clip_len = shared.pipeline.clip_len();
    let mut data = vec![0f32; clip_len * ids.len()];
    let mut labels = Vec::with_capacity(ids.len());
    let mut used = Vec::with_capacity(ids.len());
    for (k, &id) in ids.iter().enumerate() {
        let at = used.len() * clip_len;
        if let Some(got) = load_slot(shared, epoch, index * b + k, id, &mut data[at..at + clip_len], &mut failures) {
            labels.push(shared.dataset.samples[got].label as u32);
            used.push(got);
        }
    }
    if used.is_empty() {
        return Built { index, batch: Ok(None), failures };
    }
    data.truncate(used.len() * clip_len);
    let mut shape = vec![used.len()];
    shape.extend(shared.pipeline.clip_shape());
    let tensor = Tensor::from_vec(data, shape.as_slice(), &Device::Cpu).and_then(|t| t.to_dtype(shared.cfg.dtype));
    let batch = tensor.map(|frames| Some(Ready { frames, labels, ids: used })).map_err(Error::from);
    Built { index, batch, failures }
}

/// One epoch in progress: iterate it for batches, then read [`Epoch::report`].
pub struct Epoch {
    shared: Arc<Shared>,
    epoch: u64,
    order: Arc<Vec<usize>>,
    num_batches: usize,
    window: Arc<(Mutex<Window>, Condvar)>,
    rx: mpsc::Receiver<Built>,
    handles: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Built>,
    report: LoaderReport,
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch")
            .field("epoch", &self.epoch)
            .field("num_batches", &self.num_batches)
            .field("report", &self.report)
            .finish()
    }
}

impl Epoch {
    /// What happened so far (complete once the iterator has returned `None`).
    pub fn report(&self) -> &LoaderReport {
        &self.report
    }

    /// Runs the rest of the epoch, discarding batches, and returns the final report.
    pub fn finish(mut self) -> LoaderReport {
        for _ in self.by_ref() {}
        std::mem::take(&mut self.report)
    }

    fn delivered(&self) -> usize {
        self.window.0.lock().map(|w| w.delivered).unwrap_or(usize::MAX)
    }

    fn advance(&self) {
        let (lock, cv) = &*self.window;
        if let Ok(mut w) = lock.lock() {
            w.delivered += 1;
            if self.handles.is_empty() {
                w.next = w.delivered;
            }
        }
        cv.notify_all();
    }

    /// The next built batch in order (from a worker, or built here without workers).
    fn next_built(&mut self) -> Option<Built> {
        let want = self.delivered();
        if want >= self.num_batches {
            return None;
        }
        if self.handles.is_empty() {
            return Some(build_batch(&self.shared, self.epoch, &self.order, want));
        }
        loop {
            if let Some(b) = self.pending.remove(&want) {
                return Some(b);
            }
            match self.rx.recv() {
                Ok(b) => {
                    self.pending.insert(b.index, b);
                }
                // All workers ended without building `want` (a worker panicked): stop the epoch.
                Err(_) => return None,
            }
        }
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let built = self.next_built()?;
            self.advance();
            self.report.failures.extend(built.failures.iter().cloned());
            match built.batch {
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
                Ok(Some(Ready { frames, labels, ids })) => {
                    let n = ids.len();
                    let frames = match frames.to_device(&self.shared.cfg.device) {
                        Ok(f) => f,
                        Err(e) => return Some(Err(e.into())),
                    };
                    let labels = match Tensor::from_vec(labels, n, &self.shared.cfg.device) {
                        Ok(l) => l,
                        Err(e) => return Some(Err(e.into())),
                    };
                    self.report.batches += 1;
                    self.report.samples += n;
                    return Some(Ok(Batch { frames, labels, ids, index: built.index, failures: built.failures }));
                }
            }
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.window;
            if let Ok(mut w) = lock.lock() {
                w.stop = true;
            }
            cv.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
