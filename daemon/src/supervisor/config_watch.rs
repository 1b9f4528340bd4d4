//! The config file: watched with `notify`, and reloaded on a change, SIGHUP (through the
//! closure `main.rs` gives `systemd`), `POST /r1/reload` and D-Bus `Reload`.
//!
//! Editors replace files by rename, so the directory, not the file, is watched (and, for a
//! symlinked config, its target's directory); other files there — editors' temp and backup
//! files — are ignored. Changes are read after 300 ms of quiet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::decide;
use super::events::{Event, EventKind, ReloadOutcome};
use super::{one_line, seconds, Supervisor};
use crate::config::{self, Config};

/// Keys read once at start: a reload names them with "(takes effect when r1d restarts)".
pub const AT_RESTART: [&str; 14] = [
    "[server] socket",
    "[server] parallel",
    "[server] listen",
    "[server] api_key_file",
    "[server] queue_depth",
    "[plugins] dir",
    "[plugins] isolation",
    "[plugins] hang_timeout_s",
    "[store] dir",
    "[store] scan_huggingface",
    "[store] huggingface_cache",
    "[store] scan_ollama",
    "[store] ollama_models",
    "[model] default_max_tokens",
];

/// What changed between `old` and `new`, one line per key, the keys that need a restart marked.
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    config::diff(old, new)
        .into_iter()
        .map(|line| {
            if AT_RESTART
                .iter()
                .any(|k| line.starts_with(&format!("{k}:")))
            {
                format!("{line} (takes effect when r1d restarts)")
            } else {
                line
            }
        })
        .collect()
}

impl Supervisor {
    /// Watches the config file's directory (and, for a symlinked config, its target's); a change
    /// of the file (written in place, or replaced by rename) reloads it after 300 ms of quiet.
    /// When the directory does not exist yet (a first config not written yet), it is looked for
    /// every 2 s and watched once it appears. `[watch] config = false` (also set by a reload)
    /// ignores the changes; SIGHUP and `r1ctl reload` still reload.
    pub(super) fn watch_config(self, shutdown: CancellationToken) {
        let Some(path) = self.inner.config_path.clone() else {
            return;
        };
        // The first watch is set up before this returns, so it is in place before r1d says it is
        // ready (READY=1, the socket answering): an edit right after that is never missed.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = None;
        let mut said_missing = false;
        match watch_dirs(&path, tx.clone()) {
            Ok(w) => {
                tracing::info!("watching {} for changes", path.display());
                watcher = Some(w);
            }
            Err(e) => {
                tracing::info!(
                    "not watching {} yet ({e}); looking again every 2 s; SIGHUP and `r1ctl reload` reload it",
                    path.display()
                );
                said_missing = true;
            }
        }
        tokio::spawn(async move {
            loop {
                if watcher.is_none() {
                    match watch_dirs(&path, tx.clone()) {
                        Ok(w) => {
                            tracing::info!("watching {} for changes", path.display());
                            watcher = Some(w);
                            if said_missing {
                                // The directory (and maybe the file) appeared: read it.
                                self.reload("the file appeared").await;
                            }
                        }
                        Err(e) if !said_missing => {
                            tracing::info!(
                                "not watching {} yet ({e}); looking again every 2 s; SIGHUP and `r1ctl reload` reload it",
                                path.display()
                            );
                            said_missing = true;
                        }
                        Err(_) => {}
                    }
                }
                let wait = if watcher.is_some() {
                    Duration::from_secs(3600)
                } else {
                    Duration::from_secs(2)
                };
                tokio::select! {
                    got = tokio::time::timeout(wait, rx.recv()) => match got {
                        Ok(Some(())) => {}
                        Ok(None) => return,
                        Err(_) => continue,
                    },
                    () = shutdown.cancelled() => return,
                }
                // Quiet period: an editor's write, rename and chmod come as several events.
                loop {
                    tokio::select! {
                        got = tokio::time::timeout(Duration::from_millis(300), rx.recv()) => match got {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        },
                        () = shutdown.cancelled() => return,
                    }
                }
                if !self.config().watch.config {
                    tracing::info!(
                        "{} changed; not reloading ([watch] config = false)",
                        path.display()
                    );
                    continue;
                }
                // In a task of its own: a reload may wait for a slow load, and a newer edit
                // must be read meanwhile (it supersedes that load).
                let this = self.clone();
                tokio::spawn(async move { this.reload("the file changed").await });
            }
        });
    }

    /// Reads the config again and applies it: `[model]`, `[planner]`, `[store] auto_pull` and
    /// `[watch]` take effect now (a different model is loaded at once; answers in flight finish
    /// first); keys that need a restart are named in the log. A file that does not parse or
    /// validate is rejected and the running config stays in force. `origin` says what asked
    /// (`SIGHUP`, `r1ctl reload`, …), for the log.
    pub async fn reload(&self, origin: &str) -> ReloadOutcome {
        let acting = self.inner.acting.lock().await;
        let config_path = self
            .inner
            .config_path
            .as_ref()
            .map(|p| p.display().to_string());
        let new = match (self.inner.read_config)() {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(
                    "config reload ({origin}) rejected, the running config stays in force: {error}"
                );
                // TOML errors come with a quoted line and a caret: one line for status and events.
                let line = one_line(&error);
                self.update_view(|v| v.config_error = Some(line.clone()));
                let mut e = Event::new(
                    EventKind::Config,
                    format!("rejected, the running config stays in force: {line}"),
                );
                e.error = Some(line);
                self.emit(e);
                return ReloadOutcome {
                    config_path,
                    changes: Vec::new(),
                    error: Some(error),
                    model: self.model_line(),
                };
            }
        };
        let old = self.config();
        let changes = changes(&old, &new);
        if changes.is_empty() {
            tracing::info!("config reload ({origin}): nothing changed");
        }
        for line in &changes {
            tracing::info!("config reload ({origin}): {line}");
        }
        if decide::edit_unpins(
            (self.inner.configured_model)(&old).as_ref(),
            (self.inner.configured_model)(&new).as_ref(),
            old.planner.variant.as_deref(),
            new.planner.variant.as_deref(),
        ) {
            self.set_pin(None);
        }
        self.inner.store.reconfigure(&new);
        self.inner
            .engine
            .set_queue_deadline(seconds(new.watch.queue_deadline_s));
        self.state().config = new.clone();
        self.update_view(|v| {
            v.config_error = None;
            v.swap_policy = new.watch.swap_policy;
        });
        let mut e = Event::new(
            EventKind::Config,
            if changes.is_empty() {
                format!("reloaded ({origin}): nothing changed")
            } else {
                format!("reloaded ({origin}): {}", changes.join("; "))
            },
        );
        e.changes = changes.clone();
        self.emit(e);
        // A config edit is the person's intent: it acts now, whatever the swap policy.
        let model = match self.wanted().await {
            Ok(wanted) => self
                .apply(acting, wanted, None, "the config changed")
                .await
                .unwrap_or_else(|e| e.to_string()),
            Err(e) => format!("kept the resident model: {e}"),
        };
        ReloadOutcome {
            config_path,
            changes,
            error: None,
            model,
        }
    }
}

/// Watches the directory of `path` and, when `path` is a symlink, its target's directory;
/// sends on `tx` when a file named like the config or its target changes there.
fn watch_dirs(
    path: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut places: Vec<(PathBuf, std::ffi::OsString)> = Vec::new();
    for p in [Some(path.to_owned()), std::fs::canonicalize(path).ok()]
        .into_iter()
        .flatten()
    {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_owned()
        };
        if !places.iter().any(|(d, n)| *d == dir && n == name) {
            places.push((dir, name.to_owned()));
        }
    }
    let names: Vec<std::ffi::OsString> = places.iter().map(|(_, n)| n.clone()).collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        // Only the config file itself: an editor's swap, temp and backup files in the same
        // directory are not the config.
        if ev
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|f| names.iter().any(|n| n == f)))
        {
            let _ = tx.send(());
        }
    })?;
    for (dir, _) in &places {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}
