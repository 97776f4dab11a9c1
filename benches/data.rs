//! Data throughput: decode + sample + preprocess of 8-frame 224 px test clips (and training clips)
//! from UCF101-sized AVI files (320x240, 25 fps, 7 s = 175 frames, MPEG-4 Part 2 with a long GOP like
//! XviD) and from JPEG frame folders, through the threaded loader.
//!
//! `cargo bench --features video --bench data` (without `video` only the frame-folder cases run).
//! Criterion reports clips/s as `elem/s`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use actionclip::data::synthetic::{self, SyntheticConfig};
use actionclip::data::{ClipPipeline, Loader, LoaderConfig, OnFailure, VideoDataset, VideoSample};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CLIPS: usize = 16;
const FRAMES: usize = 175;

fn render(i: usize) -> Vec<image::RgbImage> {
    let cfg = SyntheticConfig {
        num_classes: 8,
        frames: FRAMES,
        width: 320,
        height: 240,
        noise: 1.5,
        seed: 1,
        ..Default::default()
    };
    synthetic::render_clip(&cfg, i % 8, i / 8).expect("render")
}

fn frame_folders(root: &Path) -> Vec<PathBuf> {
    (0..CLIPS)
        .map(|i| {
            let dir = root.join(format!("frames{i:02}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for (k, f) in render(i).iter().enumerate() {
                let file = std::fs::File::create(dir.join(format!("img_{:05}.jpg", k + 1))).expect("create");
                image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90)
                    .encode_image(f)
                    .expect("jpeg");
            }
            dir
        })
        .collect()
}

#[cfg(feature = "video")]
fn avi_files(root: &Path) -> Vec<PathBuf> {
    use actionclip::data::{write_video, EncodeOptions};
    let opts = EncodeOptions { fps: 25, quality: 4, gop: 250, ..Default::default() };
    let paths: Vec<PathBuf> = (0..CLIPS)
        .map(|i| {
            let path = root.join(format!("v_Bench_g{:02}_c01.avi", i + 1));
            write_video(&path, &render(i), &opts).expect("encode");
            path
        })
        .collect();
    let bytes: u64 = paths.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    eprintln!(
        "AVI clips: {CLIPS} x {FRAMES} frames 320x240, {:.0} kbit/s average",
        bytes as f64 * 8.0 / CLIPS as f64 / 7.0 / 1000.0
    );
    paths
}

fn loader(paths: &[PathBuf], pipeline: ClipPipeline, workers: usize) -> Loader {
    let samples = paths.iter().map(|p| VideoSample { path: p.clone(), label: 0, num_frames: None }).collect();
    let dataset = VideoDataset::new(samples, vec!["Bench".into()]).expect("dataset");
    let cfg = LoaderConfig { batch_size: 8, workers, prefetch: 2, on_failure: OnFailure::Skip, ..Default::default() };
    Loader::new(dataset, pipeline, cfg).expect("loader")
}

fn run_epoch(loader: &Loader, epoch: u64) {
    let mut e = loader.epoch(epoch);
    for b in e.by_ref() {
        let b = b.expect("batch");
        std::hint::black_box(&b.frames);
    }
    assert_eq!(e.report().failed(), 0, "{:?}", e.report().failures);
}

/// Process CPU time (user + system) in seconds, from /proc/self/stat (Linux); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Wall-clock and CPU cost per clip over a few epochs. The CPU cost does not depend on what else the
/// machine runs, so `cores / cpu_per_clip` estimates the throughput on idle cores when the
/// wall-clock number is disturbed by other processes.
fn summary(name: &str, loader: &Loader) {
    let epochs = 4;
    let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
    let clips: usize = (100..100 + epochs)
        .map(|e| {
            let mut ep = loader.epoch(e);
            let n: usize = ep.by_ref().map(|b| b.expect("batch").ids.len()).sum();
            assert_eq!(ep.report().failed(), 0);
            n
        })
        .sum();
    let wall = t0.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match (c0, cpu_seconds()) {
        (Some(a), Some(b)) if b > a => eprintln!(
            "{name:<36} wall {:6.1} clips/s | cpu {:6.2} ms/clip -> {:6.1} clips/s on {} idle core(s)",
            clips as f64 / wall,
            (b - a) * 1000.0 / clips as f64,
            (clips as f64 / (b - a)) * (loader.config().workers.max(1).min(cores)) as f64,
            loader.config().workers.max(1).min(cores),
        ),
        _ => eprintln!("{name:<36} wall {:6.1} clips/s", clips as f64 / wall),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources: Vec<(&str, Vec<PathBuf>)> = vec![
        #[cfg(feature = "video")]
        ("avi", avi_files(dir.path())),
        ("frames", frame_folders(dir.path())),
    ];

    let mut g = c.benchmark_group("data");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(CLIPS as u64));
    for (name, paths) in &sources {
        for (mode, pipeline) in [("test", ClipPipeline::test(8, 224)), ("train", ClipPipeline::train(8, 224))] {
            let pipeline = pipeline.expect("pipeline");
            for workers in [0usize, 2] {
                let l = loader(paths, pipeline.clone(), workers);
                let mut epoch = 0;
                g.bench_function(format!("{name}/{mode}_8x224/workers{workers}"), |b| {
                    b.iter(|| {
                        epoch += 1;
                        run_epoch(&l, epoch)
                    })
                });
            }
        }
    }
    g.finish();

    // Per-clip CPU cost, robust to other load on the machine.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("\nsummary (load average {}):", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    for (name, paths) in &sources {
        for (mode, pipeline) in [("test", ClipPipeline::test(8, 224)), ("train", ClipPipeline::train(8, 224))] {
            let pipeline = pipeline.expect("pipeline");
            for workers in [0usize, 2] {
                let l = loader(paths, pipeline.clone(), workers);
                summary(&format!("{name}/{mode}_8x224/workers{workers}"), &l);
            }
        }
    }
}

criterion_group! {
    name = benches;
    // No plots: the plotting backend needs system fonts that CI images may lack.
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
