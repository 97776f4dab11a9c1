//! Hugging Face hub models (feature `hub`): the standard cache first, a download (with optional progress
//! reports) only when a file is missing and the hub is not switched off with `HF_HUB_OFFLINE`.
//!
//! hf-hub's HTTP client has a connect timeout but none for reading, so a server that stops sending would
//! block forever: the download runs on a worker thread, and the caller gives up with [`Error::Hub`] when no
//! byte arrives for [`HubOptions::stall_timeout`].
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

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
    /// How long a download may go without receiving a byte before it is abandoned with [`Error::Hub`].
    pub stall_timeout: Duration,
}

/// [`HubOptions::stall_timeout`] unless `ACTIONCLIP_HUB_TIMEOUT` gives seconds: one minute.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

impl HubOptions {
    /// The options the Hugging Face tools use: cache `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`; offline when `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`; endpoint
    /// `HF_ENDPOINT`; revision `main`; stall timeout `ACTIONCLIP_HUB_TIMEOUT` seconds, else 60.
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
            stall_timeout: std::env::var("ACTIONCLIP_HUB_TIMEOUT")
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map_or(DEFAULT_STALL_TIMEOUT, Duration::from_secs_f64),
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

/// What the download thread tells the caller: a progress report (file, bytes so far, size, done), or the end.
enum Message {
    Progress(String, u64, u64, bool),
    Finished(Result<PathBuf>),
}

/// hf-hub's progress hooks turned into [`Message::Progress`] reports to the caller.
struct Reporter {
    file: String,
    downloaded: u64,
    total: u64,
    tx: mpsc::Sender<Message>,
}

impl Reporter {
    fn report(&mut self, done: bool) {
        let _ = self.tx.send(Message::Progress(self.file.clone(), self.downloaded, self.total, done));
    }
}

impl Progress for Reporter {
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
/// files are in the cache. A server that sends nothing for [`HubOptions::stall_timeout`] ends the call with
/// [`Error::Hub`] (the abandoned request is left to its thread).
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
    let (tx, rx) = mpsc::channel();
    let (model, options) = (model_id.to_string(), options.clone());
    let stall_timeout = options.stall_timeout;
    std::thread::spawn(move || {
        let result = download(&model, &options, repo, tx.clone());
        let _ = tx.send(Message::Finished(result));
    });
    loop {
        match rx.recv_timeout(stall_timeout) {
            Ok(Message::Progress(file, downloaded, total, done)) => {
                progress(DownloadProgress { file: &file, downloaded, total, done })
            }
            Ok(Message::Finished(result)) => return result,
            Err(RecvTimeoutError::Timeout) => {
                return Err(hub_err(format!(
                    "the hub sent nothing for {:.0} s; the download is abandoned (a partial file in {} is \
                     resumed next time; set ACTIONCLIP_HUB_TIMEOUT to wait longer)",
                    stall_timeout.as_secs_f64(),
                    repo_dir.display()
                )))
            }
            Err(RecvTimeoutError::Disconnected) => return Err(hub_err("the download thread panicked".into())),
        }
    }
}

/// Lists the repository and downloads its weights file (and `config.json`) into the cache, reporting
/// progress on `tx`; runs on the download thread.
fn download(model_id: &str, options: &HubOptions, repo: Repo, tx: mpsc::Sender<Message>) -> Result<PathBuf> {
    let cache = Cache::new(options.cache_dir.clone()).repo(repo.clone());
    let hub_err = |reason: String| Error::Hub { model: model_id.to_string(), reason };
    let repo_dir = hub_repo_dir(&options.cache_dir, model_id);
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
    let fetch = |file: &str| -> Result<PathBuf> {
        if let Some(path) = cache.get(file) {
            return Ok(path);
        }
        let reporter = Reporter { file: file.to_string(), downloaded: 0, total: 0, tx: tx.clone() };
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
