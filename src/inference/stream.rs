//! Live streams and long videos classified window by window ([`StreamClassifier`]).
//!
//! A reader thread decodes the input frame by frame ([`FrameStream`]), converts and preprocesses only
//! the frames some window samples, keeps them in a small buffer until the last window that needs them
//! is complete, and hands complete windows to the caller's thread, which encodes and classifies them.
//! Each window is read like an evaluation clip: the model's frame count of segment centres inside the
//! window, the test transform. Over a file, the windows equal those of
//! [`ZeroShotClassifier::predict_windows_path`] (only complete windows are emitted; a tail shorter
//! than the window is not classified).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::data::{FrameStream, Sampling, StreamInfo, StreamOptions, TestTransform, Watchdog};
use crate::model::top_k;
use crate::{Error, Result, ZeroShotClassifier};

/// How often the caller's thread checks the stall watchdog while it waits for a window.
const POLL: Duration = Duration::from_millis(50);

/// A window length or stride, in frames or in seconds of the stream's frame rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    /// A number of frames.
    Frames(usize),
    /// Seconds, converted to frames with the stream's frame rate (rounded, at least one frame).
    Seconds(f64),
}

impl Span {
    /// The span in frames at `fps`.
    fn frames(self, fps: f64, what: &str) -> Result<usize> {
        let n = match self {
            Span::Frames(n) => n,
            Span::Seconds(s) if !(s.is_finite() && s > 0.0) => {
                return Err(Error::Config(format!("the {what} must be a positive number of seconds (got {s})")))
            }
            Span::Seconds(_) if fps <= 0.0 => {
                return Err(Error::Config(format!(
                    "the stream has no frame rate, so its {what} cannot be given in seconds; give it in frames"
                )))
            }
            Span::Seconds(s) => ((s * fps).round() as usize).max(1),
        };
        if n == 0 {
            return Err(Error::Config(format!("the {what} must be at least one frame")));
        }
        Ok(n)
    }
}

/// Settings for a [`StreamClassifier`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    /// Length of a window.
    pub window: Span,
    /// Distance between the starts of consecutive windows.
    pub stride: Span,
    /// Labels reported per window.
    pub top_k: usize,
    /// Weight of the previous smoothed probabilities in an exponential moving average over windows
    /// (`0` reports each window on its own; `0.5` halves the weight of a window at every step).
    pub smoothing: f32,
    /// Skip windows while the model is behind a live source, so predictions stay current (the skipped
    /// windows are counted in [`StreamWindow::dropped_windows`]). Leave it off for files, where every
    /// window should be classified.
    pub drop_late_windows: bool,
    /// How the input is opened (stall timeout, FFmpeg options).
    pub input: StreamOptions,
}

impl Default for StreamConfig {
    /// Windows of 2 s every 1 s, top 5, no smoothing, no dropping, a 10 s stall timeout.
    fn default() -> Self {
        Self {
            window: Span::Seconds(2.0),
            stride: Span::Seconds(1.0),
            top_k: 5,
            smoothing: 0.0,
            drop_late_windows: false,
            input: StreamOptions::default(),
        }
    }
}

/// The prediction for one window of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamWindow {
    /// 0-based window number (dropped windows have numbers too).
    pub index: usize,
    /// First frame of the window (0-based, inclusive).
    pub start_frame: usize,
    /// One past the last frame of the window.
    pub end_frame: usize,
    /// Stream time of the window's first frame, in seconds since the first frame.
    pub start_s: f64,
    /// Stream time just after the window's last frame (its time plus one frame).
    pub end_s: f64,
    /// The most probable labels with their (smoothed, when asked for) probabilities, most probable first.
    pub top: Vec<(String, f32)>,
    /// Seconds from the arrival of the window's last frame to this prediction.
    pub latency_s: f64,
    /// Windows skipped so far because the model was behind ([`StreamConfig::drop_late_windows`]).
    pub dropped_windows: usize,
    /// Packets the decoder could not read or decode so far (skipped).
    pub damaged_packets: usize,
    /// Frames missing from the stream so far by its clock (gaps in the timestamps, see
    /// [`FrameStream::missing_frames`]).
    pub missing_frames: usize,
}

/// Classifies a live input or a long video window by window with a [`ZeroShotClassifier`].
///
/// ```no_run
/// # fn main() -> actionclip::Result<()> {
/// use actionclip::inference::{Span, StreamClassifier, StreamConfig};
/// use actionclip::{inference, prompts, ActionClip, Tokenizer, ZeroShotClassifier};
/// let (model, _) = ActionClip::load("model_best.pt", &candle_core::Device::Cpu, candle_core::DType::F32)?;
/// let tokenizer = Tokenizer::new();
/// let labels = inference::parse_labels("ucf101", true)?;
/// let zs = ZeroShotClassifier::new(&model, &tokenizer, &labels.labels, &prompts::ACTIONCLIP_TEMPLATES)?;
/// let config = StreamConfig { window: Span::Seconds(2.0), stride: Span::Seconds(0.5), ..Default::default() };
/// for window in StreamClassifier::new(&zs, config)?.run("/dev/video0")? {
///     let w = window?;
///     println!("{:.1}-{:.1} s: {} ({:.0}%)", w.start_s, w.end_s, w.top[0].0, 100.0 * w.top[0].1);
/// }
/// # Ok(()) }
/// ```
pub struct StreamClassifier<'a> {
    classifier: &'a ZeroShotClassifier<'a>,
    config: StreamConfig,
}

impl std::fmt::Debug for StreamClassifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamClassifier")
            .field("labels", &self.classifier.labels().len())
            .field("config", &self.config)
            .finish()
    }
}

impl<'a> StreamClassifier<'a> {
    /// A stream classifier over `classifier`'s labels; fails on a smoothing weight outside `[0, 1)` or
    /// a `top_k` of zero.
    pub fn new(classifier: &'a ZeroShotClassifier<'a>, config: StreamConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&config.smoothing) {
            return Err(Error::Config(format!("smoothing must be in [0, 1), got {}", config.smoothing)));
        }
        if config.top_k == 0 {
            return Err(Error::Config("top_k must be at least 1".into()));
        }
        Ok(Self { classifier, config })
    }

    /// The settings.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Starts reading `input` (anything `ffmpeg -i` takes: a file, `pipe:0`, a URL, `/dev/video0`) and
    /// returns the windows as they complete. The iterator ends when the input ends; a stall longer
    /// than the stall timeout ends it with [`Error::StreamStalled`]. Dropping it stops the reader.
    pub fn run(&self, input: &str) -> Result<StreamWindows<'_>> {
        let cfg = self.classifier.model().config();
        let plan = Plan {
            input: input.to_string(),
            options: self.config.input.clone(),
            window: self.config.window,
            stride: self.config.stride,
            frames: cfg.frames,
            size: cfg.clip.vision.image_size as u32,
            drop_late: self.config.drop_late_windows,
        };
        let watchdog = Arc::new(Watchdog::new(self.config.input.stall_timeout));
        let dropped = Arc::new(AtomicUsize::new(0));
        // Files: one window waits while the model encodes the current one, so the model never waits
        // for the decoder. Live inputs: a window is handed over only when the model is free, so the
        // window it gets is the newest and the latency is one encoding.
        let (tx, rx) = mpsc::sync_channel(if self.config.drop_late_windows { 0 } else { 1 });
        let reader = Reader { plan, watchdog: Arc::clone(&watchdog), dropped: Arc::clone(&dropped), tx };
        thread::Builder::new()
            .name("actionclip-stream".into())
            .spawn(move || reader.run())
            .map_err(|e| Error::Config(format!("cannot start the stream reader thread: {e}")))?;
        Ok(StreamWindows {
            classifier: self,
            input: input.to_string(),
            rx,
            watchdog,
            dropped,
            info: None,
            smoothed: None,
            done: false,
        })
    }
}

/// The windows of one input, in order, as they complete (see [`StreamClassifier::run`]).
pub struct StreamWindows<'a> {
    classifier: &'a StreamClassifier<'a>,
    input: String,
    rx: Receiver<Message>,
    watchdog: Arc<Watchdog>,
    dropped: Arc<AtomicUsize>,
    info: Option<StreamInfo>,
    smoothed: Option<Vec<f32>>,
    done: bool,
}

impl std::fmt::Debug for StreamWindows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWindows").field("input", &self.input).field("info", &self.info).finish()
    }
}

impl StreamWindows<'_> {
    /// The video stream's size, rate and codec, once the input is open.
    pub fn info(&self) -> Option<&StreamInfo> {
        self.info.as_ref()
    }

    /// Encodes and classifies one window.
    // [T, 3, S, S] -> top-k labels
    fn classify(&mut self, window: WindowInput) -> Result<StreamWindow> {
        let zs = self.classifier.classifier;
        let cfg = zs.model().config();
        let (t, s) = (cfg.frames, cfg.clip.vision.image_size);
        let clip = Tensor::from_vec(window.data, (1, t, 3, s, s), &Device::Cpu)?.to_device(zs.model().device())?;
        let features = zs.model().encode_video(&clip)?; // [1, D]
        let probs = zs.probabilities(&features)?.squeeze(0)?.to_vec1::<f32>()?; // [C]
        let alpha = self.classifier.config.smoothing;
        let probs = match self.smoothed.take() {
            Some(prev) if alpha > 0.0 => prev.iter().zip(&probs).map(|(p, q)| alpha * p + (1.0 - alpha) * q).collect(),
            _ => probs,
        };
        let top =
            top_k(&probs, self.classifier.config.top_k).into_iter().map(|(i, p)| (zs.labels()[i].clone(), p)).collect();
        self.smoothed = Some(probs);
        Ok(StreamWindow {
            index: window.index,
            start_frame: window.start_frame,
            end_frame: window.end_frame,
            start_s: window.start_s,
            end_s: window.end_s,
            top,
            latency_s: window.last_arrived.elapsed().as_secs_f64(),
            dropped_windows: self.dropped.load(Ordering::Relaxed),
            damaged_packets: window.damaged_packets,
            missing_frames: window.missing_frames,
        })
    }
}

impl Iterator for StreamWindows<'_> {
    type Item = Result<StreamWindow>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let waiting_since = Instant::now();
        loop {
            match self.rx.recv_timeout(POLL) {
                Ok(Message::Opened(info)) => self.info = Some(info),
                Ok(Message::Window(w)) => return Some(self.classify(w)),
                Ok(Message::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Message::End) | Err(RecvTimeoutError::Disconnected) => {
                    self.done = true;
                    return None;
                }
                Err(RecvTimeoutError::Timeout) => {
                    // The reader may sit in a read that FFmpeg does not interrupt (a pipe, a device):
                    // give up here and leave it to end when its input closes.
                    if waiting_since.elapsed() > self.watchdog.timeout() && self.watchdog.stalled() {
                        self.watchdog.cancel();
                        self.done = true;
                        let seconds = self.watchdog.silent_for().as_secs_f64();
                        return Some(Err(Error::StreamStalled { input: self.input.clone(), seconds }));
                    }
                }
            }
        }
    }
}

impl Drop for StreamWindows<'_> {
    fn drop(&mut self) {
        self.watchdog.cancel();
    }
}

/// What the reader thread sends.
enum Message {
    Opened(StreamInfo),
    Window(WindowInput),
    Failed(Error),
    End,
}

/// A complete window, preprocessed.
struct WindowInput {
    index: usize,
    start_frame: usize,
    end_frame: usize,
    start_s: f64,
    end_s: f64,
    last_arrived: Instant,
    damaged_packets: usize,
    missing_frames: usize,
    /// `[T, 3, S, S]` values.
    data: Vec<f32>,
}

/// What the reader thread needs to know.
struct Plan {
    input: String,
    options: StreamOptions,
    window: Span,
    stride: Span,
    frames: usize,
    size: u32,
    drop_late: bool,
}

/// The reader thread: decodes, samples, preprocesses and assembles windows.
struct Reader {
    plan: Plan,
    watchdog: Arc<Watchdog>,
    dropped: Arc<AtomicUsize>,
    tx: SyncSender<Message>,
}

impl Reader {
    fn run(self) {
        if let Err(e) = self.read() {
            let _ = self.tx.send(Message::Failed(e));
        }
    }

    /// Reads the input to its end; `Ok` also when the caller went away.
    fn read(&self) -> Result<()> {
        let plan = &self.plan;
        let mut stream = FrameStream::open_watched(&plan.input, &plan.options, Arc::clone(&self.watchdog))?;
        let info = stream.info().clone();
        let window = plan.window.frames(info.fps, "window")?;
        let stride = plan.stride.frames(info.fps, "stride")?;
        if self.tx.send(Message::Opened(info.clone())).is_err() {
            return Ok(());
        }
        let offsets = Sampling::new(plan.frames)?.test_indices(window);
        let transform = TestTransform::new(plan.size);
        let plane = 3 * (plan.size as usize).pow(2);
        // Preprocessed sampled frames and the times of window starts, until no open window needs them.
        let mut sampled: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        let mut start_times: BTreeMap<usize, f64> = BTreeMap::new();
        let mut next_window = 0usize;
        let needed = |i: usize| offsets.iter().any(|&o| i >= o && (i - o).is_multiple_of(stride));
        while let Some(frame) = stream.next_frame(needed)? {
            let i = frame.index;
            if let Some(img) = &frame.image {
                let mut data = vec![0f32; plane];
                transform.apply_into(std::slice::from_ref(img), &mut data)?;
                sampled.insert(i, data);
            }
            if i.is_multiple_of(stride) {
                start_times.insert(i, frame.time_s);
            }
            let start = next_window * stride;
            if i + 1 < start + window {
                continue;
            }
            let frame_s = if info.fps > 0.0 { 1.0 / info.fps } else { 0.0 };
            let mut data = Vec::with_capacity(plan.frames * plane);
            for &o in &offsets {
                let values = sampled.get(&(start + o)).ok_or_else(|| {
                    Error::Config(format!("internal: frame {} of window {next_window} was not kept", start + o))
                })?;
                data.extend_from_slice(values);
            }
            let input = WindowInput {
                index: next_window,
                start_frame: start,
                end_frame: start + window,
                start_s: start_times.get(&start).copied().unwrap_or(frame.time_s),
                end_s: frame.time_s + frame_s,
                last_arrived: frame.arrived,
                damaged_packets: stream.damaged_packets(),
                missing_frames: stream.missing_frames(),
                data,
            };
            next_window += 1;
            let keep_from = next_window * stride;
            sampled.retain(|&k, _| k >= keep_from);
            start_times.retain(|&k, _| k >= keep_from);
            if !self.deliver(input) {
                return Ok(());
            }
        }
        let _ = self.tx.send(Message::End);
        Ok(())
    }

    /// Hands a window to the caller; `false` when the caller went away.
    fn deliver(&self, window: WindowInput) -> bool {
        let delivered = if self.plan.drop_late {
            match self.tx.try_send(Message::Window(window)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        } else {
            self.tx.send(Message::Window(window)).is_ok()
        };
        // Waiting for the caller is not silence of the input.
        self.watchdog.touch();
        delivered
    }
}
