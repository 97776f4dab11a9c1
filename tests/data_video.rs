//! Decoding parity with the `ffmpeg` tool: videos made by FFmpeg (MPEG-4 Part 2 in AVI, H.264 in MP4,
//! MJPEG, MPEG-4 in MKV without a frame count) decode to the same RGB frames as
//! `ffmpeg -i x -vsync passthrough -f rawvideo -pix_fmt rgb24 -`, within 1 level per channel.
#![cfg(feature = "video")]

mod data_common;

use actionclip::data;
use data_common::{ffmpeg, ffmpeg_rgb_frames};

struct Case {
    name: &'static str,
    file: &'static str,
    args: &'static [&'static str],
    codec: &'static str,
}

const CASES: [Case; 6] = [
    Case { name: "mpeg4 avi", file: "a.avi", args: &["-c:v", "mpeg4", "-q:v", "4", "-g", "12"], codec: "mpeg4" },
    Case {
        name: "mpeg4 avi b-frames",
        file: "b.avi",
        args: &["-c:v", "mpeg4", "-q:v", "4", "-bf", "2", "-g", "250"],
        codec: "mpeg4",
    },
    Case {
        name: "h264 mp4",
        file: "c.mp4",
        args: &["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
        codec: "h264",
    },
    Case {
        name: "h264 mp4 bt709",
        file: "d.mp4",
        args: &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-colorspace",
            "bt709",
            "-color_primaries",
            "bt709",
            "-color_trc",
            "bt709",
        ],
        codec: "h264",
    },
    Case {
        name: "mjpeg avi",
        file: "e.avi",
        args: &["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"],
        codec: "mjpeg",
    },
    Case { name: "mpeg4 mkv (no header count)", file: "f.mkv", args: &["-c:v", "mpeg4", "-q:v", "4"], codec: "mpeg4" },
];

#[test]
fn decoded_frames_equal_ffmpeg_tool() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for case in &CASES {
        let path = dir.path().join(case.file);
        let mut args = vec!["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1.2"];
        args.extend_from_slice(case.args);
        ffmpeg(&args, &path);
        let want = ffmpeg_rgb_frames(&path);
        assert_eq!(want.len(), 30, "{}: the ffmpeg tool decoded {} frames", case.name, want.len());

        let info = data::probe(&path).unwrap();
        assert_eq!(info.frames, want.len(), "{}: frame count", case.name);
        assert_eq!((info.width, info.height), (160, 120), "{}", case.name);
        assert_eq!(info.codec, case.codec, "{}", case.name);
        assert_eq!(data::frame_count(&path).unwrap(), want.len(), "{}", case.name);
        assert_eq!(data::count_frames(&path).unwrap(), want.len(), "{}: packet count", case.name);

        let all: Vec<usize> = (0..want.len()).collect();
        let got = data::decode_frames(&path, &all).unwrap();
        assert_eq!(got.len(), want.len());
        let mut max = 0u8;
        let mut differing = 0usize;
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.dimensions(), w.dimensions());
            for (a, b) in g.as_raw().iter().zip(w.as_raw()) {
                let d = a.abs_diff(*b);
                max = max.max(d);
                differing += (d > 0) as usize;
            }
        }
        report.push(format!("{}: {} frames, max diff {max}, {differing} values differ", case.name, got.len()));
        assert!(max <= 1, "{}: max channel difference {max}", case.name);

        // Any order, repeats, a subset: the same frames.
        let picks = [17usize, 3, 3, 29, 0];
        let sub = data::decode_frames(&path, &picks).unwrap();
        for (img, &i) in sub.iter().zip(&picks) {
            assert_eq!(img, &got[i], "{}: frame {i} decoded alone", case.name);
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn decoding_past_the_end_is_a_missing_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.avi");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=0.4", "-c:v", "mpeg4"], &path);
    let err = data::decode_frames(&path, &[2, 10]).unwrap_err();
    match &err {
        actionclip::Error::MissingFrame { path: p, index, .. } => {
            assert_eq!(p, &path);
            assert_eq!(*index, 10);
        }
        other => panic!("expected MissingFrame, got {other}"),
    }
    assert!(err.to_string().contains("short.avi"), "{err}");
}

#[test]
fn test_clip_from_video_has_the_contract_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v_Test_g01_c01.avi");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2", "-c:v", "mpeg4", "-q:v", "4"], &path);
    let clip = data::test_clip(&path, 8, 224).unwrap();
    assert_eq!(clip.dims(), &[8, 3, 224, 224]);
    assert_eq!(clip.dtype(), candle_core::DType::F32);
    // Same as running the test transform on the tool's frames at the test indices.
    let want = ffmpeg_rgb_frames(&path);
    let idx = data::Sampling::new(8).unwrap().test_indices(want.len());
    let frames: Vec<_> = idx.iter().map(|&i| want[i].clone()).collect();
    let expect = data::TestTransform::new(224).apply(&frames).unwrap().remove(0);
    let got: Vec<f32> = clip.flatten_all().unwrap().to_vec1().unwrap();
    let max = got.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    // One decoded level is at most 1/255/std ~ 0.015 after normalisation.
    assert!(max <= 0.016, "max diff {max}");
}

#[test]
fn encoder_roundtrip_through_ffmpeg_tool() {
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<image::RgbImage> = (0..10)
        .map(|t| image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([(x * 5 + t * 10) as u8, (y * 7) as u8, 128])))
        .collect();
    for (codec, file) in [(data::VideoCodec::Mpeg4, "w.avi"), (data::VideoCodec::Mjpeg, "w_mjpeg.avi")] {
        let path = dir.path().join(file);
        let opts = data::EncodeOptions { fps: 25, codec, quality: 2, gop: 250 };
        data::write_video(&path, &frames, &opts).unwrap();
        let tool = ffmpeg_rgb_frames(&path);
        assert_eq!(tool.len(), 10, "{codec:?}");
        let ours = data::decode_frames(&path, &(0..10).collect::<Vec<_>>()).unwrap();
        for (a, b) in ours.iter().zip(&tool) {
            let max = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
            assert!(max <= 1, "{codec:?}: {max}");
        }
        // Lossy but close to what was written.
        let err: f64 = ours[5].as_raw().iter().zip(frames[5].as_raw()).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>()
            / frames[5].as_raw().len() as f64;
        assert!(err < 6.0, "{codec:?}: mean abs error {err}");
    }
}

/// A header that overstates the frame count by a frame or two (the last frame cut off) is tolerated:
/// indices past the real end read the last decodable frame; further out is still an error.
#[test]
fn header_overstating_by_a_frame_is_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut_end.avi");
    let frames: Vec<image::RgbImage> = (0..20u32)
        .map(|t| {
            image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([(x * 3 + t * 9) as u8, ((y * 5) ^ t) as u8, (x ^ y) as u8])
            })
        })
        .collect();
    let opts = data::EncodeOptions { gop: 5, ..Default::default() };
    data::write_video(&path, &frames, &opts).unwrap();
    let full = ffmpeg_rgb_frames(&path);
    // Drop the index (16 bytes per frame + 8) and most of the last frame's data.
    let bytes = std::fs::read(&path).unwrap();
    let cut = 8 + 16 * 20 + 200;
    std::fs::write(&path, &bytes[..bytes.len() - cut]).unwrap();
    let left = ffmpeg_rgb_frames(&path).len();
    assert!((18..20).contains(&left), "the cut left {left} frames");
    assert_eq!(data::frame_count(&path).unwrap(), 20, "the header still says 20");
    let got = data::decode_frames(&path, &[0, 17, 19]).unwrap();
    assert_eq!(got[1], data::decode_frames(&path, &[17]).unwrap()[0]);
    let max = got[0].as_raw().iter().zip(full[0].as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(max <= 1);
    assert!(matches!(
        data::decode_frames(&path, &[20]).unwrap_err(),
        actionclip::Error::MissingFrame { index: 20, .. }
    ));
}
