//! The ECS endpoint driven by the real AWS clients (the aws CLI and boto3, installed from PyPI
//! into `make pyenv`'s environment), against a real cluster running real containers.

use std::net::SocketAddr;

use berth_tests::{AgentProc, Env, ServerProc, TestHosts};

use super::{ok, stderr, stdout};

/// `berth token create --role ROLE --aws`: its access key ID and secret.
async fn aws_keys(server: &str, role: &str) -> anyhow::Result<(String, String)> {
    let out = ok(server, &["token", "create", "--role", role, "--aws"]).await?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {name}= line in {out:?}"))
    };
    Ok((field("AWS_ACCESS_KEY_ID")?, field("AWS_SECRET_ACCESS_KEY")?))
}

async fn conformance(
    python: &str,
    args: &[&str],
    keys: &[(&str, &(String, String))],
) -> anyhow::Result<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/ecs_test.py");
    let mut command = tokio::process::Command::new(python);
    command.arg(script).args(args).kill_on_drop(true);
    for (role, (id, secret)) in keys {
        command
            .env(format!("{role}_KEY_ID"), id)
            .env(format!("{role}_SECRET"), secret);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(600), command.output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "ecs_test.py {}: stdout: {}\nstderr: {}",
        args.join(" "),
        stdout(&out),
        stderr(&out)
    );
    Ok(stdout(&out))
}

#[tokio::test]
async fn the_aws_cli_and_boto3_run_containers_through_the_ecs_endpoint() -> anyhow::Result<()> {
    let python = std::env::var("BERTH_PYTHON").map_err(|_| {
        anyhow::anyhow!(
            "BERTH_PYTHON is not set: run `make pyenv` and set BERTH_PYTHON=target/pyenv/bin/python (make test does both)"
        )
    })?;
    let env = Env::start().await?;
    // An address of this host that is not loopback, on a bridge of the test's own.
    let hosts = TestHosts::create(0)?;
    let outside = hosts.outside();
    let plain = SocketAddr::from(([127, 0, 0, 1], berth_dev::free_port()?));
    let data = env.path("server");
    let server = ServerProc::spawn(
        1,
        &data,
        None,
        &["--ecs-listen", &plain.to_string(), "--tls-san", &outside],
    )
    .await?;
    server.wait_ready().await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let deployer = aws_keys(&addr, "deployer").await?;
    let viewer = aws_keys(&addr, "viewer").await?;
    let admin = aws_keys(&addr, "admin").await?;
    let keys = [
        ("DEPLOYER", &deployer),
        ("VIEWER", &viewer),
        ("ADMIN", &admin),
    ];

    let endpoint = format!("http://{plain}");
    let out = conformance(&python, &["full", &endpoint, &env.image], &keys).await?;
    assert!(out.contains("ok: the aws CLI and boto3 flows"), "{out}");
    // The secret of an --aws token is in no log: the state keeps it sealed.
    let log = std::fs::read_to_string(data.join("server.log"))?;
    assert!(
        !log.contains(&deployer.1),
        "the server's log shows a secret"
    );

    // On an address other than loopback the endpoint is HTTPS, with the server's certificate.
    server.kill().await?;
    let tls = SocketAddr::new(outside.parse()?, berth_dev::free_port()?);
    let server = ServerProc::spawn(
        1,
        &data,
        Some(addr.parse()?),
        &["--ecs-listen", &tls.to_string(), "--tls-san", &outside],
    )
    .await?;
    server.wait_ready().await?;
    let ca = env.path("ca.pem");
    let (ca_pem, _) = berth_tests::read_credentials(&data.join("admin.toml"))?;
    std::fs::write(&ca, ca_pem)?;
    let endpoint = format!("https://{tls}");
    let ca = ca.to_string_lossy().into_owned();
    let out = conformance(&python, &["tls", &endpoint, &ca], &keys).await?;
    assert!(
        out.contains("ok: the aws CLI and boto3 reach the HTTPS endpoint"),
        "{out}"
    );
    Ok(())
}
