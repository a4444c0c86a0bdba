//! The metering ledger end to end: real tasks of known sizes on a containerd node, accounted in
//! short buckets by a three-server cluster whose leader is killed while it accounts; the
//! ledger then holds, for every task, exactly its requested CPU and memory times the span from
//! the start of its image pull to its stop (the task's own timestamps), no bucket lost and none
//! counted twice; `berth usage` and the Prometheus counters say the same.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ok, stdout};
use berth_proto::v1 as pb;
use berth_tests::{
    addresses, api, cli, kill_leader, poll, run_tasks, scrape, three_joined_servers, wait_stopped,
    AgentProc, Env, Scrape, FAST_RAFT,
};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A task's size and its billable span, from its own timestamps (ms).
struct Known {
    cpu: u64,
    memory: u64,
    billable_ms: u64,
}

#[tokio::test]
async fn the_ledger_matches_each_tasks_timestamps_through_a_leader_kill() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let mut args = FAST_RAFT.to_vec();
    args.extend(["--usage-bucket", "2s"]);
    let mut servers = three_joined_servers(&env, &args).await?;
    let all = addresses(&servers);
    let _agent = AgentProc::start(&env, &all, "node-1").await?;

    // Tasks of three sizes and lengths, one family each.
    let mut ids = Vec::new();
    for (family, cpu, memory, seconds, count) in [
        ("small", "128", "32", "2", "2"),
        ("medium", "512", "64", "4", "1"),
        ("large", "1024", "128", "12", "1"),
    ] {
        ids.extend(
            run_tasks(
                &all,
                &[
                    "run", &env.image, "--family", family, "--cpu", cpu, "--memory", memory,
                    "--count", count, "--", "sleep", seconds,
                ],
            )
            .await?,
        );
    }
    assert_eq!(ids.len(), 4, "{ids:?}");

    // While they run, and buckets close every 2 s, the leader dies.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    kill_leader(&mut servers).await?;
    let rest = addresses(&servers);
    let one = servers[0].addr.to_string();
    let mut known = BTreeMap::new();
    let mut last_stop = 0;
    for id in &ids {
        wait_stopped(&rest, id, TIMEOUT).await?;
        let t = describe(&one, id).await?;
        assert!(t.pull_started_at > 0, "{id} has no pull start");
        assert!(t.pull_started_at <= t.started_at && t.started_at <= t.stopped_at);
        last_stop = last_stop.max(t.stopped_at);
        known.insert(
            id.clone(),
            Known {
                cpu: u64::from(t.cpu),
                memory: u64::from(t.memory),
                billable_ms: t.stopped_at - t.pull_started_at,
            },
        );
    }

    // Once the ledger is closed past the last stop, every figure comes from closed buckets.
    let usage = |by: &'static str| {
        let one = one.clone();
        async move {
            let mut client = api(&one).await?;
            let req = pb::GetUsageRequest {
                since: 1,
                by: by.into(),
                ..Default::default()
            };
            anyhow::Ok(client.get_usage(req).await?.into_inner())
        }
    };
    poll(
        "the ledger to close past the last stop",
        TIMEOUT,
        || async {
            let u = usage("task").await.ok()?;
            (u.accounted_to >= last_stop).then_some(())
        },
    )
    .await?;

    // Each task: exactly its own span, times its size.
    let by_task = usage("task").await?;
    assert_eq!(by_task.rows.len(), 4, "{by_task:?}");
    for row in &by_task.rows {
        let k = &known[&row.task_id];
        let a = row.accrued.unwrap_or_default();
        assert_eq!(a.task_ms, k.billable_ms, "task {}", row.task_id);
        assert_eq!(a.cpu_unit_ms, k.cpu * k.billable_ms, "task {}", row.task_id);
        assert_eq!(
            a.memory_mib_ms,
            k.memory * k.billable_ms,
            "task {}",
            row.task_id
        );
        // Used figures come from samples (every second here), in the leader's memory: the
        // longest task has some from the new leader at least.
        if row.task_definition.starts_with("large:") {
            assert!(
                a.sampled_ms > 0,
                "task {} has no used figures: {a:?}",
                row.task_id
            );
            assert!(a.memory_peak_bytes > 0, "{a:?}");
        }
    }
    // Each family, summed over the closed buckets: no bucket lost, none counted twice.
    let by_taskdef = usage("taskdef").await?;
    for family in ["small", "medium", "large"] {
        let expected: u64 = by_task
            .rows
            .iter()
            .filter(|r| r.task_definition.starts_with(&format!("{family}:")))
            .map(|r| known[&r.task_id].cpu * known[&r.task_id].billable_ms)
            .sum();
        let got: u64 = by_taskdef
            .rows
            .iter()
            .filter(|r| r.task_definition.starts_with(&format!("{family}:")))
            .map(|r| r.accrued.as_ref().map_or(0, |a| a.cpu_unit_ms))
            .sum();
        assert_eq!(got, expected, "{family}: {by_taskdef:?}");
    }
    let total_cpu_unit_ms: u64 = known.values().map(|k| k.cpu * k.billable_ms).sum();

    // The CLI says the same (one-off tasks: no service), and so does each server's /metrics.
    let out = cli(&rest, &["usage", "--since", "1h", "-o", "json"]).await?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let vcpu_seconds = report["total"]["vcpuSeconds"].as_f64().unwrap_or(-1.0);
    let expected_vcpu_seconds = total_cpu_unit_ms as f64 / 1024.0 / 1000.0;
    assert!(
        (vcpu_seconds - expected_vcpu_seconds).abs() < 1e-6,
        "{vcpu_seconds} != {expected_vcpu_seconds}: {report}"
    );
    let table = ok(&rest, &["usage", "--since", "1h"]).await?;
    assert!(table.contains("NAMESPACE   SERVICE"), "{table}");
    let csv = stdout(&cli(&rest, &["usage", "--by", "task", "-o", "csv"]).await?);
    assert_eq!(csv.lines().count(), 5, "{csv}");
    for s in &servers {
        let addr = s.addr.to_string();
        let counter = || async {
            let metrics = scrape(&addr, &one, Scrape::Token).await.ok()?;
            let line = metrics
                .lines()
                .find(|l| l.starts_with("berth_usage_vcpu_seconds_total{"))?
                .to_owned();
            let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
            Some((value, line))
        };
        // A follower applies the ledger's last bucket a moment after the leader.
        let seen = poll("the usage counter", Duration::from_secs(10), || async {
            counter()
                .await
                .filter(|(v, _)| (v - expected_vcpu_seconds).abs() < 1e-6)
        })
        .await;
        assert!(seen.is_ok(), "server {}: {:?}", s.id, counter().await);
    }
    Ok(())
}

async fn describe(server: &str, id: &str) -> anyhow::Result<pb::Task> {
    let mut client = api(server).await?;
    let req = pb::DescribeTaskRequest {
        task_id: id.into(),
        ..Default::default()
    };
    Ok(client.describe_task(req).await?.into_inner())
}
