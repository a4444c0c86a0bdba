//! containerd's content store: reading blobs, asking whether one is there, and writing one —
//! from memory or as a stream — with the labels its garbage collector follows, in bounded
//! memory, aborting the ingest of a write that fails. `pull` fills it from registries; `gc`
//! reads image manifests from it.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::tonic::Code;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::client::Lease;
use super::pull::chunks;
use super::ContainerdRuntime;
use crate::runtime::RuntimeError;

/// The size of containerd `Content.Write` requests.
pub(super) const CHUNK: usize = 1 << 20;
/// Chunks waiting between the registry and containerd, per pull.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The ingest a blob is written under (one per blob: containerd lets one writer hold it).
fn ingest_ref(digest: &str) -> String {
    format!("berth-{digest}")
}

impl ContainerdRuntime {
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

    pub(super) async fn content_exists(&self, digest: &str) -> Result<bool, RuntimeError> {
        let req = self.req(InfoRequest {
            digest: digest.to_owned(),
        });
        match ContentClient::new(self.channel.clone()).info(req).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(RuntimeError::containerd("content info")(s)),
        }
    }

    /// Writes a blob held in memory with `labels` into the content store; content already there
    /// gets the labels.
    pub(super) async fn write_content(
        &self,
        lease: &Lease,
        image: &str,
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
        let pieces = futures::stream::iter(data.chunks(CHUNK).map(Ok));
        self.write_stream(lease, image, digest, data.len() as u64, pieces, labels)
            .await
    }

    /// Writes the blob `digest` of `total` bytes into the content store as `source` yields it:
    /// STAT, WRITEs at increasing offsets, then COMMIT with `labels` (containerd checks the size
    /// and the digest), fed through a channel of [`CHUNKS_IN_FLIGHT`] chunks so memory stays
    /// bounded. An error from `source` ends the write uncommitted. Whatever fails, the ingest is
    /// aborted, so nothing partial stays behind (a write at offset 0 would truncate it anyway).
    pub(super) async fn write_stream<B, S>(
        &self,
        lease: &Lease,
        image: &str,
        digest: &str,
        total: u64,
        source: S,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError>
    where
        B: AsRef<[u8]>,
        S: futures::Stream<Item = Result<B, RuntimeError>>,
    {
        let base = WriteContentRequest {
            r#ref: ingest_ref(digest),
            total: i64::try_from(total).map_err(|_| RuntimeError::InvalidImage {
                image: image.to_owned(),
                detail: format!("blob {digest} declares {total} bytes"),
            })?,
            expected: digest.to_owned(),
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        // `Err(None)`: containerd ended the call, which says why.
        let feed = {
            let base = base.clone();
            async move {
                let send = |req: WriteContentRequest| {
                    let tx = &tx;
                    async move { tx.send(req).await.map_err(|_| None) }
                };
                send(WriteContentRequest {
                    action: WriteAction::Stat as i32,
                    ..base.clone()
                })
                .await?;
                let mut chunker = chunks::Chunker::new(CHUNK);
                let mut offset = 0i64;
                let mut write = |data: Vec<u8>| {
                    let req = WriteContentRequest {
                        action: WriteAction::Write as i32,
                        offset,
                        ..base.clone()
                    };
                    offset += data.len() as i64;
                    send(WriteContentRequest { data, ..req })
                };
                let mut source = std::pin::pin!(source);
                while let Some(piece) = source.next().await {
                    let piece = piece.map_err(Some)?;
                    let mut piece = piece.as_ref();
                    while let Some(chunk) = chunker.fill(&mut piece) {
                        write(chunk).await?;
                    }
                }
                if let Some(chunk) = chunker.rest() {
                    write(chunk).await?;
                }
                send(WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    offset,
                    labels,
                    ..base
                })
                .await
            }
        };
        let call = async {
            let mut responses = ContentClient::new(self.channel.clone())
                .write(self.leased(ReceiverStream::new(rx), lease))
                .await?
                .into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        };
        // The call ends once the feed has ended (the request stream closes) or when containerd
        // fails first; then the feed is dropped and the registry no longer read.
        let (mut feed, mut call) = (std::pin::pin!(feed), std::pin::pin!(call));
        let mut fed = None;
        let written = loop {
            tokio::select! {
                r = &mut feed, if fed.is_none() => fed = Some(r),
                r = &mut call => break r,
            }
        };
        let failed = match (fed, written) {
            (Some(Err(Some(e))), _) => e,
            (_, Err(s)) if s.code() == Code::AlreadyExists => return Ok(()),
            (_, Err(s)) if s.code() == Code::FailedPrecondition => RuntimeError::InvalidImage {
                image: image.to_owned(),
                detail: format!("containerd refused blob {digest}: {}", s.message()),
            },
            (_, Err(s)) => RuntimeError::containerd("write content")(s),
            (Some(Ok(())), Ok(())) => return Ok(()),
            // Not expected: containerd answers the commit or fails.
            (_, Ok(())) => RuntimeError::Io {
                op: "write content",
                source: std::io::Error::other(format!(
                    "containerd ended the write of blob {digest} before its commit"
                )),
            },
        };
        self.abort_ingest(&base.r#ref).await;
        Err(failed)
    }

    /// Drops an uncommitted ingest; logs (and otherwise ignores) a failure, since a later write
    /// of the same blob starts at offset 0 and truncates it.
    async fn abort_ingest(&self, r#ref: &str) {
        let req = self.req(AbortRequest {
            r#ref: r#ref.to_owned(),
        });
        match ContentClient::new(self.channel.clone()).abort(req).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => tracing::warn!(ingest = r#ref, "abort ingest: {s:#}"),
        }
    }
}
