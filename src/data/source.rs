//! One clip on disk, whatever its storage: a video file (feature `video`) or a frame folder.
use std::path::Path;

use image::RgbImage;

use super::frames::{FrameFolder, FrameTemplate};
use super::video::VideoReader;
use crate::error::{catch_reader_panic, Error, Result};

/// How frame folders are named; videos ignore it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameNaming {
    /// File name template (default `img_{:05d}.jpg`).
    pub template: FrameTemplate,
    /// Number of the first frame file (default 1).
    pub first_index: usize,
}

impl Default for FrameNaming {
    fn default() -> Self {
        Self { template: FrameTemplate::default(), first_index: 1 }
    }
}

/// An opened clip: its frame count is known, frames can be read.
#[derive(Debug)]
pub(crate) enum ClipSource {
    /// A video file and its frame count.
    Video(VideoReader, usize),
    /// A frame folder.
    Frames(FrameFolder),
}

impl ClipSource {
    /// Opens `path`: a directory is a frame folder, anything else a video. `known_len` (for example
    /// from a TSN list file) skips counting.
    pub(crate) fn open(path: &Path, naming: &FrameNaming, known_len: Option<usize>) -> Result<Self> {
        catch_reader_panic(|| Self::open_unguarded(path, naming, known_len), |reason| decode_error(path, reason))
    }

    fn open_unguarded(path: &Path, naming: &FrameNaming, known_len: Option<usize>) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let folder = match known_len {
                Some(n) => FrameFolder::with_len(path, naming.template.clone(), naming.first_index, n),
                // The default naming also finds `.png`/`.jpeg` frames.
                None if naming == &FrameNaming::default() => FrameFolder::open(path)?,
                None => FrameFolder::open_with(path, naming.template.clone(), naming.first_index)?,
            };
            if folder.is_empty() {
                return Err(Error::EmptyClip { path: path.to_path_buf() });
            }
            return Ok(ClipSource::Frames(folder));
        }
        let mut reader = VideoReader::open(path)?;
        let n = match known_len {
            Some(n) => n,
            None => reader.frame_count()?,
        };
        if n == 0 {
            return Err(Error::EmptyClip { path: path.to_path_buf() });
        }
        Ok(ClipSource::Video(reader, n))
    }

    /// The video file or frame folder.
    fn path(&self) -> &Path {
        match self {
            ClipSource::Video(r, _) => r.path(),
            ClipSource::Frames(f) => f.path(),
        }
    }

    /// Number of frames.
    pub(crate) fn len(&self) -> usize {
        match self {
            ClipSource::Video(_, n) => *n,
            ClipSource::Frames(f) => f.len(),
        }
    }

    /// Reads the 0-based frames `indices` (any order, repeats allowed).
    pub(crate) fn read(self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        let path = self.path().to_path_buf();
        catch_reader_panic(
            || match self {
                ClipSource::Video(r, _) => r.decode(indices),
                ClipSource::Frames(f) => f.read(indices),
            },
            |reason| decode_error(&path, reason),
        )
    }
}

/// The error for a reader that failed on `path` in an unexpected way: [`Error::Image`] for a frame folder,
/// [`Error::Video`] for anything else.
pub(crate) fn decode_error(path: &Path, reason: String) -> Error {
    if path.is_dir() {
        Error::Image { path: path.to_path_buf(), reason }
    } else {
        Error::Video { path: path.to_path_buf(), reason }
    }
}
