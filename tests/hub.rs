//! Hub models (feature `hub`) without the network: an offline cache laid out by hand as huggingface_hub
//! lays it out, and downloads from a stand-in for the hub's HTTP API on 127.0.0.1 with progress reports, and
//! a server that stops answering.
#![cfg(feature = "hub")]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actionclip::weights::{self, DownloadProgress, Format, HubOptions};
use actionclip::{ActionClip, Error};
use candle_core::{DType, Device};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name)
}

const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// Lays out `cache/models--org--name/{refs/main, snapshots/<rev>/FILE}` as huggingface_hub does.
fn fake_cache(cache: &Path, model: &str, files: &[(&str, PathBuf)]) -> PathBuf {
    let repo = cache.join(format!("models--{}", model.replace('/', "--")));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), REVISION).unwrap();
    let snapshot = repo.join("snapshots").join(REVISION);
    std::fs::create_dir_all(&snapshot).unwrap();
    for (name, src) in files {
        std::fs::copy(src, snapshot.join(name)).unwrap();
    }
    snapshot
}

/// The only test of this binary that sets the hub's environment variables.
#[test]
fn offline_cache_from_hf_home_and_a_missing_file() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let snapshot = fake_cache(
        &cache,
        "org/tiny-clip",
        &[("model.safetensors", fixture("hf_clip.safetensors")), ("config.json", fixture("hf_config.json"))],
    );
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let options = HubOptions::from_env().unwrap();
    assert_eq!(options.cache_dir, cache);
    assert!(options.offline);
    assert_eq!(weights::hub_model("org/tiny-clip").unwrap(), snapshot.join("model.safetensors"));
    let (model, cfg) = ActionClip::load("org/tiny-clip", &Device::Cpu, DType::F32).unwrap();
    let (reference, reference_cfg) =
        ActionClip::load(fixture("hf_clip.safetensors"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(cfg, reference_cfg);
    let tokens = candle_core::Tensor::zeros((1, cfg.clip.text.context_length), DType::U32, &Device::Cpu).unwrap();
    let (a, b) = (model.encode_text(&tokens).unwrap(), reference.encode_text(&tokens).unwrap());
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());

    // A repository in the cache without any weights file, and one not in the cache at all: the error names
    // the model, the files looked for, the cache directory and how to fetch them.
    fake_cache(&cache, "org/config-only", &[("config.json", fixture("hf_config.json"))]);
    for model in ["org/config-only", "org/absent"] {
        let Err(err) = ActionClip::load(model, &Device::Cpu, DType::F32) else { panic!("{model} loaded") };
        let msg = err.to_string();
        let Error::HubNotCached { model: m, files, cache_dir, revision } = &err else { panic!("{msg}") };
        assert_eq!((m.as_str(), cache_dir, revision.as_str()), (model, &cache, "main"), "{msg}");
        assert_eq!(files[0], "model.safetensors");
        let repo_dir = cache.join(format!("models--{}", model.replace('/', "--")));
        for part in [
            repo_dir.to_str().unwrap(),
            "model.safetensors, open_clip_model.safetensors, pytorch_model.bin",
            "HF_HUB_OFFLINE",
            &format!(
                "huggingface-cli download {model} model.safetensors --revision main --cache-dir {}",
                cache.display()
            ),
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }
}

/// A stand-in for the hub's HTTP API serving one repository: `GET /api/models/REPO/revision/main` (the file
/// list) and `GET /REPO/resolve/main/FILE` with a byte range, answered as the hub answers hf-hub (commit and
/// etag headers, `206 Partial Content`). Returns the endpoint and the request lines received.
fn fake_hub(repo: &str, files: Vec<(String, Vec<u8>)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let repo = repo.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Some(line) = answer(stream, &repo, &files) {
                seen.lock().unwrap().push(line);
            }
        }
    });
    (endpoint, requests)
}

/// Reads one request from `stream`, answers it and returns its request line plus range.
fn answer(mut stream: TcpStream, repo: &str, files: &[(String, Vec<u8>)]) -> Option<String> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = value.trim().strip_prefix("bytes=").map(str::to_string);
            }
        }
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let (status, headers, body) = if path == format!("/api/models/{repo}/revision/main") {
        let siblings: Vec<String> = files.iter().map(|(f, _)| format!("{{\"rfilename\":\"{f}\"}}")).collect();
        let json = format!("{{\"sha\":\"{REVISION}\",\"siblings\":[{}]}}", siblings.join(","));
        ("200 OK", "content-type: application/json\r\n".to_string(), json.into_bytes())
    } else if let Some((name, data)) = files.iter().find(|(f, _)| path == format!("/{repo}/resolve/main/{f}")) {
        let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
            Some((a, b)) => (a.parse().unwrap_or(0), b.parse().unwrap_or(data.len() - 1)),
            None => (0, data.len() - 1),
        };
        let headers = format!(
            "x-repo-commit: {REVISION}\r\netag: \"etag-{name}\"\r\ncontent-range: bytes {start}-{end}/{}\r\n",
            data.len()
        );
        ("206 Partial Content", headers, data[start..=end].to_vec())
    } else {
        ("404 Not Found", String::new(), Vec::new())
    };
    let head = format!("HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(&body).ok()?;
    Some(format!("{} {}", line.trim(), range.unwrap_or_default()))
}

#[test]
fn downloads_report_progress_and_land_in_the_cache() {
    let weights_bytes = std::fs::read(fixture("hf_clip.safetensors")).unwrap();
    let config_bytes = std::fs::read(fixture("hf_config.json")).unwrap();
    let (endpoint, requests) = fake_hub(
        "org/dl",
        vec![
            ("README.md".into(), b"# a model".to_vec()),
            ("pytorch_model.bin".into(), b"not read: the safetensors file is preferred".to_vec()),
            ("model.safetensors".into(), weights_bytes.clone()),
            ("config.json".into(), config_bytes.clone()),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(endpoint),
        revision: "main".into(),
        stall_timeout: Duration::from_secs(60),
    };
    let mut reports: Vec<(String, u64, u64, bool)> = Vec::new();
    let path = weights::hub_model_with_progress("org/dl", &options, |p: DownloadProgress<'_>| {
        reports.push((p.file.to_string(), p.downloaded, p.total, p.done))
    })
    .unwrap();
    let snapshot = cache.path().join("models--org--dl/snapshots").join(REVISION);
    assert_eq!(path, snapshot.join("model.safetensors"));
    assert_eq!(std::fs::read(&path).unwrap(), weights_bytes);
    assert_eq!(std::fs::read(snapshot.join("config.json")).unwrap(), config_bytes);
    assert_eq!(weights::load(&path).unwrap().format, Format::HuggingFaceSafetensors);

    // Per file: reports start at 0 of the file's size, never go back, and the last one is complete.
    for (file, size) in [("model.safetensors", weights_bytes.len()), ("config.json", config_bytes.len())] {
        let mine: Vec<_> = reports.iter().filter(|r| r.0 == file).collect();
        assert!(mine.len() >= 2, "{file}: {mine:?}");
        assert!(mine.iter().all(|r| r.2 == size as u64), "{file}: {mine:?}");
        assert_eq!(mine[0].1, 0);
        assert!(mine.windows(2).all(|w| w[0].1 <= w[1].1 || w[1].1 == 0), "{file}: {mine:?}");
        let last = mine.last().unwrap();
        assert_eq!((last.1, last.3), (size as u64, true), "{file}");
        assert_eq!(mine.iter().filter(|r| r.3).count(), 1, "{file}: one completion");
    }
    let order: Vec<&str> = reports.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(order.first(), Some(&"model.safetensors"));
    assert_eq!(order.last(), Some(&"config.json"));

    // A second call reads the cache: no request, no report.
    let asked = requests.lock().unwrap().len();
    let mut again = 0;
    assert_eq!(weights::hub_model_with_progress("org/dl", &options, |_| again += 1).unwrap(), path);
    assert_eq!((requests.lock().unwrap().len(), again), (asked, 0));
    let offline = HubOptions { offline: true, ..options.clone() };
    assert_eq!(weights::hub_model_with("org/dl", &offline).unwrap(), path);

    // A repository the hub does not know: a hub error naming the model.
    let err = weights::hub_model_with("org/missing", &options).unwrap_err();
    assert!(matches!(&err, Error::Hub { model, .. } if model == "org/missing"), "{err}");
}

/// A server that takes the request and then sends nothing: the call ends with a hub error after the stall
/// timeout instead of waiting forever.
#[test]
fn a_hub_that_stops_sending_is_abandoned_after_the_stall_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions {
        cache_dir: cache.path().to_path_buf(),
        offline: false,
        endpoint: Some(endpoint),
        revision: "main".into(),
        stall_timeout: Duration::from_millis(500),
    };
    let err = weights::hub_model_with("org/silent", &options).unwrap_err();
    assert!(
        matches!(&err, Error::Hub { model, reason } if model == "org/silent" && reason.contains("sent nothing")),
        "{err}"
    );
}
