//! Task networks through Debian's CNI plugins: each task's own address, its published ports
//! (dynamic and fixed), and no address, veth or firewall rule left behind when an agent dies
//! with tasks running and comes back.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use berth_tests::{cli, cli_json, poll, wait_stopped, AgentNetwork, AgentProc, Env};

use crate::{Cluster, TIMEOUT};

/// Agent flags for no warm namespaces (each task's made when it starts).
pub(crate) const NO_WARM: &[&str] = &["--warm-networks", "0"];

/// `sh -c` for a task that serves `hello-from-task` on port 8080.
const HTTPD: &str =
    "mkdir -p /www && echo hello-from-task > /www/index.html && exec httpd -f -p 8080 -h /www";

/// What an agent's task network holds on the host: addresses allocated, veths on its bridge,
/// iptables lines about its tasks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Footprint {
    addresses: usize,
    veths: usize,
    /// The lines themselves, so that a failure shows what leaked.
    rules: Vec<String>,
}

impl Footprint {
    pub(crate) const NONE: Footprint = Footprint {
        addresses: 0,
        veths: 0,
        rules: Vec::new(),
    };
}

/// The addresses host-local allocated on `agent`'s task network.
fn allocated(env: &Env, agent: &str, net: &AgentNetwork) -> BTreeSet<Ipv4Addr> {
    let ipam = env
        .path(&format!("agent-{agent}"))
        .join("cni/ipam")
        .join(format!("berth-{}", net.bridge));
    std::fs::read_dir(&ipam)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<Ipv4Addr>().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn footprint(env: &Env, agent: &str, net: &AgentNetwork) -> anyhow::Result<Footprint> {
    let addresses = allocated(env, agent, net).len();
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &net.bridge])
        .output()?;
    let veths = String::from_utf8_lossy(&links.stdout).lines().count();
    // Every rule the plugins add for a task names its address (or the subnet): the
    // masquerade chain, the port DNAT, the firewall's accept rules.
    let prefix = net.subnet.trim_end_matches("0/24");
    let mut rules = Vec::new();
    for table in ["nat", "filter"] {
        let out = std::process::Command::new("iptables-save")
            .args(["-t", table])
            .output()?;
        rules.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(prefix))
                // The node's own rule (for its services' discovery addresses), not a task's.
                .filter(|l| !l.contains("discovery addresses"))
                .map(|l| format!("{table}: {l}")),
        );
    }
    Ok(Footprint {
        addresses,
        veths,
        rules,
    })
}

/// Runs a one-off task (with `flags`) that fetches `url` with wget, trying for 10 s; its exit
/// code, what it printed (trimmed) and its stderr.
async fn fetch_from_a_task(
    addr: &str,
    image: &str,
    flags: &[&str],
    url: &str,
) -> anyhow::Result<(Option<i32>, String, String)> {
    let script =
        format!("for i in $(seq 1 50); do wget -q -O - {url} && exit 0; sleep 0.2; done; exit 1");
    let mut args = vec!["run", "--wait"];
    args.extend_from_slice(flags);
    args.extend([image, "--", "sh", "-c", &script]);
    let out = cli(addr, &args).await?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn netns_exists(task_id: &str) -> bool {
    std::path::Path::new(&format!(
        "/run/netns/berth-{}",
        &task_id.replace('-', "")[..24]
    ))
    .exists()
}

#[tokio::test]
async fn tasks_get_an_address_and_published_ports_and_a_dead_agent_leaks_nothing(
) -> anyhow::Result<()> {
    // Without warm namespaces: every address, veth and rule is a task's.
    let Cluster { env, server, agent } = Cluster::start_with(NO_WARM).await?;
    let addr = server.addr.to_string();
    let net = env.network(&agent.name);
    assert_eq!(footprint(&env, &agent.name, &net)?, Footprint::NONE);

    let run = |publish: String| {
        let addr = addr.clone();
        let image = env.image.clone();
        async move {
            berth_tests::run_until_running(
                &addr,
                &[
                    "run",
                    "-p",
                    &publish,
                    "--stop-timeout",
                    "1s",
                    &image,
                    "--",
                    "sh",
                    "-c",
                    HTTPD,
                ],
            )
            .await
        }
    };
    let dynamic = run("8080".into()).await?;
    let fixed_port = berth_dev::free_port()?;
    let fixed = run(format!("{fixed_port}:8080")).await?;

    let t = cli_json(&addr, &["get", "task", &dynamic]).await?;
    let ip = t["ipAddress"].as_str().unwrap_or_default().to_owned();
    assert!(ip.starts_with(net.subnet.trim_end_matches("0/24")), "{t}");
    let binding = &t["containers"][0]["networkBindings"][0];
    assert_eq!(
        (
            &binding["bindIP"],
            &binding["containerPort"],
            &binding["protocol"]
        ),
        (&"127.0.0.1".into(), &8080.into(), &"tcp".into()),
        "{t}"
    );
    let host_port = binding["hostPort"].as_u64().unwrap_or_default();
    assert!((49153..=65535).contains(&host_port), "{t}");
    let f = cli_json(&addr, &["get", "task", &fixed]).await?;
    assert_eq!(
        f["containers"][0]["networkBindings"][0]["hostPort"], fixed_port,
        "{f}"
    );

    // The task answers on its own address, and on the node's published ports.
    for target in [
        format!("{ip}:8080"),
        format!("127.0.0.1:{host_port}"),
        format!("127.0.0.1:{fixed_port}"),
    ] {
        let body = poll(&format!("httpd at {target}"), TIMEOUT, || async {
            let (code, body) = berth_tests::http_get(&target, "test", "/").await.ok()?;
            (code == 200).then_some(body)
        })
        .await?;
        assert_eq!(body, "hello-from-task\n", "{target}");
    }
    let wide = cli(&addr, &["get", "tasks", "-o", "wide"]).await?;
    let wide = String::from_utf8_lossy(&wide.stdout).into_owned();
    assert!(
        wide.contains(&format!("127.0.0.1:{host_port}->8080/tcp")),
        "{wide}"
    );
    assert!(wide.contains(&ip), "{wide}");
    let running = footprint(&env, &agent.name, &net)?;
    assert_eq!((running.addresses, running.veths), (2, 2), "{running:?}");
    assert!(!running.rules.is_empty(), "{running:?}");

    // The agent dies, and one task's container vanishes while it is down (as after a host
    // crash): the restarted agent removes that task's network before anything else, and
    // re-adopts the other with its address and its port.
    agent.kill().await?;
    let container = format!("{dynamic}-demo");
    let ns = format!("berth-e2e-{}", "node-1");
    berth_tests::ctr(
        &env.containerd.socket,
        &ns,
        &["tasks", "kill", "-s", "KILL", &container],
    )
    .await?;
    poll("the killed container to exit", TIMEOUT, || async {
        let out = berth_tests::ctr(
            &env.containerd.socket,
            &ns,
            &["tasks", "delete", &container],
        )
        .await
        .ok()?;
        out.status.success().then_some(())
    })
    .await?;
    let out = berth_tests::ctr(
        &env.containerd.socket,
        &ns,
        &["containers", "delete", &container],
    )
    .await?;
    assert!(out.status.success(), "{out:?}");
    let _agent = AgentProc::start_with(&env, &addr, "node-1", NO_WARM).await?;
    let lost = wait_stopped(&addr, &dynamic, TIMEOUT).await?;
    assert_eq!(lost["stopCode"], "NodeLost", "{lost}");
    assert!(!netns_exists(&dynamic));
    let after = poll("the lost task's network to go", TIMEOUT, || async {
        let f = footprint(&env, "node-1", &net).ok()?;
        (f.addresses == 1 && f.veths == 1).then_some(f)
    })
    .await?;
    assert!(
        after.rules.len() < running.rules.len(),
        "{after:?} vs {running:?}"
    );
    let (_, body) = berth_tests::http_get(&format!("127.0.0.1:{fixed_port}"), "test", "/").await?;
    assert_eq!(body, "hello-from-task\n");

    // Stopped, the last task takes its address, veth, rules and namespace with it.
    cli(&addr, &["stop", &fixed]).await?;
    let stopped = wait_stopped(&addr, &fixed, TIMEOUT).await?;
    assert_eq!(
        stopped["containers"][0]["networkBindings"],
        serde_json::Value::Null,
        "{stopped}"
    );
    assert_eq!(footprint(&env, "node-1", &net)?, Footprint::NONE);
    assert!(!netns_exists(&fixed));
    Ok(())
}

#[tokio::test]
async fn a_task_starts_in_a_warm_network_the_agent_refills_and_a_restart_leaks_none(
) -> anyhow::Result<()> {
    let warm = ["--warm-networks", "1"];
    let Cluster { env, server, agent } = Cluster::start_with(&warm).await?;
    let addr = server.addr.to_string();
    let net = env.network(&agent.name);
    // `want` attachments finished (their records hold the plugins' result), and nothing
    // else held.
    let ready = |want: usize| {
        let (env, net) = (&env, &net);
        poll("the warm namespaces", TIMEOUT, move || async move {
            let results = env.path("agent-node-1").join("cni/results");
            let finished = std::fs::read_dir(results)
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|r| !r["result"].is_null())
                .count();
            let f = footprint(env, "node-1", net).ok()?;
            (finished == want && f.addresses == want && f.veths == want).then_some(f)
        })
    };
    // One namespace is attached before any task: an address, a veth, its rules.
    let idle = ready(1).await?;
    assert!(!idle.rules.is_empty(), "{idle:?}");
    let held = allocated(&env, "node-1", &net);

    // A task takes it (the address allocated before the task was submitted), with its port
    // published on it; the agent attaches another.
    let task = berth_tests::run_until_running(
        &addr,
        &[
            "run",
            "-p",
            "8080",
            "--stop-timeout",
            "1s",
            &env.image,
            "--",
            "sh",
            "-c",
            HTTPD,
        ],
    )
    .await?;
    let t = cli_json(&addr, &["get", "task", &task]).await?;
    let ip: Ipv4Addr = t["ipAddress"].as_str().unwrap_or_default().parse()?;
    assert!(held.contains(&ip), "{ip} is not the warm one of {held:?}");
    let host_port = t["containers"][0]["networkBindings"][0]["hostPort"]
        .as_u64()
        .unwrap_or_default();
    for target in [format!("{ip}:8080"), format!("127.0.0.1:{host_port}")] {
        let body = poll(&format!("httpd at {target}"), TIMEOUT, || async {
            let (code, body) = berth_tests::http_get(&target, "test", "/").await.ok()?;
            (code == 200).then_some(body)
        })
        .await?;
        assert_eq!(body, "hello-from-task\n", "{target}");
    }
    let busy = ready(2).await?;
    assert!(busy.rules.len() > idle.rules.len(), "{busy:?}");

    // Stopped, the task takes its address, veth, rules and port with it; the new warm one
    // stays.
    cli(&addr, &["stop", &task]).await?;
    wait_stopped(&addr, &task, TIMEOUT).await?;
    let after = ready(1).await?;
    assert_eq!(after.rules.len(), idle.rules.len(), "{after:?} vs {idle:?}");
    let named = format!("{ip}/");
    let named_port = format!("{ip}:8080");
    assert!(
        !after
            .rules
            .iter()
            .any(|r| r.contains(&named) || r.contains(&named_port)),
        "a rule still names the stopped task's address: {after:?}"
    );
    assert!(!allocated(&env, "node-1", &net).contains(&ip));
    assert!(
        berth_tests::http_get(&format!("127.0.0.1:{host_port}"), "test", "/")
            .await
            .is_err(),
        "the port is still published"
    );

    // An agent killed and started again removes the warm namespace it left, and makes one.
    let left = allocated(&env, "node-1", &net);
    agent.kill().await?;
    let _agent = AgentProc::start_with(&env, &addr, "node-1", &warm).await?;
    let again = poll("the old warm namespace to go", TIMEOUT, || async {
        let now = allocated(&env, "node-1", &net);
        (now.len() == 1 && now.is_disjoint(&left)).then_some(())
    })
    .await;
    again?;
    let restarted = ready(1).await?;
    assert_eq!(restarted.rules.len(), idle.rules.len(), "{restarted:?}");
    Ok(())
}

#[tokio::test]
async fn a_task_reaches_a_service_by_name_through_its_node_s_discovery() -> anyhow::Result<()> {
    let Cluster { env, server, agent } = Cluster::start().await?;
    let addr = server.addr.to_string();
    let manifest = env.path("web.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: berth.dev/v1
kind: Service
metadata:
  name: web
spec:
  desiredCount: 2
  deregistrationDelay: 1s
  template:
    cpu: 64
    memory: 32
    containers:
      - name: httpd
        image: {}
        command: [sh, -c, '{HTTPD}']
        portMappings:
          - containerPort: 8080
        stopTimeout: 1s
",
            env.image
        ),
    )?;
    let out = cli(
        &addr,
        &["apply", "-f", &manifest.to_string_lossy(), "--wait"],
    )
    .await?;
    assert!(out.status.success(), "{out:?}");
    let endpoints = poll("two endpoints", TIMEOUT, || async {
        let e = cli_json(&addr, &["get", "endpoints", "web"]).await.ok()?;
        (e["endpoints"].as_array()?.len() == 2).then_some(e)
    })
    .await
    .map_err(|e| {
        let last = std::process::Command::new(berth_tests::berth_bin())
            .args(["get", "endpoints", "web", "-o", "json", "--server", &addr])
            .args(["--credentials"])
            .arg(berth_tests::credentials_for(&addr).unwrap_or_default())
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        anyhow::anyhow!("{e:#}; last: {last}")
    })?;
    assert_eq!(endpoints["ports"], serde_json::json!([8080]), "{endpoints}");
    // By its full name and, from its own namespace, by its short name.
    for name in ["web.default.berth.internal", "web"] {
        let url = format!("http://{name}:8080/");
        let (code, stdout, stderr) = fetch_from_a_task(&addr, &env.image, &[], &url).await?;
        assert_eq!(
            (code, stdout.as_str()),
            (Some(0), "hello-from-task"),
            "{name}: {stderr}; see {}",
            env.path(&format!("agent-{}/agent.log", agent.name))
                .display()
        );
    }
    // A service whose container port is also its fixed host port: the node's proxy for its
    // name and the published port share the number, and both work.
    let port = berth_dev::free_port()?;
    let fixed = env.path("fixed.yaml");
    std::fs::write(
        &fixed,
        format!(
            "apiVersion: berth.dev/v1
kind: Service
metadata:
  name: fixed
spec:
  desiredCount: 1
  template:
    cpu: 64
    memory: 32
    containers:
      - name: httpd
        image: {}
        command: [sh, -c, 'mkdir -p /www && echo fixed > /www/index.html && exec httpd -f -p {port} -h /www']
        portMappings:
          - {{containerPort: {port}, hostPort: {port}}}
        stopTimeout: 1s
",
            env.image
        ),
    )?;
    let out = cli(&addr, &["apply", "-f", &fixed.to_string_lossy(), "--wait"]).await?;
    assert!(out.status.success(), "{out:?}");
    let url = format!("http://fixed:{port}/");
    let (code, stdout, stderr) = fetch_from_a_task(&addr, &env.image, &[], &url).await?;
    assert_eq!((code, stdout.as_str()), (Some(0), "fixed"), "{stderr}");
    let (code, body) = berth_tests::http_get(&format!("127.0.0.1:{port}"), "x", "/").await?;
    assert_eq!((code, body.trim()), (200, "fixed"));

    // The responder answers tasks on the bridge only: a query from this host goes unanswered.
    let net = env.network(&agent.name);
    let gateway = format!("{}1:53", net.subnet.trim_end_matches("0/24"));
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["web", "default", "berth", "internal"] {
        query.push(u8::try_from(label.len())?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&query, &gateway).await?;
    let mut answer = [0u8; 512];
    let answered =
        tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut answer)).await;
    assert!(
        answered.is_err(),
        "{gateway} answered a query from outside the bridge"
    );

    // A name that names no service does not resolve.
    let out = cli(
        &addr,
        &[
            "run",
            "--wait",
            &env.image,
            "--",
            "nslookup",
            "api.default.berth.internal",
        ],
    )
    .await?;
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    Ok(())
}

/// A service of `count` tasks placed by `placement` (YAML), reached through ingresses as
/// `NAME.local` and, with `tcp`, on that TCP port of every ingress.
fn service(name: &str, image: &str, count: u32, placement: &str, tcp: Option<u16>) -> String {
    let tcp = tcp.map_or(String::new(), |port| {
        format!(
            "\n    - listenerPort: {port}\n      containerName: httpd\n      containerPort: 8080"
        )
    });
    format!(
        "apiVersion: berth.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  desiredCount: {count}
  deregistrationDelay: 1s
  ingress:
    - host: {name}.local
      containerName: httpd
      containerPort: 8080{tcp}
  placement: {placement}
  template:
    cpu: 64
    memory: 32
    containers:
      - name: httpd
        image: {image}
        command: [sh, -c, '{HTTPD}']
        portMappings:
          - containerPort: 8080
        stopTimeout: 1s
"
    )
}

#[tokio::test]
async fn two_hosts_serve_one_service_through_the_ingress_and_by_name() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let hosts = berth_tests::TestHosts::create(2)?;
    let listen: std::net::SocketAddr =
        format!("{}:{}", hosts.outside(), berth_dev::free_port()?).parse()?;
    let server = berth_tests::ServerProc::start(&env.path("server"), Some(listen)).await?;
    let addr = server.addr.to_string();
    // The hosts pull from a registry on this host's address on their bridge (their loopback
    // is their own).
    let registry_at: std::net::SocketAddr =
        format!("{}:{}", hosts.outside(), berth_dev::free_port()?).parse()?;
    let _registry = berth_dev::Registry::start(&env.path("hosts-registry"), registry_at).await?;
    let image = format!("{registry_at}/demo:latest");
    let busybox = berth_dev::find_program("busybox").expect("busybox-static");
    berth_dev::push_busybox_image(&busybox, &image).await?;
    let insecure = registry_at.to_string();
    let mut agents = Vec::new();
    for (i, ns) in hosts.names.iter().enumerate() {
        let name = format!("host-{i}");
        let api = format!("{}:0", hosts.address(i));
        let attr = format!("host={i}");
        agents.push(
            AgentProc::start_in(
                &env,
                &addr,
                &name,
                Some(ns),
                &[
                    "--listen",
                    &api,
                    "--attr",
                    &attr,
                    "--insecure-registry",
                    &insecure,
                ],
            )
            .await?,
        );
    }
    let ingress = berth_tests::IngressProc::start(&env, &addr, "edge").await?;
    let tcp_port = berth_dev::free_port()?;

    // One task on each host, both behind the ingress.
    let apply = |name: &'static str, yaml: String| {
        let path = env.path(&format!("{name}.yaml"));
        let addr = addr.clone();
        async move {
            std::fs::write(&path, yaml)?;
            let out = cli(&addr, &["apply", "-f", &path.to_string_lossy(), "--wait"]).await?;
            if !out.status.success() {
                let tasks = cli_json(&addr, &["get", "tasks"]).await?;
                let reasons: Vec<&str> = tasks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["stoppedReason"].as_str())
                    .collect();
                anyhow::bail!(
                    "apply {name}: {}; tasks stopped: {reasons:?}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            anyhow::Ok(())
        }
    };
    apply(
        "web",
        service(
            "web",
            &image,
            2,
            "{constraints: [{type: distinctInstance}]}",
            Some(tcp_port),
        ),
    )
    .await?;
    let tasks = cli_json(&addr, &["get", "tasks"]).await?;
    let web: Vec<(String, String)> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["lastStatus"] == "RUNNING")
        .map(|t| {
            let binding = &t["containers"][0]["networkBindings"][0];
            (
                t["taskId"].as_str().unwrap_or_default().to_owned(),
                binding["bindIP"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut bind_ips: Vec<&str> = web.iter().map(|(_, ip)| ip.as_str()).collect();
    bind_ips.sort_unstable();
    assert_eq!(bind_ips, [hosts.address(0), hosts.address(1)], "{tasks}");
    let front = ingress.addr.to_string();
    poll("the ingress to route to web", TIMEOUT, || async {
        let (code, _) = berth_tests::http_get(&front, "web.local", "/").await.ok()?;
        (code == 200).then_some(())
    })
    .await?;
    for _ in 0..20 {
        let (code, body) = berth_tests::http_get(&front, "web.local", "/").await?;
        assert_eq!((code, body.as_str()), (200, "hello-from-task\n"));
    }
    // The TCP form: every ingress listens on the rule's port and forwards the bytes.
    let tcp = format!("127.0.0.1:{tcp_port}");
    let body = poll("the ingress's TCP listener", TIMEOUT, || async {
        let (code, body) = berth_tests::http_get(&tcp, "any", "/").await.ok()?;
        (code == 200).then_some(body)
    })
    .await?;
    assert_eq!(body, "hello-from-task\n");
    let metrics = ingress.metrics().await?;
    for (task, _) in &web {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("berth_ingress_task_requests_total")
                    && l.contains(task.as_str())),
            "the ingress sent nothing to task {task}: {metrics}"
        );
    }

    // A task on host 0 reaches, by name, a service whose only task runs on host 1.
    apply(
        "api",
        service(
            "api",
            &image,
            1,
            "{constraints: [{type: memberOf, expression: \"attribute:host == 1\"}]}",
            None,
        ),
    )
    .await?;
    let (code, stdout, stderr) = fetch_from_a_task(
        &addr,
        &image,
        &["--placement-constraint", "attribute:host == 0"],
        "http://api.default.berth.internal:8080/",
    )
    .await?;
    if (code, stdout.as_str()) != (Some(0), "hello-from-task") {
        // Seen once in a while under load, not yet explained: what the servers and the agents
        // knew of the service at that moment, for the next time.
        let endpoints = cli(&addr, &["get", "endpoints"]).await?;
        let mut logs = String::new();
        for i in 0..hosts.names.len() {
            let log = env.path(&format!("agent-host-{i}")).join("agent.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            logs.push_str(&format!("--- agent host-{i}, last 40 lines:\n{tail}\n"));
        }
        panic!(
            "the task on host 0 did not reach api by name ({code:?}, {stdout:?}): {stderr}\n--- berth get endpoints:\n{}{}\n{logs}",
            String::from_utf8_lossy(&endpoints.stdout),
            String::from_utf8_lossy(&endpoints.stderr),
        );
    }
    drop(agents);
    Ok(())
}
