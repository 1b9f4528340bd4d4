//! Every default path r1d uses, in one place, for system mode (the service: FHS directories) and
//! user mode (XDG base directories, <https://specifications.freedesktop.org/basedir-spec/>).
//!
//! | what | system | user |
//! | --- | --- | --- |
//! | config | `/etc/r1d/r1d.toml` | `$XDG_CONFIG_HOME/r1d/r1d.toml` |
//! | socket | `/run/r1d/r1d.sock` | `$XDG_RUNTIME_DIR/r1d/r1d.sock` (see `r1d_client`) |
//! | models | `/var/lib/r1d/models` | `$XDG_DATA_HOME/r1d/models` |
//! | bandwidth cache | `/var/cache/r1d/memory-bandwidth` | `$XDG_CACHE_HOME/r1d/memory-bandwidth` |
//! | plugins | `/usr/lib/r1d/plugins` (or beside the binary in a build tree) | same |
//!
//! Read-only, other tools' stores: the Hugging Face hub cache and Ollama's models directory.
//! An XDG variable that is unset or not absolute falls back to its default under `$HOME`, as the
//! specification says.

use std::path::{Path, PathBuf};

use crate::config::Mode;

/// `$HOME`, or `/` without one (a system user may have none).
fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/".into())
}

/// The XDG base directory `var` when it is set to an absolute path, else `$HOME/fallback`.
fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home().join(fallback))
}

/// Default config file: `/etc/r1d/r1d.toml` (system) or `$XDG_CONFIG_HOME/r1d/r1d.toml` (user).
pub fn config_file(mode: Mode) -> PathBuf {
    match mode {
        Mode::System => "/etc/r1d/r1d.toml".into(),
        Mode::User => xdg_dir("XDG_CONFIG_HOME", ".config").join("r1d/r1d.toml"),
    }
}

/// Default socket: `/run/r1d/r1d.sock` (system) or the user socket
/// ([`r1d_client::user_socket_path`]) — the same paths `r1ctl` looks at.
pub fn socket(mode: Mode) -> PathBuf {
    match mode {
        Mode::System => r1d_client::SYSTEM_SOCKET.into(),
        Mode::User => r1d_client::user_socket_path(),
    }
}

/// Default plugin directory: `plugins/` or the binary's own directory when it holds
/// `libr1_plugin_*.so` (a build tree or a relocatable install), else `/usr/lib/r1d/plugins`.
pub fn plugin_dir() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        for candidate in [dir.join("plugins"), dir.clone()] {
            let has_plugin = std::fs::read_dir(&candidate).is_ok_and(|entries| {
                entries.filter_map(Result::ok).any(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("libr1_plugin_") && n.ends_with(".so"))
                })
            });
            if has_plugin {
                return candidate;
            }
        }
    }
    "/usr/lib/r1d/plugins".into()
}

/// Where models are stored by default: `/var/lib/r1d/models` (system) or
/// `$XDG_DATA_HOME/r1d/models` (user, default `~/.local/share`).
pub fn models_dir(mode: Mode) -> PathBuf {
    match mode {
        Mode::System => "/var/lib/r1d/models".into(),
        Mode::User => xdg_dir("XDG_DATA_HOME", ".local/share").join("r1d/models"),
    }
}

/// The measured memory bandwidth's cache file: `/var/cache/r1d/memory-bandwidth` (system) or
/// `$XDG_CACHE_HOME/r1d/memory-bandwidth` (user, default `~/.cache`).
pub fn bandwidth_cache(mode: Mode) -> PathBuf {
    match mode {
        Mode::System => "/var/cache/r1d/memory-bandwidth".into(),
        Mode::User => xdg_dir("XDG_CACHE_HOME", ".cache").join("r1d/memory-bandwidth"),
    }
}

/// The cache of backends' memory estimates (`store::estimate_cache`):
/// `/var/cache/r1d/memory-estimates.json` (system) or
/// `$XDG_CACHE_HOME/r1d/memory-estimates.json` (user, default `~/.cache`).
pub fn estimate_cache(mode: Mode) -> PathBuf {
    match mode {
        Mode::System => "/var/cache/r1d/memory-estimates.json".into(),
        Mode::User => xdg_dir("XDG_CACHE_HOME", ".cache").join("r1d/memory-estimates.json"),
    }
}

/// The Hugging Face hub cache as `huggingface_hub` finds it: `$HF_HUB_CACHE`, `$HF_HOME/hub`,
/// `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`.
pub fn hf_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    xdg_dir("XDG_CACHE_HOME", ".cache").join("huggingface/hub")
}

/// Ollama's models directory: `$OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn ollama_models() -> PathBuf {
    std::env::var_os("OLLAMA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".ollama/models"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_are_the_fhs_ones() {
        assert_eq!(config_file(Mode::System), Path::new("/etc/r1d/r1d.toml"));
        assert_eq!(socket(Mode::System), Path::new("/run/r1d/r1d.sock"));
        assert_eq!(models_dir(Mode::System), Path::new("/var/lib/r1d/models"));
        assert_eq!(
            bandwidth_cache(Mode::System),
            Path::new("/var/cache/r1d/memory-bandwidth")
        );
    }
}
