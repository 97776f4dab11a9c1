//! Hugging Face hub models (feature `hub`): the standard cache first, a download (with optional progress
//! reports) only when a file is missing and the hub is not switched off with `HF_HUB_OFFLINE`.
use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::api::Progress;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::hub_repo_dir;
use crate::{Error, Result};

/// Weights file names looked for in a hub repository, in order of preference.
const WEIGHT_FILES: &[&str] =
    &["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"];

/// Where and how [`hub_model_with`] looks for a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache directory (the folder holding `models--org--name`).
    pub cache_dir: PathBuf,
    /// Never touch the network; only the cache is consulted.
    pub offline: bool,
    /// The hub endpoint (`https://huggingface.co` when `None`).
    pub endpoint: Option<String>,
    /// The revision (branch, tag or commit) to use.
    pub revision: String,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

impl HubOptions {
    /// The options the Hugging Face tools use: cache `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`; offline when `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`; endpoint
    /// `HF_ENDPOINT`; revision `main`.
    pub fn from_env() -> Result<Self> {
        let cache_dir = if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
            PathBuf::from(dir)
        } else if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(home).join("hub")
        } else if let Some(home) =
            std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).filter(|v| !v.is_empty())
        {
            PathBuf::from(home).join(".cache").join("huggingface").join("hub")
        } else {
            return Err(Error::Hub {
                model: String::new(),
                reason: "no hub cache directory: set HF_HUB_CACHE or HF_HOME (HOME is not set)".into(),
            });
        };
        Ok(Self {
            cache_dir,
            offline: env_flag("HF_HUB_OFFLINE"),
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty()),
            revision: "main".into(),
        })
    }
}

/// Where a hub download stands, as passed to the callback of [`hub_model_with_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownloadProgress<'a> {
    /// The file being downloaded (`model.safetensors`).
    pub file: &'a str,
    /// Bytes of the file received so far (a resumed download starts at what was already on disk).
    pub downloaded: u64,
    /// The file's size in bytes.
    pub total: u64,
    /// The file is complete (the last report for it).
    pub done: bool,
}

/// hf-hub's progress hooks turned into [`DownloadProgress`] reports.
struct Reporter<'f> {
    file: String,
    downloaded: u64,
    total: u64,
    callback: &'f mut dyn FnMut(DownloadProgress<'_>),
}

impl Reporter<'_> {
    fn report(&mut self, done: bool) {
        let (downloaded, total) = (self.downloaded, self.total);
        (self.callback)(DownloadProgress { file: &self.file, downloaded, total, done });
    }
}

impl Progress for Reporter<'_> {
    // hf-hub calls `init` at the start of every attempt (twice for the first), then `update` with the bytes
    // already on disk.
    fn init(&mut self, size: usize, filename: &str) {
        self.file = filename.to_string();
        self.total = size as u64;
        self.downloaded = 0;
        self.report(false);
    }

    fn update(&mut self, size: usize) {
        self.downloaded += size as u64;
        self.report(false);
    }

    fn finish(&mut self) {
        self.report(true);
    }
}

/// The local path of a hub model's weights file (`model.safetensors` preferred, else
/// `open_clip_model.safetensors`, `pytorch_model.bin`, `open_clip_pytorch_model.bin`), downloading it (and
/// `config.json` beside it, when the repository has one) only when it is not in the cache. Options come from
/// the environment ([`HubOptions::from_env`]). Pass the result to [`load`](super::load).
///
/// Offline (`HF_HUB_OFFLINE=1`) and not cached is [`Error::HubNotCached`], which names the model, the files
/// looked for, the cache directory and how to fetch them.
pub fn hub_model(model_id: &str) -> Result<PathBuf> {
    let options = HubOptions::from_env().map_err(|e| match e {
        Error::Hub { reason, .. } => Error::Hub { model: model_id.to_string(), reason },
        other => other,
    })?;
    hub_model_with(model_id, &options)
}

/// [`hub_model`] with explicit options (cache directory, offline switch, endpoint, revision).
pub fn hub_model_with(model_id: &str, options: &HubOptions) -> Result<PathBuf> {
    hub_model_with_progress(model_id, options, |_| {})
}

/// [`hub_model_with`] that reports each download to `progress` (a progress bar, a log line): once when a
/// file starts, after every chunk received, and once when it is complete. Nothing is reported when the
/// files are in the cache.
///
/// ```no_run
/// # fn main() -> actionclip::Result<()> {
/// use actionclip::weights::{self, HubOptions};
/// let options = HubOptions::from_env()?;
/// let path = weights::hub_model_with_progress("openai/clip-vit-base-patch16", &options, |p| {
///     eprint!("\r{}: {} / {} bytes", p.file, p.downloaded, p.total);
/// })?;
/// let loaded = weights::load(&path)?;
/// # let _ = loaded;
/// # Ok(()) }
/// ```
pub fn hub_model_with_progress(
    model_id: &str,
    options: &HubOptions,
    mut progress: impl FnMut(DownloadProgress<'_>),
) -> Result<PathBuf> {
    let repo = Repo::with_revision(model_id.to_string(), RepoType::Model, options.revision.clone());
    let cache = Cache::new(options.cache_dir.clone()).repo(repo.clone());
    let hub_err = |reason: String| Error::Hub { model: model_id.to_string(), reason };
    let repo_dir = hub_repo_dir(&options.cache_dir, model_id);
    if let Some(path) = WEIGHT_FILES.iter().find_map(|f| cache.get(f)) {
        return Ok(path);
    }
    if options.offline {
        return Err(Error::HubNotCached {
            model: model_id.to_string(),
            files: WEIGHT_FILES.iter().map(|f| f.to_string()).collect(),
            cache_dir: options.cache_dir.clone(),
            revision: options.revision.clone(),
        });
    }
    let mut builder = ApiBuilder::from_cache(Cache::new(options.cache_dir.clone())).with_progress(false);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| hub_err(format!("cannot set up the hub client: {e}")))?;
    let api_repo = api.repo(repo);
    let info = api_repo.info().map_err(|e| {
        hub_err(format!(
            "not in the hub cache ({}) and the hub did not list the repository's files: {e} (with \
             HF_HUB_OFFLINE=1 only the cache is read)",
            repo_dir.display()
        ))
    })?;
    let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let Some(weights) = WEIGHT_FILES.iter().find(|f| files.contains(f)) else {
        return Err(hub_err(format!(
            "the repository has no weights file (looked for {}); it holds: {}",
            WEIGHT_FILES.join(", "),
            files.join(", ")
        )));
    };
    let mut fetch = |file: &str| -> Result<PathBuf> {
        if let Some(path) = cache.get(file) {
            return Ok(path);
        }
        let reporter = Reporter { file: file.to_string(), downloaded: 0, total: 0, callback: &mut progress };
        api_repo
            .download_with_progress(file, reporter)
            .map_err(|e| hub_err(format!("cannot download {file} into {}: {e}", repo_dir.display())))
    };
    let path = fetch(weights)?;
    if files.contains(&"config.json") {
        fetch("config.json")?;
    }
    Ok(path)
}
