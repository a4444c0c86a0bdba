//! The web console in a real headless browser (Debian's chromium, driven with selenium from
//! `make pyenv`'s environment) against a real cluster running real containers.

use berth_tests::{berth_bin, read_credentials, AgentProc, Env, ServerProc, TestHosts};

use super::{ok, stderr, stdout};

#[tokio::test]
async fn the_console_shows_a_rollout_live_scales_and_refuses_a_viewer() -> anyhow::Result<()> {
    let python = std::env::var("BERTH_PYTHON").map_err(|_| {
        anyhow::anyhow!(
            "BERTH_PYTHON is not set: run `make pyenv` and set BERTH_PYTHON=target/pyenv/bin/python (make test does both)"
        )
    })?;
    let env = Env::start().await?;
    // The browser runs in a network namespace of its own, as on a machine apart: tasks'
    // network interfaces coming and going on this host would make chromium cut its
    // connections (its network-change detection). It reaches the server on this host's address
    // on the bridge between them.
    let hosts = TestHosts::create(1)?;
    let listen: std::net::SocketAddr =
        format!("{}:{}", hosts.outside(), berth_dev::free_port()?).parse()?;
    let data = env.path("server");
    let server = ServerProc::start(&data, Some(listen)).await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let (ca_pem, admin) = read_credentials(&data.join("admin.toml"))?;
    let ca = env.path("ca.pem");
    std::fs::write(&ca, ca_pem)?;
    let viewer = ok(
        &addr,
        &["token", "create", "-n", "default", "--role", "viewer"],
    )
    .await?;
    let viewer = viewer.lines().last().unwrap_or_default().trim().to_owned();
    // Screenshots of each view, for docs/ui/ (copied by hand when the console changes).
    let shots =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/console_test.py");
    let url = format!("https://{addr}/ui/");
    // The browser's profile, by which it is found and stopped whatever happens to the script.
    let profile = env.path("chromium-profile");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &hosts.names[0]])
            .arg(&python)
            .arg(script)
            .arg(&url)
            .arg(&ca)
            .arg(berth_bin())
            .arg(&addr)
            .arg(&shots)
            .env("ADMIN_TOKEN", &admin)
            .env("VIEWER_TOKEN", &viewer)
            .env("IMAGE", &env.image)
            .env("BERTH_CREDENTIALS", data.join("admin.toml"))
            .env("CHROME_PROFILE", &profile)
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let _ = std::process::Command::new("pkill")
        .arg("-f")
        .arg(format!("user-data-dir={}", profile.display()))
        .status();
    let out = out??;
    assert!(
        out.status.success(),
        "console_test.py: stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("ok: the console"), "{}", stdout(&out));
    Ok(())
}
