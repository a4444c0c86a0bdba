//! `exec`: a command run inside a running container as its process runs (same environment,
//! user, working directory and capabilities), its output collected through files.

use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};
use containerd_client::tonic::Code;

use super::ContainerdRuntime;
use crate::runtime::{ExecOutput, RuntimeError};

/// What is kept of each of a command's output streams: the first MiB (the agent's memory and
/// the answer's size stay bounded, whatever the command prints).
pub const MAX_EXEC_OUTPUT: usize = 1024 * 1024;

/// The first [`MAX_EXEC_OUTPUT`] bytes of an output file, and a line saying what was cut.
async fn read_capped(path: &std::path::Path) -> Result<Vec<u8>, RuntimeError> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(RuntimeError::io("read exec output"))?;
    let mut kept = Vec::new();
    file.take(MAX_EXEC_OUTPUT as u64 + 1)
        .read_to_end(&mut kept)
        .await
        .map_err(RuntimeError::io("read exec output"))?;
    if kept.len() > MAX_EXEC_OUTPUT {
        kept.truncate(MAX_EXEC_OUTPUT);
        kept.extend_from_slice(b"\n[berth: output cut at 1 MiB]\n");
    }
    Ok(kept)
}

/// Type URL of an OCI process spec inside a protobuf `Any`.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

impl ContainerdRuntime {
    pub(super) async fn exec_in(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        // The command runs as the container's process does: same env, user, cwd, caps.
        let container = ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.to_owned() }))
            .await
            .map_err(RuntimeError::containerd("get container"))?
            .into_inner()
            .container
            .and_then(|c| c.spec)
            .ok_or_else(|| RuntimeError::NoSpec { id: id.to_owned() })?;
        let spec: serde_json::Value =
            serde_json::from_slice(&container.value).map_err(|error| RuntimeError::SpecJson {
                op: "read the container's OCI runtime spec",
                error,
            })?;
        let mut process = spec.get("process").cloned().unwrap_or_default();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        let process = serde_json::to_vec(&process).map_err(|error| RuntimeError::SpecJson {
            op: "encode the exec process spec",
            error,
        })?;

        let exec_id = format!("exec-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        tokio::fs::create_dir_all(&self.config.exec_dir)
            .await
            .map_err(RuntimeError::io("create exec directory"))?;
        let out = self.config.exec_dir.join(format!("{exec_id}.out"));
        let err = self.config.exec_dir.join(format!("{exec_id}.err"));
        for f in [&out, &err] {
            tokio::fs::File::create(f)
                .await
                .map_err(RuntimeError::io("create exec output file"))?;
        }
        let result = self
            .run_exec(id, &exec_id, process, &out, &err, timeout)
            .await;
        let output = async {
            let stdout = read_capped(&out).await?;
            let stderr = read_capped(&err).await?;
            Ok::<_, RuntimeError>((stdout, stderr))
        }
        .await;
        let _ = tokio::fs::remove_file(&out).await;
        let _ = tokio::fs::remove_file(&err).await;
        let exit_code = result?;
        let (stdout, stderr) = output?;
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    /// Creates, starts and waits for an exec process; always deletes it (which also waits for
    /// its output to be copied to the files).
    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        out: &std::path::Path,
        err: &std::path::Path,
        timeout: Duration,
    ) -> Result<i32, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .exec(self.req(ExecProcessRequest {
                container_id: id.to_owned(),
                stdin: String::new(),
                stdout: out.display().to_string(),
                stderr: err.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value: process,
                }),
                exec_id: exec_id.to_owned(),
            }))
            .await
            .map_err(RuntimeError::containerd("exec in container"))?;
        let wait_req = self.req(WaitRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        });
        let mut wait_client = TasksClient::new(self.channel.clone());
        let wait = tokio::spawn(async move { wait_client.wait(wait_req).await });
        let started = tasks
            .start(self.req(StartRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            }))
            .await
            .map_err(RuntimeError::containerd("start exec"));
        let result = match started {
            Err(e) => Err(e),
            Ok(_) => match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(Ok(r))) => Ok(i32::try_from(r.into_inner().exit_status).unwrap_or(-1)),
                Ok(Ok(Err(s))) => Err(RuntimeError::containerd("wait for exec")(s)),
                Ok(Err(_)) => Err(RuntimeError::WaitLost("the exec process")),
                Err(_) => {
                    let kill = KillRequest {
                        container_id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        signal: 9,
                        all: false,
                    };
                    let _ = tasks.kill(self.req(kill)).await;
                    Err(RuntimeError::ExecTimeout(timeout))
                }
            },
        };
        let delete = DeleteProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        if let Err(s) = tasks.delete_process(self.req(delete)).await {
            if s.code() != Code::NotFound {
                tracing::debug!(container = id, exec_id, "delete exec process: {s}");
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_beyond_a_mebibyte_is_cut_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("small");
        std::fs::write(&small, b"hello\n").expect("write");
        assert_eq!(read_capped(&small).await.expect("read"), b"hello\n");
        let large = dir.path().join("large");
        std::fs::write(&large, vec![b'x'; MAX_EXEC_OUTPUT + 10]).expect("write");
        let kept = read_capped(&large).await.expect("read");
        assert!(kept[..MAX_EXEC_OUTPUT].iter().all(|b| *b == b'x'));
        assert_eq!(
            &kept[MAX_EXEC_OUTPUT..],
            b"\n[berth: output cut at 1 MiB]\n"
        );
    }
}
