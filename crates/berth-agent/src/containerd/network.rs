//! The network namespace a multi-container task's containers share (`ip netns`, loopback up).

use super::ContainerdRuntime;
use crate::runtime::RuntimeError;

/// The network namespace of a task, as `ip netns` names it.
fn netns_name(task_id: &str) -> String {
    let id: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    format!("berth-{id}")
}

/// Runs `ip ARGS` (iproute2).
async fn ip(args: &[&str]) -> Result<(), RuntimeError> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(RuntimeError::io("run ip (install iproute2)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(RuntimeError::Io {
        op: "set up the task's network namespace",
        source: std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    })
}

impl ContainerdRuntime {
    pub(super) async fn create_netns(&self, task_id: &str) -> Result<String, RuntimeError> {
        let name = netns_name(task_id);
        ip(&["netns", "add", &name]).await?;
        ip(&["-n", &name, "link", "set", "lo", "up"]).await?;
        Ok(format!("/run/netns/{name}"))
    }

    pub(super) async fn remove_netns(&self, task_id: &str) -> Result<(), RuntimeError> {
        let name = netns_name(task_id);
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            ip(&["netns", "delete", &name]).await?;
        }
        Ok(())
    }
}
