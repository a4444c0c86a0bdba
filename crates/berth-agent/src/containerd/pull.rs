//! Pulling without containerd's Transfer service (1.6 has none): fetch manifest, config and
//! layers from the registry with `oci-client`, write them into containerd's content store with
//! the labels its garbage collector follows, create the image, and unpack the layers into
//! snapshots with the diff service.
//!
//! Memory per pull is bounded whatever the registry claims:
//! - Layers are streamed: each piece the registry sends is counted against the layer's declared
//!   size ([`chunks::Tally`]), gathered into 1 MiB chunks and handed to containerd's
//!   `Content.Write` stream (`content`) through a channel of a few chunks, so a pull holds a
//!   few MiB however large the layer. More bytes than declared stop the read at once; fewer fail
//!   the pull; both name the blob and the sizes. containerd checks the digest on commit, and a
//!   failed write's ingest is aborted, so nothing partial stays behind.
//! - Manifests and image configs are read whole (they are parsed), and refused above
//!   [`SMALL_BLOB_MAX`] (4 MiB): a config or a platform manifest picked from an index before a
//!   byte is read (by its declared size), the manifest named by the image reference once read
//!   (`oci-client` reads manifest responses whole; see `resolve_manifest`).

use std::collections::HashMap;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use oci_client::config::ConfigFile;
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    OciImageIndex, OciImageManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;

use super::client::Lease;
use super::{ContainerdRuntime, SNAPSHOTTER};
use crate::runtime::{ImageInfo, Progress, RuntimeError};

pub(super) mod chunks;

/// Manifests and image configs are read whole: larger ones are refused.
const SMALL_BLOB_MAX: u64 = 4 << 20;

/// The chain IDs of a layer stack (`chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`), as the OCI image spec defines them.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match chain.last() {
            None => diff.clone(),
            Some(parent) => {
                format!(
                    "sha256:{:x}",
                    Sha256::digest(format!("{parent} {diff}").as_bytes())
                )
            }
        };
        chain.push(next);
    }
    chain
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost"
        || host.trim_matches(|c| c == '[' || c == ']') == "::1"
        || host.starts_with("127.")
}

fn registry_error(image: &str, e: OciDistributionError) -> RuntimeError {
    let detail = e.to_string();
    let image = image.to_owned();
    match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            RuntimeError::ImageNotFound { image, detail }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) =>
        {
            RuntimeError::ImageNotFound { image, detail }
        }
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => {
            RuntimeError::Unauthorized { image, detail }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            RuntimeError::Unauthorized { image, detail }
        }
        OciDistributionError::RequestError(_) => {
            let detail = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            RuntimeError::RegistryUnreachable { image, detail }
        }
        _ => RuntimeError::InvalidImage { image, detail },
    }
}

/// A descriptor's size, which must not be negative.
fn declared_size(image: &str, digest: &str, size: i64) -> Result<u64, RuntimeError> {
    u64::try_from(size).map_err(|_| RuntimeError::InvalidImage {
        image: image.to_owned(),
        detail: format!("blob {digest} declares a negative size ({size})"),
    })
}

/// Refuses a manifest or image config (`what`) of `size` bytes above [`SMALL_BLOB_MAX`]: they
/// are read whole.
fn check_small(image: &str, what: &str, digest: &str, size: u64) -> Result<(), RuntimeError> {
    if size > SMALL_BLOB_MAX {
        return Err(RuntimeError::InvalidImage {
            image: image.to_owned(),
            detail: format!(
                "{what} {digest} is {size} bytes, more than the {SMALL_BLOB_MAX} bytes allowed"
            ),
        });
    }
    Ok(())
}

/// A blob being read from the registry (the state of [`ContainerdRuntime::blob_stream`]).
struct Blob {
    image: String,
    digest: String,
    tally: chunks::Tally,
    sized: oci_client::client::SizedStream,
}

fn size_error(image: &str, digest: &str, mismatch: chunks::SizeMismatch) -> RuntimeError {
    RuntimeError::InvalidImage {
        image: image.to_owned(),
        detail: mismatch.describe(digest),
    }
}

/// An error reading a blob's body: a digest that does not match (`oci-client` checks it as the
/// blob ends; a blob cut short reads as such when too few bytes arrived), or the connection.
fn read_error(
    image: &str,
    digest: &str,
    tally: &chunks::Tally,
    e: &std::io::Error,
) -> RuntimeError {
    let invalid = |detail| RuntimeError::InvalidImage {
        image: image.to_owned(),
        detail,
    };
    if let Some(mismatch) = e.get_ref().and_then(|e| e.downcast_ref::<DigestError>()) {
        return match tally.finish() {
            Err(short) => invalid(short.describe(digest)),
            Ok(()) => invalid(format!(
                "blob {digest} does not match its digest: {mismatch}"
            )),
        };
    }
    let detail = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    RuntimeError::RegistryUnreachable {
        image: image.to_owned(),
        detail: format!("read blob {digest}: {detail}"),
    }
}

fn image_info(reference: &str, digest: String, config: &ConfigFile) -> ImageInfo {
    let c = config.config.clone().unwrap_or_default();
    ImageInfo {
        reference: reference.to_owned(),
        digest,
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
        rootfs_id: chain_ids(&config.rootfs.diff_ids).pop().unwrap_or_default(),
        pulled: false,
    }
}

/// The image's manifest for this platform (through the image index when there is one): the
/// reference it was fetched by, its raw bytes and digest, and the manifest.
async fn resolve_manifest(
    client: &oci_client::Client,
    reference: &Reference,
    auth: &RegistryAuth,
    image: &str,
) -> Result<(Reference, Vec<u8>, String, OciImageManifest), RuntimeError> {
    let invalid = |detail: String| RuntimeError::InvalidImage {
        image: image.to_owned(),
        detail,
    };
    let accepted = [
        OCI_IMAGE_MEDIA_TYPE,
        IMAGE_MANIFEST_MEDIA_TYPE,
        OCI_IMAGE_INDEX_MEDIA_TYPE,
        IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    ];
    // `oci-client` reads a manifest response whole: the one the reference names can only be
    // refused once read; one picked from an index is refused by its declared size.
    let (mut raw, mut digest) = client
        .pull_manifest_raw(reference, auth, &accepted)
        .await
        .map_err(|e| registry_error(image, e))?;
    check_small(image, "manifest", &digest, raw.len() as u64)?;
    let value: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| invalid(format!("manifest: {e}")))?;
    let mut manifest_ref = reference.clone();
    if value.get("manifests").is_some() {
        let index: OciImageIndex =
            serde_json::from_value(value).map_err(|e| invalid(format!("image index: {e}")))?;
        let entry = index
            .manifests
            .iter()
            .find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    p.os == oci_spec::image::Os::default()
                        && p.architecture == oci_spec::image::Arch::default()
                })
            })
            .ok_or_else(|| invalid("no manifest for this platform in the image index".into()))?;
        check_small(
            image,
            "manifest",
            &entry.digest,
            declared_size(image, &entry.digest, entry.size)?,
        )?;
        manifest_ref = Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            entry.digest.clone(),
        );
        (raw, digest) = client
            .pull_manifest_raw(&manifest_ref, auth, &accepted)
            .await
            .map_err(|e| registry_error(image, e))?;
        check_small(image, "manifest", &digest, raw.len() as u64)?;
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(&raw).map_err(|e| invalid(format!("manifest: {e}")))?;
    Ok((manifest_ref, raw.into(), digest, manifest))
}

impl ContainerdRuntime {
    fn plain_http(&self, registry: &str) -> bool {
        is_loopback(registry)
            || self
                .config
                .insecure_registries
                .iter()
                .any(|r| r == registry)
    }

    /// The agent's client for `registry`, which holds the agent's credentials for it.
    fn client_for(&self, registry: &str) -> &oci_client::Client {
        if self.plain_http(registry) {
            &self.http
        } else {
            &self.https
        }
    }

    /// A client for one pull with a container's own credentials: `oci-client` keeps the first
    /// credentials it is given for a registry, so a shared client would ignore them (or keep
    /// them for the pulls that follow).
    fn own_client(&self, registry: &str) -> oci_client::Client {
        let protocol = if self.plain_http(registry) {
            oci_client::client::ClientProtocol::Http
        } else {
            oci_client::client::ClientProtocol::Https
        };
        oci_client::Client::new(oci_client::client::ClientConfig {
            protocol,
            ..Default::default()
        })
    }

    /// The image as containerd already has it, or `None` when it must be pulled.
    pub(super) async fn local_image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let reference: Reference =
            image
                .parse()
                .map_err(|e: oci_client::ParseError| RuntimeError::InvalidImage {
                    image: image.into(),
                    detail: e.to_string(),
                })?;
        let name = reference.whole();
        let got = ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest { name }))
            .await;
        let target = match got {
            Ok(r) => match r.into_inner().image.and_then(|i| i.target) {
                Some(t) => t,
                None => return Ok(None),
            },
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(RuntimeError::containerd("get image")(s)),
        };
        let Ok(manifest_bytes) = self.read_content(&target.digest).await else {
            return Ok(None);
        };
        let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(&manifest_bytes) else {
            return Ok(None);
        };
        let Ok(config_bytes) = self.read_content(&manifest.config.digest).await else {
            return Ok(None);
        };
        let Ok(config) = serde_json::from_slice::<ConfigFile>(&config_bytes) else {
            return Ok(None);
        };
        let info = image_info(image, target.digest, &config);
        let stat = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: info.rootfs_id.clone(),
        };
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(stat))
            .await
        {
            Ok(_) => Ok(Some(info)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(RuntimeError::containerd("stat snapshot")(s)),
        }
    }

    /// The blob `desc` as the registry sends it, each piece counted against the declared size:
    /// more than declared ends the stream with an error at once (refused before reading when
    /// the response announces it), fewer ends it with an error.
    async fn blob_stream(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        image: &str,
        desc: &oci_client::manifest::OciDescriptor,
    ) -> Result<impl futures::Stream<Item = Result<impl AsRef<[u8]>, RuntimeError>>, RuntimeError>
    {
        let tally = chunks::Tally::new(declared_size(image, &desc.digest, desc.size)?);
        let sized = client
            .pull_blob_stream(reference, desc)
            .await
            .map_err(|e| registry_error(image, e))?;
        tally
            .announced(sized.content_length)
            .map_err(|m| size_error(image, &desc.digest, m))?;
        let blob = Blob {
            image: image.to_owned(),
            digest: desc.digest.clone(),
            tally,
            sized,
        };
        Ok(futures::stream::unfold(Some(blob), |blob| async move {
            let mut blob = blob?;
            let failed = match blob.sized.next().await {
                Some(Ok(piece)) => match blob.tally.add(piece.len()) {
                    Ok(()) => return Some((Ok(piece), Some(blob))),
                    Err(m) => size_error(&blob.image, &blob.digest, m),
                },
                Some(Err(e)) => read_error(&blob.image, &blob.digest, &blob.tally, &e),
                None => size_error(&blob.image, &blob.digest, blob.tally.finish().err()?),
            };
            Some((Err(failed), None))
        }))
    }

    /// A manifest's or config's blob, read whole after its declared size is checked.
    async fn fetch_small_blob(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        image: &str,
        what: &str,
        desc: &oci_client::manifest::OciDescriptor,
    ) -> Result<Vec<u8>, RuntimeError> {
        let declared = declared_size(image, &desc.digest, desc.size)?;
        check_small(image, what, &desc.digest, declared)?;
        let mut data = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        let mut pieces = std::pin::pin!(self.blob_stream(client, reference, image, desc).await?);
        while let Some(piece) = pieces.next().await {
            data.extend_from_slice(piece?.as_ref());
        }
        Ok(data)
    }

    /// Pulls `image` into containerd and unpacks it.
    pub(super) async fn pull(
        &self,
        image: &str,
        lease: &Lease,
        credentials: Option<&(String, String)>,
        progress: &Progress<'_>,
    ) -> Result<ImageInfo, RuntimeError> {
        let invalid = |detail: String| RuntimeError::InvalidImage {
            image: image.to_owned(),
            detail,
        };
        let reference: Reference = image
            .parse()
            .map_err(|e: oci_client::ParseError| invalid(e.to_string()))?;
        let own;
        let client = match credentials {
            Some(_) => {
                own = self.own_client(reference.resolve_registry());
                &own
            }
            None => self.client_for(reference.resolve_registry()),
        };
        // The container's own credentials (repositoryCredentials) before the agent's.
        let auth = match credentials.or(self.config.registry_auth.get(reference.resolve_registry()))
        {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let (manifest_ref, raw, digest, manifest) =
            resolve_manifest(client, &reference, &auth, image).await?;
        let manifest_media_type = manifest.media_type.clone().unwrap_or_else(|| {
            if manifest.config.media_type.contains("docker") {
                IMAGE_MANIFEST_MEDIA_TYPE.to_owned()
            } else {
                OCI_IMAGE_MEDIA_TYPE.to_owned()
            }
        });
        let config_bytes = self
            .fetch_small_blob(
                client,
                &manifest_ref,
                image,
                "image config",
                &manifest.config,
            )
            .await?;
        let config: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("image config: {e}")))?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "{} layers but {} diff IDs in the config",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let chain = chain_ids(diff_ids);

        for (i, (layer, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
            if self.content_exists(&layer.digest).await? {
                continue;
            }
            let size = declared_size(image, &layer.digest, layer.size)?;
            let pieces = self
                .blob_stream(client, &manifest_ref, image, layer)
                .await?;
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_owned(), diff_id.clone())]);
            self.write_stream(lease, image, &layer.digest, size, pieces, labels)
                .await?;
            progress(format!(
                "pulled layer {}/{} of {image} ({:.1} MiB)",
                i + 1,
                manifest.layers.len(),
                size as f64 / (1024.0 * 1024.0)
            ));
        }
        let mut config_labels = HashMap::new();
        if let Some(top) = chain.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.clone(),
            );
        }
        self.write_content(
            lease,
            image,
            &manifest.config.digest,
            &config_bytes,
            config_labels,
        )
        .await?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_owned(),
            manifest.config.digest.clone(),
        )]);
        for (i, layer) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.clone(),
            );
        }
        self.write_content(lease, image, &digest, &raw, manifest_labels)
            .await?;

        let target = Descriptor {
            media_type: manifest_media_type,
            digest: digest.clone(),
            size: i64::try_from(raw.len()).unwrap_or(i64::MAX),
            annotations: HashMap::new(),
        };
        self.record_image(reference.whole(), target, lease).await?;
        self.unpack(lease, &manifest, diff_ids, &chain).await?;
        Ok(ImageInfo {
            pulled: true,
            ..image_info(image, digest, &config)
        })
    }

    /// Creates (or points at the new manifest) the image record, so the image is listed.
    async fn record_image(
        &self,
        name: String,
        target: Descriptor,
        lease: &Lease,
    ) -> Result<(), RuntimeError> {
        let record = Image {
            name,
            target: Some(target),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let created = images
            .create(self.leased(
                CreateImageRequest {
                    image: Some(record.clone()),
                    source_date_epoch: None,
                },
                lease,
            ))
            .await;
        match created {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {
                images
                    .update(self.leased(
                        UpdateImageRequest {
                            image: Some(record),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        lease,
                    ))
                    .await
                    .map_err(RuntimeError::containerd("update image"))?;
            }
            Err(s) => return Err(RuntimeError::containerd("create image")(s)),
        }
        Ok(())
    }

    /// Applies each layer onto its parent snapshot, skipping layers already unpacked.
    async fn unpack(
        &self,
        lease: &Lease,
        manifest: &OciImageManifest,
        diff_ids: &[String],
        chain: &[String],
    ) -> Result<(), RuntimeError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        for (i, layer) in manifest.layers.iter().enumerate() {
            let stat = StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: chain[i].clone(),
            };
            match snapshots.stat(self.req(stat)).await {
                Ok(_) => continue,
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(RuntimeError::containerd("stat snapshot")(s)),
            }
            let key = format!("extract-{}-{}", uuid::Uuid::new_v4(), chain[i]);
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let prepare = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            };
            let mounts = snapshots
                .prepare(self.leased(prepare, lease))
                .await
                .map_err(RuntimeError::containerd("prepare snapshot"))?
                .into_inner()
                .mounts;
            let desc = Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            };
            let applied = diff
                .apply(self.leased(
                    ApplyRequest {
                        diff: Some(desc),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await
                .map_err(RuntimeError::containerd("apply layer"))?
                .into_inner()
                .applied;
            if applied.as_ref().map(|d| d.digest.as_str()) != Some(diff_ids[i].as_str()) {
                let _ = snapshots
                    .remove(self.req(RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key,
                    }))
                    .await;
                return Err(RuntimeError::InvalidImage {
                    image: manifest.config.digest.clone(),
                    detail: format!(
                        "layer {} does not match its diff ID {}",
                        layer.digest, diff_ids[i]
                    ),
                });
            }
            let commit = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain[i].clone(),
                key: key.clone(),
                labels: HashMap::new(),
            };
            match snapshots.commit(self.leased(commit, lease)).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {
                    let _ = snapshots
                        .remove(self.req(RemoveSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key,
                        }))
                        .await;
                }
                Err(s) => return Err(RuntimeError::containerd("commit snapshot")(s)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let diffs = vec!["sha256:a".to_owned(), "sha256:b".to_owned()];
        let chain = chain_ids(&diffs);
        assert_eq!(chain[0], "sha256:a");
        assert_eq!(
            chain[1],
            format!("sha256:{:x}", Sha256::digest(b"sha256:a sha256:b"))
        );
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_an_invalid_image() {
        let mismatch = || {
            std::io::Error::other(DigestError::VerificationError {
                expected: "sha256:ab".into(),
                actual: "sha256:cd".into(),
            })
        };
        let detail = |e: RuntimeError| match e {
            RuntimeError::InvalidImage { image, detail } => {
                assert_eq!(image, "r/i:1");
                detail
            }
            other => panic!("not an invalid image: {other:?}"),
        };
        let mut whole = chunks::Tally::new(4);
        whole.add(4).expect("4 of 4 bytes");
        assert_eq!(
            detail(read_error("r/i:1", "sha256:ab", &whole, &mismatch())),
            "blob sha256:ab does not match its digest: Invalid digest. Expected sha256:ab, got sha256:cd"
        );
        // A blob cut short fails its digest too; its size says more.
        let mut short = chunks::Tally::new(4);
        short.add(1).expect("1 of 4 bytes");
        assert_eq!(
            detail(read_error("r/i:1", "sha256:ab", &short, &mismatch())),
            "blob sha256:ab was declared 4 bytes but 1 arrived"
        );
        // Anything else is the connection.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(
            read_error("r/i:1", "sha256:ab", &short, &reset),
            RuntimeError::RegistryUnreachable { detail, .. } if detail == "read blob sha256:ab: reset"
        ));
    }

    #[test]
    fn manifests_and_configs_are_refused_above_the_cap() {
        assert!(check_small("r/i:1", "manifest", "sha256:ab", SMALL_BLOB_MAX).is_ok());
        let Err(RuntimeError::InvalidImage { detail, .. }) =
            check_small("r/i:1", "image config", "sha256:ab", SMALL_BLOB_MAX + 1)
        else {
            panic!("a config above the cap was accepted");
        };
        assert_eq!(
            detail,
            "image config sha256:ab is 4194305 bytes, more than the 4194304 bytes allowed"
        );
        assert!(declared_size("r/i:1", "sha256:ab", -1).is_err());
    }

    #[test]
    fn loopback_registries_use_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
    }
}
