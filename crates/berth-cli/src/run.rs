//! `berth run`: a task from an image (registered as a task definition first) or from a
//! registered task definition; with `--wait`, its output and exit code.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use berth_model::{
    BinpackField, ContainerDefinition, PlacementConstraint, PlacementSpec, PlacementStrategy,
    PortMapping, Protocol, StopCode, TaskDefinitionSpec, TaskStatus,
};
use berth_proto::v1 as pb;

use crate::args::RunArgs;
use crate::logs::LogOptions;
use crate::{Client, GlobalArgs};

/// How often `run --wait` asks for the task's state.
const POLL: Duration = Duration::from_millis(100);
/// Exit code of `run --wait` when the task never ran (as `docker run` uses 125).
const EXIT_FAILED_TO_START: i32 = 125;

pub async fn run_task(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<i32> {
    if args.wait && args.count != 1 {
        bail!("--wait follows one task; drop --count or --wait");
    }
    let mut client = Client::new(global)?;
    let task_definition = match (&args.image, &args.task_definition) {
        (_, Some(td)) => td.clone(),
        (Some(image), None) => {
            let spec = image_spec(&args, image)?;
            let (def, _) = crate::taskdefs::register(&mut client, &global.namespace, spec).await?;
            format!("{}:{}", def.family, def.revision)
        }
        (None, None) => bail!("give an IMAGE or --task-definition FAMILY[:REV]"),
    };
    // One token for every retry of this call: the cluster creates the tasks once.
    let req = pb::RunTaskRequest {
        namespace: global.namespace.clone(),
        task_definition,
        count: args.count,
        client_token: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let tasks = client
        .request(req, |mut c, req| async move { c.run_task(req).await })
        .await?
        .tasks;
    if !args.wait {
        for t in &tasks {
            println!("{}", t.task_id);
        }
        return Ok(0);
    }
    let task_id = tasks
        .first()
        .context("server created no task")?
        .task_id
        .clone();
    eprintln!("{task_id}");
    wait_and_stream(global, &mut client, &task_id).await
}

/// The task definition an image run registers: one container of `image`, from the flags.
fn image_spec(args: &RunArgs, image: &str) -> anyhow::Result<TaskDefinitionSpec> {
    let mut environment = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} must be KEY=VALUE"))?;
        environment.insert(k.to_owned(), v.to_owned());
    }
    let family = args
        .family
        .clone()
        .unwrap_or_else(|| family_from_image(image));
    let mut container = ContainerDefinition::new(family.clone(), image.to_owned());
    container.command = args.command.clone();
    container.environment = environment;
    container.stop_timeout =
        u32::try_from(args.stop_timeout.as_secs()).context("--stop-timeout is too long")?;
    container.init = !args.no_init;
    container.port_mappings = args.publish.clone();
    let spec = TaskDefinitionSpec {
        meta: Default::default(),
        family,
        cpu: args.cpu,
        memory: args.memory,
        containers: vec![container],
        placement: placement_flags(&args.placement_strategy, &args.placement_constraint)?,
        ephemeral_storage: None,
    };
    spec.validate()
        .map_err(|e| anyhow::anyhow!("invalid task: {e}"))?;
    Ok(spec)
}

/// `--publish [HOST:]PORT[/PROTO]` as a port mapping.
pub(crate) fn port_mapping(value: &str) -> Result<PortMapping, String> {
    let (ports, protocol) = match value.split_once('/') {
        Some((ports, proto)) => (ports, proto.parse()?),
        None => (value, Protocol::Tcp),
    };
    let port = |p: &str| {
        p.parse::<u16>().map_err(|_| {
            format!(
                "{p:?} is not a port number; write PORT or HOST_PORT:PORT, like 8080 or 80:8080"
            )
        })
    };
    let (host_port, container_port) = match ports.split_once(':') {
        Some((host, container)) => (port(host)?, port(container)?),
        None => (0, port(ports)?),
    };
    if container_port == 0 {
        return Err("the container port must not be 0".into());
    }
    Ok(PortMapping {
        container_port,
        host_port,
        protocol,
    })
}

/// `--placement-strategy` and `--placement-constraint` flags as a placement spec.
fn placement_flags(strategies: &[String], constraints: &[String]) -> anyhow::Result<PlacementSpec> {
    let strategy = strategies
        .iter()
        .map(|s| {
            Ok(match s.split_once(':') {
                Some(("binpack", "cpu")) => PlacementStrategy::Binpack { field: BinpackField::Cpu },
                Some(("binpack", "memory")) => PlacementStrategy::Binpack { field: BinpackField::Memory },
                Some(("spread", field)) => PlacementStrategy::Spread { field: field.to_owned() },
                None if s == "random" => PlacementStrategy::Random,
                _ => bail!(
                    "--placement-strategy {s:?}: use binpack:cpu, binpack:memory, spread:node, spread:attribute:NAME or random"
                ),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let constraints = constraints
        .iter()
        .map(|c| {
            if c == "distinctInstance" {
                PlacementConstraint::DistinctInstance
            } else {
                PlacementConstraint::MemberOf {
                    expression: c.clone(),
                }
            }
        })
        .collect();
    Ok(PlacementSpec {
        strategy,
        constraints,
    })
}

/// `demo` from `127.0.0.1:5000/team/demo:latest`, made a valid family name.
pub fn family_from_image(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let name = last.split(':').next().unwrap_or(last);
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['-', '_']).to_owned();
    if cleaned.is_empty() {
        "task".to_owned()
    } else {
        cleaned
    }
}

/// Prints the task's events until it runs, then its output; answers its exit code.
async fn wait_and_stream(
    global: &GlobalArgs,
    client: &mut Client,
    task_id: &str,
) -> anyhow::Result<i32> {
    let mut last_event = None;
    let task = loop {
        let task = crate::tasks::describe(client, global, task_id).await?;
        if let Some(e) = task.events.last() {
            if last_event.as_ref() != Some(&e.message) {
                eprintln!("{}: {}", task.last_status, e.message);
                last_event = Some(e.message.clone());
            }
        }
        if task.last_status >= TaskStatus::Running {
            break task;
        }
        tokio::time::sleep(POLL).await;
    };
    if task.started_at.is_some() {
        let opts = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        crate::logs::print(global, task_id, opts).await?;
    }
    let task = loop {
        let task = crate::tasks::describe(client, global, task_id).await?;
        if task.is_stopped() {
            break task;
        }
        tokio::time::sleep(POLL).await;
    };
    if task.stop_code == Some(StopCode::TaskFailedToStart) {
        eprintln!(
            "error: task {task_id} failed to start: {}",
            task.stopped_reason.as_deref().unwrap_or("no reason given")
        );
        return Ok(EXIT_FAILED_TO_START);
    }
    Ok(task.exit_code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::{family_from_image, port_mapping};
    use berth_model::{PortMapping, Protocol};

    #[test]
    fn published_ports() {
        assert_eq!(port_mapping("8080"), Ok(PortMapping::tcp(8080)));
        assert_eq!(
            port_mapping("53:5353/udp"),
            Ok(PortMapping {
                container_port: 5353,
                host_port: 53,
                protocol: Protocol::Udp
            })
        );
        assert!(port_mapping("http")
            .unwrap_err()
            .contains("not a port number"));
        assert!(port_mapping("80/sctp")
            .unwrap_err()
            .contains("use tcp or udp"));
        assert!(port_mapping("80:0").is_err());
    }

    #[test]
    fn families_from_images() {
        assert_eq!(family_from_image("127.0.0.1:5000/demo:latest"), "demo");
        assert_eq!(
            family_from_image("registry.io/team/web.app@sha256:abc"),
            "web-app"
        );
        assert_eq!(family_from_image("busybox"), "busybox");
    }
}
