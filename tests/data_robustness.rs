//! Broken inputs give typed errors that name the file, and the loader finishes its epoch around them.
use std::path::{Path, PathBuf};

use actionclip::data::{
    self, ClipPipeline, Loader, LoaderConfig, OnFailure, Storage, Subset, VideoDataset, VideoSample,
};
use actionclip::Error;

/// A frame folder of `n` small PNG frames (`img_00001.png`...) minus the numbers in `skip`.
fn frame_folder(dir: &Path, n: usize, skip: &[usize]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 1..=n {
        if skip.contains(&i) {
            continue;
        }
        let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, (i * 20) as u8]));
        img.save(dir.join(format!("img_{i:05}.jpg"))).unwrap();
    }
    dir.to_path_buf()
}

#[test]
fn zero_byte_video_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v_Empty_g01_c01.avi");
    std::fs::write(&path, b"").unwrap();
    for err in [data::frame_count(&path).unwrap_err(), data::test_clip(&path, 8, 224).unwrap_err()] {
        assert!(matches!(&err, Error::Video { path: p, .. } if p == &path), "{err:?}");
        assert!(err.to_string().contains("v_Empty_g01_c01.avi"), "{err}");
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = data::frame_count("/nonexistent/v_X_g01_c01.avi").unwrap_err();
    assert!(matches!(&err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("v_X_g01_c01.avi"), "{err}");
}

#[test]
fn folder_with_a_missing_frame_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let folder = frame_folder(&dir.path().join("v_Gap_g01_c01"), 12, &[5]);
    // Counting finds the gap.
    let err = data::frame_count(&folder).unwrap_err();
    match &err {
        Error::MissingFrame { path, index, reason } => {
            assert_eq!(path, &folder);
            assert_eq!(*index, 4);
            assert!(reason.contains("img_00005.jpg"), "{reason}");
        }
        other => panic!("expected MissingFrame, got {other:?}"),
    }
    assert!(err.to_string().contains("v_Gap_g01_c01"), "{err}");
    // With the count given by a list file, reading the missing frame fails the same way.
    let pipeline = ClipPipeline::test(12, 32).unwrap();
    let err = pipeline.load(&folder, Some(12), &mut data::sample_rng(0, 0, 0)).unwrap_err();
    assert!(matches!(&err, Error::MissingFrame { path, index: 4, .. } if path == &folder), "{err:?}");
    // An empty folder.
    let empty = dir.path().join("v_Empty_g01_c01");
    std::fs::create_dir_all(&empty).unwrap();
    let err = data::frame_count(&empty).unwrap_err();
    assert!(matches!(&err, Error::EmptyClip { path } if path == &empty), "{err:?}");
}

#[test]
fn corrupt_frame_image_is_an_image_error() {
    let dir = tempfile::tempdir().unwrap();
    let folder = frame_folder(&dir.path().join("v_Bad_g01_c01"), 4, &[]);
    std::fs::write(folder.join("img_00002.jpg"), b"not a jpeg").unwrap();
    let err = data::decode_frames(&folder, &[0, 1]).unwrap_err();
    assert!(matches!(&err, Error::Image { path, .. } if path.ends_with("img_00002.jpg")), "{err:?}");
}

#[test]
fn label_outside_class_index_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("classInd.txt"), "1 ApplyEyeMakeup\r\n2 Archery\r\n").unwrap();
    std::fs::write(
        root.join("trainlist01.txt"),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nArchery/v_Archery_g08_c01.avi 102\r\n",
    )
    .unwrap();
    std::fs::write(root.join("testlist01.txt"), "Archery/v_Archery_g01_c01.avi\nBowling/v_Bowling_g01_c01.avi\n")
        .unwrap();
    let err = VideoDataset::ucf101(root, 1, Subset::Train, Storage::Videos).unwrap_err();
    match &err {
        Error::UnknownLabel { path, line, label } => {
            assert!(path.ends_with("trainlist01.txt"));
            assert_eq!((*line, label.as_str()), (2, "102"));
        }
        other => panic!("expected UnknownLabel, got {other:?}"),
    }
    assert!(err.to_string().contains("trainlist01.txt:2"), "{err}");
    let err = VideoDataset::ucf101(root, 1, Subset::Test, Storage::Videos).unwrap_err();
    assert!(matches!(&err, Error::UnknownLabel { line: 2, label, .. } if label == "Bowling"), "{err:?}");
    // TSN list files: label id outside the CSV.
    std::fs::write(root.join("labels.csv"), "id,name\n0,ApplyEyeMakeup\n1,Archery\n").unwrap();
    std::fs::write(root.join("list.txt"), "a/b 30 1\na/c 30 2\n").unwrap();
    let err = VideoDataset::from_list(root.join("list.txt"), root.join("labels.csv"), None).unwrap_err();
    assert!(matches!(&err, Error::UnknownLabel { line: 2, .. }), "{err:?}");
}

/// Good clips mixed with broken ones: every epoch ends, the failures are reported with their paths.
#[test]
fn loader_finishes_the_epoch_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut samples = Vec::new();
    for i in 0..6 {
        let p = frame_folder(&root.join(format!("good{i}")), 10, &[]);
        samples.push(VideoSample { path: p, label: i % 2, num_frames: None });
    }
    let gap = frame_folder(&root.join("gap"), 10, &[3]);
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let zero = root.join("zero.avi");
    std::fs::write(&zero, b"").unwrap();
    #[cfg_attr(not(feature = "video"), allow(unused_mut))]
    let mut broken = vec![gap, empty, zero, root.join("does_not_exist.avi")];
    #[cfg(feature = "video")]
    broken.push(truncated_avi(root));
    for p in &broken {
        samples.push(VideoSample { path: p.clone(), label: 1, num_frames: None });
    }
    let n = samples.len();
    let dataset = VideoDataset::new(samples, vec!["A".into(), "B".into()]).unwrap();
    let pipeline = ClipPipeline::test(4, 32).unwrap();

    for on_failure in [OnFailure::Skip, OnFailure::Replace { attempts: 20 }] {
        let cfg = LoaderConfig { batch_size: 3, workers: 2, prefetch: 1, on_failure, ..Default::default() };
        let loader = Loader::new(dataset.clone(), pipeline.clone(), cfg).unwrap();
        let mut epoch = loader.epoch(0);
        let mut delivered = 0;
        for batch in epoch.by_ref() {
            let batch = batch.unwrap();
            let b = batch.ids.len();
            assert_eq!(batch.frames.dims(), &[b, 4, 3, 32, 32]);
            assert_eq!(batch.labels.dims(), &[b]);
            delivered += b;
        }
        let report = epoch.report().clone();
        assert_eq!(report.samples, delivered);
        let failed_paths: std::collections::BTreeSet<_> = report.failures.iter().map(|f| f.path.clone()).collect();
        for p in &broken {
            assert!(failed_paths.contains(p), "{on_failure:?}: {} not reported: {report:#?}", p.display());
        }
        for f in &report.failures {
            let name = f.path.file_name().unwrap().to_string_lossy().to_string();
            assert!(f.reason.contains(&name), "reason should name the file: {f:?}");
        }
        match on_failure {
            OnFailure::Skip => {
                assert_eq!(report.skipped(), broken.len());
                assert_eq!(delivered, n - broken.len());
            }
            OnFailure::Replace { .. } => {
                // Every slot filled (replacements are drawn until a good clip loads).
                assert_eq!(delivered, n);
                assert!(report.replaced() >= broken.len());
            }
        }
    }
}

/// An MPEG-4 AVI (60 frames of textured, moving content) cut to half its bytes: the header survives,
/// the second half of the frames does not.
#[cfg(feature = "video")]
fn truncated_avi(root: &Path) -> PathBuf {
    let frames: Vec<image::RgbImage> = (0..60u32)
        .map(|t| {
            image::RgbImage::from_fn(160, 120, |x, y| {
                let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ (t * 7919)) >> 7;
                image::Rgb([(x * 2 + t * 3) as u8, v as u8, (y * 2) as u8])
            })
        })
        .collect();
    let path = root.join("v_Cut_g01_c01.avi");
    data::write_video(&path, &frames, &data::EncodeOptions::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    path
}

#[cfg(feature = "video")]
#[test]
fn truncated_avi_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = truncated_avi(dir.path());
    let err = data::test_clip(&path, 8, 64).unwrap_err();
    // The header still says 60 frames; decoding runs out half way.
    assert_eq!(data::frame_count(&path).unwrap(), 60);
    assert!(matches!(&err, Error::MissingFrame { .. }), "{err:?}");
    assert!(err.to_string().contains("v_Cut_g01_c01.avi"), "{err}");
    assert!(err.to_string().contains("header says 60"), "{err}");
    eprintln!("truncated AVI: {err}");
}

#[cfg(not(feature = "video"))]
#[test]
fn videos_without_the_feature_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v_A_g01_c01.avi");
    std::fs::write(&path, b"RIFF....AVI ").unwrap();
    let err = data::frame_count(&path).unwrap_err();
    assert!(matches!(&err, Error::Video { .. }), "{err:?}");
    assert!(err.to_string().contains("`video` feature"), "{err}");
}

/// A JPEG whose header declares `width` x `height` over the pixels of a 16 x 16 image.
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::new(16, 16).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
    // The baseline frame header: FF C0, length (2), precision (1), height (2), width (2).
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline JPEG");
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

#[test]
fn a_frame_header_past_the_size_limit_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let clip = frame_folder(&dir.path().join("huge"), 8, &[]);
    std::fs::write(clip.join("img_00001.jpg"), jpeg_declaring(16000, 16000)).unwrap();
    let err = data::test_clip(&clip, 8, 224).unwrap_err();
    assert!(
        matches!(&err, Error::Image { path, reason } if path.ends_with("img_00001.jpg") && reason.contains("16000x16000")),
        "{err:?}"
    );
}

#[cfg(feature = "video")]
#[test]
fn a_video_with_frames_past_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.avi");
    // 8000 x 4500 = 36 Mpx, past 8K UHD's 33.2 Mpx.
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-f", "lavfi", "-i", "color=c=blue:s=8000x4500", "-frames:v", "1"])
        .args(["-c:v", "mjpeg", "-q:v", "31"])
        .arg(&path)
        .status()
        .expect("the `ffmpeg` command-line tool is needed by this test (CI installs it)");
    assert!(status.success());
    let err = data::test_clip(&path, 8, 224).unwrap_err();
    assert!(matches!(&err, Error::Video { path: p, reason } if p == &path && reason.contains("8000x4500")), "{err:?}");
}

/// A video of 100,000 frames is sampled in one decoding pass that keeps only the sampled frames.
#[cfg(feature = "video")]
#[test]
fn a_video_of_100000_frames_gives_its_clip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.avi");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc2=s=32x32:r=1000", "-frames:v", "100000"])
        .args(["-c:v", "mpeg4", "-q:v", "31", "-g", "1000"])
        .arg(&path)
        .status()
        .expect("the `ffmpeg` command-line tool is needed by this test (CI installs it)");
    assert!(status.success());
    assert_eq!(data::frame_count(&path).unwrap(), 100_000);
    let clip = data::test_clip(&path, 8, 32).unwrap();
    assert_eq!(clip.dims(), [8, 3, 32, 32]);
}

/// A class list of a million lines is refused when it is read, at the line past the limit.
#[test]
fn a_class_list_past_the_class_limit_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let lines = 1_000_000;
    let index: String = (1..=lines).map(|i| format!("{i} Class{i}\n")).collect();
    std::fs::write(root.join("classInd.txt"), index).unwrap();
    std::fs::write(root.join("trainlist01.txt"), "Class1/v_Class1_g01_c01.avi\n").unwrap();
    let err = VideoDataset::ucf101(root, 1, Subset::Train, Storage::Videos).unwrap_err();
    let limit_line = data::MAX_CLASSES + 1;
    assert!(matches!(&err, Error::ListFile { line, .. } if *line == limit_line), "{err:?}");
    assert!(err.to_string().contains("classInd.txt"), "{err}");

    let csv: String =
        std::iter::once("id,name\n".to_string()).chain((0..lines).map(|i| format!("{i},c{i}\n"))).collect();
    std::fs::write(root.join("labels.csv"), csv).unwrap();
    std::fs::write(root.join("list.txt"), "a/b 30 1\n").unwrap();
    let err = VideoDataset::from_list(root.join("list.txt"), root.join("labels.csv"), None).unwrap_err();
    assert!(matches!(&err, Error::ListFile { path, .. } if path.ends_with("labels.csv")), "{err:?}");
}
