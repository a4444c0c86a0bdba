//! The soak: does berth stay flat for months? Three servers with a short task retention and
//! hollow agents take a steady churn of short tasks (hollow containers whose command is
//! `sleep 1` exit after a second) and of service deployments (a new revision every few
//! seconds, the old one deregistered), for `BERTH_SOAK_DURATION` (20 minutes by default,
//! some 3 million tasks). Every few seconds it samples each server's RSS and data-dir size (disk used,
//! and the length of its files), and how long probe tasks take from `RunTask` to RUNNING;
//! beside the churn, a steady caller times linearizable API reads all along. The
//! verdict compares the last tenth of the run with the first tenth after warm-up (the first
//! fifth, in which the retained history fills up): every figure should be within 10%.
//! Runs only when named: `make bench SCENARIO=soak`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_proto::v1 as pb;

use crate::api::{spec, wait_nodes};
use crate::cluster::{rss_mib, Cluster, Hollow};
use crate::results::Results;

const NODES: u32 = 200;
/// How long the churn goes on (`BERTH_SOAK_DURATION`). A length, not a count of tasks: the
/// verdict is about time (the warm-up must cover redb's file filling, a few minutes), and a
/// count of tasks shrank the run as berth got faster (a million took 25 minutes when the
/// soak was written, 5 after issue #20's speed-ups, too short to leave the fill-up behind).
const DEFAULT_LENGTH: Duration = Duration::from_secs(20 * 60);
/// The servers' task retention for the run: the history kept is what stopped in the last
/// half minute (plus each service's latest five), not the whole run.
const RETENTION: &str = "30s";
/// The metering ledger's bucket for the run, shortened with the retention: a stopped task is
/// kept until its bucket closes, and each close writes what every task of the bucket accrued
/// at once. With the defaults (a 1-minute bucket, 1 hour of retention) a bucket is a sixtieth
/// of what the state keeps; a 1-minute bucket beside a 30-second retention would be twice
/// it, a burst no cluster with the defaults makes (a third, here).
const USAGE_BUCKET: &str = "10s";
/// Samples in two retentions.
const WARM_UP_SAMPLES: usize = 12;
/// Short tasks in flight: a batch of 1,000 goes in whenever fewer than this many wait.
const PENDING_AT_MOST: u64 = 2_000;
const BATCH: u32 = 1_000;
const SERVICES: usize = 4;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const DEPLOY_EVERY: Duration = Duration::from_secs(5);
/// How long a probe may take to start before the sample gives up on it (and the run fails).
const PROBE_PATIENCE: Duration = Duration::from_secs(60);
/// Each sample times this many probe tasks.
const PROBES: u32 = 5;
/// The steady caller's pause between API calls: about a hundred calls a sample, so a tenth
/// of the run's p99 stands on a few thousand calls, not on its few slowest.
const API_PAUSE: Duration = Duration::from_millis(20);
/// API calls at least this slow are printed with the time they began.
const SLOW_CALL_MS: f64 = 200.0;
/// The kinds of objects whose counts are sampled: what the churn makes and the retention
/// removes.
const KINDS: [&str; 5] = ["task", "removed-task", "task-usage", "request", "taskdef"];

/// What one sample saw.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Seconds since the churn began.
    at: f64,
    /// Per server, MiB.
    rss: Vec<f64>,
    /// Per server, MiB of disk its `raft` data dir uses (allocated blocks).
    disk: Vec<f64>,
    /// Per server, MiB its `raft` data dir's files are long (redb grows its file in steps and
    /// fills it; `disk` is what is used of it).
    files: Vec<f64>,
    /// Per server, MiB of Raft log entries its database holds (`berth_store_log_bytes`).
    log: Vec<f64>,
    /// Per server, MiB of its state on disk: its snapshot (`berth_store_object_bytes`).
    objects: Vec<f64>,
    /// Server 1's count of each of [`KINDS`] (`berth_objects`).
    kinds: Vec<u64>,
    /// API calls' latencies, ms.
    api: Vec<f64>,
    /// Probe tasks' RunTask → RUNNING, ms.
    scheduling: Vec<f64>,
    /// Short tasks submitted so far: the churn submits whenever fewer than
    /// [`PENDING_AT_MOST`] wait, so its rate is what the cluster keeps up with.
    submitted: u64,
}

pub(crate) async fn soak(results: &mut Results) -> anyhow::Result<()> {
    let length = match std::env::var("BERTH_SOAK_DURATION") {
        Ok(v) => humantime::parse_duration(&v)
            .with_context(|| format!("BERTH_SOAK_DURATION={v}: a duration such as 20m or 1h"))?,
        Err(_) => DEFAULT_LENGTH,
    };
    let cluster = Cluster::start_with(&[
        "--task-retention",
        RETENTION,
        "--usage-bucket",
        USAGE_BUCKET,
    ])
    .await?;
    let watched = cluster.watch().await?;
    let _agents = Hollow::spawn(&cluster.addresses(), "soak", NODES).await?;
    let leader = cluster.leader_addr().await?;
    wait_nodes(&leader, u64::from(NODES)).await?;
    let mut client = cluster.leader().await?;
    for family in ["short", "probe"] {
        let mut def = spec(family, 64, 64);
        def.containers[0].command = vec!["sleep".into(), "1".into()];
        client
            .register_task_definition(pb::RegisterTaskDefinitionRequest {
                namespace: String::new(),
                spec: Some(def),
                reuse_identical: true,
            })
            .await?;
    }
    for i in 0..SERVICES {
        deploy(&mut client, i, 0).await?;
    }

    let api = ApiProbe::start(cluster.leader().await?);
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut submitted: u64 = 0;
    let mut revision = 0u32;
    let mut next_sample = Instant::now();
    let mut next_deploy = Instant::now() + DEPLOY_EVERY;
    let mut probes: Vec<String> = Vec::new();
    let data_dirs: Vec<PathBuf> = cluster.servers.iter().map(|s| s.data_dir.clone()).collect();
    let addrs: Vec<String> = cluster.servers.iter().map(|s| s.addr.to_string()).collect();
    let pids: Vec<u32> = cluster
        .servers
        .iter()
        .map(|s| s.pid().context("server pid"))
        .collect::<anyhow::Result<_>>()?;
    while started.elapsed() < length {
        let pending = crate::api::metric(&leader, "berth_tasks{state=\"PENDING\"}")
            .await
            .unwrap_or(0);
        if pending < PENDING_AT_MOST {
            let count = BATCH;
            client
                .run_task(pb::RunTaskRequest {
                    namespace: String::new(),
                    task_definition: "short".into(),
                    count,
                    client_token: String::new(),
                    ..Default::default()
                })
                .await
                .context("submit short tasks")?;
            submitted += u64::from(count);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if Instant::now() >= next_deploy {
            revision += 1;
            deploy(&mut client, revision as usize % SERVICES, revision).await?;
            next_deploy = Instant::now() + DEPLOY_EVERY;
        }
        if Instant::now() >= next_sample {
            let mut s = sample(&mut client, &pids, &data_dirs, &addrs, &probes).await?;
            s.at = started.elapsed().as_secs_f64();
            s.submitted = submitted;
            s.api = api.take()?;
            let round = |v: &[f64]| v.iter().map(|v| v.round()).collect::<Vec<_>>();
            eprintln!(
                "soak: {:>5.0}s {submitted:>8} submitted, rss {:?} MiB, disk {:?} MiB, log {:?} MiB, objects {:?} MiB, {KINDS:?} {:?}",
                s.at,
                round(&s.rss),
                round(&s.disk),
                round(&s.log),
                round(&s.objects),
                s.kinds,
            );
            samples.push(s);
            probes = run_probes(&mut client).await?;
            // From now: a slow sample must not make the next ones come in a burst.
            next_sample = Instant::now() + SAMPLE_EVERY;
        }
    }
    let churned = started.elapsed().as_secs_f64();
    // Every short task finishes within seconds; wait for the last ones to be placed, run and
    // stop (the services' tasks and the last probes may still run).
    let services = u64::try_from(SERVICES * 10).unwrap_or(u64::MAX) + u64::from(PROBES);
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let pending = crate::api::metric(&leader, "berth_tasks{state=\"PENDING\"}").await;
        let running = crate::api::metric(&leader, crate::api::RUNNING).await;
        if pending == Some(0) && running.is_some_and(|r| r <= services) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "short tasks still run two minutes after the last was submitted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    api.stop().await?;
    let secs = started.elapsed().as_secs_f64();
    results.insert("soak.finished_tasks".into(), submitted as f64);
    results.insert("soak.duration_s".into(), secs);
    results.insert("soak.tasks_per_sec".into(), submitted as f64 / secs);
    results.insert("soak.samples".into(), samples.len() as f64);
    write_series(&samples)?;
    // A failed API call ends the soak at once: none failed when it gets here.
    watched.record(results, "soak", 0).await?;
    // A probe waits behind the churn's queue (up to PENDING_AT_MOST + BATCH tasks): where in
    // it a probe lands moves its time by up to what the queue takes to drain at the churn's
    // rate.
    let queue_ms = (PENDING_AT_MOST + u64::from(BATCH)) as f64
        / (submitted as f64 / churned).max(1.0)
        * 1000.0;
    results.insert("soak.queue_drain_ms".into(), queue_ms);
    verdict(results, &samples, queue_ms)
}

/// Applies service `svc-{i}` (10 tasks) at a new revision, and deregisters the one before.
async fn deploy(client: &mut berth_tests::Api, i: usize, revision: u32) -> anyhow::Result<()> {
    let name = format!("svc-{i}");
    let mut template = spec(&name, 64, 64);
    template.containers[0]
        .environment
        .insert("REVISION".into(), revision.to_string());
    let applied = client
        .apply_service(pb::ApplyServiceRequest {
            namespace: String::new(),
            spec: Some(pb::ServiceSpec {
                name: name.clone(),
                desired_count: 10,
                ..Default::default()
            }),
            template: Some(template),
            ..Default::default()
        })
        .await
        .context("deploy a service")?
        .into_inner();
    let current = applied
        .service
        .as_ref()
        .map(|s| s.task_definition.clone())
        .unwrap_or_default();
    let rev: u32 = current
        .rsplit(':')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if rev > 1 {
        client
            .deregister_task_definition(pb::DeregisterTaskDefinitionRequest {
                namespace: String::new(),
                task_definition: format!("{name}:{}", rev - 1),
            })
            .await
            .context("deregister the revision before")?;
    }
    Ok(())
}

/// Starts the probe tasks whose scheduling latency the next sample reads.
async fn run_probes(client: &mut berth_tests::Api) -> anyhow::Result<Vec<String>> {
    let r = client
        .run_task(pb::RunTaskRequest {
            namespace: String::new(),
            task_definition: "probe".into(),
            count: PROBES,
            client_token: String::new(),
            ..Default::default()
        })
        .await
        .context("run probes")?
        .into_inner();
    Ok(r.tasks.into_iter().map(|t| t.task_id).collect())
}

async fn sample(
    client: &mut berth_tests::Api,
    pids: &[u32],
    data_dirs: &[PathBuf],
    addrs: &[String],
    probes: &[String],
) -> anyhow::Result<Sample> {
    let mut s = Sample::default();
    let mib = |v: Option<u64>| v.unwrap_or(0) as f64 / (1024.0 * 1024.0);
    for (i, addr) in addrs.iter().enumerate() {
        let kinds: Vec<String> = KINDS
            .iter()
            .map(|k| format!("berth_objects{{kind=\"{k}\"}}"))
            .collect();
        let mut series = vec!["berth_store_log_bytes", "berth_store_object_bytes"];
        if i == 0 {
            series.extend(kinds.iter().map(String::as_str));
        }
        let values = crate::api::metrics(addr, &series).await;
        s.log.push(mib(values[0]));
        s.objects.push(mib(values[1]));
        if i == 0 {
            s.kinds = values[2..].iter().map(|v| v.unwrap_or(0)).collect();
        }
    }
    for pid in pids {
        s.rss.push(rss_mib(*pid)?);
    }
    for dir in data_dirs {
        let (used, long) = dir_bytes(&dir.join("raft"));
        s.disk.push(used as f64 / (1024.0 * 1024.0));
        s.files.push(long as f64 / (1024.0 * 1024.0));
    }
    // The probes started a sample ago: RunTask (created) to RUNNING (started), as the
    // leader stamped them; a probe not yet started is waited for.
    for id in probes {
        let until = Instant::now() + PROBE_PATIENCE;
        loop {
            let t = client
                .describe_task(pb::DescribeTaskRequest {
                    namespace: String::new(),
                    task_id: id.clone(),
                    stale: false,
                })
                .await
                .context("describe a probe")?
                .into_inner();
            if t.started_at > 0 {
                s.scheduling
                    .push(t.started_at.saturating_sub(t.created_at) as f64);
                break;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "probe task {id} did not start within {PROBE_PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(s)
}

/// A caller beside the churn that describes the services (linearizable reads) one after
/// another, a short pause apart, and keeps each call's latency for the next sample.
struct ApiProbe {
    latencies: std::sync::Arc<std::sync::Mutex<Vec<f64>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ApiProbe {
    fn start(mut client: berth_tests::Api) -> Self {
        let latencies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let kept = latencies.clone();
        let task = tokio::spawn(async move {
            for i in 0usize.. {
                let t = Instant::now();
                let described = client
                    .describe_service(pb::DescribeServiceRequest {
                        namespace: String::new(),
                        name: format!("svc-{}", i % SERVICES),
                        stale: false,
                    })
                    .await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if let Err(status) = described {
                    // Said at once: the soak stops at its next sample, without the cause.
                    eprintln!("soak: an API call failed after {ms:.0} ms: {status}");
                    anyhow::bail!("describe a service: {status}");
                }
                if ms >= SLOW_CALL_MS {
                    // With the wall clock, to set beside the servers' logs (snapshots, purges).
                    let unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64()
                        - ms / 1000.0;
                    eprintln!("soak: slow API call at unix {unix:.3}: {ms:.0} ms");
                }
                kept.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(ms);
                if tokio::time::timeout(API_PAUSE, stopped.changed())
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            Ok(())
        });
        Self {
            latencies,
            stop,
            task,
        }
    }

    /// The latencies since the last take.
    fn take(&self) -> anyhow::Result<Vec<f64>> {
        if self.task.is_finished() {
            anyhow::bail!("the API caller stopped: a call failed");
        }
        let mut v = self
            .latencies
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(std::mem::take(&mut *v))
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the API caller")?
    }
}

/// Writes the samples as CSV beside the results (`soak.csv`): the figures over time, for the
/// summary in BENCHMARKS.md.
fn write_series(samples: &[Sample]) -> anyhow::Result<()> {
    let out =
        PathBuf::from(std::env::var("BERTH_BENCH_OUT").unwrap_or_else(|_| "bench/results".into()));
    std::fs::create_dir_all(&out)?;
    let servers = samples.first().map_or(0, |s| s.rss.len());
    let mut csv = String::from("at_s");
    for i in 1..=servers {
        csv.push_str(&format!(
            ",s{i}_rss_mib,s{i}_disk_mib,s{i}_file_mib,s{i}_log_mib,s{i}_objects_mib"
        ));
    }
    for kind in KINDS {
        csv.push_str(&format!(",s1_{}", kind.replace('-', "_")));
    }
    csv.push_str(",api_max_ms,scheduling_max_ms\n");
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    for s in samples {
        csv.push_str(&format!("{:.0}", s.at));
        for i in 0..servers {
            csv.push_str(&format!(
                ",{:.1},{:.1},{:.1},{:.1},{:.1}",
                s.rss[i], s.disk[i], s.files[i], s.log[i], s.objects[i]
            ));
        }
        for count in &s.kinds {
            csv.push_str(&format!(",{count}"));
        }
        csv.push_str(&format!(",{:.1},{:.1}\n", max(&s.api), max(&s.scheduling)));
    }
    std::fs::write(out.join("soak.csv"), csv).context("write soak.csv")
}

/// Bytes of disk the files under `dir` use (allocated blocks, as `du`) and how long they are.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or((0, 0), |m| (m.blocks() * 512, m.len())),
            Err(_) => (0, 0),
        })
        .fold((0, 0), |(u, l), (du, dl)| (u + du, l + dl))
}

/// The first tenth after warm-up against the last tenth, figure by figure; the run is flat
/// when the last is within 10% of the first on every one (or within a floor: a few MiB, a few
/// ms, which noise alone moves by more than 10% of a small number). The probes' time to
/// RUNNING is mostly where they land in the churn's queue, which takes `queue_ms` to drain: a
/// sample's probes land together, so a tenth's median is over some twenty places in it, and
/// the difference of two such medians has a spread of about 0.15 `queue_ms` from that alone;
/// its floor is half of `queue_ms`. The p99 (about the queue's whole length) is reported, not
/// judged. A cluster that slows down shows first in the churn's rate (`tasks_per_sec`, judged
/// for a drop of more than 10%), which sets how long the queue takes.
fn verdict(results: &mut Results, samples: &[Sample], queue_ms: f64) -> anyhow::Result<()> {
    // Warm-up: the first fifth, and at least two retentions (the retained history fills up
    // over one; the first removals then follow).
    let warm = (samples.len() / 5).max(WARM_UP_SAMPLES);
    anyhow::ensure!(
        samples.len() >= warm + 20,
        "only {} samples: the run was too short to judge (raise BERTH_SOAK_DURATION)",
        samples.len()
    );
    let tenth = ((samples.len() - warm) / 10).max(2);
    let first = &samples[warm..warm + tenth];
    let last = &samples[samples.len() - tenth..];
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let quantile = |q: f64, mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let p99 = |v: Vec<f64>| quantile(0.99, v);
    let mut flat = true;
    let mut figure = |name: &str, a: f64, b: f64, floor: f64| {
        results.insert(format!("soak.{name}.first"), a);
        results.insert(format!("soak.{name}.last"), b);
        let ratio = b / a.max(f64::MIN_POSITIVE);
        results.insert(format!("soak.{name}.ratio"), ratio);
        if b > a * 1.10 && b - a > floor {
            flat = false;
            eprintln!("soak: {name} grew from {a:.1} to {b:.1}");
        }
    };
    for server in 0..first[0].rss.len() {
        figure(
            &format!("s{}_rss_mib", server + 1),
            mean(first.iter().map(|s| s.rss[server]).collect()),
            mean(last.iter().map(|s| s.rss[server]).collect()),
            16.0,
        );
        figure(
            &format!("s{}_disk_mib", server + 1),
            mean(first.iter().map(|s| s.disk[server]).collect()),
            mean(last.iter().map(|s| s.disk[server]).collect()),
            16.0,
        );
        figure(
            &format!("s{}_file_mib", server + 1),
            mean(first.iter().map(|s| s.files[server]).collect()),
            mean(last.iter().map(|s| s.files[server]).collect()),
            16.0,
        );
    }
    figure(
        "api_p99_ms",
        p99(first.iter().flat_map(|s| s.api.clone()).collect()),
        p99(last.iter().flat_map(|s| s.api.clone()).collect()),
        5.0,
    );
    let scheduling = |tenth: &[Sample], q: f64| {
        quantile(q, tenth.iter().flat_map(|s| s.scheduling.clone()).collect())
    };
    figure(
        "scheduling_p50_ms",
        scheduling(first, 0.5),
        scheduling(last, 0.5),
        (queue_ms / 2.0).max(20.0),
    );
    let rate = |tenth: &[Sample]| {
        let (a, b) = (&tenth[0], &tenth[tenth.len() - 1]);
        (b.submitted - a.submitted) as f64 / (b.at - a.at).max(f64::MIN_POSITIVE)
    };
    let (a, b) = (rate(first), rate(last));
    results.insert("soak.tasks_per_sec.first".into(), a);
    results.insert("soak.tasks_per_sec.last".into(), b);
    results.insert(
        "soak.tasks_per_sec.ratio".into(),
        b / a.max(f64::MIN_POSITIVE),
    );
    if b * 1.10 < a {
        flat = false;
        eprintln!("soak: the churn's rate fell from {a:.0} to {b:.0} tasks/s");
    }
    let (a, b) = (scheduling(first, 0.99), scheduling(last, 0.99));
    results.insert("soak.scheduling_p99_ms.first".into(), a);
    results.insert("soak.scheduling_p99_ms.last".into(), b);
    results.insert(
        "soak.scheduling_p99_ms.ratio".into(),
        b / a.max(f64::MIN_POSITIVE),
    );
    results.insert("soak.flat".into(), if flat { 1.0 } else { 0.0 });
    anyhow::ensure!(flat, "the soak did not stay flat (see soak.*.ratio)");
    Ok(())
}
