//! Builds a one-layer OCI image holding `busybox-static` and its applets, and pushes it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use flate2::write::GzEncoder;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest, Sha256};

/// An image ready to push.
pub struct BusyboxImage {
    /// The gzipped layer.
    pub layer: Vec<u8>,
    /// The image config JSON.
    pub config: Vec<u8>,
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/bin/busybox` plus a symlink per applet, `/tmp`, and mount points; CMD `sh`.
pub fn build_busybox_image(busybox: &Path) -> anyhow::Result<BusyboxImage> {
    let binary = std::fs::read(busybox).with_context(|| {
        format!(
            "read {}; install busybox-static (`make deps`)",
            busybox.display()
        )
    })?;
    let applets = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .context("list busybox applets")?;
    let applets = String::from_utf8_lossy(&applets.stdout).into_owned();

    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = |path: &str, mode: u32| -> anyhow::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, path, std::io::empty())
            .context("tar dir")
    };
    for (path, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        dir(path, mode)?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(binary.len() as u64);
    h.set_mtime(0);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())
        .context("tar busybox")?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .context("tar applet link")?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    h.set_mtime(0);
    tar.append_data(&mut h, "etc/passwd", &passwd[..])
        .context("tar passwd")?;
    let raw = tar.into_inner().context("finish tar")?;
    let diff_id = format!("sha256:{:x}", Sha256::digest(&raw));
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).context("gzip layer")?;
    let layer = gz.finish().context("gzip layer")?;
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    Ok(BusyboxImage {
        layer,
        config: serde_json::to_vec(&config)?,
    })
}

/// Builds the busybox image and pushes it as `reference` (`host:port/repo:tag`) over plain
/// HTTP, with basic credentials when given. Returns the manifest URL.
pub async fn push_busybox_image(busybox: &Path, reference: &str) -> anyhow::Result<String> {
    push_busybox_image_as(busybox, reference, None).await
}

/// [`push_busybox_image`] with `(user, password)` for a registry that requires them.
pub async fn push_busybox_image_as(
    busybox: &Path,
    reference: &str,
    credentials: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    push(build_busybox_image(busybox)?, reference, credentials).await
}

/// [`push_busybox_image`] of an image whose config says `USER user` (a name or `uid[:gid]`).
pub async fn push_busybox_image_with_user(
    busybox: &Path,
    reference: &str,
    user: &str,
) -> anyhow::Result<String> {
    let mut image = build_busybox_image(busybox)?;
    let mut config: serde_json::Value = serde_json::from_slice(&image.config)?;
    config["config"]["User"] = user.into();
    image.config = serde_json::to_vec(&config)?;
    push(image, reference, None).await
}

async fn push(
    image: BusyboxImage,
    reference: &str,
    credentials: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    let (reference, client) = http_client(reference)?;
    let layers = [ImageLayer::oci_v1_gzip(image.layer, None)];
    let auth = match credentials {
        Some((user, password)) => RegistryAuth::Basic(user.to_owned(), password.to_owned()),
        None => RegistryAuth::Anonymous,
    };
    let config = Config::oci_v1(image.config, None::<BTreeMap<String, String>>);
    let pushed = client
        .push(&reference, &layers, config, &auth, None)
        .await
        .with_context(|| format!("push {reference}"))?;
    Ok(pushed.manifest_url)
}

/// Pushes the busybox image as `reference` over plain HTTP with a manifest that declares
/// `layer_size` bytes for its layer, whatever the layer's real size (the registry checks only
/// that the blob exists): for tests of how a puller checks sizes. Returns the layer's digest.
pub async fn push_busybox_image_declaring(
    busybox: &Path,
    reference: &str,
    layer_size: i64,
) -> anyhow::Result<String> {
    let image = build_busybox_image(busybox)?;
    let (reference, client) = http_client(reference)?;
    let digest = |data: &[u8]| format!("sha256:{:x}", Sha256::digest(data));
    let (layer_digest, config_digest) = (digest(&image.layer), digest(&image.config));
    let config_size = image.config.len();
    client
        .push_blob(&reference, image.layer, &layer_digest)
        .await
        .with_context(|| format!("push layer of {reference}"))?;
    client
        .push_blob(&reference, image.config, &config_digest)
        .await
        .with_context(|| format!("push config of {reference}"))?;
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    client
        .push_manifest_raw(
            &reference,
            serde_json::to_vec(&manifest)?,
            media_type.parse()?,
        )
        .await
        .with_context(|| format!("push manifest of {reference}"))?;
    Ok(layer_digest)
}

/// `reference` parsed, and a registry client over plain HTTP (test registries are on loopback).
fn http_client(reference: &str) -> anyhow::Result<(Reference, oci_client::Client)> {
    let reference: Reference = reference
        .parse()
        .with_context(|| format!("parse {reference}"))?;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    Ok((reference, client))
}
