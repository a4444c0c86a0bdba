//! The peer of the `raft` scenario: a 3-member etcd cluster (Debian's `etcd-server`) on free
//! loopback ports, each member with its own data dir and etcd's default durability (the WAL is
//! fsynced before a write is acknowledged), written through its gRPC KV API with the same
//! client stack (tonic, one HTTP/2 connection to the leader), the same client counts and the
//! same payload as `raft`. etcd runs without TLS; berth's API with mutual TLS, so the
//! comparison leans towards etcd.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use etcd_client::Client;
use prost::Message as _;
use tokio::process::{Child, Command};

use crate::cluster::scratch_dir;
use crate::raft::{write_load, CLIENTS};
use crate::results::Results;

/// Debian's etcd server.
const ETCD: &str = "/usr/bin/etcd";

/// Puts per second with 1 and 64 concurrent clients, each put the bytes of a `raft` write.
pub(crate) async fn etcd(results: &mut Results) -> anyhow::Result<()> {
    anyhow::ensure!(
        Path::new(ETCD).exists(),
        "{ETCD} is missing: install Debian's etcd-server (`make bench` does)"
    );
    let dir = scratch_dir("berth-etcd")?;
    let members = Members::start(dir.path()).await?;
    let (mut client, term) = members.leader().await?;
    // The bytes berth's `raft` scenario sends as one write.
    let value = crate::raft::write_request("raft-0").encode_to_vec();
    let mut failed = 0;
    for (clients, key) in CLIENTS {
        let kv = client.kv_client();
        let value = value.clone();
        let load = write_load(clients, move |w| {
            let (mut kv, value) = (kv.clone(), value.clone());
            async move {
                kv.put(format!("raft-{w}"), value, None).await?;
                anyhow::Ok(())
            }
        })
        .await;
        failed += load.record(results, &format!("etcd.{key}_"));
    }
    let now = client.status().await?.raft_term();
    results.insert("etcd.elections".into(), now.saturating_sub(term) as f64);
    results.insert("etcd.failed_writes".into(), failed as f64);
    results.insert("etcd.value_bytes".into(), value.len() as f64);
    drop(members);
    Ok(())
}

/// Three etcd processes, killed when dropped.
struct Members {
    clients: Vec<SocketAddr>,
    _procs: Vec<Child>,
}

impl Members {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let free = || -> anyhow::Result<SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        let peers: Vec<SocketAddr> = (0..3).map(|_| free()).collect::<Result<_, _>>()?;
        let clients: Vec<SocketAddr> = (0..3).map(|_| free()).collect::<Result<_, _>>()?;
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for (i, (peer, client)) in peers.iter().zip(&clients).enumerate() {
            let data = dir.join(format!("m{i}"));
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(data.with_extension("log"))?;
            let child = Command::new(ETCD)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-peer-urls", &format!("http://{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "berth-bench"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start {ETCD}"))?;
            procs.push(child);
        }
        Ok(Self {
            clients,
            _procs: procs,
        })
    }

    /// A client of the member that leads (once one does, within 30 s), and the term then.
    async fn leader(&self) -> anyhow::Result<(Client, u64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for addr in &self.clients {
                let Ok(mut c) = Client::connect([format!("http://{addr}")], None).await else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    let member = s.header().map(|h| h.member_id());
                    if s.leader() != 0 && member == Some(s.leader()) {
                        return Ok((c, s.raft_term()));
                    }
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no etcd member leads within 30 s (logs in the scratch dir)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
