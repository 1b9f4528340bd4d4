//! Removing a model from r1d's own models directory (`r1ctl rm`, `POST /r1/remove`,
//! `DELETE /api/delete`, D-Bus `Remove`).
//!
//! Only r1d's own files are removed: a name found only in the Hugging Face cache or Ollama's store
//! is refused with the other tool's command, as those stores are only read. The model that is
//! resident, loading or queued to load is refused too (`r1ctl use` another model, or
//! `r1ctl stop`, first): deleting the file under a running model would leave r1d serving
//! something `r1ctl models` no longer lists, and a swap back to it would fail.

use std::path::{Path, PathBuf};

use super::{ModelEntry, Source, StoreError};

/// What a removal deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The name the model was listed by.
    pub name: String,
    /// The file (GGUF) or directory (ONNX) removed.
    pub path: PathBuf,
    /// Bytes freed on disk (for a directory, all its files).
    pub bytes: u64,
}

/// Removes the model `name` (a listed name, a file name or stem, or its absolute path) from `dir`,
/// r1d's models directory, given the scanned `entries` and the paths the engine holds (`busy`:
/// resident, loading, queued). Empty directories left behind below `dir` (`hf.co/OWNER/REPO/`)
/// are removed too. Blocking.
///
/// # Errors
/// [`StoreError::NotFound`] when nothing is listed by that name; [`StoreError::ReadOnly`] when
/// only another tool's store has it; [`StoreError::Ambiguous`] when it names several of r1d's
/// files; [`StoreError::InUse`] when it is resident, loading or queued to load;
/// [`StoreError::RemoveFailed`] with the OS error.
pub fn remove(
    dir: &Path,
    entries: &[ModelEntry],
    name: &str,
    busy: &[PathBuf],
) -> Result<Removed, StoreError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StoreError::NotFound(String::new()));
    }
    let named: Vec<&ModelEntry> = entries
        .iter()
        .filter(|e| e.matches(name) || e.path == Path::new(name))
        .collect();
    let ours: Vec<&ModelEntry> = named
        .iter()
        .copied()
        .filter(|e| e.source == Source::Local && e.path.starts_with(dir))
        .collect();
    let entry = match (ours.as_slice(), named.first()) {
        ([one], _) => *one,
        ([], None) => return Err(StoreError::NotFound(name.to_owned())),
        ([], Some(other)) => {
            let how = match &other.source {
                Source::Ollama { name, .. } => format!("`ollama rm {name}`"),
                Source::HuggingFace { repo, .. } => {
                    format!("`hf cache delete` (the Hugging Face CLI; repository {repo})")
                }
                Source::Local => "hand".to_owned(),
            };
            return Err(StoreError::ReadOnly {
                name: name.to_owned(),
                path: other.path.display().to_string(),
                store: match other.source {
                    Source::Ollama { .. } => "Ollama's store",
                    Source::HuggingFace { .. } => "the Hugging Face cache",
                    Source::Local => "a directory outside r1d's models directory",
                },
                how,
            });
        }
        (many, _) => {
            return Err(StoreError::Ambiguous {
                name: name.to_owned(),
                paths: many.iter().map(|e| e.path.display().to_string()).collect(),
            })
        }
    };
    let same = |a: &Path, b: &Path| {
        a == b
            || std::fs::canonicalize(a)
                .ok()
                .zip(std::fs::canonicalize(b).ok())
                .is_some_and(|(a, b)| a == b)
    };
    if busy.iter().any(|b| same(b, &entry.path)) {
        return Err(StoreError::InUse {
            name: entry.name.clone(),
            path: entry.path.display().to_string(),
        });
    }
    let failed = |e: std::io::Error| StoreError::RemoveFailed {
        path: entry.path.display().to_string(),
        reason: e.to_string(),
    };
    // A symlink (inside the models directory) is removed itself, never what it points to.
    let meta = std::fs::symlink_metadata(&entry.path).map_err(failed)?;
    if meta.is_dir() {
        std::fs::remove_dir_all(&entry.path).map_err(failed)?;
    } else {
        std::fs::remove_file(&entry.path).map_err(failed)?;
    }
    prune_empty_parents(dir, &entry.path);
    tracing::info!(
        model = %entry.name,
        path = %entry.path.display(),
        bytes = entry.size_bytes,
        "removed a model from the models directory"
    );
    Ok(Removed {
        name: entry.name.clone(),
        path: entry.path.clone(),
        bytes: entry.size_bytes,
    })
}

/// Removes the directories between `removed` and `dir` (exclusive) that are now empty, such as
/// `hf.co/OWNER/REPO/` after its last file went.
fn prune_empty_parents(dir: &Path, removed: &Path) {
    let mut at = removed.parent();
    while let Some(parent) = at.filter(|p| p.starts_with(dir) && *p != dir) {
        // Fails (and stops) at the first directory that still holds something.
        if std::fs::remove_dir(parent).is_err() {
            break;
        }
        at = parent.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{examine, scan};

    fn entries(dir: &Path) -> Vec<ModelEntry> {
        scan::models_dir(dir).into_iter().map(examine).collect()
    }

    #[test]
    fn removes_by_listed_name_and_prunes_the_repository_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let pulled = dir.join("hf.co/owner/repo/m.gguf");
        std::fs::create_dir_all(pulled.parent().unwrap()).unwrap();
        std::fs::write(&pulled, crate::store::tests::r1_7b(576)).unwrap();
        let other = dir.join("other.gguf");
        std::fs::write(&other, b"GGUF").unwrap();
        let size = std::fs::metadata(&pulled).unwrap().len();
        let removed = remove(dir, &entries(dir), "deepseek-r1:7b-q4_k_m", &[]).unwrap();
        assert_eq!(removed.path, pulled);
        assert_eq!(removed.bytes, size);
        assert!(!pulled.exists());
        assert!(!dir.join("hf.co").exists(), "empty directories go too");
        assert!(other.exists(), "nothing else is touched");
        assert!(dir.exists());
    }

    #[test]
    fn refuses_the_resident_model_unknown_names_and_ambiguity() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let a = dir.join("a.gguf");
        std::fs::write(&a, b"GGUF").unwrap();
        let e = remove(dir, &entries(dir), "a", std::slice::from_ref(&a)).unwrap_err();
        assert!(matches!(e, StoreError::InUse { .. }), "{e:?}");
        assert!(e.to_string().contains("r1ctl use"), "{e}");
        assert!(a.exists());
        let e = remove(dir, &entries(dir), "nope", &[]).unwrap_err();
        assert_eq!(e, StoreError::NotFound("nope".into()));
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.gguf"), b"GGUF").unwrap();
        let e = remove(dir, &entries(dir), "a.gguf", &[]).unwrap_err();
        assert!(matches!(e, StoreError::Ambiguous { ref paths, .. } if paths.len() == 2));
        // By path it is not ambiguous.
        remove(dir, &entries(dir), a.to_str().unwrap(), &[]).unwrap();
        assert!(!a.exists());
    }

    #[test]
    fn another_tools_store_is_refused_with_its_own_command() {
        let root = tempfile::tempdir().unwrap();
        let blob = root.path().join("blob");
        std::fs::write(&blob, b"GGUF").unwrap();
        let entry = examine(scan::Found {
            path: blob.clone(),
            source: Source::Ollama {
                name: "smollm2:135m".into(),
                digest: "sha256:00".into(),
            },
        });
        let dir = root.path().join("models");
        let e = remove(&dir, &[entry], "smollm2:135m", &[]).unwrap_err();
        assert!(e.to_string().contains("ollama rm smollm2:135m"), "{e}");
        assert!(blob.exists());
    }
}
