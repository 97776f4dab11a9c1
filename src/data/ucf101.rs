//! Datasets: the official UCF101 layout (class folders + `classInd.txt`, `trainlist0N.txt`,
//! `testlist0N.txt`), the same tree as frame folders, and ActionCLIP/TSN list files
//! (`frame_dir num_frames label` + a label CSV `id,name`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::source::FrameNaming;
use super::MAX_CLASSES;
use crate::error::{Error, Result};

/// One labelled clip.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VideoSample {
    /// Video file or frame folder.
    pub path: PathBuf,
    /// 0-based class index into [`VideoDataset::classes`].
    pub label: usize,
    /// Frame count when the list file gives it (TSN lists); `None`: counted when loaded.
    pub num_frames: Option<usize>,
}

/// Which half of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Subset {
    /// `trainlist0N.txt`.
    Train,
    /// `testlist0N.txt`.
    Test,
}

/// How the clips of a UCF101 tree are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Storage {
    /// `Class/v_Class_gXX_cYY.avi` video files (the official download).
    Videos,
    /// `Class/v_Class_gXX_cYY/` frame folders (the split files' paths without the extension).
    FrameFolders,
}

/// A labelled list of clips with its class names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VideoDataset {
    /// The clips, in list-file order.
    pub samples: Vec<VideoSample>,
    /// Class names as written in the class list (`ApplyEyeMakeup`), indexed by label.
    pub classes: Vec<String>,
}

impl VideoDataset {
    /// A dataset from samples and class names (checks every label is in range).
    pub fn new(samples: Vec<VideoSample>, classes: Vec<String>) -> Result<Self> {
        if let Some(s) = samples.iter().find(|s| s.label >= classes.len()) {
            return Err(Error::Labels(format!(
                "{}: label {} but only {} classes",
                s.path.display(),
                s.label,
                classes.len()
            )));
        }
        Ok(Self { samples, classes })
    }

    /// The official UCF101 layout under `root` (class folders), with the split files found in `root`,
    /// `root/ucfTrainTestlist` or `root/../ucfTrainTestlist`. `split` is 1, 2 or 3.
    pub fn ucf101(root: impl AsRef<Path>, split: u8, subset: Subset, storage: Storage) -> Result<Self> {
        let root = root.as_ref();
        let candidates = [root.to_path_buf(), root.join("ucfTrainTestlist"), root.join("..").join("ucfTrainTestlist")];
        let splits = candidates.iter().find(|d| d.join("classInd.txt").is_file()).ok_or_else(|| {
            Error::io(
                root.join("classInd.txt"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "classInd.txt not found in the root, root/ucfTrainTestlist or root/../ucfTrainTestlist",
                ),
            )
        })?;
        Self::ucf101_with_splits(root, splits, split, subset, storage)
    }

    /// The official UCF101 layout with the split files in `splits_dir`.
    pub fn ucf101_with_splits(
        root: impl AsRef<Path>,
        splits_dir: impl AsRef<Path>,
        split: u8,
        subset: Subset,
        storage: Storage,
    ) -> Result<Self> {
        if !(1..=3).contains(&split) {
            return Err(Error::Config(format!("UCF101 has splits 1, 2 and 3, not {split}")));
        }
        let (root, dir) = (root.as_ref(), splits_dir.as_ref());
        let classes = read_class_index(dir.join("classInd.txt"))?;
        let list = match subset {
            Subset::Train => dir.join(format!("trainlist0{split}.txt")),
            Subset::Test => dir.join(format!("testlist0{split}.txt")),
        };
        let samples = read_split_list(&list, &classes, root, storage)?;
        Ok(Self { samples, classes })
    }

    /// An ActionCLIP/TSN list file (`frame_dir num_frames label`, label 0-based) with its label CSV
    /// (`id,name` with a header line). Relative frame folders are taken relative to `root` (or used as
    /// written when `root` is `None`).
    pub fn from_list(list_file: impl AsRef<Path>, labels_csv: impl AsRef<Path>, root: Option<&Path>) -> Result<Self> {
        let classes = read_label_csv(labels_csv)?;
        let path = list_file.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| Error::ListFile { path: path.to_path_buf(), line: i + 1, reason };
            let mut parts = line.rsplitn(3, char::is_whitespace);
            let (label, frames, dir) = match (parts.next(), parts.next(), parts.next()) {
                (Some(l), Some(n), Some(d)) => (l, n, d.trim_end()),
                _ => return Err(bad(format!("expected `frame_dir num_frames label`, found {line:?}"))),
            };
            let num_frames: usize =
                frames.parse().map_err(|_| bad(format!("frame count {frames:?} is not a number")))?;
            let label_id: usize = label.parse().map_err(|_| bad(format!("label {label:?} is not a number")))?;
            if label_id >= classes.len() {
                return Err(Error::UnknownLabel { path: path.to_path_buf(), line: i + 1, label: label.to_string() });
            }
            let p = PathBuf::from(dir);
            let p = match root {
                Some(r) if p.is_relative() => r.join(p),
                _ => p,
            };
            samples.push(VideoSample { path: p, label: label_id, num_frames: Some(num_frames) });
        }
        Ok(Self { samples, classes })
    }

    /// Every clip under a folder, or every clip a list file names, labelled by the name of the folder
    /// that holds it (classes sorted by name).
    ///
    /// A folder is searched recursively for video files (by extension: `avi mp4 mkv webm mov m4v mpg
    /// mpeg flv wmv ts`) and frame folders (folders holding `img_00001.jpg`, not searched further).
    /// A list file holds one path per line, relative to `root` (default: the list file's folder); a
    /// trailing whitespace-separated number is ignored, so UCF101's `trainlist0N.txt` and
    /// `testlist0N.txt` read as they are. Clips are sorted by path for a folder and kept in list order for
    /// a list file. An empty result is an error.
    pub fn scan(path: impl AsRef<Path>, root: Option<&Path>) -> Result<Self> {
        let path = path.as_ref();
        let paths = if path.is_dir() {
            let mut found = Vec::new();
            collect_clips(path, &mut found)?;
            found.sort();
            found
        } else {
            read_path_list(path, root)?
        };
        if paths.is_empty() {
            return Err(Error::Config(format!("{}: no video files or frame folders found", path.display())));
        }
        let class_of = |p: &Path| {
            p.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        };
        let mut classes: Vec<String> = paths.iter().map(|p| class_of(p)).collect();
        classes.sort();
        classes.dedup();
        let samples = paths
            .into_iter()
            .map(|p| {
                let label = classes.binary_search(&class_of(&p)).unwrap_or(0);
                VideoSample { path: p, label, num_frames: None }
            })
            .collect();
        Ok(Self { samples, classes })
    }

    /// Number of clips.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the dataset has no clips.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Class names in words (`ApplyEyeMakeup` -> `apply eye makeup`), for text prompts.
    pub fn humanized_classes(&self) -> Vec<String> {
        self.classes.iter().map(|c| crate::prompts::humanize(c)).collect()
    }
}

/// Reads UCF101's `classInd.txt` (`1 ApplyEyeMakeup` per line, ids 1..=C): class names by 0-based label.
fn read_class_index(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut classes: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| Error::ListFile { path: path.to_path_buf(), line: i + 1, reason };
        let (id, name) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad(format!("expected `id ClassName`, found {line:?}")))?;
        let id: usize = id.parse().map_err(|_| bad(format!("class id {id:?} is not a number")))?;
        if id != classes.len() + 1 {
            return Err(bad(format!("class id {id} out of order (expected {})", classes.len() + 1)));
        }
        if classes.len() == MAX_CLASSES {
            return Err(bad(format!("more than {} classes (data::MAX_CLASSES)", MAX_CLASSES)));
        }
        classes.push(name.trim().to_string());
    }
    if classes.is_empty() {
        return Err(Error::ListFile { path: path.to_path_buf(), line: 0, reason: "no classes".into() });
    }
    Ok(classes)
}

/// Reads a label CSV (`id,name` header, then `0,abseiling` ...; ids 0..C in any order).
fn read_label_csv(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut rows: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| Error::ListFile { path: path.to_path_buf(), line: i + 1, reason };
        let (id, name) = line.split_once(',').ok_or_else(|| bad(format!("expected `id,name`, found {line:?}")))?;
        let Ok(id) = id.trim().parse::<usize>() else {
            if i == 0 {
                continue; // header
            }
            return Err(bad(format!("class id {id:?} is not a number")));
        };
        if rows.len() == MAX_CLASSES {
            return Err(bad(format!("more than {} classes (data::MAX_CLASSES)", MAX_CLASSES)));
        }
        let name = name.trim();
        let name = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(name);
        rows.push((id, name.to_string()));
    }
    rows.sort_by_key(|r| r.0);
    for (k, (id, _)) in rows.iter().enumerate() {
        if *id != k {
            return Err(Error::ListFile {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("class ids must be 0..{} without gaps; id {k} is missing or repeated", rows.len()),
            });
        }
    }
    if rows.is_empty() {
        return Err(Error::ListFile { path: path.to_path_buf(), line: 0, reason: "no classes".into() });
    }
    Ok(rows.into_iter().map(|r| r.1).collect())
}

/// Reads a UCF101 split list (`Class/v_..avi [label]`); the class comes from the label when present
/// (checked against the folder name) or else from the folder.
fn read_split_list(path: &Path, classes: &[String], root: &Path, storage: Storage) -> Result<Vec<VideoSample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let by_name: HashMap<String, usize> = classes.iter().enumerate().map(|(i, c)| (c.to_lowercase(), i)).collect();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| Error::ListFile { path: path.to_path_buf(), line: i + 1, reason };
        let mut parts = line.split_whitespace();
        let rel = parts.next().unwrap_or_default();
        let folder = rel.split(['/', '\\']).next().unwrap_or_default();
        let label = match parts.next() {
            Some(l) => {
                let id: usize = l.parse().map_err(|_| bad(format!("label {l:?} is not a number")))?;
                if id == 0 || id > classes.len() {
                    return Err(Error::UnknownLabel { path: path.to_path_buf(), line: i + 1, label: l.to_string() });
                }
                let label = id - 1;
                if let Some(&f) = by_name.get(&folder.to_lowercase()) {
                    if f != label {
                        return Err(bad(format!("label {id} ({}) disagrees with the folder {folder}", classes[label])));
                    }
                }
                label
            }
            None => *by_name.get(&folder.to_lowercase()).ok_or_else(|| Error::UnknownLabel {
                path: path.to_path_buf(),
                line: i + 1,
                label: folder.to_string(),
            })?,
        };
        let rel = PathBuf::from(rel.replace('\\', "/"));
        let clip = match storage {
            Storage::Videos => root.join(&rel),
            Storage::FrameFolders => root.join(rel.with_extension("")),
        };
        samples.push(VideoSample { path: clip, label, num_frames: None });
    }
    Ok(samples)
}

/// File extensions [`VideoDataset::scan`] takes for videos (compared without case).
const VIDEO_EXTENSIONS: [&str; 11] = ["avi", "mp4", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "ts"];

/// Adds the video files and frame folders under `dir` to `out`.
fn collect_clips(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let first_frame = FrameNaming::default().template.name(FrameNaming::default().first_index);
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            if path.join(&first_frame).is_file() {
                out.push(path);
            } else {
                collect_clips(&path, out)?;
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|v| v.eq_ignore_ascii_case(e)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The paths of a list file (one per line; a trailing number is dropped), relative to `root` or the
/// list file's folder.
fn read_path_list(path: &Path, root: Option<&Path>) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = root.map(Path::to_path_buf).unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| match line.rsplit_once(char::is_whitespace) {
            Some((p, n)) if n.parse::<u64>().is_ok() => p.trim_end(),
            _ => line,
        })
        .map(|p| base.join(p))
        .collect())
}
