//! Free disk space where models are stored, through `sysinfo`'s list of mounted file systems.

use std::path::{Path, PathBuf};

use super::Disk;

/// Free space of the file system holding `models_dir` (or its nearest existing ancestor, so a
/// models directory that is not created yet still gets an answer). `None` when no mounted file
/// system contains it.
pub fn probe(models_dir: &Path) -> Option<Disk> {
    let existing = models_dir.ancestors().find(|p| p.exists())?;
    let existing = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_owned());
    let disks = sysinfo::Disks::new_with_refreshed_list().ok()?;
    let mounts: Vec<(PathBuf, u64)> = disks
        .iter()
        .map(|d| (d.mount_point().to_owned(), d.available_space()))
        .collect();
    let free_bytes = free_on(&existing, &mounts)?;
    Some(Disk {
        path: models_dir.to_owned(),
        free_bytes,
    })
}

/// The free space of the mount with the longest mount point that contains `path`.
pub fn free_on(path: &Path, mounts: &[(PathBuf, u64)]) -> Option<u64> {
    mounts
        .iter()
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.components().count())
        .map(|(_, free)| *free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_mount_point_wins() {
        let mounts = vec![
            (PathBuf::from("/"), 10),
            (PathBuf::from("/var"), 20),
            (PathBuf::from("/var/lib/r1d"), 30),
            (PathBuf::from("/var/lib/r1"), 40),
        ];
        assert_eq!(free_on(Path::new("/var/lib/r1d/models"), &mounts), Some(30));
        assert_eq!(free_on(Path::new("/var/cache"), &mounts), Some(20));
        assert_eq!(free_on(Path::new("/home"), &mounts), Some(10));
        assert_eq!(free_on(Path::new("/home"), &[]), None);
    }
}
