//! Finds model files: r1d's own models directory, and — read-only — the Hugging Face cache and
//! Ollama's store. Nothing here writes, moves or deletes a file.

use std::path::{Path, PathBuf};

use super::Source;

/// A model file found on disk, before its header is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The file (for the HF cache, the snapshot's symlink).
    pub path: PathBuf,
    /// Where it was found.
    pub source: Source,
}

/// Deepest directory level searched below a models directory.
const MAX_DEPTH: usize = 4;

/// GGUF files (`*.gguf`, not `*.gguf.partial`) and ONNX model directories (`model.onnx` +
/// `config.json`, listed as the directory) in `dir` and its subdirectories.
///
/// Symlinks are followed only where they lead to a place inside `dir` (a link to a model file
/// elsewhere in the models directory is listed under the link's name); a link that leaves it is
/// skipped, so the scan never reads files outside the directory it was given. Only regular
/// files and directories are listed: a FIFO or device named `*.gguf` is not.
pub fn models_dir(dir: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    walk(dir, &mut |path| {
        if path.is_dir()
            || path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            out.push(Found {
                path: path.to_owned(),
                source: Source::Local,
            });
        }
    });
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Hands every regular file (and ONNX model directory) below `root` to `f`, up to
/// [`MAX_DEPTH`] levels down, never leaving `root` through a symlink.
fn walk(root: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(inside) = std::fs::canonicalize(root) else {
        return;
    };
    walk_in(&inside, root, 0, f);
}

fn walk_in(inside: &Path, dir: &Path, depth: usize, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Downloads in progress (`store::pull` keeps them in a hidden directory) are not models.
        if entry.file_name() == super::pull::PARTIAL_DIR {
            continue;
        }
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && !std::fs::canonicalize(&path).is_ok_and(|target| target.starts_with(inside)) {
            tracing::debug!("not following {:?}: it leads out of {:?}", path, inside);
            continue;
        }
        // `metadata` follows the symlinks that stay inside (the HF cache's snapshots are links
        // to its blobs).
        match std::fs::metadata(&path) {
            // An ONNX model directory is one model: reported, not searched.
            Ok(m) if m.is_dir() && super::onnx::is_model_dir(&path) => f(&path),
            Ok(m) if m.is_dir() && depth < MAX_DEPTH => walk_in(inside, &path, depth + 1, f),
            Ok(m) if m.is_file() => f(&path),
            _ => {}
        }
    }
}

/// GGUF files in a Hugging Face hub cache: `models--OWNER--REPO/snapshots/REVISION/FILE`, each a
/// symlink into `blobs/`. A blob reachable from several revisions is listed once (the newest
/// snapshot by modification time wins).
pub fn huggingface_cache(hub: &Path) -> Vec<Found> {
    let mut out: Vec<(std::time::SystemTime, PathBuf, Found)> = Vec::new();
    let Ok(repos) = std::fs::read_dir(hub) else {
        return Vec::new();
    };
    // Snapshot files are links into the cache's blobs: followed, but never out of the cache.
    let Ok(inside) = std::fs::canonicalize(hub) else {
        return Vec::new();
    };
    for repo in repos.flatten() {
        let dir_name = repo.file_name().to_string_lossy().into_owned();
        let Some(rest) = dir_name.strip_prefix("models--") else {
            continue;
        };
        let repo_id = rest.replacen("--", "/", 1);
        let Ok(snapshots) = std::fs::read_dir(repo.path().join("snapshots")) else {
            continue;
        };
        for snapshot in snapshots.flatten() {
            let revision = snapshot.file_name().to_string_lossy().into_owned();
            let modified = snapshot
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let root = snapshot.path();
            walk_in(&inside, &root, 0, &mut |path| {
                if !path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                {
                    return;
                }
                let file = path
                    .strip_prefix(&root)
                    .unwrap_or(path)
                    .to_string_lossy()
                    .into_owned();
                let blob = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
                out.push((
                    modified,
                    blob,
                    Found {
                        path: path.to_owned(),
                        source: Source::HuggingFace {
                            repo: repo_id.clone(),
                            revision: revision.clone(),
                            file,
                        },
                    },
                ));
            });
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.path.cmp(&b.2.path)));
    let mut seen = std::collections::HashSet::new();
    let mut found: Vec<Found> = out
        .into_iter()
        .filter(|(_, blob, _)| seen.insert(blob.clone()))
        .map(|(_, _, f)| f)
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Ollama's media type of the model weights layer.
const OLLAMA_MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// Models in an Ollama store: `manifests/HOST/NAMESPACE/NAME/TAG` (JSON) whose layer of media
/// type `application/vnd.ollama.image.model` names a blob `blobs/sha256-HEX`. Models from the
/// default registry and namespace are named `NAME:TAG`, as `ollama list` shows them.
pub fn ollama(models: &Path) -> Vec<Found> {
    let manifests = models.join("manifests");
    let mut out = Vec::new();
    let mut files = Vec::new();
    walk(&manifests, &mut |p| files.push(p.to_owned()));
    let inside = std::fs::canonicalize(models).unwrap_or_else(|_| models.to_owned());
    files.sort();
    for manifest in files {
        let Ok(rel) = manifest.strip_prefix(&manifests) else {
            continue;
        };
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let [host, namespace, name, tag] = parts.as_slice() else {
            continue;
        };
        let Some(digest) = std::fs::read(&manifest)
            .ok()
            .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
            .and_then(|json| model_layer_digest(&json))
        else {
            continue;
        };
        let Some(hex) = digest.strip_prefix("sha256:") else {
            continue;
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let blob = models.join("blobs").join(format!("sha256-{hex}"));
        let stays_inside =
            std::fs::canonicalize(&blob).is_ok_and(|target| target.starts_with(&inside));
        if !blob.is_file() || !stays_inside {
            continue;
        }
        let display = if host == "registry.ollama.ai" && namespace == "library" {
            format!("{name}:{tag}")
        } else {
            format!("{host}/{namespace}/{name}:{tag}")
        };
        out.push(Found {
            path: blob,
            source: Source::Ollama {
                name: display,
                digest: digest.clone(),
            },
        });
    }
    out
}

fn model_layer_digest(manifest: &serde_json::Value) -> Option<String> {
    manifest
        .get("layers")?
        .as_array()?
        .iter()
        .find(|l| l.get("mediaType").and_then(|m| m.as_str()) == Some(OLLAMA_MODEL_LAYER))?
        .get("digest")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_manifest_leads_to_its_model_blob() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "a".repeat(64);
        let m = dir
            .path()
            .join("manifests/registry.ollama.ai/library/smollm2");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join(format!("blobs/sha256-{hex}")), b"GGUF").unwrap();
        std::fs::write(
            m.join("135m"),
            format!(
                r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{}"}},{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{hex}","size":4}}]}}"#,
                "b".repeat(64)
            ),
        )
        .unwrap();
        // A manifest whose blob is missing is skipped.
        std::fs::write(
            m.join("gone"),
            format!(r#"{{"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{}"}}]}}"#, "c".repeat(64)),
        )
        .unwrap();
        let found = ollama(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].path,
            dir.path().join(format!("blobs/sha256-{hex}"))
        );
        assert_eq!(
            found[0].source,
            Source::Ollama {
                name: "smollm2:135m".into(),
                digest: format!("sha256:{hex}")
            }
        );
    }

    #[test]
    fn the_scan_does_not_leave_the_models_directory_through_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.gguf"), b"GGUF").unwrap();
        std::fs::create_dir(outside.path().join("more")).unwrap();
        std::fs::write(outside.path().join("more/other.gguf"), b"GGUF").unwrap();
        let models = tempfile::tempdir().unwrap();
        let m = models.path();
        std::fs::create_dir(m.join("real")).unwrap();
        std::fs::write(m.join("real/a.gguf"), b"GGUF").unwrap();
        // Out of the directory: a file link and a directory link, skipped.
        std::os::unix::fs::symlink(outside.path().join("secret.gguf"), m.join("out.gguf")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("more"), m.join("outdir")).unwrap();
        // Inside: followed, listed under the link's name.
        std::os::unix::fs::symlink(m.join("real/a.gguf"), m.join("alias.gguf")).unwrap();
        // A FIFO named like a model is not listed (and not opened).
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.join("fifo.gguf"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let found: Vec<PathBuf> = models_dir(m).into_iter().map(|f| f.path).collect();
        assert_eq!(found, vec![m.join("alias.gguf"), m.join("real/a.gguf")]);
    }

    #[test]
    fn hf_cache_lists_snapshot_files_once_per_blob() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--bartowski--Some-GGUF");
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/abc"), b"GGUF").unwrap();
        for rev in ["r1", "r2"] {
            let snap = repo.join("snapshots").join(rev);
            std::fs::create_dir_all(&snap).unwrap();
            std::os::unix::fs::symlink("../../blobs/abc", snap.join("m-Q4_K_M.gguf")).unwrap();
            std::fs::write(snap.join("README.md"), b"x").unwrap();
        }
        let found = huggingface_cache(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        match &found[0].source {
            Source::HuggingFace { repo, file, .. } => {
                assert_eq!(repo, "bartowski/Some-GGUF");
                assert_eq!(file, "m-Q4_K_M.gguf");
            }
            other => panic!("{other:?}"),
        }
    }
}
