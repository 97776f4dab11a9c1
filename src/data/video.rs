//! Video files through FFmpeg's libraries (feature `video`): stream information, frame counts, decoding
//! of selected frames to RGB, and an encoder for writing small videos (the synthetic dataset, tests).
//!
//! Decoding reads packets in order and stops after the last frame a sample needs; only the requested
//! frames are converted to RGB and kept. Frame `k` is the `k`-th frame the decoder outputs (presentation
//! order), the numbering `ffmpeg -i x -vsync passthrough -f rawvideo -pix_fmt rgb24 -` uses. The YUV to RGB
//! conversion is libswscale's with the flags, colour matrix and range the `ffmpeg` tool uses.
//!
//! Without the `video` feature every function here returns [`Error::Video`] saying so.
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{Error, Result};

/// What [`probe`] learns about a video without decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Frame count: the container's count when it has one, otherwise counted packet by packet.
    pub frames: usize,
    /// Whether `frames` came from the container header (`false`: from a counting pass).
    pub frames_from_header: bool,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Average frame rate (0 when unknown).
    pub fps: f64,
    /// Codec name, for example `mpeg4`, `h264`, `mjpeg`.
    pub codec: String,
}

/// Codecs [`write_video`] can encode with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VideoCodec {
    /// MPEG-4 Part 2 (UCF101's codec family; FFmpeg's `mpeg4` encoder). Sizes must be even.
    Mpeg4,
    /// Motion JPEG (every frame a JPEG).
    Mjpeg,
    /// H.264 through libx264 (when FFmpeg has it). Sizes must be even.
    H264,
}

/// Settings for [`write_video`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncodeOptions {
    /// Frames per second.
    pub fps: u32,
    /// The codec; the container follows the file extension (`.avi`, `.mp4`, `.mkv`, ...).
    pub codec: VideoCodec,
    /// Quantiser scale for MPEG-4/MJPEG (2 = near lossless, 31 = worst), CRF for H.264.
    pub quality: u32,
    /// Keyframe interval in frames (UCF101's XviD files use long GOPs).
    pub gop: u32,
}

impl Default for EncodeOptions {
    /// MPEG-4 Part 2 at 25 fps, quantiser 3, a keyframe every 250 frames (XviD's default).
    fn default() -> Self {
        Self { fps: 25, codec: VideoCodec::Mpeg4, quality: 3, gop: 250 }
    }
}

fn video_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Video { path: path.to_path_buf(), reason: reason.into() }
}

/// Fails early, with the path, when the file is missing or empty (FFmpeg's own messages are vaguer).
fn check_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(video_err(path, "is a directory, not a video file"));
    }
    if meta.len() == 0 {
        return Err(video_err(path, "the file is empty (0 bytes)"));
    }
    Ok(())
}

#[cfg(not(feature = "video"))]
fn no_feature(path: &Path) -> Error {
    video_err(
        path,
        "actionclip was built without the `video` feature; enable it (FFmpeg libraries needed) or use frame folders",
    )
}

/// Reads a video's stream information and frame count (header count, or a packet counting pass when
/// the container has none).
pub fn probe(path: impl AsRef<Path>) -> Result<VideoInfo> {
    let path = path.as_ref();
    check_file(path)?;
    #[cfg(feature = "video")]
    {
        imp::probe(path)
    }
    #[cfg(not(feature = "video"))]
    {
        Err(no_feature(path))
    }
}

/// Counts a video's frames by reading every packet of its video stream (no decoding). Use it when a
/// container's header cannot be trusted.
pub fn count_frames(path: impl AsRef<Path>) -> Result<usize> {
    let path = path.as_ref();
    check_file(path)?;
    #[cfg(feature = "video")]
    {
        imp::count_packets(path)
    }
    #[cfg(not(feature = "video"))]
    {
        Err(no_feature(path))
    }
}

/// Decodes the 0-based frames `indices` (any order, repeats allowed) of a video to RGB. Decoding
/// stops after the largest index; a video that ends before it gives [`Error::MissingFrame`] with the
/// number of frames it really has (a truncated file, or a header that overstates the count). A header
/// that overstates by at most 2 frames is tolerated: indices below the header's count but past the real
/// end read the last decodable frame.
pub(crate) fn decode(path: impl AsRef<Path>, indices: &[usize]) -> Result<Vec<RgbImage>> {
    let path = path.as_ref();
    check_file(path)?;
    if indices.is_empty() {
        return Ok(Vec::new());
    }
    #[cfg(feature = "video")]
    {
        imp::decode(path, indices)
    }
    #[cfg(not(feature = "video"))]
    {
        Err(no_feature(path))
    }
}

/// Opens a video once and reads its count and frames (saves the second open of `probe` + `decode`).
#[derive(Debug)]
pub(crate) struct VideoReader {
    path: PathBuf,
    #[cfg(feature = "video")]
    inner: imp::Reader,
}

impl VideoReader {
    /// The video file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `path`.
    pub(crate) fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        check_file(&path)?;
        #[cfg(feature = "video")]
        {
            let inner = imp::Reader::open(&path)?;
            Ok(Self { path, inner })
        }
        #[cfg(not(feature = "video"))]
        {
            Err(no_feature(&path))
        }
    }

    /// Frame count from the header, or from a packet counting pass when the header has none.
    pub(crate) fn frame_count(&mut self) -> Result<usize> {
        #[cfg(feature = "video")]
        {
            self.inner.frame_count(&self.path)
        }
        #[cfg(not(feature = "video"))]
        {
            Err(no_feature(&self.path))
        }
    }

    /// Decodes the 0-based frames `indices` (any order, repeats allowed), consuming the reader.
    pub(crate) fn decode(self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        #[cfg(feature = "video")]
        {
            self.inner.decode(&self.path, indices)
        }
        #[cfg(not(feature = "video"))]
        {
            Err(no_feature(&self.path))
        }
    }
}

/// Writes `frames` (all the same size) as a video; the container follows the file extension.
pub fn write_video(path: impl AsRef<Path>, frames: &[RgbImage], opts: &EncodeOptions) -> Result<()> {
    let path = path.as_ref();
    let Some(first) = frames.first() else {
        return Err(video_err(path, "no frames to write"));
    };
    let (w, h) = first.dimensions();
    if frames.iter().any(|f| f.dimensions() != (w, h)) {
        return Err(video_err(path, "all frames of a video must have the same size"));
    }
    if opts.fps == 0 {
        return Err(video_err(path, "fps must be at least 1"));
    }
    if opts.codec != VideoCodec::Mjpeg && (!w.is_multiple_of(2) || !h.is_multiple_of(2)) {
        return Err(video_err(path, format!("{w}x{h}: {:?} needs an even width and height", opts.codec)));
    }
    #[cfg(feature = "video")]
    {
        imp::write(path, frames, opts)
    }
    #[cfg(not(feature = "video"))]
    {
        Err(no_feature(path))
    }
}

#[cfg(feature = "video")]
pub(super) mod imp {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Once;

    use ff::format::Pixel;
    use ff::software::scaling;
    use ffmpeg_next as ff;
    use image::RgbImage;

    use super::{video_err, EncodeOptions, VideoCodec, VideoInfo};
    use crate::error::{Error, Result};

    /// How many frames a container header may overstate the decodable count by before reading past
    /// the real end is an error (within it, indices past the end read the last frame).
    const HEADER_SLACK: usize = 2;

    /// Initialises FFmpeg once and silences its logging (library code never prints; errors are returned).
    pub(in crate::data) fn init() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let _ = ff::init();
            ff::util::log::set_level(ff::util::log::Level::Fatal);
        });
    }

    pub(super) struct Reader {
        input: ff::format::context::Input,
        stream: usize,
        header_frames: i64,
    }

    impl std::fmt::Debug for Reader {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Reader").field("stream", &self.stream).field("header_frames", &self.header_frames).finish()
        }
    }

    impl Reader {
        pub(super) fn open(path: &Path) -> Result<Self> {
            init();
            let input = ff::format::input(&path).map_err(|e| video_err(path, format!("cannot open: {e}")))?;
            let stream =
                input.streams().best(ff::media::Type::Video).ok_or_else(|| video_err(path, "no video stream"))?;
            let (index, header_frames) = (stream.index(), stream.frames());
            Ok(Self { input, stream: index, header_frames })
        }

        pub(super) fn frame_count(&mut self, path: &Path) -> Result<usize> {
            if self.header_frames > 0 {
                return Ok(self.header_frames as usize);
            }
            let n = self.count_packets();
            // Rewind for a later decode (counting read the whole file).
            self.input.seek(0, ..).map_err(|e| video_err(path, format!("cannot rewind after counting: {e}")))?;
            if n == 0 {
                return Err(Error::EmptyClip { path: path.to_path_buf() });
            }
            self.header_frames = n as i64;
            Ok(n)
        }

        fn count_packets(&mut self) -> usize {
            let stream = self.stream;
            self.input.packets().filter(|(s, _)| s.index() == stream).count()
        }

        fn info(&self, path: &Path) -> Result<VideoInfo> {
            let stream = self.input.stream(self.stream).ok_or_else(|| video_err(path, "video stream vanished"))?;
            let params = stream.parameters();
            let ctx = ff::codec::context::Context::from_parameters(params)
                .map_err(|e| video_err(path, format!("unsupported codec parameters: {e}")))?;
            let codec = ctx.id();
            let dec = ctx.decoder().video().map_err(|e| video_err(path, format!("no decoder: {e}")))?;
            let rate = stream.avg_frame_rate();
            let fps = if rate.denominator() != 0 { rate.numerator() as f64 / rate.denominator() as f64 } else { 0.0 };
            Ok(VideoInfo {
                frames: self.header_frames.max(0) as usize,
                frames_from_header: self.header_frames > 0,
                width: dec.width(),
                height: dec.height(),
                fps,
                codec: format!("{codec:?}").to_lowercase(),
            })
        }

        pub(super) fn decode(mut self, path: &Path, indices: &[usize]) -> Result<Vec<RgbImage>> {
            let mut wanted: Vec<usize> = indices.to_vec();
            wanted.sort_unstable();
            wanted.dedup();
            let last = *wanted.last().unwrap_or(&0);
            let stream = self.input.stream(self.stream).ok_or_else(|| video_err(path, "video stream vanished"))?;
            let ctx = ff::codec::context::Context::from_parameters(stream.parameters())
                .map_err(|e| video_err(path, format!("unsupported codec parameters: {e}")))?;
            let mut decoder =
                ctx.decoder().video().map_err(|e| video_err(path, format!("cannot open the decoder: {e}")))?;
            if let Some(problem) = crate::data::frame_size_problem(decoder.width(), decoder.height()) {
                return Err(video_err(path, problem));
            }
            // Near the header's end, keep the latest frame: a header that overstates the count by a
            // few frames is tolerated by repeating the real last frame.
            let keep_tail_from = (self.header_frames.max(0) as usize).saturating_sub(HEADER_SLACK + 1);
            let mut state = DecodeState {
                wanted: &wanted,
                next: 0,
                count: 0,
                last,
                got: BTreeMap::new(),
                converter: RgbConverter::default(),
                keep_tail_from,
                tail: None,
            };
            let mut frame = ff::frame::Video::empty();
            let mut last_error: Option<String> = None;
            let stream_index = self.stream;
            for (s, packet) in self.input.packets() {
                if s.index() != stream_index {
                    continue;
                }
                if let Err(e) = decoder.send_packet(&packet) {
                    last_error = Some(e.to_string());
                }
                if state.drain(&mut decoder, &mut frame, path)? {
                    break;
                }
            }
            if state.count <= last {
                let _ = decoder.send_eof();
                state.drain(&mut decoder, &mut frame, path)?;
            }
            let header = self.header_frames.max(0) as usize;
            if state.count <= last && state.count > 0 && state.count + HEADER_SLACK >= header && last < header {
                if let Some(tail) = state.tail.take() {
                    let img = state.converter.convert(&tail, path)?;
                    for &i in wanted.iter().filter(|&&i| i >= state.count) {
                        state.got.insert(i, img.clone());
                    }
                    state.count = last + 1;
                }
            }
            if state.count <= last {
                let missing = wanted.iter().copied().find(|i| !state.got.contains_key(i)).unwrap_or(last);
                let mut reason = format!("the video ends after {} decodable frames", state.count);
                if self.header_frames > 0 && self.header_frames as usize != state.count {
                    reason.push_str(&format!(" (its header says {})", self.header_frames));
                }
                if let Some(e) = last_error {
                    reason.push_str(&format!("; last decoder error: {e}"));
                }
                return Err(Error::MissingFrame { path: path.to_path_buf(), index: missing, reason });
            }
            let frames = crate::data::gather::gather(std::mem::take(&mut state.got), indices);
            if frames.len() != indices.len() {
                return Err(video_err(path, "internal: a decoded frame was not kept"));
            }
            Ok(frames)
        }
    }

    struct DecodeState<'a> {
        wanted: &'a [usize],
        next: usize,
        count: usize,
        last: usize,
        got: BTreeMap<usize, RgbImage>,
        converter: RgbConverter,
        /// Frames from this index on are remembered in `tail` (see [`HEADER_SLACK`]).
        keep_tail_from: usize,
        tail: Option<ff::frame::Video>,
    }

    impl DecodeState<'_> {
        /// Receives every available frame; returns `true` once the last wanted frame is kept.
        fn drain(
            &mut self,
            decoder: &mut ff::decoder::Video,
            frame: &mut ff::frame::Video,
            path: &Path,
        ) -> Result<bool> {
            while decoder.receive_frame(frame).is_ok() {
                let k = self.count;
                self.count += 1;
                if k >= self.keep_tail_from {
                    self.tail = Some(frame.clone());
                }
                if self.next < self.wanted.len() && self.wanted[self.next] == k {
                    self.next += 1;
                    let img = self.converter.convert(frame, path)?;
                    self.got.insert(k, img);
                }
                if k >= self.last {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }

    /// Decoded frames to RGB24 with libswscale, keeping one scaler while the format and size stay the same.
    #[derive(Default)]
    pub(in crate::data) struct RgbConverter {
        scaler: Option<(scaling::Context, Pixel, u32, u32)>,
    }

    impl RgbConverter {
        /// The frame as an RGB image; `path` names the input in errors.
        pub(in crate::data) fn convert(&mut self, frame: &ff::frame::Video, path: &Path) -> Result<RgbImage> {
            let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
            if let Some(problem) = crate::data::frame_size_problem(w, h) {
                return Err(video_err(path, problem));
            }
            let stale = !matches!(&self.scaler, Some((_, f, sw, sh)) if *f == fmt && *sw == w && *sh == h);
            if stale {
                let mut ctx = scaling::Context::get(fmt, w, h, Pixel::RGB24, w, h, scaling::Flags::BICUBIC)
                    .map_err(|e| video_err(path, format!("no {fmt:?} -> RGB conversion: {e}")))?;
                set_colorspace(&mut ctx, frame);
                self.scaler = Some((ctx, fmt, w, h));
            }
            let Some((ctx, ..)) = self.scaler.as_mut() else {
                return Err(video_err(path, "internal: no scaler"));
            };
            let mut rgb = ff::frame::Video::empty();
            ctx.run(frame, &mut rgb).map_err(|e| video_err(path, format!("RGB conversion failed: {e}")))?;
            let stride = rgb.stride(0);
            let data = rgb.data(0);
            let row = w as usize * 3;
            let mut buf = Vec::with_capacity(row * h as usize);
            for y in 0..h as usize {
                buf.extend_from_slice(&data[y * stride..y * stride + row]);
            }
            RgbImage::from_raw(w, h, buf).ok_or_else(|| video_err(path, "internal: RGB buffer size"))
        }
    }

    /// Uses the frame's colour matrix and range, as the `ffmpeg` tool's scale filter does.
    fn set_colorspace(ctx: &mut scaling::Context, frame: &ff::frame::Video) {
        use ff::ffi::AVColorRange::{AVCOL_RANGE_JPEG, AVCOL_RANGE_MPEG};
        use ff::ffi::AVColorSpace::{
            AVCOL_SPC_BT2020_CL, AVCOL_SPC_BT2020_NCL, AVCOL_SPC_BT709, AVCOL_SPC_FCC, AVCOL_SPC_SMPTE240M,
        };
        // The fields are read as the integers the file set: ffmpeg-next's `color_space()` and `color_range()`
        // convert them through Rust enums, and a value outside an enum (a damaged stream's) is undefined
        // behaviour (a crash).
        // SAFETY: the frame is valid; the fields are C enums, ints.
        let (raw, range) = unsafe {
            let f = frame.as_ptr();
            (
                std::ptr::addr_of!((*f).colorspace).cast::<std::os::raw::c_int>().read(),
                std::ptr::addr_of!((*f).color_range).cast::<std::os::raw::c_int>().read(),
            )
        };
        // libswscale's SWS_CS_* values.
        let cs = match raw {
            r if r == AVCOL_SPC_BT709 as i32 => 1,
            r if r == AVCOL_SPC_FCC as i32 => 4,
            r if r == AVCOL_SPC_SMPTE240M as i32 => 7,
            r if r == AVCOL_SPC_BT2020_NCL as i32 || r == AVCOL_SPC_BT2020_CL as i32 => 9,
            _ => 5, // BT.601 (SWS_CS_DEFAULT)
        };
        // SAFETY: the context is valid for its lifetime; the out-pointers point to locals; the table
        // pointer comes from libswscale's static coefficient tables.
        unsafe {
            let sws = ctx.as_mut_ptr();
            let mut inv_table: *mut i32 = std::ptr::null_mut();
            let mut table: *mut i32 = std::ptr::null_mut();
            let (mut src_range, mut dst_range, mut brightness, mut contrast, mut saturation) = (0, 0, 0, 0, 0);
            let r = ff::ffi::sws_getColorspaceDetails(
                sws,
                &mut inv_table,
                &mut src_range,
                &mut table,
                &mut dst_range,
                &mut brightness,
                &mut contrast,
                &mut saturation,
            );
            if r < 0 {
                return;
            }
            if range == AVCOL_RANGE_JPEG as i32 {
                src_range = 1;
            } else if range == AVCOL_RANGE_MPEG as i32 {
                src_range = 0;
            }
            ff::ffi::sws_setColorspaceDetails(
                sws,
                ff::ffi::sws_getCoefficients(cs),
                src_range,
                table,
                dst_range,
                brightness,
                contrast,
                saturation,
            );
        }
    }

    pub(super) fn probe(path: &Path) -> Result<VideoInfo> {
        let mut r = Reader::open(path)?;
        let n = r.frame_count(path)?;
        let mut info = r.info(path)?;
        info.frames = n;
        Ok(info)
    }

    pub(super) fn count_packets(path: &Path) -> Result<usize> {
        let mut r = Reader::open(path)?;
        Ok(r.count_packets())
    }

    pub(super) fn decode(path: &Path, indices: &[usize]) -> Result<Vec<RgbImage>> {
        // Frames past the header's count are still looked for: the header may understate.
        Reader::open(path)?.decode(path, indices)
    }

    pub(super) fn write(path: &Path, frames: &[RgbImage], opts: &EncodeOptions) -> Result<()> {
        init();
        let err = |what: &str, e: ff::Error| video_err(path, format!("{what}: {e}"));
        let (w, h) = frames[0].dimensions();
        let mut octx = ff::format::output(&path).map_err(|e| err("cannot create the output", e))?;
        let global_header = octx.format().flags().contains(ff::format::Flags::GLOBAL_HEADER);
        let tb = ff::Rational(1, opts.fps as i32);
        let (mut enc, codec, pix) = open_encoder(path, opts, (w, h), tb, global_header)?;
        let stream_index = {
            let mut ost = octx.add_stream(codec).map_err(|e| err("cannot add a stream", e))?;
            ost.set_parameters(&enc);
            ost.set_time_base(tb);
            ost.index()
        };
        octx.write_header().map_err(|e| err("cannot write the header", e))?;
        let ost_tb = octx.stream(stream_index).map(|s| s.time_base()).unwrap_or(tb);
        let mut scaler = scaling::Context::get(Pixel::RGB24, w, h, pix, w, h, scaling::Flags::BICUBIC)
            .map_err(|e| err("no RGB -> YUV conversion", e))?;
        let mut packet = ff::Packet::empty();
        let mut flush = |enc: &mut ff::encoder::Video, octx: &mut ff::format::context::Output| -> Result<()> {
            while enc.receive_packet(&mut packet).is_ok() {
                packet.set_stream(stream_index);
                // One frame per packet: without a duration, MP4 muxers drop the last frame.
                if packet.duration() == 0 {
                    packet.set_duration(1);
                }
                packet.rescale_ts(tb, ost_tb);
                packet.write_interleaved(octx).map_err(|e| err("cannot write a packet", e))?;
            }
            Ok(())
        };
        for (i, img) in frames.iter().enumerate() {
            let mut yuv = ff::frame::Video::empty();
            scaler.run(&rgb_frame(img), &mut yuv).map_err(|e| err("RGB -> YUV conversion failed", e))?;
            yuv.set_pts(Some(i as i64));
            enc.send_frame(&yuv).map_err(|e| err("encoding failed", e))?;
            flush(&mut enc, &mut octx)?;
        }
        enc.send_eof().map_err(|e| err("cannot flush the encoder", e))?;
        flush(&mut enc, &mut octx)?;
        octx.write_trailer().map_err(|e| err("cannot finish the file", e))?;
        Ok(())
    }

    /// An opened encoder for `opts.codec` at `size` and time base `tb`, with the codec and the pixel format
    /// it takes.
    fn open_encoder(
        path: &Path,
        opts: &EncodeOptions,
        (w, h): (u32, u32),
        tb: ff::Rational,
        global_header: bool,
    ) -> Result<(ff::encoder::Video, ff::Codec, Pixel)> {
        let err = |what: &str, e: ff::Error| video_err(path, format!("{what}: {e}"));
        let (codec_id, pix) = match opts.codec {
            VideoCodec::Mpeg4 => (ff::codec::Id::MPEG4, Pixel::YUV420P),
            VideoCodec::Mjpeg => (ff::codec::Id::MJPEG, Pixel::YUVJ420P),
            VideoCodec::H264 => (ff::codec::Id::H264, Pixel::YUV420P),
        };
        let codec = ff::encoder::find(codec_id)
            .ok_or_else(|| video_err(path, format!("this FFmpeg has no {:?} encoder", opts.codec)))?;
        let mut enc = ff::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| err("cannot make the encoder", e))?;
        enc.set_width(w);
        enc.set_height(h);
        enc.set_format(pix);
        enc.set_time_base(tb);
        enc.set_frame_rate(Some(ff::Rational(opts.fps as i32, 1)));
        enc.set_gop(opts.gop.max(1));
        enc.set_max_b_frames(0);
        let mut flags = ff::codec::Flags::empty();
        if global_header {
            flags |= ff::codec::Flags::GLOBAL_HEADER;
        }
        let mut dict = ff::Dictionary::new();
        match opts.codec {
            VideoCodec::Mpeg4 | VideoCodec::Mjpeg => {
                flags |= ff::codec::Flags::QSCALE;
                // FF_QP2LAMBDA = 118
                enc.set_global_quality((opts.quality.clamp(1, 31) * 118) as i32);
            }
            VideoCodec::H264 => {
                dict.set("crf", &opts.quality.to_string());
                dict.set("preset", "veryfast");
            }
        }
        enc.set_flags(flags);
        let enc = enc.open_as_with(codec, dict).map_err(|e| err("cannot open the encoder", e))?;
        Ok((enc, codec, pix))
    }

    /// An RGB24 FFmpeg frame holding `img` (rows copied to the frame's stride).
    fn rgb_frame(img: &RgbImage) -> ff::frame::Video {
        let (w, h) = img.dimensions();
        let mut rgb = ff::frame::Video::new(Pixel::RGB24, w, h);
        let stride = rgb.stride(0);
        let row = w as usize * 3;
        let dst = rgb.data_mut(0);
        for (y, src) in img.as_raw().chunks_exact(row).enumerate() {
            dst[y * stride..y * stride + row].copy_from_slice(src);
        }
        rgb
    }
}
