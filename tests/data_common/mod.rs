//! Helpers shared by the data tests: the `ffmpeg` command-line tool as the reference decoder.
#![allow(dead_code)]
use std::path::Path;
use std::process::Command;

const NO_FFMPEG: &str = "the `ffmpeg` command-line tool is needed by this test (it is the reference decoder); \
install it (Debian: apt-get install ffmpeg). CI installs it.";

/// Runs `ffmpeg -y -v error <args> <out>`; panics with the tool's message on failure, or with a clear
/// message when the tool is missing (the test must not pass silently).
pub fn ffmpeg(args: &[&str], out: &Path) {
    let output = Command::new("ffmpeg")
        .args(["-y", "-v", "error", "-nostdin"])
        .args(args)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("{NO_FFMPEG} ({e})"));
    assert!(output.status.success(), "ffmpeg {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The tool's own decode: every frame as RGB (`-vsync passthrough -f rawvideo -pix_fmt rgb24`).
pub fn ffmpeg_rgb_frames(path: &Path) -> Vec<image::RgbImage> {
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{NO_FFMPEG} ({e})"));
    let dims = String::from_utf8_lossy(&probe.stdout);
    let mut it = dims.trim().split(',').map(|v| v.trim().parse::<u32>().expect("ffprobe size"));
    let (w, h) = (it.next().expect("width"), it.next().expect("height"));
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-vsync", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap_or_else(|e| panic!("{NO_FFMPEG} ({e})"));
    assert!(
        out.status.success(),
        "ffmpeg decode of {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let size = (w * h * 3) as usize;
    assert_eq!(out.stdout.len() % size, 0);
    out.stdout.chunks_exact(size).map(|c| image::RgbImage::from_raw(w, h, c.to_vec()).expect("frame")).collect()
}
