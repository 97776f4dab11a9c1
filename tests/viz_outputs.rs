//! The visualizer: its video-level predictions equal the evaluation's, every output file exists and
//! decodes with the right frame count and size, and the batch report lists every sampled video (a corrupt
//! one as failed). The annotation drawing itself is tested in `src/viz/annotate.rs`.
mod common;

use std::path::Path;

use actionclip::{
    data::{self, synthetic},
    prompts,
    viz::{self, AnimationFormat},
    Tokenizer, ZeroShotClassifier,
};
use common::tiny_random_model;
use image::AnimationDecoder;

fn synthetic_cfg() -> synthetic::SyntheticConfig {
    synthetic::SyntheticConfig {
        num_classes: 3,
        clips_per_class: 3,
        test_clips_per_class: 1,
        frames: 16,
        ..Default::default()
    }
}

/// Frame count and size of a GIF, decoded with the image crate.
fn gif_info(path: &Path) -> (usize, (u32, u32)) {
    let dec = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    let frames = dec.into_frames().collect_frames().unwrap();
    (frames.len(), frames[0].buffer().dimensions())
}

/// Frames stored in a video file and their size, read with FFmpeg (the CLI's packet count when it is
/// installed, otherwise the library through the crate; the last frame is decoded either way).
///
/// Packets, not `-count_frames`: `data::write_video` leaves packet durations unset, so the MP4
/// muxer's edit list ends one frame early and FFmpeg's frame count (which honours it) is one short
/// although every frame is stored.
fn video_info(path: &Path) -> (usize, (u32, u32)) {
    let n = data::frame_count(path).unwrap();
    let last = data::decode_frames(path, &[n - 1]).unwrap();
    assert_eq!(last.len(), 1);
    let cli = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_packets",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_packets,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output();
    if let Ok(out) = cli {
        if out.status.success() {
            let s = String::from_utf8_lossy(&out.stdout);
            let v: Vec<usize> = s.trim().split(',').map(|x| x.trim().parse().unwrap()).collect();
            assert_eq!(v[2], n, "packets vs the crate's frame count");
            return (v[2], (v[0] as u32, v[1] as u32));
        }
    }
    (n, last[0].dimensions())
}

#[test]
fn visualizer_matches_the_evaluation_and_writes_decodable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = synthetic::write_dataset(tmp.path().join("data"), &synthetic_cfg()).unwrap();
    let classes: Vec<String> = ds.classes.iter().map(|c| prompts::humanize(c)).collect();
    let model = tiny_random_model();
    let tok = Tokenizer::new();
    let zs = ZeroShotClassifier::new(&model, &tok, &classes, &prompts::ACTIONCLIP_TEMPLATES[..2]).unwrap();

    // Single video.
    let clip = &viz::sample_per_class(&ds.root, 1, 0).unwrap()[0];
    let out_dir = tmp.path().join("single");
    let opts = viz::VisualizeOptions {
        window: Some(8),
        stride: Some(4),
        thumbnail_width: Some(96),
        min_side: 128,
        ..Default::default()
    };
    let truth = prompts::humanize(&clip.class);
    let out = viz::visualize_video(&zs, &clip.path, Some(&truth), &out_dir, "one", &opts).unwrap();
    assert_eq!(out.prediction.top, zs.classify_path(&clip.path, 5).unwrap(), "video-level = evaluation");
    assert_eq!(out.prediction.top.len(), 3, "top-5 of 3 labels");
    assert_eq!((out.total_frames, out.frames_written), (16, 16));
    assert_eq!(out.size, (128, 128), "64 px frames scaled to 128");
    assert_eq!(out.windows.iter().map(|w| (w.start, w.end)).collect::<Vec<_>>(), vec![(0, 8), (4, 12), (8, 16)]);
    let (n, size) = match out.format {
        AnimationFormat::Mp4(_) => video_info(&out.annotated),
        AnimationFormat::Gif => gif_info(&out.annotated),
    };
    assert_eq!((n, size), (16, (128, 128)), "{}", out.annotated.display());
    if cfg!(feature = "video") {
        assert_eq!(out.annotated.extension().unwrap(), "mp4");
    }
    let sheet = image::open(&out.sheet).unwrap();
    assert!(sheet.width() >= 480 && sheet.height() > 200);
    let (tn, tsize) = gif_info(out.thumbnail.as_ref().unwrap());
    assert_eq!((tn, tsize), (16, (96, 96)));
    // Bad input fails before anything is written.
    let nothing = tmp.path().join("nothing");
    let e = viz::visualize_video(&zs, tmp.path().join("missing.avi"), None, &nothing, "x", &opts).unwrap_err();
    assert!(matches!(e, actionclip::Error::Io { .. }), "{e}");
    assert!(!nothing.exists());
    // The GIF writer on its own (the no-`video` path).
    let frames = data::decode_frames(&clip.path, &[0, 5, 10]).unwrap();
    let gif = tmp.path().join("three.gif");
    viz::write_gif(&gif, &frames, 10.0, 30).unwrap();
    assert_eq!(gif_info(&gif), (3, (64, 64)));

    // Batch: 1 per class plus a corrupt video in one class folder, listed as failed.
    let corrupt = ds.root.join(&ds.classes[1]).join("v_Corrupt_g99_c01.avi");
    std::fs::write(&corrupt, b"not a video").unwrap();
    let clips = viz::sample_per_class(&ds.root, 1, 7).unwrap();
    assert_eq!(clips, viz::sample_per_class(&ds.root, 1, 7).unwrap(), "seeded");
    assert_eq!(
        viz::sample_per_class(&ds.root, 10, 7).unwrap().len(),
        3 * 3 + 1,
        "all clips, the corrupt file among them"
    );
    let mut clips: Vec<_> = clips.into_iter().filter(|c| c.path != corrupt).collect();
    clips.push(viz::SampledClip { class: ds.classes[1].clone(), path: corrupt.clone() });
    let batch_dir = tmp.path().join("batch");
    let opts = viz::VisualizeOptions { window: Some(8), stride: Some(8), min_side: 128, ..Default::default() };
    let mut seen = 0;
    let batch = viz::run_batch(
        &zs,
        &clips,
        |c| Some(prompts::humanize(&c.class)),
        &ds.root,
        &batch_dir,
        &opts,
        |_, _| seen += 1,
    )
    .unwrap();
    assert_eq!(seen, clips.len());
    assert_eq!(batch.entries.len(), clips.len());
    let html = std::fs::read_to_string(&batch.report).unwrap();
    for (clip, entry) in clips.iter().zip(&batch.entries) {
        let name = clip.path.strip_prefix(&ds.root).unwrap().to_string_lossy().into_owned();
        assert_eq!(entry.video, name);
        assert!(html.contains(&name), "report lists {name}");
        if clip.path == corrupt {
            assert!(entry.outcome.is_err(), "the corrupt video failed");
            continue;
        }
        let p = entry.outcome.as_ref().unwrap();
        assert_eq!(p.top, zs.classify_path(&clip.path, 5).unwrap(), "batch prediction = evaluation for {name}");
        for rel in [&p.annotated, &p.thumbnail, &p.sheet] {
            let rel = rel.as_ref().unwrap();
            assert!(html.contains(rel.as_str()));
            assert!(batch_dir.join(rel).is_file(), "{rel}");
        }
        image::open(batch_dir.join(p.sheet.as_ref().unwrap())).unwrap();
        assert_eq!(gif_info(&batch_dir.join(p.thumbnail.as_ref().unwrap())).0, 16);
    }
    assert!(html.contains("failed") && html.contains("<script>"));
    let csv = std::fs::read_to_string(&batch.summary).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "class,videos,classified,correct,failed,accuracy");
    assert_eq!(lines.len(), 1 + 3 + 1, "header, 3 classes, ALL:\n{csv}");
    assert!(lines.last().unwrap().starts_with(&format!("ALL,{},{},", clips.len(), clips.len() - 1)), "{csv}");
    assert_eq!(batch.confusion.total(), clips.len() - 1);
    let png = image::open(&batch.confusion_png).unwrap();
    assert!(png.width() > 100 && png.height() > 100);
}
