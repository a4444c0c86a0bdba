//! Pulling without containerd's Transfer service (1.6 has none): fetch manifest, config and
//! layers from the registry with `oci-client`, write them into containerd's content store with
//! the labels its garbage collector follows, create the image, and unpack the layers into
//! snapshots with the diff service.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, Info, InfoRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use oci_client::config::ConfigFile;
use oci_client::errors::{OciDistributionError, OciErrorCode};
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

const CHUNK: usize = 1 << 20;
/// The most a blob's declared size reserves in memory before it arrives.
const PREALLOCATE_AT_MOST: u64 = 64 << 20;

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
    let (mut raw, mut digest) = client
        .pull_manifest_raw(reference, auth, &accepted)
        .await
        .map_err(|e| registry_error(image, e))?;
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
        manifest_ref = Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            entry.digest.clone(),
        );
        (raw, digest) = client
            .pull_manifest_raw(&manifest_ref, auth, &accepted)
            .await
            .map_err(|e| registry_error(image, e))?;
    }
    let manifest: OciImageManifest =
        serde_json::from_slice(&raw).map_err(|e| invalid(format!("manifest: {e}")))?;
    Ok((manifest_ref, raw.into(), digest, manifest))
}

impl ContainerdRuntime {
    fn client_for(&self, registry: &str) -> &oci_client::Client {
        if is_loopback(registry)
            || self
                .config
                .insecure_registries
                .iter()
                .any(|r| r == registry)
        {
            &self.http
        } else {
            &self.https
        }
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

    pub(super) async fn read_content(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let req = self.req(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        });
        let mut stream = ContentClient::new(self.channel.clone())
            .read(req)
            .await
            .map_err(RuntimeError::containerd("read content"))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend(
                chunk
                    .map_err(RuntimeError::containerd("read content"))?
                    .data,
            );
        }
        Ok(data)
    }

    async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
        let req = self.req(InfoRequest {
            digest: digest.to_owned(),
        });
        match ContentClient::new(self.channel.clone()).info(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(RuntimeError::containerd("content info")(s)),
        }
    }

    /// Writes a blob with `labels` into the content store; content already there gets the labels.
    async fn write_content(
        &self,
        lease: &Lease,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if self.content_exists(digest).await? {
            if labels.is_empty() {
                return Ok(());
            }
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let req = self.leased(
                UpdateRequest {
                    info: Some(Info {
                        digest: digest.to_owned(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                lease,
            );
            ContentClient::new(self.channel.clone())
                .update(req)
                .await
                .map_err(RuntimeError::containerd("update content labels"))?;
            return Ok(());
        }
        let total = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let base = WriteContentRequest {
            r#ref: format!("berth-{digest}"),
            total,
            expected: digest.to_owned(),
            ..Default::default()
        };
        let mut requests = vec![WriteContentRequest {
            action: WriteAction::Stat as i32,
            ..base.clone()
        }];
        let mut offset = 0i64;
        for chunk in data.chunks(CHUNK) {
            requests.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: chunk.to_vec(),
                ..base.clone()
            });
            offset += i64::try_from(chunk.len()).unwrap_or(i64::MAX);
        }
        requests.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset,
            labels,
            ..base
        });
        let stream = tokio_stream::iter(requests);
        let result = ContentClient::new(self.channel.clone())
            .write(self.leased(stream, lease))
            .await;
        let mut responses = match result {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(RuntimeError::containerd("write content")(s)),
        };
        while let Some(resp) = responses.next().await {
            match resp {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(RuntimeError::containerd("write content")(s)),
            }
        }
        Ok(())
    }

    async fn fetch_blob(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        image: &str,
        layer: &oci_client::manifest::OciDescriptor,
    ) -> Result<Vec<u8>, RuntimeError> {
        // The declared size is the registry's word: it sizes no allocation beyond a bound (a
        // manifest claiming 100 GB must not abort the agent), and what arrives must match it.
        let declared = u64::try_from(layer.size).unwrap_or(0);
        let mut data =
            Vec::with_capacity(usize::try_from(declared.min(PREALLOCATE_AT_MOST)).unwrap_or(0));
        client
            .pull_blob(reference, layer, &mut data)
            .await
            .map_err(|e| registry_error(image, e))?;
        if data.len() as u64 != declared {
            return Err(RuntimeError::InvalidImage {
                image: image.to_owned(),
                detail: format!(
                    "blob {} was declared {declared} bytes but {} arrived",
                    layer.digest,
                    data.len()
                ),
            });
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
        let client = self.client_for(reference.resolve_registry());
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
            .fetch_blob(client, &manifest_ref, image, &manifest.config)
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

        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if self.content_exists(&layer.digest).await? {
                continue;
            }
            let data = self.fetch_blob(client, &manifest_ref, image, layer).await?;
            progress(format!(
                "pulled layer {}/{} of {image} ({:.1} MiB)",
                manifest
                    .layers
                    .iter()
                    .position(|l| l.digest == layer.digest)
                    .map_or(0, |i| i + 1),
                manifest.layers.len(),
                data.len() as f64 / (1024.0 * 1024.0)
            ));
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_owned(), diff_id.clone())]);
            self.write_content(lease, &layer.digest, &data, labels)
                .await?;
        }
        let mut config_labels = HashMap::new();
        if let Some(top) = chain.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.clone(),
            );
        }
        self.write_content(lease, &manifest.config.digest, &config_bytes, config_labels)
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
        self.write_content(lease, &digest, &raw, manifest_labels)
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
    fn loopback_registries_use_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
    }
}
