//! Autoscaling end to end: busybox tasks that burn their CPU quota for their first seconds
//! make a service scale out, then back in once the load stops.

use std::time::Duration;

use berth_tests::{cli, cli_json, events, poll, AgentProc, Env, ServerProc};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_cpu_bound_service_scales_out_then_back_in_with_an_event_per_change() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let _agent = AgentProc::start(&env, &addr, "node-1").await?;
    let manifest = env.path("burner.yaml");
    // Each task spins for its first 20 s (at its 256-unit quota: 100% of its reservation),
    // then idles.
    std::fs::write(
        &manifest,
        format!(
            "\
apiVersion: berth.dev/v1
kind: Service
metadata:
  name: burner
spec:
  desiredCount: 1
  autoscaling:
    minCount: 1
    maxCount: 3
    targetTracking: [{{metric: CPUUtilization, target: 50}}]
    scaleOutCooldown: 3s
    scaleInCooldown: 5s
  template:
    cpu: 256
    memory: 32
    containers:
      - name: app
        image: {}
        command: [sh, -c, 'timeout 20 sh -c \"while :; do :; done\"; exec sleep 3600']
        stopTimeout: 1s
",
            env.image
        ),
    )?;
    let out = cli(&addr, &["apply", "-f", &manifest.display().to_string()]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    poll("the service to scale out", TIMEOUT, || async {
        let svc = cli_json(&addr, &["get", "service", "burner"]).await.ok()?;
        let n = svc["desiredCount"].as_u64()?;
        (n >= 2).then_some(())
    })
    .await?;
    let wide = cli(&addr, &["get", "services", "-o", "wide"]).await?;
    let wide = String::from_utf8_lossy(&wide.stdout);
    assert!(wide.contains("CPUUtilization"), "{wide}");
    poll("the service to scale back in to 1", TIMEOUT, || async {
        let svc = cli_json(&addr, &["get", "service", "burner"]).await.ok()?;
        (svc["desiredCount"].as_u64()? == 1).then_some(())
    })
    .await?;

    // Every change of the count is an event quoting the metric and the rule, and the events
    // chain from 1 up and back down to 1.
    let svc = cli_json(&addr, &["get", "service", "burner"]).await?;
    let changes: Vec<String> = events(&svc)
        .into_iter()
        .filter(|e| e.starts_with("scaled out") || e.starts_with("scaled in"))
        .collect();
    eprintln!("scaling events: {changes:#?}");
    assert!(changes.len() >= 2, "{changes:?}");
    let mut count = 1;
    for e in &changes {
        assert!(e.contains("CPUUtilization") && e.contains('%'), "{e}");
        // "scaled out 1 -> 3: CPUUtilization 98.0% (target 50%) ..."
        let words: Vec<&str> = e.split(':').next().unwrap_or_default().split(' ').collect();
        let (from, to) = (words[2], words[4]);
        assert_eq!(from.parse::<u64>()?, count, "{changes:?}");
        count = to.parse()?;
    }
    assert_eq!(count, 1, "{changes:?}");
    assert!(
        changes.iter().any(|e| e.starts_with("scaled out 1 -> ")),
        "{changes:?}"
    );
    Ok(())
}
