//! Live inputs window by window: a file read as a stream gives the sliding-window timeline's
//! predictions, a stream FFmpeg writes into a pipe ends cleanly, a pipe that goes silent ends with
//! `StreamStalled` within the timeout, and `examples/stream` prints one JSON line per window.
#![cfg(feature = "video")]
mod common;
mod data_common;

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actionclip::data::StreamOptions;
use actionclip::inference::{Span, StreamClassifier, StreamConfig};
use actionclip::{prompts, Error, Tokenizer, ZeroShotClassifier};
use common::tiny_random_model;
use data_common::ffmpeg;

const LABELS: [&str; 5] = ["archery", "bowling", "diving", "juggling balls", "surfing"];

/// FFmpeg's test pattern at 64x48 and 10 fps as MPEG-4 in MPEG-TS on its stdout; `tail` runs after
/// FFmpeg ends, with the pipe still open (`exec sleep 30` keeps the pipe open and silent).
fn ffmpeg_pipe(frames: usize, tail: &str) -> Child {
    let script = format!(
        "ffmpeg -v error -nostdin -f lavfi -i testsrc=size=64x48:rate=10 -frames:v {frames} -c:v mpeg4 -q:v 3 \
         -f mpegts pipe:1; {tail}"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("the `ffmpeg` command-line tool and `sh` are needed by this test (CI installs ffmpeg)")
}

fn config(window: Span, stride: Span, stall_timeout: Duration) -> StreamConfig {
    StreamConfig {
        window,
        stride,
        top_k: LABELS.len(),
        smoothing: 0.0,
        drop_late_windows: false,
        input: StreamOptions { stall_timeout, ..Default::default() },
    }
}

#[test]
fn a_file_read_as_a_stream_gives_the_sliding_window_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("pattern.avi");
    ffmpeg(
        &["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "48", "-c:v", "mpeg4", "-q:v", "3"],
        &video,
    );
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &LABELS, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let expected = zs.predict_windows_path(&video, 16, 8, LABELS.len()).unwrap();
    let stream =
        StreamClassifier::new(&zs, config(Span::Frames(16), Span::Frames(8), Duration::from_secs(10))).unwrap();
    let windows: Vec<_> = stream.run(video.to_str().unwrap()).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(windows.len(), 5, "48 frames hold windows starting at 0, 8, .., 32");
    assert_eq!(windows.len(), expected.len());
    for (w, e) in windows.iter().zip(&expected) {
        assert_eq!((w.start_frame, w.end_frame), (e.start, e.end));
        assert!((w.start_s - e.start as f64 / 10.0).abs() < 1e-9, "start_s {} for frame {}", w.start_s, e.start);
        assert!((w.end_s - e.end as f64 / 10.0).abs() < 1e-9, "end_s {} for frame {}", w.end_s, e.end);
        for ((label, p), (label_e, p_e)) in w.top.iter().zip(&e.top) {
            assert_eq!(label, label_e, "window {}", w.index);
            assert!((p - p_e).abs() < 1e-5, "window {}: {label} {p} vs {p_e}", w.index);
        }
        assert_eq!((w.dropped_windows, w.damaged_packets), (0, 0));
    }
}

#[test]
fn a_pipe_stream_is_classified_until_it_ends() {
    let mut child = ffmpeg_pipe(40, "exit 0");
    let stdout = child.stdout.take().unwrap();
    let input = format!("pipe:{}", stdout.as_raw_fd());
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &LABELS, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let stream =
        StreamClassifier::new(&zs, config(Span::Seconds(1.0), Span::Seconds(1.0), Duration::from_secs(20))).unwrap();
    let windows: Vec<_> = stream.run(&input).unwrap().collect::<Result<_, _>>().unwrap();
    drop(stdout);
    assert!(child.wait().unwrap().success());
    // 40 frames at 10 fps: four 1 s windows of 10 frames.
    let spans: Vec<_> = windows.iter().map(|w| (w.start_frame, w.end_frame)).collect();
    assert_eq!(spans, [(0, 10), (10, 20), (20, 30), (30, 40)]);
    for (i, w) in windows.iter().enumerate() {
        assert!((w.start_s - i as f64).abs() < 1e-6 && (w.end_s - (i + 1) as f64).abs() < 1e-6, "{w:?}");
        assert_eq!(w.top.len(), LABELS.len());
        let total: f32 = w.top.iter().map(|(_, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
        assert!(w.latency_s >= 0.0 && w.latency_s < 10.0);
    }
}

#[test]
fn a_silent_pipe_ends_with_a_stall_error_within_the_timeout() {
    let mut child = ffmpeg_pipe(15, "exec sleep 30");
    let stdout = child.stdout.take().unwrap();
    let input = format!("pipe:{}", stdout.as_raw_fd());
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &LABELS, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let timeout = Duration::from_secs(1);
    let stream = StreamClassifier::new(&zs, config(Span::Frames(10), Span::Frames(10), timeout)).unwrap();
    let started = Instant::now();
    let results: Vec<_> = stream.run(&input).unwrap().collect();
    let elapsed = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdout);
    assert!(elapsed < Duration::from_secs(10), "gave up after {elapsed:?}");
    let (last, first) = results.split_last().expect("at least the stall error");
    assert!(
        matches!(last, Err(Error::StreamStalled { input: i, seconds }) if *i == input && *seconds >= 1.0),
        "{last:?}"
    );
    assert_eq!(first.len(), 1, "the one complete window of 15 frames comes first: {first:?}");
    assert_eq!(first[0].as_ref().unwrap().end_frame, 10);
}

#[test]
fn bad_settings_and_inputs_are_typed_errors() {
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &LABELS, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let mut cfg = config(Span::Frames(8), Span::Frames(8), Duration::from_secs(2));
    cfg.smoothing = 1.0;
    assert!(matches!(StreamClassifier::new(&zs, cfg.clone()), Err(Error::Config(_))));
    cfg.smoothing = 0.0;
    let stream = StreamClassifier::new(&zs, cfg).unwrap();
    let missing = stream.run("/nonexistent/clip.mp4").unwrap().next().unwrap();
    assert!(matches!(missing, Err(Error::Video { .. })), "{missing:?}");
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.mp4");
    std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    let result = stream.run(garbage.to_str().unwrap()).unwrap().next();
    assert!(matches!(result, Some(Err(Error::Video { .. }))), "{result:?}");
    let zero =
        StreamClassifier::new(&zs, config(Span::Seconds(-1.0), Span::Frames(8), Duration::from_secs(2))).unwrap();
    let video = dir.path().join("pattern.avi");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "8", "-c:v", "mpeg4"], &video);
    let result = zero.run(video.to_str().unwrap()).unwrap().next();
    assert!(matches!(result, Some(Err(Error::Config(_)))), "{result:?}");
}

#[test]
fn the_stream_example_prints_a_json_line_per_window() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("tiny.safetensors");
    tiny_random_model().save_safetensors(&weights).unwrap();
    let video = dir.path().join("pattern.avi");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "30", "-c:v", "mpeg4"], &video);
    let out = Command::new(common::example("stream"))
        .args([
            "--weights",
            weights.to_str().unwrap(),
            "--labels",
            "archery,bowling,diving",
            "--top-k",
            "2",
            "--no-cache",
        ])
        .args(["--window", "1s", "--stride", "0.5s", "--input", video.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // 30 frames, 10-frame windows every 5 frames: starts 0, 5, .., 20.
    assert_eq!(lines.len(), 5);
    for (i, line) in lines.iter().enumerate() {
        assert!((line["start_s"].as_f64().unwrap() - 0.5 * i as f64).abs() < 1e-6, "{line}");
        assert!((line["end_s"].as_f64().unwrap() - (0.5 * i as f64 + 1.0)).abs() < 1e-6, "{line}");
        let predictions = line["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 2);
        assert!(predictions.iter().all(|p| p["label"].is_string() && p["probability"].is_f64()));
    }
}

#[test]
fn frames_missing_from_the_stream_clock_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("gap.mkv");
    // 30 frames at 10 fps with frames 12..=15 cut out and the timestamps kept: a 0.5 s gap.
    let args = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", "30", "-vf"];
    ffmpeg(
        &[&args[..], &["select=not(between(n\\,12\\,15))", "-fps_mode", "passthrough", "-c:v", "mpeg4"]].concat(),
        &video,
    );
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &LABELS, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let stream = StreamClassifier::new(&zs, config(Span::Frames(8), Span::Frames(8), Duration::from_secs(10))).unwrap();
    let windows: Vec<_> = stream.run(video.to_str().unwrap()).unwrap().collect::<Result<_, _>>().unwrap();
    let missing: Vec<usize> = windows.iter().map(|w| w.missing_frames).collect();
    assert_eq!(missing, [0, 4, 4], "26 decoded frames make 3 windows; the gap lies in the second");
    assert!((windows[1].end_s - 2.0).abs() < 1e-6, "decoded frame 15 is source frame 19: {:?}", windows[1]);
}

#[test]
fn a_udp_stream_is_classified_and_its_end_is_a_stall() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let input = format!("udp://127.0.0.1:{port}");
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &LABELS, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let stream =
        StreamClassifier::new(&zs, config(Span::Frames(10), Span::Frames(10), Duration::from_secs(5))).unwrap();
    let windows = stream.run(&input).unwrap();
    // Give the reader thread time to open the socket; FFmpeg then sends 4 s in real time (a keyframe every
    // 1.2 s, so a late start still leaves whole windows).
    std::thread::sleep(Duration::from_millis(1000));
    let mut sender = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-re", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10"])
        .args(["-frames:v", "40", "-c:v", "mpeg4", "-q:v", "3", "-f", "mpegts"])
        .arg(format!("{input}?pkt_size=1316"))
        .spawn()
        .expect("the `ffmpeg` command-line tool is needed by this test (CI installs it)");
    let started = Instant::now();
    let results: Vec<_> = windows.collect();
    assert!(sender.wait().unwrap().success());
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let (last, first) = results.split_last().unwrap();
    assert!(matches!(last, Err(Error::StreamStalled { .. })), "a UDP stream ends by going silent: {last:?}");
    assert!(!first.is_empty(), "no window before the stall");
    for w in first {
        let w = w.as_ref().unwrap();
        assert_eq!(w.end_frame - w.start_frame, 10);
    }
}

#[test]
fn a_slow_consumer_of_a_live_stream_skips_windows_and_stays_current() {
    // 3 s of frames in real time, a window every 0.2 s; the consumer takes 0.7 s per window.
    let mut child = Command::new("sh")
        .args(["-c", "ffmpeg -v error -nostdin -re -f lavfi -i testsrc=size=64x48:rate=10 -frames:v 30 -c:v mpeg4 -f mpegts pipe:1"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("the `ffmpeg` command-line tool and `sh` are needed by this test (CI installs ffmpeg)");
    let stdout = child.stdout.take().unwrap();
    let input = format!("pipe:{}", stdout.as_raw_fd());
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &LABELS, &prompts::ACTIONCLIP_TEMPLATES).unwrap();
    let mut cfg = config(Span::Frames(2), Span::Frames(2), Duration::from_secs(10));
    cfg.drop_late_windows = true;
    let stream = StreamClassifier::new(&zs, cfg).unwrap();
    let mut seen = Vec::new();
    for w in stream.run(&input).unwrap() {
        seen.push(w.unwrap());
        std::thread::sleep(Duration::from_millis(700));
    }
    drop(stdout);
    child.wait().unwrap();
    let last = seen.last().expect("some windows");
    assert!(seen.len() <= 8 && last.dropped_windows >= 5, "{} seen, {} dropped", seen.len(), last.dropped_windows);
    assert!(seen.windows(2).all(|p| p[1].index > p[0].index), "windows stay in order");
    assert!(seen.windows(2).any(|p| p[1].index > p[0].index + 1), "windows were skipped");
    for w in &seen {
        assert!(w.latency_s < 0.4, "window {} waited {:.2} s: a skipped window was served stale", w.index, w.latency_s);
    }
}
