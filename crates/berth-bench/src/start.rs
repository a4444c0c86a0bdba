//! Start latency on real containerd, beside the floor `ctr run` sets.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_proto::v1 as pb;
use berth_tests::{Env, ServerProc};

use crate::api::spec;
use crate::cluster::scratch_dir;
use crate::results::{record_percentiles, Results};

/// The steps of a start, in the order they happen, as the task's events time them (ms since the
/// epoch, the server's and the agent's clocks: one machine here).
const STEPS: [&str; 5] = [
    // RunTask sent -> "placed on node" (the API, the Raft write creating the task, the
    // scheduler; "created" is stamped before the write, so it marks nothing apart)
    "placed",
    // "placed" -> the agent's first event, "pulling image" (the assignment reaching it)
    "assigned",
    // -> "image … already present"
    "image",
    // -> "started" (the task network, the container created and started, its quota set)
    "container",
    // "started" -> RUNNING seen by the client (the report through Raft, the 1 ms polls)
    "reported",
];

/// How long each of [`STEPS`] took for one task, from its events; `None` when an event is
/// missing.
fn steps(submitted_ms: f64, running_ms: f64, events: &[pb::Event]) -> Option<[f64; 5]> {
    let at = |prefix: &str| {
        events
            .iter()
            .find(|e| e.message.starts_with(prefix))
            .map(|e| e.at as f64)
    };
    let image = at("image ").or_else(|| at("pulled image"))?;
    let marks = [
        submitted_ms,
        at("placed on node")?,
        at("pulling image")?,
        image,
        at("started")?,
        running_ms,
    ];
    let mut out = [0.0; 5];
    for (i, step) in out.iter_mut().enumerate() {
        *step = marks[i + 1] - marks[i];
    }
    Some(out)
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Start latency on real containerd: 100 tasks started one after another on one agent with the
/// image already pulled, submit to RUNNING as the API reports it, and each step's share from
/// the task's events; beside it the floor, the same image started 100 times by `ctr run -d`
/// against the same containerd; and the elections and failed writes meanwhile.
pub(crate) async fn start(results: &mut Results) -> anyhow::Result<()> {
    const RUNS: usize = 100;
    let env = Env::start_in(scratch_dir("berth-start")?).await?;
    let server = ServerProc::start(&env.path("server"), None).await?;
    let addr = server.addr.to_string();
    let agent = crate::cluster::agent(&env, &addr, "start").await?;
    let mut client = berth_tests::api(&addr).await?;
    let mut sleeper = spec("sleeper", 16, 16);
    sleeper.containers[0].image = env.image.clone();
    sleeper.containers[0].command = vec!["sleep".into(), "3600".into()];
    client
        .register_task_definition(pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(sleeper),
            reuse_identical: false,
        })
        .await?;
    let run_one = || {
        let mut c = client.clone();
        async move {
            let t = Instant::now();
            // Events carry whole milliseconds.
            let submitted = epoch_ms().floor();
            let task = c
                .run_task(pb::RunTaskRequest {
                    namespace: String::new(),
                    task_definition: "sleeper".into(),
                    count: 1,
                    client_token: String::new(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .tasks
                .pop()
                .context("no task")?;
            loop {
                let now = c
                    .describe_task(pb::DescribeTaskRequest {
                        namespace: String::new(),
                        task_id: task.task_id.clone(),
                        stale: true,
                    })
                    .await?
                    .into_inner();
                if now.last_status == pb::TaskStatus::Running as i32 {
                    let taken = steps(submitted, epoch_ms(), &now.events);
                    return anyhow::Ok((t.elapsed().as_secs_f64() * 1000.0, taken));
                }
                anyhow::ensure!(
                    now.last_status != pb::TaskStatus::Stopped as i32,
                    "task {} stopped: {}",
                    task.task_id,
                    now.stopped_reason
                );
                anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "no start in 60 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let watched = crate::cluster::Watched::begin(&[&server]).await?;
    // The first task pulls the image; it is not counted.
    run_one().await?;
    let mut berth = Vec::new();
    let mut by_step = vec![Vec::new(); STEPS.len()];
    for _ in 0..RUNS {
        let (ms, taken) = run_one().await?;
        berth.push(ms);
        for (all, ms) in by_step.iter_mut().zip(taken.into_iter().flatten()) {
            all.push(ms);
        }
    }
    let mut floor = Vec::new();
    for i in 0..RUNS {
        let t = Instant::now();
        let out = berth_tests::ctr(
            &env.containerd.socket,
            &agent.namespace,
            &[
                "run",
                "-d",
                &env.image,
                &format!("floor-{i}"),
                "sleep",
                "3600",
            ],
        )
        .await?;
        anyhow::ensure!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        floor.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let p50 = record_percentiles(results, "start.", &mut berth);
    for (step, ms) in STEPS.iter().zip(&mut by_step) {
        record_percentiles(results, &format!("start.step_{step}_"), ms);
    }
    let floor_p50 = record_percentiles(results, "start.floor_", &mut floor);
    results.insert("start.ratio_p50".into(), p50 / floor_p50);
    // A failed RunTask ends the scenario: none failed when it gets here.
    watched.record(results, "start", 0).await?;
    drop(agent);
    Ok(())
}
