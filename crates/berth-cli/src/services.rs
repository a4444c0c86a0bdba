//! Service subcommands: apply, get, describe, scale, delete, promote, and waiting for a
//! rollout.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use berth_model::{
    DesiredStatus, PlannedTask, RolloutState, Service, ServiceSpec, TaskDefinitionSpec, TaskStatus,
};
use berth_proto::v1 as pb;

use crate::output::{age, render_list, render_table, table, Format};
use crate::{Client, GlobalArgs};

/// How often waits ask for the service's state.
const POLL: Duration = Duration::from_millis(250);

/// What `apply` did to one service.
pub struct Applied {
    pub service: Service,
    /// The deployment the apply started, if any.
    pub deployment: Option<String>,
}

pub async fn apply(
    client: &mut Client,
    namespace: String,
    spec: ServiceSpec,
    template: Option<TaskDefinitionSpec>,
    dry_run: bool,
) -> anyhow::Result<Option<Applied>> {
    let name = spec.name.clone();
    let req = pb::ApplyServiceRequest {
        namespace,
        spec: Some(spec.into()),
        template: template.map(Into::into),
        dry_run,
    };
    let r = client
        .request(req, |mut c, req| async move { c.apply_service(req).await })
        .await?;
    let verb = match (r.created, r.changed, r.deployment_started) {
        (true, _, _) => "created",
        (false, true, true) => "configured (deployment started)",
        (false, true, false) => "configured",
        (false, false, _) => "unchanged",
    };
    let suffix = if dry_run { " (dry run)" } else { "" };
    println!("service/{name} {verb}{suffix}");
    if dry_run {
        print_plan(&r.plan.into_iter().map(Into::into).collect::<Vec<_>>());
        return Ok(None);
    }
    let service: Service = r.service.context("server sent no service")?.try_into()?;
    let deployment = r
        .deployment_started
        .then(|| service.deployments.first().map(|d| d.id.clone()))
        .flatten();
    Ok(Some(Applied {
        service,
        deployment,
    }))
}

fn tasks(n: usize) -> String {
    if n == 1 {
        "1 task".to_owned()
    } else {
        format!("{n} tasks")
    }
}

/// "would place 3 tasks: 2 on node-1, 1 on node-2" and the reasons for tasks that fit nowhere.
fn print_plan(plan: &[PlannedTask]) {
    if plan.is_empty() {
        return;
    }
    let mut on: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let mut reasons: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for p in plan {
        match p {
            PlannedTask::Node(node) => *on.entry(node.as_str()).or_default() += 1,
            PlannedTask::Unplaceable { reason } => {
                *reasons.entry(reason.as_str()).or_default() += 1
            }
        }
    }
    let placed: usize = on.values().sum();
    if placed > 0 {
        let nodes: Vec<String> = on.iter().map(|(n, c)| format!("{c} on {n}")).collect();
        println!("  would place {}: {}", tasks(placed), nodes.join(", "));
    }
    for (reason, count) in reasons {
        println!("  {} could not be placed: {reason}", tasks(count));
    }
}

pub async fn fetch(
    client: &mut Client,
    global: &GlobalArgs,
    name: &str,
) -> anyhow::Result<Service> {
    let req = pb::DescribeServiceRequest {
        namespace: global.namespace.clone(),
        name: name.to_owned(),
        stale: global.stale,
    };
    let s = client
        .request(
            req,
            |mut c, req| async move { c.describe_service(req).await },
        )
        .await?;
    Ok(s.try_into()?)
}

pub async fn list(client: &mut Client, global: &GlobalArgs) -> anyhow::Result<Vec<Service>> {
    let req = pb::ListServicesRequest {
        namespace: global.namespace.clone(),
        stale: global.stale,
        selector: global.selector.clone().unwrap_or_default(),
    };
    let r = client
        .request(req, |mut c, req| async move { c.list_services(req).await })
        .await?;
    let mut services: Vec<Service> = berth_proto::try_all(r.services)?;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

/// How many of the service's tasks are being stopped but still run.
async fn stopping(client: &mut Client, global: &GlobalArgs, name: &str) -> anyhow::Result<usize> {
    let group = format!("service:{name}");
    Ok(
        crate::tasks::list(client, &global.namespace, global.stale, "")
            .await?
            .iter()
            .filter(|t| {
                t.group.as_deref() == Some(group.as_str())
                    && t.desired_status == DesiredStatus::Stopped
                    && t.last_status != TaskStatus::Stopped
            })
            .count(),
    )
}

/// One line about where a rollout stands.
fn progress_line(s: &Service) -> String {
    let deployments: Vec<String> = s
        .deployments
        .iter()
        .map(|d| {
            format!(
                "{} {} {} healthy {}/{} running {} pending {}{}",
                d.status,
                d.task_definition,
                d.rollout_state,
                d.healthy_count,
                d.desired_count,
                d.running_count,
                d.pending_count,
                if d.failed_tasks > 0 {
                    format!(" failed {}", d.failed_tasks)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    format!("service/{}: {}", s.name, deployments.join("; "))
}

/// Waits until the deployment `deployment` finishes (or, without one, until the service runs
/// its desired count), printing progress whenever it changes. Ok(true) when it completed.
pub async fn wait(
    client: &mut Client,
    global: &GlobalArgs,
    name: &str,
    deployment: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let s = fetch(client, global, name).await?;
        let line = progress_line(&s);
        if line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        let done = match deployment {
            Some(id) => match s.deployments.iter().find(|d| d.id == id) {
                Some(d) if d.rollout_state == RolloutState::Completed => Some(true),
                // At zero, nothing runs to verify it: the first request does.
                Some(d) if d.rollout_state == RolloutState::InProgress && waits_at_zero(&s) => {
                    if tty {
                        eprintln!();
                    }
                    eprintln!(
                        "deployment {id} of service {name} waits at zero tasks: the service's first request starts it, and its circuit breaker rolls it back if it fails"
                    );
                    Some(true)
                }
                Some(d) if d.rollout_state == RolloutState::Failed => {
                    // Failed: wait for a rollback to finish before answering.
                    let rollback_done = s
                        .deployments
                        .first()
                        .is_none_or(|p| p.id == id || p.rollout_state != RolloutState::InProgress);
                    rollback_done.then(|| {
                        if tty {
                            eprintln!();
                        }
                        eprintln!(
                            "error: deployment {id} of service {name} failed: {}",
                            d.rollout_state_reason
                        );
                        false
                    })
                }
                Some(_) => None,
                None => {
                    // Gone: it failed and its tasks were replaced by a rollback.
                    let rolled_back = s
                        .deployments
                        .first()
                        .is_some_and(|p| p.rollout_state != RolloutState::InProgress);
                    rolled_back.then(|| {
                        if tty {
                            eprintln!();
                        }
                        let why = s
                            .events
                            .iter()
                            .rev()
                            .find(|e| e.message.contains(id))
                            .map_or("see `berth describe service`".to_owned(), |e| {
                                e.message.clone()
                            });
                        eprintln!("error: deployment {id} of service {name} failed: {why}");
                        false
                    })
                }
            },
            None => {
                let steady = s.deployments.len() == 1
                    && s.primary()
                        .is_some_and(|p| p.healthy_count == s.desired_count)
                    && s.running_count == s.desired_count
                    && s.pending_count == 0;
                // The counts leave out tasks being stopped; scaled in means they are gone.
                let settled = steady && stopping(client, global, name).await? == 0;
                settled.then_some(true)
            }
        };
        if let Some(ok) = done {
            if tty && ok {
                eprintln!();
            }
            return Ok(ok);
        }
        if Instant::now() > deadline {
            bail!(
                "service {name} did not finish its rollout within {}; `berth describe service {name}` shows where it stands",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the service is at zero tasks and scales to zero (its deployments are verified when
/// it wakes).
fn waits_at_zero(s: &Service) -> bool {
    s.desired_count == 0
        && s.autoscaling
            .as_ref()
            .is_some_and(|a| a.scale_to_zero.is_some())
}

pub fn print(format: Format, services: &[Service], single: bool) -> anyhow::Result<()> {
    print!(
        "{}",
        render(format, services, single, crate::output::now_ms())?
    );
    Ok(())
}

pub fn render(
    format: Format,
    services: &[Service],
    single: bool,
    now: u64,
) -> anyhow::Result<String> {
    render_list(format, services, single, |wide| {
        let rows: Vec<Vec<String>> = services
            .iter()
            .map(|s| {
                let rollout = s
                    .primary()
                    .map_or("-".to_owned(), |d| d.rollout_state.to_string());
                let mut row = vec![
                    s.name.clone(),
                    s.task_definition.to_string(),
                    s.desired_count.to_string(),
                    s.running_count.to_string(),
                    s.pending_count.to_string(),
                    rollout,
                    s.status.to_string(),
                    age(s.created_at, now),
                ];
                if wide {
                    row.push(s.deployments.len().to_string());
                    row.push(metrics_cell(s));
                    row.push(s.events.last().map_or("-".into(), |e| e.message.clone()));
                }
                row
            })
            .collect();
        let mut header = vec![
            "NAME",
            "TASK DEFINITION",
            "DESIRED",
            "RUNNING",
            "PENDING",
            "ROLLOUT",
            "STATUS",
            "AGE",
        ];
        if wide {
            header.extend(["DEPLOYMENTS", "METRICS", "LAST EVENT"]);
        }
        render_table(&header, &rows)
    })
}

/// "CPUUtilization 72%/50%" per tracked metric (value/target), or the policy's range alone.
fn metrics_cell(s: &Service) -> String {
    let Some(a) = &s.autoscaling else {
        return "-".into();
    };
    let values: Vec<String> = a
        .target_tracking
        .iter()
        .map(|t| {
            let value = s
                .metrics
                .iter()
                .find(|m| m.metric == t.metric)
                .map_or("?".to_owned(), |m| compact(t.metric, m.value));
            format!("{} {value}/{}", t.metric, compact(t.metric, t.target))
        })
        .collect();
    format!("{} ({}..{})", values.join(", "), a.min_count, a.max_count)
}

/// A metric's value for a table cell: `40%`, `12.5`.
fn compact(metric: berth_model::ScalingMetric, value: f64) -> String {
    if metric.is_utilization() {
        format!("{value:.0}%")
    } else {
        format!("{value:.1}")
    }
}

pub fn describe(s: &Service) {
    let c = &s.deployment_configuration;
    println!("Name:             {}", s.name);
    println!("Namespace:        {}", s.namespace);
    println!("Status:           {}", s.status);
    println!("Task definition:  {}", s.task_definition);
    println!(
        "Tasks:            {} desired, {} running, {} pending",
        s.desired_count, s.running_count, s.pending_count
    );
    println!(
        "Deployment:       {} (min healthy {}%, max {}%), circuit breaker {}{}, healthy deadline {}s, progress deadline {}s",
        c.strategy,
        c.minimum_healthy_percent,
        c.maximum_percent,
        if c.circuit_breaker.enable { "on" } else { "off" },
        if c.circuit_breaker.rollback { " with rollback" } else { "" },
        c.healthy_deadline,
        c.progress_deadline
    );
    if let Some(r) = &s.last_completed {
        println!("Last completed:   {r}");
    }
    if let Some(a) = &s.autoscaling {
        println!(
            "Autoscaling:      {}..{} tasks, cooldowns out {}s / in {}s{}{}",
            a.min_count,
            a.max_count,
            a.scale_out_cooldown,
            a.scale_in_cooldown,
            if a.disable_scale_in {
                ", scale-in disabled"
            } else {
                ""
            },
            a.scale_to_zero.map_or(String::new(), |z| format!(
                ", to zero after {}s idle (requests wait up to {}s to wake it)",
                z.idle_after, z.activation_timeout
            ))
        );
        println!("Metrics:          {}", metrics_cell(s));
    }
    if s.backoff.failures > 0 {
        println!(
            "Back-off:         {} tasks failed in a row; next launch not before {}",
            s.backoff.failures,
            berth_model::format_timestamp(s.backoff.not_before)
        );
    }
    println!(
        "Created:          {}",
        berth_model::format_timestamp(s.created_at)
    );
    println!("Deployments:");
    let rows: Vec<Vec<String>> = s
        .deployments
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.status.to_string(),
                d.task_definition.to_string(),
                d.desired_count.to_string(),
                d.running_count.to_string(),
                d.healthy_count.to_string(),
                d.pending_count.to_string(),
                d.failed_tasks.to_string(),
                d.rollout_state.to_string(),
                if d.rollout_state_reason.is_empty() {
                    "-".to_owned()
                } else {
                    d.rollout_state_reason.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "  ID",
            "STATUS",
            "TASK DEFINITION",
            "DESIRED",
            "RUNNING",
            "HEALTHY",
            "PENDING",
            "FAILED",
            "ROLLOUT",
            "REASON",
        ],
        &rows
            .into_iter()
            .map(|mut r| {
                r[0] = format!("  {}", r[0]);
                r
            })
            .collect::<Vec<_>>(),
    );
    println!("Events:");
    for e in s.events.iter() {
        println!("  {}  {}", berth_model::format_timestamp(e.at), e.message);
    }
}

pub async fn scale(
    client: &mut Client,
    global: &GlobalArgs,
    name: &str,
    count: u32,
) -> anyhow::Result<Service> {
    let req = pb::ScaleServiceRequest {
        namespace: global.namespace.clone(),
        name: name.to_owned(),
        desired_count: count,
    };
    let s = client
        .request(req, |mut c, req| async move { c.scale_service(req).await })
        .await?;
    Ok(s.try_into()?)
}

pub async fn delete(client: &mut Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let req = pb::DeleteServiceRequest {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    client
        .request(req, |mut c, req| async move { c.delete_service(req).await })
        .await?;
    println!("service/{name} deleted (its tasks are stopping)");
    Ok(())
}

pub async fn redeploy(client: &mut Client, global: &GlobalArgs, name: &str) -> anyhow::Result<()> {
    let req = pb::RedeployServiceRequest {
        namespace: global.namespace.clone(),
        name: name.to_owned(),
    };
    let s = client
        .request(
            req,
            |mut c, req| async move { c.redeploy_service(req).await },
        )
        .await?;
    let deployment = s
        .deployments
        .first()
        .map(|d| d.id.clone())
        .unwrap_or_default();
    println!("service/{name} redeploying (deployment {deployment})");
    Ok(())
}

pub async fn promote(client: &mut Client, global: &GlobalArgs, name: &str) -> anyhow::Result<()> {
    let req = pb::PromoteServiceRequest {
        namespace: global.namespace.clone(),
        name: name.to_owned(),
    };
    client
        .request(
            req,
            |mut c, req| async move { c.promote_service(req).await },
        )
        .await?;
    println!("service/{name} promoted");
    Ok(())
}
