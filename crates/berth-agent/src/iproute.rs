//! `ip ARGS` (iproute2), for the agent's namespaces, bridge and addresses.

/// Runs `ip ARGS`; a failure says the command and what `ip` printed.
pub(crate) async fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("run ip (install iproute2): {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
