//! Reading one file of an image (its /etc/passwd and /etc/group, to resolve a user) without
//! mounting anything: a `View` snapshot of the image names its layer directories (overlayfs
//! `lowerdir=`, or one bind-mounted directory), and the file is looked up in them top layer
//! first, as overlayfs would: a whiteout (a 0/0 character device) hides what is below, an
//! opaque directory (`trusted.overlay.opaque=y`) hides the lower layers' content of it, and
//! symbolic links are followed inside the image (at most 8), never onto the host.

use std::collections::HashMap;
use std::io::{self, Read as _};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    RemoveSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Mount;

use super::{ContainerdRuntime, SNAPSHOTTER};
use crate::runtime::{ImageInfo, RuntimeError, MAX_IMAGE_FILE};

/// The directories of a snapshot's mounts, top layer first.
pub(super) fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                for o in &m.options {
                    if let Some(upper) = o.strip_prefix("upperdir=") {
                        dirs.insert(0, PathBuf::from(upper));
                    }
                }
                for o in &m.options {
                    if let Some(lower) = o.strip_prefix("lowerdir=") {
                        dirs.extend(lower.split(':').map(PathBuf::from));
                    }
                }
            }
            _ => {}
        }
    }
    dirs
}

/// What a path is in the merged layers.
enum Found {
    File(PathBuf),
    /// Resolve again at these components (a symbolic link was on the way).
    Redirect(Vec<String>),
    Missing,
}

/// The normal components of `path` resolved against `base` (`..` stops at the root).
fn resolve(base: &[String], path: &str) -> Vec<String> {
    let mut out: Vec<String> = if path.starts_with('/') {
        Vec::new()
    } else {
        base.to_vec()
    };
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_owned()),
        }
    }
    out
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 1];
    matches!(
        rustix::fs::getxattr(dir, "trusted.overlay.opaque", &mut value[..]),
        Ok(1) if value[0] == b'y'
    )
}

fn lookup(layers: &[PathBuf], comps: &[String]) -> io::Result<Found> {
    for layer in layers {
        let mut dir = layer.clone();
        let mut below_opaque = false;
        for (i, c) in comps.iter().enumerate() {
            let p = dir.join(c);
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                // Below an opaque directory, the lower layers are hidden.
                Err(e) if e.kind() == io::ErrorKind::NotFound && below_opaque => {
                    return Ok(Found::Missing)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            if is_whiteout(&meta) {
                return Ok(Found::Missing);
            }
            let last = i + 1 == comps.len();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p)?;
                let mut next = resolve(&comps[..i], &target.to_string_lossy());
                next.extend(comps[i + 1..].iter().cloned());
                return Ok(Found::Redirect(next));
            }
            if last {
                return Ok(if meta.is_file() {
                    Found::File(p)
                } else {
                    Found::Missing
                });
            }
            if !meta.is_dir() {
                return Ok(Found::Missing);
            }
            below_opaque |= is_opaque(&p);
            dir = p;
        }
    }
    Ok(Found::Missing)
}

/// The content of the regular file at `path` in the merged `layers` (top first).
pub(super) fn read_from_layers(
    layers: &[PathBuf],
    path: &str,
    image: &str,
) -> Result<Option<Vec<u8>>, RuntimeError> {
    let mut comps = resolve(&[], path);
    for _ in 0..8 {
        match lookup(layers, &comps).map_err(RuntimeError::io("read a file of the image"))? {
            Found::Missing => return Ok(None),
            Found::Redirect(next) => comps = next,
            Found::File(p) => {
                let file = std::fs::File::open(&p)
                    .map_err(RuntimeError::io("read a file of the image"))?;
                let mut data = Vec::new();
                file.take(MAX_IMAGE_FILE + 1)
                    .read_to_end(&mut data)
                    .map_err(RuntimeError::io("read a file of the image"))?;
                if data.len() as u64 > MAX_IMAGE_FILE {
                    return Err(RuntimeError::ImageFileTooLarge {
                        image: image.to_owned(),
                        path: path.to_owned(),
                        size: data.len() as u64,
                    });
                }
                return Ok(Some(data));
            }
        }
    }
    // A loop of links: as good as missing.
    Ok(None)
}

impl ContainerdRuntime {
    pub(super) async fn image_file(
        &self,
        image: &ImageInfo,
        path: &str,
    ) -> Result<Option<Vec<u8>>, RuntimeError> {
        let lease = self.create_lease().await?;
        let key = format!("berth-view-{}", uuid::Uuid::new_v4());
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let view = ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: image.rootfs_id.clone(),
            labels: HashMap::new(),
        };
        let result = match snapshots.view(self.leased(view, &lease)).await {
            Ok(r) => {
                let layers = layer_dirs(&r.into_inner().mounts);
                let (path, reference) = (path.to_owned(), image.reference.clone());
                tokio::task::spawn_blocking(move || read_from_layers(&layers, &path, &reference))
                    .await
                    .unwrap_or(Err(RuntimeError::WaitLost("the read of an image file")))
            }
            Err(s) => Err(RuntimeError::containerd("view snapshot")(s)),
        };
        let remove = self.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key,
        });
        if let Err(s) = snapshots.remove(remove).await {
            tracing::debug!("remove a view of an image: {s}");
        }
        self.delete_lease(lease).await;
        result
    }

    /// What container `id` wrote to its writable layer, in bytes.
    pub(super) async fn snapshot_usage(&self, id: &str) -> Result<u64, RuntimeError> {
        let req = self.req(UsageRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.to_owned(),
        });
        match SnapshotsClient::new(self.channel.clone()).usage(req).await {
            Ok(r) => Ok(u64::try_from(r.into_inner().size).unwrap_or(0)),
            Err(s) if s.code() == Code::NotFound => Ok(0),
            Err(s) => Err(RuntimeError::containerd("snapshot usage")(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_directories_come_top_first() {
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                "workdir=/s/9/work".into(),
                "upperdir=/s/9/fs".into(),
                "lowerdir=/s/2/fs:/s/1/fs".into(),
            ],
        };
        assert_eq!(
            layer_dirs(&[overlay]),
            ["/s/9/fs", "/s/2/fs", "/s/1/fs"].map(PathBuf::from)
        );
        let bind = Mount {
            r#type: "bind".into(),
            source: "/s/1/fs".into(),
            target: String::new(),
            options: vec!["ro".into(), "rbind".into()],
        };
        assert_eq!(layer_dirs(&[bind]), [PathBuf::from("/s/1/fs")]);
    }

    #[test]
    fn files_are_found_as_overlayfs_would_show_them() {
        let root = tempfile::tempdir().expect("a temp dir");
        let (top, bottom) = (root.path().join("top"), root.path().join("bottom"));
        for d in [&top, &bottom] {
            std::fs::create_dir_all(d.join("etc")).expect("mkdir");
        }
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").expect("write");
        std::fs::write(bottom.join("etc/group"), "root:x:0:\n").expect("write");
        std::fs::write(bottom.join("etc/hosts"), "old").expect("write");
        std::fs::write(top.join("etc/hosts"), "new").expect("write");
        std::os::unix::fs::symlink("../etc/passwd", top.join("etc/passwd.link")).expect("link");
        // A link may not leave the image.
        std::os::unix::fs::symlink("/../../../../etc/group", top.join("etc/escape")).expect("link");
        let layers = [top.clone(), bottom.clone()];
        let read = |p: &str| {
            read_from_layers(&layers, p, "demo")
                .expect("readable")
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        assert_eq!(
            read("/etc/passwd").as_deref(),
            Some("root:x:0:0::/:/bin/sh\n")
        );
        assert_eq!(read("/etc/hosts").as_deref(), Some("new"));
        assert_eq!(
            read("/etc/passwd.link").as_deref(),
            Some("root:x:0:0::/:/bin/sh\n")
        );
        assert_eq!(read("/etc/escape").as_deref(), Some("root:x:0:\n"));
        assert_eq!(read("/etc/shadow"), None);
        assert_eq!(read("/etc"), None);
        std::fs::write(bottom.join("big"), vec![b'x'; MAX_IMAGE_FILE as usize + 1]).expect("write");
        assert!(matches!(
            read_from_layers(&layers, "/big", "demo"),
            Err(RuntimeError::ImageFileTooLarge { .. })
        ));
    }
}
