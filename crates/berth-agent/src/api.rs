//! The agent's own gRPC API, which servers call to proxy a task's logs and run commands in its
//! containers; only servers may call it (`authorize`: the caller's certificate, verified against
//! the cluster CA during the TLS handshake, must name the server role). The agent's one gRPC
//! edge: [`ApiError`] becomes a `tonic::Status` here only, in `impl From<ApiError> for Status`.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use berth_proto::v1::agent_api_server::{AgentApi, AgentApiServer};
use berth_proto::v1::{AgentExecRequest, AgentLogsRequest, ExecResult, LogChunk};
use berth_tls::{Identity, Role};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::logfile::{self, Record, Stream as Output};
use crate::runtime::RuntimeError;
use crate::{Runtime, TaskError, TaskTable};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("the agent API answers servers only: present a server certificate of the cluster")]
    NoCertificate,
    #[error("the agent API answers servers only, not {0}")]
    NotAServer(Identity),
    #[error("the agent API answers servers only: the client certificate names no berth identity")]
    NoIdentity,
    #[error("invalid task id {0:?}")]
    InvalidTaskId(String),
    #[error("no logs for task {0} on this node (it may not have started)")]
    NoLogs(String),
    #[error("task {task_id} has no container {container:?} with logs")]
    NoContainerLogs { task_id: String, container: String },
    #[error("read {}: {error}", path.display())]
    ReadLog {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("give a command to run")]
    NoCommand,
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("run the command in {id}: {error}")]
    Exec { id: String, error: RuntimeError },
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::NoCertificate => Status::unauthenticated(message),
            ApiError::NotAServer(_) | ApiError::NoIdentity => Status::permission_denied(message),
            ApiError::InvalidTaskId(_) | ApiError::NoCommand => Status::invalid_argument(message),
            ApiError::NoLogs(_)
            | ApiError::NoContainerLogs { .. }
            | ApiError::Task(TaskError::NoContainer { .. }) => Status::not_found(message),
            ApiError::ReadLog { .. } => Status::internal(message),
            ApiError::Task(TaskError::NotRunning { .. }) => Status::failed_precondition(message),
            ApiError::Exec {
                error: error @ RuntimeError::ExecTimeout(_),
                ..
            } => Status::deadline_exceeded(error.to_string()),
            ApiError::Exec { .. } => Status::failed_precondition(message),
        }
    }
}

const POLL: Duration = Duration::from_millis(100);

pub struct AgentApiService {
    log_root: PathBuf,
    tasks: TaskTable,
    runtime: Arc<dyn Runtime>,
}

/// The service behind its check of the caller.
pub type AuthorizedAgentApi = InterceptedService<AgentApiServer<AgentApiService>, Interceptor>;
type Interceptor = fn(Request<()>) -> Result<Request<()>, Status>;

impl AgentApiService {
    /// The service, answering servers only.
    pub fn new(
        log_root: PathBuf,
        tasks: TaskTable,
        runtime: Arc<dyn Runtime>,
    ) -> AuthorizedAgentApi {
        let service = AgentApiServer::new(Self {
            log_root,
            tasks,
            runtime,
        });
        InterceptedService::new(service, only_servers)
    }
}

/// Servers proxy logs and exec for users they have authorized; no one else may call the agent.
/// `certificate`: the caller's verified certificate (DER), if it presented one.
fn authorize(certificate: Option<&[u8]>) -> Result<Identity, ApiError> {
    let der = certificate.ok_or(ApiError::NoCertificate)?;
    let caller = Identity::from_cert(der).ok_or(ApiError::NoIdentity)?;
    if caller.role != Role::Server {
        return Err(ApiError::NotAServer(caller));
    }
    Ok(caller)
}

fn only_servers(req: Request<()>) -> Result<Request<()>, Status> {
    let certs = req.peer_certs();
    let leaf = certs.as_ref().and_then(|c| c.first()).map(AsRef::as_ref);
    match authorize(leaf) {
        Ok(_) => Ok(req),
        Err(e) => {
            tracing::info!("refused an agent API call: {e}");
            Err(e.into())
        }
    }
}

/// How long `exec` may run when the caller gives no timeout.
/// The longest a command run in a container may take (a longer timeout asked is cut to it).
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(15 * 60);

const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

/// The log files of a task: `(container, path)` in container-name order.
async fn log_files(dir: &std::path::Path, only: &str) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
        else {
            continue;
        };
        if only.is_empty() || name == only {
            files.push((name.to_owned(), path.clone()));
        }
    }
    files.sort();
    Ok(files)
}

/// A record as a chunk for the client.
fn chunk(container: &str, record: Record, timestamps: bool) -> LogChunk {
    let mut data = Vec::new();
    if timestamps {
        let mut encoded = record.encode();
        // Keep "<time> " and the text.
        let time_end = encoded.iter().position(|b| *b == b' ').unwrap_or(0);
        encoded.truncate(time_end + 1);
        data.extend(encoded);
    }
    data.extend(record.text);
    LogChunk {
        container: container.to_owned(),
        data,
        stderr: record.stream == Output::Stderr,
    }
}

#[tonic::async_trait]
impl AgentApi for AgentApiService {
    type LogsStream = LogStream;

    async fn logs(&self, req: Request<AgentLogsRequest>) -> Result<Response<LogStream>, Status> {
        let req = req.into_inner();
        if req.task_id.is_empty() || req.task_id.contains(['/', '.']) {
            return Err(ApiError::InvalidTaskId(req.task_id).into());
        }
        let dir = self.log_root.join(&req.task_id);
        let files = log_files(&dir, &req.container)
            .await
            .map_err(|_| ApiError::NoLogs(req.task_id.clone()))?;
        if files.is_empty() && !req.container.is_empty() {
            return Err(ApiError::NoContainerLogs {
                task_id: req.task_id,
                container: req.container,
            }
            .into());
        }
        // Everything so far, merged across containers in time order.
        let since_ns = u128::from(req.since) * 1_000_000;
        let tail = usize::try_from(req.tail).unwrap_or(usize::MAX);
        let mut merged = Vec::new();
        let mut offsets = Vec::with_capacity(files.len());
        for (container, path) in &files {
            let (records, offset) =
                logfile::read(path, since_ns, tail).map_err(|error| ApiError::ReadLog {
                    path: path.clone(),
                    error,
                })?;
            merged.extend(records.into_iter().map(|r| (container.clone(), r)));
            offsets.push(offset);
        }
        merged.sort_by_key(|(_, r)| r.time_ns);
        let (tx, rx) = mpsc::channel(64);
        let tasks = self.tasks.clone();
        tokio::spawn(async move {
            for (container, record) in merged {
                if tx
                    .send(Ok(chunk(&container, record, req.timestamps)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if !req.follow {
                return;
            }
            loop {
                // Read the "running" flag first so the last pass sees everything written.
                let running = tasks.is_running(&req.task_id);
                for (i, (container, path)) in files.iter().enumerate() {
                    let Ok((records, next)) = logfile::read_new(path, offsets[i]) else {
                        continue;
                    };
                    offsets[i] = next;
                    for record in records {
                        if tx
                            .send(Ok(chunk(container, record, req.timestamps)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                if !running {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(&self, req: Request<AgentExecRequest>) -> Result<Response<ExecResult>, Status> {
        let req = req.into_inner();
        if req.command.is_empty() {
            return Err(ApiError::NoCommand.into());
        }
        let id = self
            .tasks
            .container_id(&req.task_id, &req.container)
            .map_err(ApiError::from)?;
        let timeout = match req.timeout_secs {
            0 => DEFAULT_EXEC_TIMEOUT,
            s => Duration::from_secs(u64::from(s)).min(MAX_EXEC_TIMEOUT),
        };
        match self.runtime.exec(&id, &req.command, timeout).await {
            Ok(out) => Ok(Response::new(ExecResult {
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
            })),
            Err(error) => Err(ApiError::Exec { id, error }.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_tls::{ClusterCa, NodeKey, DEFAULT_CERT_TTL};

    use super::*;

    fn der(ca: &ClusterCa, identity: &Identity) -> Vec<u8> {
        let key = NodeKey::generate().expect("key");
        let pem = ca
            .issue(
                &key.csr(identity).expect("csr"),
                identity,
                &[],
                DEFAULT_CERT_TTL,
            )
            .expect("issue")
            .cert_pem;
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("pem")
            .1
            .contents
    }

    /// The caller's certificate → the status code and message it is answered with.
    fn check(certificate: Option<&[u8]>, expected: &str) {
        let got = match authorize(certificate) {
            Ok(who) => format!("ok: {who}"),
            Err(e) => {
                let s = Status::from(e);
                format!("{:?}: {}", s.code(), s.message())
            }
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn only_servers_may_call_the_agent_api() {
        let ca = ClusterCa::create("t").expect("ca");
        check(
            Some(&der(&ca, &Identity::new(Role::Server, "2"))),
            "ok: server 2",
        );
        check(
            None,
            "Unauthenticated: the agent API answers servers only: present a server certificate of the cluster",
        );
        check(
            Some(&der(&ca, &Identity::new(Role::Agent, "node-2"))),
            "PermissionDenied: the agent API answers servers only, not agent node-2",
        );
        check(
            Some(&der(&ca, &Identity::new(Role::Admin, "alice"))),
            "PermissionDenied: the agent API answers servers only, not admin alice",
        );
    }
}
