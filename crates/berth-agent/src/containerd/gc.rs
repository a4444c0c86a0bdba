//! Image garbage collection: when the images this agent pulled take more than its disk
//! budget, the least recently pulled images no container uses are deleted (containerd's own
//! garbage collector then frees their content and snapshots).

use std::collections::{HashMap, HashSet};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    DeleteImageRequest, InfoRequest, ListContainersRequest, ListImagesRequest,
};
use oci_client::manifest::OciImageManifest;

use super::ContainerdRuntime;
use crate::runtime::RuntimeError;

/// An image and what it costs on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUsage {
    pub name: String,
    /// Manifest, config and layers, compressed.
    pub bytes: u64,
    /// Seconds since the epoch it was last created or updated (pulled).
    pub updated: i64,
}

/// The images to delete, oldest first, until the total fits `budget`. Images in `in_use` are
/// never chosen; if they alone exceed the budget, the rest is deleted and that is all.
pub fn images_to_remove(
    images: &[ImageUsage],
    in_use: &HashSet<String>,
    budget: u64,
) -> Vec<String> {
    let mut total: u64 = images.iter().map(|i| i.bytes).sum();
    let mut candidates: Vec<&ImageUsage> = images
        .iter()
        .filter(|i| !in_use.contains(&i.name))
        .collect();
    candidates.sort_by_key(|i| (i.updated, i.name.clone()));
    let mut remove = Vec::new();
    for image in candidates {
        if total <= budget {
            break;
        }
        total = total.saturating_sub(image.bytes);
        remove.push(image.name.clone());
    }
    remove
}

impl ContainerdRuntime {
    /// Deletes unused images while the agent's images exceed its budget. `keep` (the image
    /// being started) counts as in use.
    pub(super) async fn collect_images(
        &self,
        budget: u64,
        keep: &str,
    ) -> Result<Vec<String>, RuntimeError> {
        let images = ImagesClient::new(self.channel.clone())
            .list(self.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(RuntimeError::containerd("list images"))?
            .into_inner()
            .images;
        let mut usage = Vec::new();
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for image in images {
            let Some(target) = image.target else { continue };
            let mut bytes = u64::try_from(target.size).unwrap_or(0);
            if let Ok(raw) = self.read_content(&target.digest).await {
                if let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(&raw) {
                    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
                        let size = match sizes.get(&d.digest) {
                            Some(s) => *s,
                            None => self.content_size(&d.digest).await.unwrap_or(0),
                        };
                        sizes.insert(d.digest.clone(), size);
                        bytes += size;
                    }
                }
            }
            let updated = image
                .updated_at
                .or(image.created_at)
                .map_or(0, |t| t.seconds);
            usage.push(ImageUsage {
                name: image.name,
                bytes,
                updated,
            });
        }
        let mut in_use: HashSet<String> = ContainersClient::new(self.channel.clone())
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(RuntimeError::containerd("list containers"))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| normalize(&c.image))
            .collect();
        in_use.insert(normalize(keep));
        let remove = images_to_remove(&usage, &in_use, budget);
        for name in &remove {
            let req = self.req(DeleteImageRequest {
                name: name.clone(),
                sync: true,
                target: None,
            });
            if let Err(s) = ImagesClient::new(self.channel.clone()).delete(req).await {
                tracing::warn!(image = %name, "delete image: {s}");
            } else {
                tracing::info!(image = %name, "deleted unused image over the disk budget");
            }
        }
        Ok(remove)
    }

    async fn content_size(&self, digest: &str) -> Result<u64, RuntimeError> {
        let info = ContentClient::new(self.channel.clone())
            .info(self.req(InfoRequest {
                digest: digest.to_owned(),
            }))
            .await
            .map_err(RuntimeError::containerd("content info"))?
            .into_inner()
            .info;
        Ok(info.map_or(0, |i| u64::try_from(i.size).unwrap_or(0)))
    }
}

/// Image records are named by the full reference (`registry/repo:tag`).
fn normalize(reference: &str) -> String {
    reference
        .parse::<oci_client::Reference>()
        .map_or_else(|_| reference.to_owned(), |r| r.whole())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, bytes: u64, updated: i64) -> ImageUsage {
        ImageUsage {
            name: name.into(),
            bytes,
            updated,
        }
    }

    #[test]
    fn removes_the_oldest_unused_images_until_the_budget_holds() {
        let images = [
            image("a", 40, 1),
            image("b", 40, 2),
            image("c", 40, 3),
            image("d", 40, 4),
        ];
        let in_use: HashSet<String> = ["a".to_owned()].into();
        assert_eq!(images_to_remove(&images, &in_use, 100), ["b", "c"]);
        assert_eq!(
            images_to_remove(&images, &in_use, 160),
            Vec::<String>::new()
        );
        // In-use images alone over budget: everything else goes, and nothing more.
        assert_eq!(images_to_remove(&images, &in_use, 10), ["b", "c", "d"]);
    }
}
