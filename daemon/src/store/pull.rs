//! Downloads from Hugging Face (or a mirror: `HF_ENDPOINT`) into the models directory.
//!
//! A file lands in a directory of its repository: `hf.co/OWNER/REPO:FILE` goes to
//! `MODELS/hf.co/OWNER/REPO/FILE` (see [`pulled_path`], and [`pulled_origin`] for the way back),
//! so two repositories' files of one name live side by side. Files pulled before this layout sit
//! flat in `MODELS/`: they are still scanned and served, and a pull whose hash they have finds them
//! there instead of downloading again.
//!
//! The protocol is `huggingface_hub`'s: a `HEAD {endpoint}/{repo}/resolve/{revision}/{file}`
//! without following redirects gives the LFS hash (`X-Linked-Etag`) and size (`X-Linked-Size`);
//! a `GET` (redirects followed, `Range: bytes=N-` to resume) brings the bytes.
//!
//! **Invariants**
//! - Bytes go to `MODELS/.r1d-partial/hf.co/OWNER/REPO/FILE` ([`partial_path`]): a hidden
//!   directory beside `hf.co/`, where no repository file can land, so a download in progress
//!   never has the name of a real file (and a wrong hash never deletes one). The file appears
//!   under its final name only after its length and its sha256 (the catalog's, else the LFS
//!   hash) are right — a rename on the same file system. A wrong hash deletes the partial file
//!   (resuming from wrong bytes could never succeed).
//! - `[store] reserve_disk_bytes` stays free: checked before the first byte when the size is
//!   announced, and, announced or not, before each piece is written — a server that sends no
//!   size cannot fill the disk. Stopping there, or a full disk (ENOSPC), fails the pull and
//!   keeps the partial file for a resume.
//! - Two pulls of one file share one download: the second subscribes to the first's progress.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// What to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSpec {
    /// Repository (`bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF`).
    pub repo: String,
    /// Revision (`main`).
    pub revision: String,
    /// File in the repository.
    pub file: String,
    /// SHA-256 the file must have, when the catalog knows it.
    pub sha256: Option<String>,
    /// What the user asked for (`deepseek-r1:7b`), for messages.
    pub label: String,
}

/// Where a pull is.
#[derive(Debug, Clone, PartialEq)]
pub enum PullState {
    /// Asking the server for the file's size and hash.
    Resolving,
    /// Receiving bytes.
    Downloading {
        /// Bytes on disk (including those of an earlier, interrupted pull).
        completed: u64,
        /// Bytes in all, when known.
        total: Option<u64>,
        /// Bytes that were already on disk when this download started (resumed).
        resumed_from: u64,
    },
    /// Hashing the complete file.
    Verifying,
    /// In place.
    Done {
        /// The final path.
        path: PathBuf,
        /// Its sha256, when one was checked.
        sha256: Option<String>,
        /// Size.
        bytes: u64,
        /// The file was already there; nothing was downloaded.
        already_present: bool,
    },
    /// Failed; the message says why and what is left on disk.
    Failed(String),
}

impl PullState {
    /// Done or failed.
    pub fn is_final(&self) -> bool {
        matches!(self, PullState::Done { .. } | PullState::Failed(_))
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The server answered with an error status.
    #[error("failed to download {url}: the server answered {status}{hint}")]
    Http {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What to do.
        hint: &'static str,
    },
    /// r1d may not use the network: opening an Internet socket failed with `EAFNOSUPPORT` (a
    /// seccomp address-family filter, as `RestrictAddressFamilies=` of `r1d.service` installs) or
    /// connecting with `EPERM` (an IP filter such as `IPAddressDeny=any`, or a local firewall).
    #[error("failed to download {url}: r1d may not use the network here ({cause}). The r1d.service unit allows only Unix and netlink sockets (RestrictAddressFamilies=AF_UNIX AF_NETLINK, IPAddressDeny=any); to let it pull, run `sudo systemctl edit r1d`, add the lines\n[Service]\nRestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6\nIPAddressDeny=\nand `sudo systemctl restart r1d` (the same drop-in: /usr/share/doc/r1d/examples/network.conf); or download the file yourself and put it into the models directory")]
    NoNetwork {
        /// The URL.
        url: String,
        /// What the system refused, with its errno name.
        cause: &'static str,
    },
    /// The request failed before an answer: the cause in words ([`connection_cause`]: the host
    /// name does not resolve, the connection was refused, TLS failed, a proxy, a timeout).
    #[error("failed to download {url}: {cause}")]
    Connection {
        /// The URL.
        url: String,
        /// Why, with what to check.
        cause: String,
    },
    /// Not enough free disk.
    #[error("not enough disk space in {dir}: the download needs {need} bytes ({remaining} to download + {reserve} kept free by [store] reserve_disk_bytes), {free} are free")]
    DiskTooSmall {
        /// The models directory.
        dir: PathBuf,
        /// Bytes needed.
        need: u64,
        /// Bytes still to download.
        remaining: u64,
        /// The configured reserve.
        reserve: u64,
        /// Bytes free.
        free: u64,
    },
    /// Writing on would leave less than the reserve free.
    #[error("stopped the download of {file} after {written} bytes: only {free} bytes are free in {dir} and [store] reserve_disk_bytes keeps {reserve} free; {partial} is kept so the pull resumes once space is freed")]
    ReserveReached {
        /// The file.
        file: String,
        /// The models directory.
        dir: PathBuf,
        /// Bytes in the partial file.
        written: u64,
        /// Bytes free.
        free: u64,
        /// The configured reserve.
        reserve: u64,
        /// The partial file.
        partial: PathBuf,
    },
    /// The disk filled up during the download.
    #[error("the disk holding {path} is full after {written} bytes; {path} is kept so the pull resumes once space is freed")]
    DiskFull {
        /// The partial file.
        path: PathBuf,
        /// Bytes written so far.
        written: u64,
    },
    /// The bytes do not hash to what they must.
    #[error(
        "sha256 mismatch for {file}: expected {expected}, got {actual}; the download was discarded"
    )]
    Checksum {
        /// The file.
        file: String,
        /// The expected hash.
        expected: String,
        /// The hash of the bytes received.
        actual: String,
    },
    /// A different file with the same name is already in the models directory; it is kept.
    #[error("{path} already exists and is not the file {url} serves ({why}); remove or rename it to pull this one")]
    Exists {
        /// The file in the way.
        path: PathBuf,
        /// The URL being pulled.
        url: String,
        /// How they differ.
        why: String,
    },
    /// The repository or file name would leave the models directory, or is not a name.
    #[error("{0:?} is not a repository file name (OWNER/REPO and FILE may not be empty, absolute, or contain `.` or `..` components)")]
    BadName(String),
    /// Another pull of a different URL is writing the same file right now.
    #[error("{path} is being pulled from {other} right now; wait for that pull to end")]
    Busy {
        /// The destination.
        path: PathBuf,
        /// The URL of the running pull.
        other: String,
    },
    /// The server's LFS hash contradicts the catalog's.
    #[error("the server's {file} has sha256 {server}, but the catalog expects {catalog}; not downloading")]
    CatalogMismatch {
        /// The file.
        file: String,
        /// The server's hash.
        server: String,
        /// The catalog's hash.
        catalog: String,
    },
    /// The download ended short or long.
    #[error("the download of {file} ended at {got} bytes, {expected} were announced; {partial} is kept for a resume")]
    Length {
        /// The file.
        file: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
        /// The partial file.
        partial: PathBuf,
    },
    /// A file-system error.
    #[error("failed to write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Performs pulls; one per destination file at a time.
pub struct Puller {
    dir: PathBuf,
    endpoint: String,
    token: Option<String>,
    reserve_disk_bytes: u64,
    /// Running pulls by destination, with the URL each downloads.
    running: Mutex<HashMap<PathBuf, (String, watch::Receiver<PullState>)>>,
}

impl Puller {
    /// Pulls into `dir` from `endpoint` (`https://huggingface.co` or a mirror), with an optional
    /// bearer `token`, keeping `reserve_disk_bytes` free.
    pub fn new(
        dir: PathBuf,
        endpoint: String,
        token: Option<String>,
        reserve_disk_bytes: u64,
    ) -> Puller {
        Puller {
            dir,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token,
            reserve_disk_bytes,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// `HF_ENDPOINT` (default `https://huggingface.co`) and `HF_TOKEN` from the environment.
    pub fn from_env(dir: PathBuf, reserve_disk_bytes: u64) -> Puller {
        let endpoint =
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_owned());
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        Puller::new(dir, endpoint, token, reserve_disk_bytes)
    }

    /// Where `spec` lands: `MODELS/hf.co/OWNER/REPO/FILE`.
    ///
    /// # Errors
    /// [`PullError::BadName`] when the repository or file would leave that directory.
    pub fn destination(&self, spec: &PullSpec) -> Result<PathBuf, PullError> {
        pulled_path(&self.dir, &spec.repo, &spec.file)
            .ok_or_else(|| PullError::BadName(format!("{}:{}", spec.repo, spec.file)))
    }

    /// Where a file pulled before per-repository directories would be: flat in `MODELS/`.
    fn flat_destination(&self, spec: &PullSpec) -> Option<PathBuf> {
        Path::new(&spec.file)
            .file_name()
            .map(|name| self.dir.join(name))
    }

    /// Starts pulling `spec` (or joins the pull of the same file already running) and returns
    /// its progress. The pull runs on its own task: a subscriber going away does not stop it.
    pub fn start(self: &Arc<Self>, spec: PullSpec) -> watch::Receiver<PullState> {
        let dest = match self.destination(&spec) {
            Ok(dest) => dest,
            Err(e) => return watch::channel(PullState::Failed(e.to_string())).1,
        };
        let url = self.url(&spec);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((other, rx)) = running.get(&dest) {
            // The same file from the same place: share the download. Another URL with the same
            // file name must not join (it would be "verified" with the other file's hash).
            if *other == url {
                return rx.clone();
            }
            let error = PullError::Busy {
                path: dest.clone(),
                other: other.clone(),
            };
            return watch::channel(PullState::Failed(error.to_string())).1;
        }
        let (tx, rx) = watch::channel(PullState::Resolving);
        running.insert(dest.clone(), (url, rx.clone()));
        drop(running);
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.download(&spec, &dest, &tx).await;
            let final_state = match result {
                Ok(state) => {
                    tracing::info!("pulled {:?} into {:?}", spec.label, dest);
                    state
                }
                Err(e) => {
                    tracing::warn!("pull of {:?} failed: {e}", spec.label);
                    PullState::Failed(e.to_string())
                }
            };
            this.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&dest);
            let _ = tx.send(final_state);
        });
        rx
    }

    fn url(&self, spec: &PullSpec) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint, spec.repo, spec.revision, spec.file
        )
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn download(
        &self,
        spec: &PullSpec,
        dest: &Path,
        tx: &watch::Sender<PullState>,
    ) -> Result<PullState, PullError> {
        let url = self.url(spec);
        let connection = |source| PullError::connection(&url, source);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PullError::Io { path, source }
        };
        let no_redirect = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(connection)?;
        let head = self
            .authorize(no_redirect.head(&url))
            .send()
            .await
            .map_err(connection)?;
        let status = head.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(http_error(&url, status.as_u16()));
        }
        let header = |name: &str| {
            head.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').to_owned())
        };
        let lfs_sha = header("x-linked-etag").filter(|e| is_sha256(e));
        // The file's size: Hugging Face's `X-Linked-Size`, else a HEAD's `Content-Length`. A
        // length of 0 is no size (servers send it for the empty body of a HEAD answer; a model file
        // is never empty): taken as the size, it made the pull skip the download.
        let total: Option<u64> = header("x-linked-size")
            .or_else(|| {
                if status.is_success() {
                    header("content-length")
                } else {
                    None
                }
            })
            .and_then(|s| s.parse().ok())
            .filter(|&n: &u64| n > 0);
        let expected_sha = match (&spec.sha256, &lfs_sha) {
            (Some(c), Some(s)) if !c.eq_ignore_ascii_case(s) => {
                return Err(PullError::CatalogMismatch {
                    file: spec.file.clone(),
                    server: s.clone(),
                    catalog: c.clone(),
                })
            }
            (Some(c), _) => Some(c.to_ascii_lowercase()),
            (None, s) => s.as_ref().map(|s| s.to_ascii_lowercase()),
        };

        // A file of that name is already here: it is this file only if it has the expected hash
        // (or, with no hash known, the size); anything else is kept and the pull refused.
        if let Ok(meta) = std::fs::metadata(dest) {
            let exists = |why: String| PullError::Exists {
                path: dest.to_owned(),
                url: url.clone(),
                why,
            };
            if let Some(total) = total.filter(|t| *t != meta.len()) {
                return Err(exists(format!(
                    "{} bytes, the server's {total}",
                    meta.len()
                )));
            }
            let sha = match &expected_sha {
                Some(expected) => {
                    let _ = tx.send(PullState::Verifying);
                    let target = dest.to_owned();
                    let actual = tokio::task::spawn_blocking(move || sha256_file(&target))
                        .await
                        .map_err(|e| PullError::Io {
                            path: dest.to_owned(),
                            source: std::io::Error::other(e),
                        })?
                        .map_err(io(dest))?;
                    if &actual != expected {
                        return Err(exists(format!("sha256 {actual}, the server's {expected}")));
                    }
                    Some(actual)
                }
                None => None,
            };
            return Ok(PullState::Done {
                path: dest.to_owned(),
                sha256: sha,
                bytes: meta.len(),
                already_present: true,
            });
        }

        // A file pulled before per-repository directories, flat in the models directory, is this
        // file when it has the expected hash (without a hash to check, it is not trusted: it may be
        // another repository's file of the same name).
        if let (Some(flat), Some(expected)) = (self.flat_destination(spec), &expected_sha) {
            let same_size = std::fs::metadata(&flat)
                .is_ok_and(|m| m.is_file() && total.is_none_or(|t| t == m.len()));
            if same_size {
                let _ = tx.send(PullState::Verifying);
                let target = flat.clone();
                let actual = tokio::task::spawn_blocking(move || sha256_file(&target))
                    .await
                    .ok()
                    .and_then(Result::ok);
                if actual.as_ref() == Some(expected) {
                    let bytes = std::fs::metadata(&flat).map_or(0, |m| m.len());
                    return Ok(PullState::Done {
                        path: flat,
                        sha256: actual,
                        bytes,
                        already_present: true,
                    });
                }
            }
        }

        let parent = dest.parent().unwrap_or(&self.dir).to_owned();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(io(&parent))?;
        let partial = partial_path(&self.dir, dest);
        if let Some(partial_dir) = partial.parent() {
            tokio::fs::create_dir_all(partial_dir)
                .await
                .map_err(io(partial_dir))?;
        }
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if total.is_some_and(|t| have > t) {
            tokio::fs::remove_file(&partial)
                .await
                .map_err(io(&partial))?;
            have = 0;
        }
        if let Some(total) = total {
            let free = free_bytes(&self.dir).map_err(io(&self.dir))?;
            let remaining = total - have;
            let need = remaining.saturating_add(self.reserve_disk_bytes);
            if free < need {
                return Err(PullError::DiskTooSmall {
                    dir: self.dir.clone(),
                    need,
                    remaining,
                    reserve: self.reserve_disk_bytes,
                    free,
                });
            }
        }

        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(connection)?;
        let mut done_downloading = total == Some(have);
        if !done_downloading {
            let mut req = self.authorize(client.get(&url));
            if have > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
            }
            let resp = req.send().await.map_err(connection)?;
            let code = resp.status().as_u16();
            let mut file = match code {
                206 => tokio::fs::OpenOptions::new()
                    .append(true)
                    .open(&partial)
                    .await
                    .map_err(io(&partial))?,
                200 => {
                    // The server ignored the range (or there was none): start over.
                    have = 0;
                    tokio::fs::File::create(&partial)
                        .await
                        .map_err(io(&partial))?
                }
                416 if total.is_none() => {
                    done_downloading = true;
                    tokio::fs::OpenOptions::new()
                        .append(true)
                        .open(&partial)
                        .await
                        .map_err(io(&partial))?
                }
                _ => return Err(http_error(&url, code)),
            };
            let total = total.or_else(|| resp.content_length().map(|l| l + have));
            let resumed_from = have;
            let mut last = Instant::now();
            let _ = tx.send(PullState::Downloading {
                completed: have,
                total,
                resumed_from,
            });
            // After a 416 for a complete partial file there is nothing to read.
            let go = !done_downloading;
            let mut body = resp
                .bytes_stream()
                .take_while(move |_| futures_util::future::ready(go));
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(connection)?;
                // The reserve holds whatever the server announced (or did not).
                let free = free_bytes(&self.dir).map_err(io(&self.dir))?;
                if free < self.reserve_disk_bytes.saturating_add(chunk.len() as u64) {
                    let _ = file.flush().await;
                    return Err(PullError::ReserveReached {
                        file: spec.file.clone(),
                        dir: self.dir.clone(),
                        written: have,
                        free,
                        reserve: self.reserve_disk_bytes,
                        partial: partial.clone(),
                    });
                }
                if let Err(e) = file.write_all(&chunk).await {
                    return Err(if e.raw_os_error() == Some(28) {
                        PullError::DiskFull {
                            path: partial.clone(),
                            written: have,
                        }
                    } else {
                        PullError::Io {
                            path: partial.clone(),
                            source: e,
                        }
                    });
                }
                have += chunk.len() as u64;
                metrics::counter!(crate::telemetry::PULL_BYTES).increment(chunk.len() as u64);
                if last.elapsed() >= Duration::from_millis(100) {
                    last = Instant::now();
                    let _ = tx.send(PullState::Downloading {
                        completed: have,
                        total,
                        resumed_from,
                    });
                }
            }
            file.flush().await.map_err(io(&partial))?;
            file.sync_all().await.map_err(io(&partial))?;
            let _ = tx.send(PullState::Downloading {
                completed: have,
                total,
                resumed_from,
            });
        }
        let len = std::fs::metadata(&partial).map_err(io(&partial))?.len();
        if let Some(total) = total {
            if len != total {
                return Err(PullError::Length {
                    file: spec.file.clone(),
                    got: len,
                    expected: total,
                    partial,
                });
            }
        }
        let _ = tx.send(PullState::Verifying);
        let sha = {
            let target = partial.clone();
            tokio::task::spawn_blocking(move || sha256_file(&target))
                .await
                .map_err(|e| PullError::Io {
                    path: dest.to_owned(),
                    source: std::io::Error::other(e),
                })?
                .map_err(io(&partial))?
        };
        if let Some(expected) = &expected_sha {
            if &sha != expected {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(PullError::Checksum {
                    file: spec.file.clone(),
                    expected: expected.clone(),
                    actual: sha,
                });
            }
        } else {
            tracing::warn!(
                "{}: the server sent no LFS hash and the catalog has none; the file is not verified",
                spec.file
            );
        }
        tokio::fs::rename(&partial, dest).await.map_err(io(dest))?;
        Ok(PullState::Done {
            path: dest.to_owned(),
            sha256: expected_sha.map(|_| sha),
            bytes: len,
            already_present: false,
        })
    }
}

/// Directory below the models directory that holds pulled repositories.
pub const PULLED_DIR: &str = "hf.co";

/// `MODELS/hf.co/OWNER/REPO/FILE` for `repo` (`OWNER/REPO`) and `file` (a path in the repository);
/// `None` when either is not a plain relative name (empty, absolute, `.` or `..` components), which
/// could leave the directory.
pub fn pulled_path(models: &Path, repo: &str, file: &str) -> Option<PathBuf> {
    let plain = |part: &str| {
        !part.is_empty()
            && !part.starts_with('/')
            && part
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
    };
    let (owner, name) = repo.split_once('/')?;
    if !plain(owner) || !plain(name) || name.contains('/') || !plain(file) {
        return None;
    }
    Some(models.join(PULLED_DIR).join(owner).join(name).join(file))
}

/// The way back from [`pulled_path`]: `(OWNER/REPO, FILE)` of a file below a `hf.co` directory
/// (the last one in the path, with at least owner, repository and file below it).
pub fn pulled_origin(path: &Path) -> Option<(String, String)> {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let at = parts.iter().rposition(|p| p == PULLED_DIR)?;
    let rest = &parts[at + 1..];
    if rest.len() < 3 {
        return None;
    }
    Some((format!("{}/{}", rest[0], rest[1]), rest[2..].join("/")))
}

/// The hidden directory below the models directory where downloads in progress live (see
/// [`partial_path`]); the scan skips it.
pub const PARTIAL_DIR: &str = ".r1d-partial";

/// Where the download of `dest` (below `models`) is kept until it is verified:
/// `MODELS/.r1d-partial/` + `dest`'s path below `models`. Pulls land only below `MODELS/hf.co/`,
/// so no repository file can ever have this name.
pub fn partial_path(models: &Path, dest: &Path) -> PathBuf {
    let rel = dest
        .strip_prefix(models)
        .map(Path::to_owned)
        .unwrap_or_else(|_| PathBuf::from(dest.file_name().unwrap_or_default()));
    models.join(PARTIAL_DIR).join(rel)
}

impl PullError {
    /// A failed request: [`PullError::NoNetwork`] when the system refused the socket or the
    /// connection (found in the error's source chain), else [`PullError::Connection`].
    fn connection(url: &str, source: reqwest::Error) -> PullError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        while let Some(e) = cause {
            let errno = e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error);
            let refused = match errno {
                Some(n) if n == rustix::io::Errno::AFNOSUPPORT.raw_os_error() => {
                    Some("opening an Internet socket failed with EAFNOSUPPORT, address family not supported")
                }
                Some(n) if n == rustix::io::Errno::PERM.raw_os_error() => {
                    Some("connecting failed with EPERM, operation not permitted")
                }
                _ => None,
            };
            if let Some(cause) = refused {
                return PullError::NoNetwork {
                    url: url.to_owned(),
                    cause,
                };
            }
            cause = e.source();
        }
        PullError::Connection {
            url: url.to_owned(),
            cause: connection_cause(url, &source, proxy_for(url)),
        }
    }
}

/// The proxy reqwest takes from the environment for `url`'s scheme (`HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY`, upper or lower case), as `(variable, value)`, when one is set.
fn proxy_for(url: &str) -> Option<(String, String)> {
    let scheme = if url.starts_with("https:") {
        "HTTPS_PROXY"
    } else {
        "HTTP_PROXY"
    };
    [scheme, "ALL_PROXY"]
        .into_iter()
        .flat_map(|v| [v.to_owned(), v.to_ascii_lowercase()])
        .find_map(|v| {
            std::env::var(&v)
                .ok()
                .filter(|x| !x.is_empty())
                .map(|x| (v, x))
        })
}

/// Why a request to `url` got no answer, in words: reqwest's own message only repeats the URL
/// (`error sending request for url (…)`), so the cause is read from its source chain — the host
/// name does not resolve (offline, DNS), the connection was refused (nothing listens), TLS
/// failed, the connection timed out — with the proxy named when one (`proxy`: the variable and
/// its value) was used.
pub fn connection_cause(
    url: &str,
    error: &reqwest::Error,
    proxy: Option<(String, String)>,
) -> String {
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = next {
        chain.push(e);
        next = e.source();
    }
    let messages: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
    let innermost = messages
        .last()
        .cloned()
        .unwrap_or_else(|| error.to_string());
    let io_kind = chain
        .iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>().map(std::io::Error::kind));
    let parsed = reqwest::Url::parse(url).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| url.to_owned());
    let port = parsed
        .as_ref()
        .and_then(reqwest::Url::port_or_known_default)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    // Through a proxy, the name resolved and the address connected to are the proxy's.
    let (name, target) = match &proxy {
        Some((_, p)) => {
            let u = reqwest::Url::parse(p).ok();
            let name = u
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| p.clone());
            (name, format!("the proxy {p}"))
        }
        None => (host.clone(), format!("{host}{port}")),
    };
    let lower = messages.join(" | ").to_ascii_lowercase();
    let cause = if messages.iter().any(|m| m.starts_with("dns error")) {
        format!(
            "the host name {name} does not resolve ({innermost}): this machine is offline or its \
             DNS fails; check the network, or HF_ENDPOINT"
        )
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
        format!("the connection to {target} was refused: nothing listens there")
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        format!(
            "the TLS handshake with {name} failed ({innermost}); a proxy or firewall that \
             inspects HTTPS needs its CA certificate trusted"
        )
    } else if error.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
        format!("the connection to {target} timed out: check the network or the firewall")
    } else {
        innermost
    };
    match proxy {
        Some((var, value)) => format!("{cause} (through the proxy {value}, set by ${var})"),
        None => cause,
    }
}

fn http_error(url: &str, status: u16) -> PullError {
    let hint = match status {
        401 | 403 => " (a gated or private repository needs HF_TOKEN)",
        404 => " (no such repository, revision or file)",
        _ => "",
    };
    PullError::Http {
        url: url.to_owned(),
        status,
        hint,
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Bytes an unprivileged process may still write on the file system of `dir` (`statvfs`:
/// `f_bavail × f_frsize`).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_live_where_no_repository_file_can() {
        let m = Path::new("/m");
        let dest = pulled_path(m, "o/r", "x.gguf").unwrap();
        let partial = partial_path(m, &dest);
        assert_eq!(partial, PathBuf::from("/m/.r1d-partial/hf.co/o/r/x.gguf"));
        // Whatever a repository names its files, none lands on a partial.
        for file in [
            "x.gguf.partial",
            ".r1d-partial/hf.co/o/r/x.gguf",
            "a/x.gguf",
        ] {
            let other = pulled_path(m, "o/r", file).unwrap();
            assert_ne!(other, partial);
            assert!(other.starts_with("/m/hf.co"));
        }
    }

    #[test]
    fn pulls_land_in_a_directory_of_their_repository_and_the_way_back_holds() {
        let m = Path::new("/var/lib/r1d/models");
        let p = pulled_path(m, "bartowski/DeepSeek-R1-GGUF", "x-Q4_K_M.gguf").unwrap();
        assert_eq!(
            p,
            PathBuf::from("/var/lib/r1d/models/hf.co/bartowski/DeepSeek-R1-GGUF/x-Q4_K_M.gguf")
        );
        assert_eq!(
            pulled_origin(&p),
            Some(("bartowski/DeepSeek-R1-GGUF".into(), "x-Q4_K_M.gguf".into()))
        );
        // A file in a folder of the repository keeps its folder.
        let p = pulled_path(m, "o/r", "Q4_K_M/x.gguf").unwrap();
        assert!(p.ends_with("hf.co/o/r/Q4_K_M/x.gguf"));
        assert_eq!(
            pulled_origin(&p),
            Some(("o/r".into(), "Q4_K_M/x.gguf".into()))
        );
        // Nothing leaves the models directory.
        for (repo, file) in [
            ("../..", "x.gguf"),
            ("o/..", "x.gguf"),
            ("o/r", "../../x.gguf"),
            ("o/r", "/etc/passwd"),
            ("o/r", "a//b.gguf"),
            ("o", "x.gguf"),
            ("o/r/s", "x.gguf"),
            ("/o/r", "x.gguf"),
            ("o/r", ""),
        ] {
            assert_eq!(pulled_path(m, repo, file), None, "{repo}:{file}");
        }
        // A flat file (pulled before this layout) has no origin.
        assert_eq!(pulled_origin(Path::new("/var/lib/r1d/models/x.gguf")), None);
    }

    #[test]
    fn sha256_of_a_known_string() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn free_bytes_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(Path::new("/nonexistent/dir")).is_err());
    }
}
