//! The loader's resident memory stays bounded when its consumer is slow: workers stop `workers + prefetch`
//! batches ahead instead of filling memory with the epoch. Alone in its binary, since resident memory is the
//! whole process's.
#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::time::Duration;

use actionclip::data::{ClipPipeline, Loader, LoaderConfig, VideoDataset, VideoSample};

/// Resident memory of this process, in bytes (`VmRSS` of /proc/self/status).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
    kib * 1024
}

/// A frame folder of 8 JPEG frames of 128x96.
fn frame_folder(dir: &std::path::Path) -> PathBuf {
    let clip = dir.join("clip");
    std::fs::create_dir_all(&clip).unwrap();
    for i in 1..=8u32 {
        let img = image::RgbImage::from_fn(128, 96, |x, y| image::Rgb([(x + i) as u8, (y * 2) as u8, (x ^ y) as u8]));
        img.save(clip.join(format!("img_{i:05}.jpg"))).unwrap();
    }
    clip
}

#[test]
fn resident_memory_stays_bounded_under_a_slow_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let clip = frame_folder(dir.path());
    let batches = 16;
    let cfg = LoaderConfig { batch_size: 16, workers: 2, prefetch: 2, ..LoaderConfig::default() };
    let samples: Vec<VideoSample> =
        (0..batches * cfg.batch_size).map(|_| VideoSample { path: clip.clone(), label: 0, num_frames: None }).collect();
    let dataset = VideoDataset::new(samples, vec!["only".into()]).unwrap();
    let loader = Loader::new(dataset, ClipPipeline::train(8, 112).unwrap(), cfg.clone()).unwrap();
    // One batch of frames: [16, 8, 3, 112, 112] f32.
    let batch_bytes = (cfg.batch_size * 8 * 3 * 112 * 112 * 4) as u64;

    // Measured from the first batch on, once the workers, their buffers and the allocator's arenas exist.
    let mut before = None;
    let mut peak = 0;
    let mut seen = 0;
    for batch in loader.epoch(0) {
        batch.unwrap();
        seen += 1;
        before.get_or_insert_with(resident_bytes);
        // A consumer that stalls for seconds after its first batch, then takes its time: workers that
        // did not wait for it would hold most of the epoch by then.
        let pause = if seen == 1 { Duration::from_secs(5) } else { Duration::from_millis(100) };
        let until = std::time::Instant::now() + pause;
        while std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
            peak = peak.max(resident_bytes());
        }
    }
    assert_eq!(seen, batches);
    let growth = peak.saturating_sub(before.unwrap());
    let bound = (cfg.workers + cfg.prefetch + 1) as u64 * batch_bytes;
    eprintln!(
        "peak growth {:.0} MB over an epoch of {batches} batches of {:.1} MB; bound {:.0} MB",
        growth as f64 / 1e6,
        batch_bytes as f64 / 1e6,
        bound as f64 / 1e6
    );
    assert!(growth <= bound, "resident memory grew by {growth} bytes, more than {bound}");
}
