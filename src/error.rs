//! The crate's one error type. Every variant names what is at fault (a key, a shape, a path, a line)
//! so that a user can act on the message without reading the source.
use std::path::PathBuf;

/// Errors returned by every fallible function of the crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    // ---- model inputs -------------------------------------------------------------------------
    /// A text tokenizes to more tokens than the context holds and truncation was not asked for.
    #[error("text {text:?} needs {tokens} tokens with start and end markers; the context holds {max} (tokenize with truncation to cut it)")]
    TextTooLong {
        /// The text that was too long (its first 100 characters and `...` when it is longer).
        text: String,
        /// Its token count including the start and end markers.
        tokens: usize,
        /// The context length.
        max: usize,
    },

    /// A tokenizer file that cannot be used, or a text or ids that its pipeline rejects.
    #[error("tokenizer {name}: {reason}")]
    Tokenizer {
        /// The tokenizer at fault: the path of its file, or `embedded OpenAI CLIP vocabulary`.
        name: String,
        /// What went wrong.
        reason: String,
    },

    /// An input tensor has the wrong rank, size or dtype.
    #[error("{what}: expected {expected}, found shape {found:?}")]
    InputShape {
        /// Which input (for example `frames`).
        what: &'static str,
        /// What was expected, in words (for example `[B, T, 3, 224, 224]`).
        expected: String,
        /// The shape that was passed.
        found: Vec<usize>,
    },

    /// The number of frames cannot be handled by the configured visual prompt.
    #[error("{part} cannot take {found} frames: {reason}")]
    FrameCount {
        /// The model part at fault (for example `TransformerCls head`).
        part: &'static str,
        /// The frame count that was passed.
        found: usize,
        /// Why, with the accepted range.
        reason: String,
    },

    /// A visual prompt combination that does not make sense.
    #[error("invalid visual prompt: {0}")]
    InvalidPrompt(String),

    /// An invalid configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A label list that cannot be used (empty, or otherwise unusable).
    #[error("invalid labels: {0}")]
    Labels(String),

    // ---- checkpoints --------------------------------------------------------------------------
    /// A weight the model needs is not in the checkpoint.
    #[error("checkpoint key {key} is missing{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingKey {
        /// The missing key, in the checkpoint's naming.
        key: String,
        /// A hint, for example similar keys that were found.
        hint: Option<String>,
    },

    /// A weight has a different shape than the model needs.
    #[error("checkpoint key {key} has shape {found:?}, expected {expected:?}")]
    KeyShape {
        /// The key at fault.
        key: String,
        /// The shape in the checkpoint.
        found: Vec<usize>,
        /// The shape the model needs.
        expected: Vec<usize>,
    },

    /// A checkpoint file whose layout is not one of the supported ones.
    #[error("{path}: unknown checkpoint layout: {found}")]
    UnknownFormat {
        /// The file at fault.
        path: PathBuf,
        /// What was found in it (keys, sub-dictionaries).
        found: String,
    },

    /// A checkpoint that could be opened but not understood.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The file at fault.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },

    /// A checkpoint whose `fusion_model.` keys do not tell which post-network head they belong to.
    #[error("{path}: cannot tell the post-network head from the keys {keys}: {reason}")]
    UnknownHead {
        /// The file at fault.
        path: PathBuf,
        /// The `fusion_model.` keys found (the first few, sorted).
        keys: String,
        /// What is wrong with them.
        reason: String,
    },

    /// A Hugging Face hub download or cache lookup failed.
    #[error("hub model {model}: {reason}")]
    Hub {
        /// The model id.
        model: String,
        /// What went wrong.
        reason: String,
    },

    /// A hub model is not in the local cache and downloads are off (`HF_HUB_OFFLINE`, or the `offline`
    /// hub option).
    #[error(
        "hub model {model}: not in the hub cache at {} (revision {revision}; looked for {}) and downloads are off \
         (HF_HUB_OFFLINE=1 or HubOptions::offline); fetch it where the hub can be reached, for example `huggingface-cli download {model} {} \
         --revision {revision} --cache-dir {}`, then copy that cache here or point HF_HUB_CACHE at it",
        hub_repo_dir(.cache_dir, .model).display(),
        .files.join(", "),
        .files.first().map(String::as_str).unwrap_or("model.safetensors"),
        .cache_dir.display()
    )]
    HubNotCached {
        /// The model id (`org/name`).
        model: String,
        /// The files looked for, in order of preference; any one of them would do.
        files: Vec<String>,
        /// The hub cache directory (the folder that holds `models--org--name`).
        cache_dir: PathBuf,
        /// The revision asked for.
        revision: String,
    },

    // ---- data (videos, frame folders, split files) ---------------------------------------------
    /// A video file could not be opened or decoded.
    #[error("video {path}: {reason}")]
    Video {
        /// The video at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// An image (a frame file, or a frame of a video) could not be read.
    #[error("image {path}: {reason}")]
    Image {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A frame that a sample needs does not exist.
    #[error("{path}: frame {index} is missing ({reason})")]
    MissingFrame {
        /// The video or frame folder.
        path: PathBuf,
        /// The 0-based frame index.
        index: usize,
        /// Details (for example the file name that was looked for).
        reason: String,
    },

    /// A live input (a pipe, a network stream, a device) delivered no frame for longer than the
    /// stall timeout.
    #[error("input {input}: no frame for {seconds:.1} s (stall timeout); the source stopped sending")]
    StreamStalled {
        /// The input as it was given (a URL, `pipe:N`, a device path or a file).
        input: String,
        /// How long it had been silent when reading gave up.
        seconds: f64,
    },

    /// A video or frame folder that holds no frames.
    #[error("{path}: no frames")]
    EmptyClip {
        /// The video or frame folder.
        path: PathBuf,
    },

    /// A line of a split, list or label file that cannot be parsed.
    #[error("{path}:{line}: {reason}")]
    ListFile {
        /// The file at fault.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// A label that is not in the class list.
    #[error("{path}:{line}: label {label:?} is not in the class list")]
    UnknownLabel {
        /// The file at fault.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The label that was not found.
        label: String,
    },
}

/// The crate's result type; the error type defaults to [`Error`], and `Result<T, E>` names any other.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// [`Error::TextTooLong`] for `text`, quoting at most its first 100 characters (a label can be
    /// megabytes long).
    pub(crate) fn text_too_long(text: &str, tokens: usize, max: usize) -> Self {
        const QUOTED: usize = 100;
        let text = match text.char_indices().nth(QUOTED) {
            Some((end, _)) => format!("{}...", &text[..end]),
            None => text.to_string(),
        };
        Error::TextTooLong { text, tokens, max }
    }
}

/// Runs `read`, turning a panic inside it (a dependency's parser or decoder failing on malformed input) into
/// the error `on_panic` makes from the panic's message, so that a bad file cannot bring down the caller's
/// process (with the default `panic = "unwind"`).
pub(crate) fn catch_reader_panic<T>(
    read: impl FnOnce() -> Result<T>,
    on_panic: impl FnOnce(String) -> Error,
) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(on_panic(format!("the reader failed on malformed input (it panicked: {message})")))
    })
}

/// Where the hub cache under `cache_dir` keeps `model` (`models--org--name`, as huggingface_hub lays it out).
pub(crate) fn hub_repo_dir(cache_dir: &std::path::Path, model: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", model.replace('/', "--")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_reader_becomes_the_error_naming_its_message() {
        let on_panic = |reason| Error::Video { path: "clip.avi".into(), reason };
        let err = catch_reader_panic(|| -> Result<()> { panic!("index out of bounds") }, on_panic).unwrap_err();
        assert!(
            matches!(&err, Error::Video { reason, .. } if reason.contains("panicked: index out of bounds")),
            "{err:?}"
        );
        let formatted = catch_reader_panic(|| -> Result<()> { panic!("{} bytes", 7) }, on_panic).unwrap_err();
        assert!(formatted.to_string().contains("panicked: 7 bytes"), "{formatted}");
        assert_eq!(catch_reader_panic(|| Ok(3), on_panic).unwrap(), 3);
    }
}
