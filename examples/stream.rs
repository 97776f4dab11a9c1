//! Classify a live stream, pipe, URL, camera or long video window by window; JSON lines out.
//!
//! ```text
//! cargo run --release --features video --example stream -- --weights model_best.pt --labels ucf101 --input /dev/video0
//! ffmpeg -i talk.mp4 -f mpegts - | cargo run --release --features video --example stream -- \
//!     --weights model_best.pt --labels ucf101 --input pipe:0 --window 2s --stride 0.5s --smoothing 0.5
//! cargo run --release --features video --example stream -- --random-weights vit-b32 --labels ucf101 \
//!     --input long_video.mp4      # timing: windows/s and latency on stderr
//! ```
//! The input is anything `ffmpeg -i` takes: a file, `pipe:0` (standard input), `rtsp://`, `udp://`,
//! `http://` URLs, or a V4L2 device. Each window prints one line:
//! `{"window": 3, "start_s": 1.5, "end_s": 3.5, "start_frame": 45, "end_frame": 105,
//!   "predictions": [{"label": "archery", "probability": 0.71}, ...], "latency_s": 0.21,
//!   "dropped_windows": 0, "damaged_packets": 0, "missing_frames": 0}`.
//! Window and stride are seconds (`2s`, `0.5s`) or frames (`64`, `64f`). For inputs that are not files,
//! windows that arrive while the model is still busy are skipped so predictions stay current (counted
//! in `dropped_windows`; `--keep-all` classifies every window). `missing_frames` counts frames the
//! stream's clock says never arrived, `damaged_packets` what FFmpeg could not read. A summary goes to
//! stderr at the end.
use std::path::Path;
use std::time::Instant;

use actionclip::data::StreamOptions;
use actionclip::inference::{Span, StreamClassifier, StreamConfig};
use actionclip::{Tokenizer, TowerWeights};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Parser;

mod common;

#[derive(Parser, Debug)]
#[command(about = "Classify a live stream or long video window by window with ActionCLIP (JSON lines out)")]
struct Args {
    /// The input: a file, `pipe:0`, a URL (`rtsp://`, `udp://`, `http://`) or a device (`/dev/video0`).
    #[arg(long)]
    input: String,
    /// Weights: a checkpoint file or directory (any supported format) or a Hugging Face model id.
    #[arg(long)]
    weights: Option<String>,
    /// Timing mode: a real-size model with random weights (`vit-b32` or `vit-b16`).
    #[arg(long, value_parser = ["vit-b32", "vit-b16"])]
    random_weights: Option<String>,
    /// Labels: `ucf101`, `hmdb51`, a file (one label per line) or a comma-separated list.
    #[arg(long, default_value = "ucf101")]
    labels: String,
    /// Use labels as written instead of humanizing them.
    #[arg(long)]
    raw_labels: bool,
    /// Window length: seconds (`2s`) or frames (`64` or `64f`).
    #[arg(long, default_value = "2s", value_parser = parse_span)]
    window: Span,
    /// Distance between window starts: seconds (`1s`) or frames (`32` or `32f`).
    #[arg(long, default_value = "1s", value_parser = parse_span)]
    stride: Span,
    /// Labels printed per window.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Weight of the previous windows in an exponential moving average of the probabilities (0: off).
    #[arg(long, default_value_t = 0.0)]
    smoothing: f32,
    /// Classify every window of a live input, even when the model falls behind.
    #[arg(long)]
    keep_all: bool,
    /// Seconds without data before the input counts as stalled (an error).
    #[arg(long, default_value_t = 10.0)]
    stall_timeout: f64,
    /// FFmpeg input options, `key=value` (repeatable), e.g. `rtsp_transport=tcp`, `video_size=640x480`.
    #[arg(long = "ffmpeg-option", value_parser = parse_option)]
    ffmpeg_options: Vec<(String, String)>,
    /// How the towers' linear layers hold their weights: `packed` (default), `full`, `f16` or `int8`.
    #[arg(long, default_value = "packed")]
    tower_weights: TowerWeights,
    /// Encode the class sentences even when their embeddings are cached (in
    /// `~/.cache/actionclip/class-features`, keyed by the weights, labels and templates).
    #[arg(long)]
    no_cache: bool,
}

/// `2s`, `0.5s` -> seconds; `64`, `64f` -> frames.
fn parse_span(s: &str) -> Result<Span, String> {
    let s = s.trim();
    if let Some(secs) = s.strip_suffix('s') {
        let v: f64 = secs.trim().parse().map_err(|_| format!("{s:?}: expected seconds such as `2s`"))?;
        return Ok(Span::Seconds(v));
    }
    let frames = s.strip_suffix('f').unwrap_or(s).trim();
    frames.parse().map(Span::Frames).map_err(|_| format!("{s:?}: expected `2s` (seconds) or `64` (frames)"))
}

/// `key=value`.
fn parse_option(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected key=value"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.stall_timeout.is_finite() && args.stall_timeout > 0.0) {
        bail!("--stall-timeout must be a positive number of seconds");
    }
    let device = Device::Cpu;
    let (model, _) =
        common::load_model(args.weights.as_deref(), args.random_weights.as_deref(), args.tower_weights, &device)?;
    let labels = common::labels(&args.labels, args.raw_labels)?;
    let tokenizer = Tokenizer::new();
    let zs = common::classifier(&model, &tokenizer, &labels, args.no_cache)?;
    let config = StreamConfig {
        window: args.window,
        stride: args.stride,
        top_k: args.top_k,
        smoothing: args.smoothing,
        drop_late_windows: !args.keep_all && !Path::new(&args.input).is_file(),
        input: StreamOptions {
            stall_timeout: std::time::Duration::from_secs_f64(args.stall_timeout),
            ffmpeg_options: args.ffmpeg_options.clone(),
        },
    };
    let classifier = StreamClassifier::new(&zs, config)?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut dropped = 0;
    let mut windows = classifier.run(&args.input)?;
    let outcome = windows.try_for_each(|window| -> actionclip::Result<()> {
        let w = window?;
        let predictions: Vec<_> =
            w.top.iter().map(|(l, p)| serde_json::json!({"label": l, "probability": p})).collect();
        let line = serde_json::json!({
            "window": w.index, "start_s": w.start_s, "end_s": w.end_s,
            "start_frame": w.start_frame, "end_frame": w.end_frame, "predictions": predictions,
            "latency_s": w.latency_s, "dropped_windows": w.dropped_windows,
            "damaged_packets": w.damaged_packets, "missing_frames": w.missing_frames,
        });
        println!("{line}");
        latencies.push(w.latency_s);
        dropped = w.dropped_windows;
        Ok(())
    });
    summarize(&latencies, dropped, started.elapsed().as_secs_f64());
    Ok(outcome?)
}

/// Windows/s and latency percentiles on stderr.
fn summarize(latencies: &[f64], dropped: usize, seconds: f64) {
    if latencies.is_empty() {
        eprintln!("no complete window");
        return;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{} windows in {seconds:.1} s ({:.2} windows/s); latency median {:.3} s, p95 {:.3} s, max {:.3} s; {dropped} dropped",
        sorted.len(),
        sorted.len() as f64 / seconds,
        at(0.5),
        at(0.95),
        at(1.0)
    );
}
