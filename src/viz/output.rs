//! Writing frame sequences: MP4 through FFmpeg (feature `video`; H.264 when FFmpeg has an encoder for
//! it, MPEG-4 Part 2 otherwise) and animated GIFs (pure Rust, always available).
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbImage, RgbaImage};

use crate::data::{write_video, EncodeOptions, VideoCodec};
use crate::error::{Error, Result};

/// What [`write_animation`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnimationFormat {
    /// An MP4 file with this codec.
    Mp4(VideoCodec),
    /// An animated GIF.
    Gif,
}

/// Writes `frames` as an animated GIF that loops forever, at `fps` frames per second. `speed` (1..=30)
/// trades colour quantisation quality for time (10 is a good default; 30 for thumbnails).
pub fn write_gif(path: impl AsRef<Path>, frames: &[RgbImage], fps: f64, speed: i32) -> Result<()> {
    let path = path.as_ref();
    let err = |reason: String| Error::Image { path: path.to_path_buf(), reason };
    if frames.is_empty() {
        return Err(err("no frames to write".into()));
    }
    if !(fps > 0.0 && fps.is_finite()) {
        return Err(err(format!("fps must be positive, got {fps}")));
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = GifEncoder::new_with_speed(BufWriter::new(file), speed.clamp(1, 30));
    enc.set_repeat(Repeat::Infinite).map_err(|e| err(e.to_string()))?;
    // GIF delays are in hundredths of a second.
    let delay = Delay::from_numer_denom_ms(((100.0 / fps).round().max(2.0) * 10.0) as u32, 1);
    for f in frames {
        let rgba: RgbaImage = image::DynamicImage::ImageRgb8(f.clone()).to_rgba8();
        enc.encode_frame(Frame::from_parts(rgba, 0, 0, delay)).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// Writes `frames` (all the same size, even width and height) as an MP4 at `fps` (rounded, at least 1):
/// H.264 (CRF 20) when this FFmpeg can encode it, MPEG-4 Part 2 otherwise. Returns the codec used.
/// Needs the `video` feature ([`Error::Video`] without it).
pub(crate) fn write_mp4(path: impl AsRef<Path>, frames: &[RgbImage], fps: f64) -> Result<VideoCodec> {
    let path = path.as_ref();
    let fps = (fps.round() as u32).max(1);
    let h264 = EncodeOptions { fps, codec: VideoCodec::H264, quality: 20, gop: 250 };
    match write_video(path, frames, &h264) {
        Ok(()) => Ok(VideoCodec::H264),
        Err(first) => {
            let _ = std::fs::remove_file(path);
            let mpeg4 = EncodeOptions { fps, codec: VideoCodec::Mpeg4, quality: 3, gop: 250 };
            match write_video(path, frames, &mpeg4) {
                Ok(()) => Ok(VideoCodec::Mpeg4),
                Err(second) => {
                    Err(Error::Video { path: path.to_path_buf(), reason: format!("H.264: {first}; MPEG-4: {second}") })
                }
            }
        }
    }
}

/// Writes `frames` next to `stem` (a path without extension): `stem.mp4` with the `video` feature,
/// `stem.gif` without it. Returns the file and its format.
pub fn write_animation(stem: impl AsRef<Path>, frames: &[RgbImage], fps: f64) -> Result<(PathBuf, AnimationFormat)> {
    let stem = stem.as_ref();
    let with_ext = |ext: &str| {
        let mut s = stem.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    if cfg!(feature = "video") {
        let path = with_ext(".mp4");
        let codec = write_mp4(&path, frames, fps)?;
        Ok((path, AnimationFormat::Mp4(codec)))
    } else {
        let path = with_ext(".gif");
        write_gif(&path, frames, fps, 10)?;
        Ok((path, AnimationFormat::Gif))
    }
}
