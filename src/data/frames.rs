//! TSN-style frame folders: one image per frame, named by a template such as `img_{:05d}.jpg`, numbered
//! from 1 (the reference's `index_bias`). Images are read through the `image` crate (JPEG, PNG, GIF).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{Error, Result};

/// Widest number field a template may ask for: a file name is at most 255 bytes.
const MAX_FIELD_WIDTH: usize = 255;

/// A frame file name template in Python `str.format` style with one integer field:
/// `img_{:05d}.jpg`, `frame{:d}.png`, `{}.jpg`, `{:06}.jpg`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameTemplate {
    prefix: String,
    suffix: String,
    width: usize,
    zero_pad: bool,
}

impl Default for FrameTemplate {
    /// `img_{:05d}.jpg`, the reference's default.
    fn default() -> Self {
        Self { prefix: "img_".into(), suffix: ".jpg".into(), width: 5, zero_pad: true }
    }
}

impl FrameTemplate {
    /// Parses a template with exactly one `{}`/`{:d}`/`{:05d}`/`{:5}` field.
    pub fn parse(template: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("frame template {template:?}: {why}"));
        let open = template.find('{').ok_or_else(|| bad("no {} field"))?;
        let close = template[open..].find('}').map(|c| open + c).ok_or_else(|| bad("unclosed {"))?;
        let spec = &template[open + 1..close];
        let suffix = &template[close + 1..];
        if suffix.contains('{') || suffix.contains('}') || template[..open].contains('}') {
            return Err(bad("only one field is supported"));
        }
        let spec = spec.strip_prefix(':').unwrap_or(spec);
        let spec = spec.strip_suffix('d').unwrap_or(spec);
        let (zero_pad, digits) = match spec.strip_prefix('0') {
            Some(rest) if !rest.is_empty() => (true, rest),
            _ => (false, spec),
        };
        let width = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad("unsupported format spec"))? };
        if width > MAX_FIELD_WIDTH {
            return Err(bad(&format!("a field {width} characters wide is wider than a file name can be")));
        }
        Ok(Self { prefix: template[..open].to_string(), suffix: suffix.to_string(), width, zero_pad })
    }

    /// The file name of frame number `n` (the number as written, including the start offset).
    pub(crate) fn name(&self, n: usize) -> String {
        // A deserialized template has not been through `parse`; `format!` panics on widths past u16.
        let w = self.width.min(MAX_FIELD_WIDTH);
        if self.zero_pad {
            format!("{}{:0w$}{}", self.prefix, n, self.suffix)
        } else {
            format!("{}{:w$}{}", self.prefix, n, self.suffix)
        }
    }

    /// The frame number in a file name, if the name matches the template.
    pub(crate) fn number(&self, name: &str) -> Option<usize> {
        let digits = name.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        let digits = digits.trim_start_matches(' ');
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if self.zero_pad && digits.len() < self.width {
            return None;
        }
        digits.parse().ok()
    }
}

/// A frame folder: frames `first_index .. first_index + len` named by a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameFolder {
    dir: PathBuf,
    template: FrameTemplate,
    first_index: usize,
    len: usize,
}

impl FrameFolder {
    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Opens `dir` with the default template (`img_{:05d}.jpg`, numbered from 1) and counts its frames;
    /// a folder with no such files but `img_{:05d}.png` or `.jpeg` ones is read with that extension.
    pub(crate) fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        match Self::open_with(dir, FrameTemplate::default(), 1) {
            Err(Error::EmptyClip { path }) => {
                for ext in [".png", ".jpeg"] {
                    let template = FrameTemplate { suffix: ext.into(), ..FrameTemplate::default() };
                    match Self::open_with(dir, template, 1) {
                        Err(Error::EmptyClip { .. }) => continue,
                        other => return other,
                    }
                }
                Err(Error::EmptyClip { path })
            }
            other => other,
        }
    }

    /// Opens `dir`, counting the files that match `template`. The frames must be contiguous from
    /// `first_index`: a gap is reported as [`Error::MissingFrame`] naming the first missing file, an
    /// empty folder as [`Error::EmptyClip`].
    pub(crate) fn open_with(dir: impl AsRef<Path>, template: FrameTemplate, first_index: usize) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if let Some(n) = entry.file_name().to_str().and_then(|s| template.number(s)) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        numbers.dedup();
        if numbers.is_empty() {
            return Err(Error::EmptyClip { path: dir });
        }
        for (i, &n) in numbers.iter().enumerate() {
            let expected = first_index + i;
            if n != expected {
                return Err(Error::MissingFrame {
                    path: dir,
                    index: i,
                    reason: format!(
                        "{} does not exist (found {} frames, last {})",
                        template.name(expected),
                        numbers.len(),
                        template.name(numbers[numbers.len() - 1])
                    ),
                });
            }
        }
        let len = numbers.len();
        Ok(Self { dir, template, first_index, len })
    }

    /// A folder whose frame count is already known (for example from a TSN list file); nothing is read.
    pub(crate) fn with_len(dir: impl AsRef<Path>, template: FrameTemplate, first_index: usize, len: usize) -> Self {
        Self { dir: dir.as_ref().to_path_buf(), template, first_index, len }
    }

    /// Number of frames.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the folder holds no frames.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file of 0-based frame `index`.
    pub(crate) fn frame_path(&self, index: usize) -> PathBuf {
        self.dir.join(self.template.name(self.first_index + index))
    }

    /// Reads the 0-based frames `indices` (any order, repeats allowed; each file is decoded once).
    pub(crate) fn read(&self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        let mut cache: BTreeMap<usize, RgbImage> = BTreeMap::new();
        for &i in indices {
            if cache.contains_key(&i) {
                continue;
            }
            if i >= self.len {
                return Err(Error::MissingFrame {
                    path: self.dir.clone(),
                    index: i,
                    reason: format!("the folder has {} frames", self.len),
                });
            }
            cache.insert(i, self.read_one(i)?);
        }
        Ok(super::gather::gather(cache, indices))
    }

    fn read_one(&self, index: usize) -> Result<RgbImage> {
        let path = self.frame_path(index);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingFrame {
                    path: self.dir.clone(),
                    index,
                    reason: format!("{} does not exist", path.display()),
                })
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let image_err = |reason: String| Error::Image { path: path.clone(), reason };
        let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| image_err(e.to_string()))?;
        // The header's size first: a hostile file must not make the decoder allocate gigabytes.
        let (w, h) = reader.into_dimensions().map_err(|e| image_err(e.to_string()))?;
        if let Some(problem) = super::frame_size_problem(w, h) {
            return Err(image_err(problem));
        }
        let img = image::load_from_memory(&bytes).map_err(|e| image_err(e.to_string()))?;
        Ok(img.into_rgb8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = FrameTemplate::parse("img_{:05d}.jpg").unwrap();
        assert_eq!(t, FrameTemplate::default());
        assert_eq!(t.name(7), "img_00007.jpg");
        assert_eq!(t.number("img_00123.jpg"), Some(123));
        assert_eq!(t.number("img_123.jpg"), None);
        assert_eq!(t.number("img_00123.png"), None);
        let t = FrameTemplate::parse("frame{:d}.png").unwrap();
        assert_eq!(t.name(12), "frame12.png");
        assert_eq!(t.number("frame12.png"), Some(12));
        let t = FrameTemplate::parse("{}.jpg").unwrap();
        assert_eq!(t.name(3), "3.jpg");
        assert!(FrameTemplate::parse("img.jpg").is_err());
        assert!(FrameTemplate::parse("{}_{}.jpg").is_err());
        assert!(FrameTemplate::parse("img_{:0255d}.jpg").is_ok());
        assert!(
            matches!(FrameTemplate::parse("img_{:256d}.jpg"), Err(Error::Config(m)) if m.contains("256 characters"))
        );
        let wide: FrameTemplate =
            serde_json::from_str(r#"{"prefix": "img_", "suffix": ".jpg", "width": 1000000000000, "zero_pad": true}"#)
                .unwrap();
        assert_eq!(wide.name(1).len(), "img_".len() + MAX_FIELD_WIDTH + ".jpg".len());
    }
}
