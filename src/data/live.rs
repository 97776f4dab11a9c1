//! Any FFmpeg input read frame by frame (feature `video`): a file, `pipe:N` (a file descriptor, `pipe:0`
//! is standard input), a network URL (`rtsp://`, `udp://`, `http://`, ...) or a capture device such as
//! `/dev/video0`. Nothing is read ahead of the caller: a frame is decoded when it is asked for, and
//! converted to RGB only when the caller wants it, so memory stays bounded on endless inputs.
//!
//! A stall watchdog bounds every wait: when the input delivers no packet for the stall timeout, reading
//! fails with [`Error::StreamStalled`](crate::Error::StreamStalled). FFmpeg polls it inside network protocols and while probing; a
//! blocking read of a pipe or a device is not interrupted by FFmpeg, so callers that must never block
//! (the stream classifier) read on their own thread and check [`FrameStream::watchdog`] from outside.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::error::Result;

/// Stall detection shared between a [`FrameStream`] and whoever watches it.
#[derive(Debug)]
pub struct Watchdog {
    started: Instant,
    /// Milliseconds after `started` when the input last delivered a packet.
    last_packet_ms: AtomicU64,
    timeout: Duration,
    cancelled: AtomicBool,
}

impl Watchdog {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { started: Instant::now(), last_packet_ms: AtomicU64::new(0), timeout, cancelled: AtomicBool::new(false) }
    }

    /// Records that the input delivered data now.
    pub(crate) fn touch(&self) {
        self.last_packet_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the input last delivered data (or since opening, before the first packet).
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_packet_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether the input has been silent for longer than the stall timeout.
    pub fn stalled(&self) -> bool {
        self.silent_for() > self.timeout
    }

    /// The stall timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks the reader to stop at FFmpeg's next interrupt check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`Watchdog::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// FFmpeg's interrupt question: stop waiting?
    #[cfg(feature = "video")]
    fn should_interrupt(&self) -> bool {
        self.is_cancelled() || self.stalled()
    }
}

/// What [`FrameStream::open`] learns about the input's video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frame rate from the container (average, or FFmpeg's guess of the base rate); 0 when unknown.
    pub fps: f64,
    /// Codec name, for example `mpeg4`, `h264`, `rawvideo`.
    pub codec: String,
}

/// One decoded frame of a [`FrameStream`].
#[derive(Debug, Clone)]
pub struct StreamFrame {
    /// 0-based position in decoding (presentation) order.
    pub index: usize,
    /// Seconds since the first frame on the stream's clock (its timestamps; `index / fps` for frames
    /// without one).
    pub time_s: f64,
    /// When the decoder delivered the frame.
    pub arrived: Instant,
    /// The RGB frame, when the caller asked for it.
    pub image: Option<RgbImage>,
}

/// Settings for [`FrameStream::open`].
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOptions {
    /// Longest silence before reading fails with [`Error::StreamStalled`](crate::Error::StreamStalled).
    pub stall_timeout: Duration,
    /// FFmpeg options for the input (the `-option value` pairs of `ffmpeg` before `-i`), for example
    /// `("rtsp_transport", "tcp")`, `("video_size", "640x480")` or `("framerate", "30")`.
    pub ffmpeg_options: Vec<(String, String)>,
}

impl Default for StreamOptions {
    /// A 10 s stall timeout and no FFmpeg options.
    fn default() -> Self {
        Self { stall_timeout: Duration::from_secs(10), ffmpeg_options: Vec::new() }
    }
}

/// An FFmpeg input read one frame at a time (feature `video`).
///
/// ```no_run
/// # fn main() -> actionclip::Result<()> {
/// use actionclip::data::{FrameStream, StreamOptions};
/// let mut stream = FrameStream::open("rtsp://camera.local/stream", &StreamOptions::default())?;
/// // RGB only for every 10th frame; the others are decoded and skipped.
/// while let Some(frame) = stream.next_frame(|i| i % 10 == 0)? {
///     if let Some(img) = frame.image {
///         println!("{:.2} s: {}x{}", frame.time_s, img.width(), img.height());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct FrameStream {
    input: String,
    info: StreamInfo,
    watchdog: Arc<Watchdog>,
    #[cfg(feature = "video")]
    inner: imp::Decoder,
}

impl std::fmt::Debug for FrameStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameStream").field("input", &self.input).field("info", &self.info).finish()
    }
}

impl FrameStream {
    /// Opens `input` (anything `ffmpeg -i` takes) and its best video stream. Opening waits for enough
    /// data to recognise the format, at most the stall timeout.
    pub fn open(input: &str, options: &StreamOptions) -> Result<Self> {
        Self::open_watched(input, options, Arc::new(Watchdog::new(options.stall_timeout)))
    }

    /// [`FrameStream::open`] with a watchdog the caller already holds.
    pub(crate) fn open_watched(input: &str, options: &StreamOptions, watchdog: Arc<Watchdog>) -> Result<Self> {
        #[cfg(feature = "video")]
        {
            let (inner, info) = imp::Decoder::open(input, options, Arc::clone(&watchdog))?;
            Ok(Self { input: input.to_string(), info, watchdog, inner })
        }
        #[cfg(not(feature = "video"))]
        {
            let _ = (options, watchdog);
            Err(crate::error::Error::Video {
                path: input.into(),
                reason: "actionclip was built without the `video` feature; enable it (FFmpeg libraries needed)".into(),
            })
        }
    }

    /// The input as given to [`FrameStream::open`].
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The video stream's size, rate and codec.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The stall watchdog, to check or cancel the reader from another thread.
    pub fn watchdog(&self) -> Arc<Watchdog> {
        Arc::clone(&self.watchdog)
    }

    /// Packets FFmpeg could not read or decode so far (skipped; a damaged stream keeps going).
    pub fn damaged_packets(&self) -> usize {
        #[cfg(feature = "video")]
        {
            self.inner.damaged
        }
        #[cfg(not(feature = "video"))]
        {
            0
        }
    }

    /// Frames the stream's clock says are missing so far: gaps between consecutive timestamps longer than
    /// one and a half frame durations, counted in frames (a lossy network, a source that skipped frames).
    pub fn missing_frames(&self) -> usize {
        #[cfg(feature = "video")]
        {
            self.inner.missing
        }
        #[cfg(not(feature = "video"))]
        {
            0
        }
    }

    /// The next frame, with its RGB image when `want(index)` says so; `None` at the end of the input.
    pub fn next_frame(&mut self, want: impl FnOnce(usize) -> bool) -> Result<Option<StreamFrame>> {
        #[cfg(feature = "video")]
        {
            self.inner.next_frame(&self.input, want)
        }
        #[cfg(not(feature = "video"))]
        {
            let _ = want;
            Ok(None)
        }
    }
}

#[cfg(feature = "video")]
mod imp {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use ff::util::error::EAGAIN;
    use ffmpeg_next as ff;

    use super::{StreamFrame, StreamInfo, StreamOptions, Watchdog};
    use crate::data::video::imp::{init, RgbConverter};
    use crate::error::{Error, Result};

    /// Consecutive unreadable packets tolerated before the input counts as broken.
    const MAX_CONSECUTIVE_READ_ERRORS: usize = 100;

    /// The error for an input that stopped: stalled, or cancelled by a watcher.
    fn stopped(input: &str, watchdog: &Watchdog) -> Error {
        if watchdog.is_cancelled() {
            Error::Video { path: Path::new(input).to_path_buf(), reason: "reading was cancelled".into() }
        } else {
            Error::StreamStalled { input: input.to_string(), seconds: watchdog.silent_for().as_secs_f64() }
        }
    }

    pub(super) struct Decoder {
        input: ff::format::context::Input,
        decoder: ff::decoder::Video,
        stream: usize,
        time_base: f64,
        fps: f64,
        first_pts: Option<i64>,
        count: usize,
        flushed: bool,
        pub(super) damaged: usize,
        pub(super) missing: usize,
        last_time_s: Option<f64>,
        frame: ff::frame::Video,
        converter: RgbConverter,
        watchdog: Arc<Watchdog>,
    }

    fn err(input: &str, reason: impl Into<String>) -> Error {
        Error::Video { path: Path::new(input).to_path_buf(), reason: reason.into() }
    }

    impl Decoder {
        pub(super) fn open(input: &str, opts: &StreamOptions, watchdog: Arc<Watchdog>) -> Result<(Self, StreamInfo)> {
            init();
            let mut dict = ff::Dictionary::new();
            for (k, v) in &opts.ffmpeg_options {
                dict.set(k, v);
            }
            let interrupt = Arc::clone(&watchdog);
            let ctx =
                ff::format::input_with_interrupt_and_dictionary(input, move || interrupt.should_interrupt(), dict)
                    .map_err(|e| match e {
                        ff::Error::Exit => stopped(input, &watchdog),
                        e => err(input, format!("cannot open: {e}")),
                    })?;
            watchdog.touch();
            let stream = ctx.streams().best(ff::media::Type::Video).ok_or_else(|| err(input, "no video stream"))?;
            let tb = stream.time_base();
            let time_base = if tb.denominator() != 0 { f64::from(tb) } else { 0.0 };
            let fps = [stream.avg_frame_rate(), stream.rate()]
                .into_iter()
                .find(|r| r.numerator() > 0 && r.denominator() > 0)
                .map_or(0.0, f64::from);
            let codec_ctx = ff::codec::context::Context::from_parameters(stream.parameters())
                .map_err(|e| err(input, format!("unsupported codec parameters: {e}")))?;
            let codec = format!("{:?}", codec_ctx.id()).to_lowercase();
            let decoder =
                codec_ctx.decoder().video().map_err(|e| err(input, format!("cannot open the decoder: {e}")))?;
            if let Some(problem) = crate::data::frame_size_problem(decoder.width(), decoder.height()) {
                return Err(err(input, problem));
            }
            let info = StreamInfo { width: decoder.width(), height: decoder.height(), fps, codec };
            let index = stream.index();
            let decoder = Self {
                input: ctx,
                decoder,
                stream: index,
                time_base,
                fps,
                first_pts: None,
                count: 0,
                flushed: false,
                damaged: 0,
                missing: 0,
                last_time_s: None,
                frame: ff::frame::Video::empty(),
                converter: RgbConverter::default(),
                watchdog,
            };
            Ok((decoder, info))
        }

        pub(super) fn next_frame(
            &mut self,
            input: &str,
            want: impl FnOnce(usize) -> bool,
        ) -> Result<Option<StreamFrame>> {
            let mut read_errors = 0;
            loop {
                if self.decoder.receive_frame(&mut self.frame).is_ok() {
                    return self.emit(input, want).map(Some);
                }
                if self.flushed {
                    return Ok(None);
                }
                let mut packet = ff::Packet::empty();
                match packet.read(&mut self.input) {
                    Ok(()) => {
                        self.watchdog.touch();
                        read_errors = 0;
                        if packet.stream() == self.stream && self.decoder.send_packet(&packet).is_err() {
                            self.damaged += 1;
                        }
                    }
                    Err(ff::Error::Eof) => {
                        // Flushing makes the decoder hand out the frames it still holds.
                        let _ = self.decoder.send_eof();
                        self.flushed = true;
                    }
                    Err(ff::Error::Exit) => return Err(stopped(input, &self.watchdog)),
                    Err(ff::Error::Other { errno: EAGAIN }) => {
                        if self.watchdog.stalled() || self.watchdog.is_cancelled() {
                            return Err(stopped(input, &self.watchdog));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    Err(e) => {
                        self.damaged += 1;
                        read_errors += 1;
                        if read_errors > MAX_CONSECUTIVE_READ_ERRORS {
                            return Err(err(input, format!("{read_errors} unreadable packets in a row; last: {e}")));
                        }
                    }
                }
            }
        }

        /// The decoder's current frame as a [`StreamFrame`].
        fn emit(&mut self, input: &str, want: impl FnOnce(usize) -> bool) -> Result<StreamFrame> {
            let index = self.count;
            self.count += 1;
            let time_s = match self.frame.timestamp().or(self.frame.pts()) {
                Some(pts) if self.time_base > 0.0 => {
                    let first = *self.first_pts.get_or_insert(pts);
                    (pts - first) as f64 * self.time_base
                }
                _ if self.fps > 0.0 => index as f64 / self.fps,
                _ => 0.0,
            };
            if let (Some(last), true) = (self.last_time_s, self.fps > 0.0) {
                let gap_frames = (time_s - last) * self.fps;
                if gap_frames > 1.5 {
                    self.missing += gap_frames.round() as usize - 1;
                }
            }
            self.last_time_s = Some(time_s);
            let image = if want(index) { Some(self.converter.convert(&self.frame, Path::new(input))?) } else { None };
            Ok(StreamFrame { index, time_s, arrived: Instant::now(), image })
        }
    }
}
