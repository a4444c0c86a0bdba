//! Secret files on the node: each task's `secretFiles` written under `DATA_DIR/secrets` (a
//! tmpfs the agent mounts, mode 0700, so values never reach a disk), one directory per
//! container and secret, bind-mounted read-only (nosuid, nodev, noexec) at its path in the
//! container.
//!
//! Layout: `ROOT/<task id>/<container index>/<directory index>/<key>`. Files are 0444 and
//! directories 0755, owned by root, as Docker's secrets are: any user of the container reads
//! them (a process that changes user still can), nobody outside reaches them (ROOT is 0700 and
//! only the leaf directory is mounted). A task's directory goes when the task is cleaned up;
//! at start-up the agent removes those of tasks it no longer has.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use berth_model::TaskSecrets;

use crate::runtime::SecretMount;

/// tmpfs's magic number in `statfs.f_type`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Makes `root` a directory only root can enter, on a tmpfs of its own unless it is on one
/// already (needs root; hollow agents and tests use a plain directory instead).
pub fn mount_tmpfs(root: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    let fs = rustix::fs::statfs(root)?;
    // `f_type`'s C type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.f_type as i64;
    if kind != TMPFS_MAGIC {
        use rustix::mount::{mount, MountFlags};
        mount(
            "berth-secrets",
            root,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"mode=0700,size=64m",
        )?;
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
}

/// A task ID as a directory name: nothing that could leave `ROOT`.
fn task_dir(root: &Path, task_id: &str) -> io::Result<PathBuf> {
    let safe = !task_id.is_empty()
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !safe {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("task ID {task_id:?} cannot name a directory"),
        ));
    }
    Ok(root.join(task_id))
}

/// Writes the secret files of the task's containers (in definition order: `containers`) and
/// answers each container's mounts. Containers without secret files get none.
pub fn write_task(
    root: &Path,
    task_id: &str,
    containers: &[String],
    secrets: &TaskSecrets,
) -> io::Result<Vec<Vec<SecretMount>>> {
    let task = task_dir(root, task_id)?;
    let mut mounts = Vec::with_capacity(containers.len());
    for (ci, name) in containers.iter().enumerate() {
        let mut these = Vec::new();
        let dirs = secrets.containers.get(name).map(|s| &s.files);
        for (di, (destination, files)) in dirs.into_iter().flatten().enumerate() {
            let dir = task.join(ci.to_string()).join(di.to_string());
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            for (file, content) in files {
                if file.is_empty() || file == "." || file == ".." || file.contains('/') {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{file:?} cannot name a secret file"),
                    ));
                }
                let path = dir.join(file);
                let _ = std::fs::remove_file(&path);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o444)
                    .open(&path)?;
                io::Write::write_all(&mut f, content)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            these.push(SecretMount {
                source: dir,
                destination: destination.clone(),
            });
        }
        mounts.push(these);
    }
    Ok(mounts)
}

/// Removes the task's secret files; gone already is fine.
pub fn remove_task(root: &Path, task_id: &str) -> io::Result<()> {
    let dir = task_dir(root, task_id)?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the secret files of every task not in `keep`; answers their task IDs.
pub fn sweep(root: &Path, keep: &BTreeSet<String>) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed.push(name);
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_model::ContainerSecrets;

    use super::*;

    #[test]
    fn files_are_written_read_only_then_removed_and_swept() {
        let root = tempfile::tempdir().expect("a temp dir");
        let mut app = ContainerSecrets::default();
        app.files.insert(
            "/run/secrets/tls".into(),
            BTreeMap::from([("key.pem".into(), b"PRIVATE".to_vec())]),
        );
        let secrets = TaskSecrets {
            containers: BTreeMap::from([("app".into(), app)]),
            error: None,
        };
        let containers = ["sidecar".to_owned(), "app".to_owned()];
        let mounts = write_task(root.path(), "t1", &containers, &secrets).expect("written");
        assert_eq!(mounts[0], vec![]);
        let dir = root.path().join("t1/1/0");
        assert_eq!(
            mounts[1],
            vec![SecretMount {
                source: dir.clone(),
                destination: "/run/secrets/tls".into()
            }]
        );
        let file = dir.join("key.pem");
        assert_eq!(std::fs::read(&file).expect("readable"), b"PRIVATE");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o444);
        assert_eq!(mode(&dir), 0o755);
        // Written again (an agent restart): same files.
        write_task(root.path(), "t1", &containers, &secrets).expect("written again");

        write_task(root.path(), "t2", &containers, &secrets).expect("written");
        assert_eq!(
            sweep(root.path(), &BTreeSet::from(["t2".to_owned()])).expect("swept"),
            ["t1"]
        );
        assert!(!root.path().join("t1").exists());
        remove_task(root.path(), "t2").expect("removed");
        remove_task(root.path(), "t2").expect("gone already is fine");
        assert!(std::fs::read_dir(root.path())
            .expect("a dir")
            .next()
            .is_none());
        assert!(write_task(root.path(), "../x", &containers, &secrets).is_err());
    }
}
