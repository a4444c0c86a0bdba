//! A deterministic simulation of the control plane's leader with many fake agents: a seeded
//! RNG and a manual clock drive node crashes and restarts, partitions (agents cut off from
//! every server), lost heartbeats and reports, leader changes (the new leader's memory starts
//! empty), container crashes, failing revisions, scaling and draining. The real state machine
//! (`berth_state::State::apply`), the real leader decisions (`scheduling::plan`,
//! `services::plan`, `nodes::lost_nodes`, `desired_tasks`) and the real agent engine
//! (`berth_agent::engine::plan`) run; the agents' hosts (containers, lease, self-fencing) are
//! modelled.
//!
//! Invariants after every step: no node is over capacity; no task runs on two nodes; a task the
//! control plane declared lost (NodeLost) is not running anywhere (fencing); every task the
//! state says RUNNING is on a node that is not DOWN; no service has more tasks than its
//! maximumPercent allows. After the faults end, every service converges to its desired count.
//!
//! `BERTH_SIM_SEEDS=N` (or `START..END`) runs those seeds (default 1000);
//! `BERTH_SIM_SEED=S` replays one, printing a trace with `BERTH_SIM_TRACE=1`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use berth_agent::engine::{self, Action, Local, LocalView};
use berth_control::{desired_tasks, nodes::lost_nodes, scheduling, services};
use berth_model::{
    ContainerDefinition, ContainerState, DesiredStatus, HealthStatus, Node, NodeStatus,
    ServiceSpec, StopCode, TaskDefinitionSpec, TaskStatus, TaskStatusUpdate,
};
use berth_state::{Command, CommandResult, ServiceChange, State};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STEP_MS: u64 = 250;
const TTL_MS: u64 = 3000;
/// Agents stop their tasks after this long without an acknowledged heartbeat (80% of the TTL).
const LEASE_MS: u64 = TTL_MS * 8 / 10;
const FAULT_STEPS: u64 = 240;
/// After the faults: at most this long to converge.
const QUIET_MS: u64 = 600_000;
const NODES: usize = 12;
const SERVICES: usize = 3;

struct Container {
    ready_at: u64,
    fails: bool,
    reported_running: bool,
}

/// One node's agent: the real engine's plan decides, this model carries its actions out.
struct Agent {
    name: String,
    up: bool,
    cut: bool,
    last_ack: u64,
    /// Containers running on the host, by task ID.
    running: BTreeMap<String, Container>,
    /// The agent process's task table, as the engine sees it.
    known: BTreeMap<String, Local>,
    /// Final reports not delivered yet (sent again on the next stream).
    unsent: Vec<TaskStatusUpdate>,
}

impl Agent {
    /// A task ended on this node on its own (or was fenced): report it once delivered.
    fn ended(&mut self, task_id: &str, code: StopCode) {
        self.running.remove(task_id);
        self.known.insert(task_id.to_owned(), Local::Finished);
        self.unsent
            .push(update(task_id, TaskStatus::Stopped, Some(code)));
    }
}

struct World {
    rng: StdRng,
    state: State,
    now: u64,
    base: Instant,
    /// The leader's memory: when each node was last heard from.
    liveness: HashMap<String, u64>,
    leader_since: u64,
    agents: Vec<Agent>,
    loss: f64,
    ids: u64,
    trace: bool,
}

fn spec(family: &str, env: u32, bad: bool) -> TaskDefinitionSpec {
    let mut c = ContainerDefinition::new(
        "app",
        if bad {
            "registry/missing:tag"
        } else {
            "registry/app:v1"
        },
    );
    c.environment.insert("REV".into(), env.to_string());
    TaskDefinitionSpec::new(family, 256, 128, vec![c])
}

impl World {
    fn new(seed: u64) -> Self {
        let mut w = Self {
            rng: StdRng::seed_from_u64(seed),
            state: State::default(),
            now: 1_000_000,
            base: Instant::now(),
            liveness: HashMap::new(),
            leader_since: 1_000_000,
            agents: Vec::new(),
            loss: 0.0,
            ids: 0,
            trace: std::env::var("BERTH_SIM_TRACE").is_ok(),
        };
        w.loss = w.rng.gen_range(0.0..0.2);
        for i in 0..NODES {
            let name = format!("node-{i:02}");
            w.register(&name);
            w.agents.push(Agent {
                name,
                up: true,
                cut: false,
                last_ack: w.now,
                running: BTreeMap::new(),
                known: BTreeMap::new(),
                unsent: Vec::new(),
            });
        }
        for s in 0..SERVICES {
            let name = format!("svc-{s}");
            w.apply(Command::RegisterTaskDefinition {
                namespace: "default".into(),
                spec: spec(&name, 0, false),
                reuse_identical: false,
                at: w.now,
            });
            let desired = w.rng.gen_range(1..=5);
            let id = w.id();
            w.apply(Command::ApplyService {
                namespace: "default".into(),
                spec: Box::new(ServiceSpec {
                    ingress: Vec::new(),
                    deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
                    meta: Default::default(),
                    name: name.clone(),
                    task_definition: format!("{name}:1").parse().expect("ref"),
                    desired_count: desired,
                    deployment_configuration: Default::default(),
                    placement: Default::default(),
                    autoscaling: None,
                }),
                deployment_id: id,
                at: w.now,
            });
        }
        w
    }

    fn id(&mut self) -> String {
        self.ids += 1;
        format!("id-{:06}", self.ids)
    }

    fn apply(&mut self, command: Command) -> CommandResult {
        if self.trace {
            println!("{:>8} {}", self.now, short(&command));
        }
        self.state.apply(command).0
    }

    fn register(&mut self, name: &str) {
        let node = Node::new(name, "127.0.0.1:1", 1024, 1024);
        let at = self.now;
        self.apply(Command::RegisterNode { node, at });
    }

    /// Faults and operator actions for this step.
    fn inject(&mut self) {
        let r: f64 = self.rng.gen();
        let i = self.rng.gen_range(0..self.agents.len());
        match r {
            r if r < 0.02 => {
                // A host crashes: its containers and its agent's memory die with it.
                let a = &mut self.agents[i];
                a.up = false;
                a.running.clear();
                a.known.clear();
                a.unsent.clear();
            }
            r if r < 0.05 => {
                let a = &mut self.agents[i];
                if !a.up {
                    a.up = true;
                    a.cut = false;
                    a.last_ack = self.now;
                }
            }
            r if r < 0.07 => self.agents[i].cut = true,
            r if r < 0.11 => self.agents[i].cut = false,
            r if r < 0.12 => {
                // A new leader: its memory of heartbeats starts empty.
                self.liveness.clear();
                self.leader_since = self.now;
            }
            r if r < 0.14 => {
                let s = self.rng.gen_range(0..SERVICES);
                // Not to zero: a bad revision deployed at zero completes at once (nothing to
                // run), as in ECS, and would then fail for good when scaled up.
                let n = self.rng.gen_range(1..=6);
                let at = self.now;
                self.apply(Command::UpdateService {
                    namespace: "default".into(),
                    name: format!("svc-{s}"),
                    change: ServiceChange::Scale(n),
                    at,
                });
            }
            r if r < 0.16 => self.deploy(),
            r if r < 0.17 => self.set_node(i, NodeStatus::Draining),
            r if r < 0.19 => self.set_node(i, NodeStatus::Active),
            r if r < 0.21 => {
                // A container exits on its own.
                let a = &mut self.agents[i];
                if let Some(id) = a.running.keys().next().cloned() {
                    a.ended(&id, StopCode::EssentialContainerExited);
                }
            }
            _ => {}
        }
    }

    fn set_node(&mut self, i: usize, status: NodeStatus) {
        let node = self.agents[i].name.clone();
        let at = self.now;
        self.apply(Command::SetNodeStatus { node, status, at });
    }

    /// A new revision of a random service; one in four cannot start.
    fn deploy(&mut self) {
        let s = self.rng.gen_range(0..SERVICES);
        let name = format!("svc-{s}");
        let bad = self.rng.gen_bool(0.25);
        let env = self.rng.gen();
        let at = self.now;
        let CommandResult::TaskDefinition {
            task_definition, ..
        } = self.apply(Command::RegisterTaskDefinition {
            namespace: "default".into(),
            spec: spec(&name, env, bad),
            reuse_identical: false,
            at,
        })
        else {
            panic!("register task definition");
        };
        let Some(svc) = self.state.service("default", &name).cloned() else {
            return;
        };
        let id = self.id();
        self.apply(Command::ApplyService {
            namespace: "default".into(),
            spec: Box::new(ServiceSpec {
                ingress: Vec::new(),
                deregistration_delay: berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS,
                meta: Default::default(),
                name,
                task_definition: task_definition.reference(),
                desired_count: svc.desired_count,
                deployment_configuration: svc.deployment_configuration,
                placement: svc.placement,
                autoscaling: svc.autoscaling,
            }),
            deployment_id: id,
            at,
        });
    }

    /// Every agent: heartbeat (unless cut off or lost), fencing, and the real agent engine's
    /// plan over its desired set, carried out on the modelled host.
    fn agents_step(&mut self) {
        for i in 0..self.agents.len() {
            if !self.agents[i].up {
                continue;
            }
            let delivered = !self.agents[i].cut && !self.rng.gen_bool(self.loss);
            if !delivered {
                let a = &mut self.agents[i];
                if self.now.saturating_sub(a.last_ack) > LEASE_MS && !a.running.is_empty() {
                    // Self-fencing: no acknowledged heartbeat within the lease.
                    let ids: Vec<String> = a.running.keys().cloned().collect();
                    for id in ids {
                        a.ended(&id, StopCode::NodeLost);
                    }
                }
                continue;
            }
            let name = self.agents[i].name.clone();
            self.liveness.insert(name.clone(), self.now);
            self.agents[i].last_ack = self.now;
            let known = self.state.node(&name).map(|n| n.status);
            if known.is_none() || known == Some(NodeStatus::Down) {
                self.register(&name);
            }
            let desired: Vec<engine::DesiredEntry> = desired_tasks(&self.state, &name)
                .into_iter()
                .map(Ok)
                .collect();
            let view = LocalView {
                tasks: self.agents[i].known.clone(),
                found: BTreeMap::new(),
            };
            let mut updates = std::mem::take(&mut self.agents[i].unsent);
            for action in engine::plan(&desired, &view) {
                self.act(i, action, &mut updates);
            }
            let now = self.now;
            let a = &mut self.agents[i];
            let mut failed = Vec::new();
            for (id, c) in &mut a.running {
                if now < c.ready_at {
                    continue;
                }
                if c.fails {
                    failed.push(id.clone());
                } else if !c.reported_running {
                    c.reported_running = true;
                    updates.push(update(id, TaskStatus::Running, None));
                }
            }
            for id in failed {
                a.ended(&id, StopCode::TaskFailedToStart);
            }
            updates.append(&mut a.unsent);
            if !updates.is_empty() {
                self.apply(Command::ReportTaskStatus {
                    node: name,
                    updates,
                    at: now,
                });
            }
        }
    }

    /// Carries out one action of agent `i`'s plan on its modelled host, as the agent's
    /// executor does on a real one.
    fn act(&mut self, i: usize, action: Action, updates: &mut Vec<TaskStatusUpdate>) {
        let ready_at = self.now + self.rng.gen_range(0..3) * STEP_MS;
        let a = &mut self.agents[i];
        match action {
            Action::Start { assignment, .. } => {
                let id = assignment.task_id;
                let fails = assignment
                    .containers
                    .iter()
                    .any(|c| c.image.contains("missing"));
                a.running.insert(
                    id.clone(),
                    Container {
                        ready_at,
                        fails,
                        reported_running: false,
                    },
                );
                a.known.insert(id.clone(), Local::Active);
                updates.push(update(&id, TaskStatus::Activating, None));
            }
            Action::Stop { task_id, .. } => {
                if a.running.remove(&task_id).is_some() {
                    updates.push(update(&task_id, TaskStatus::Stopped, None));
                }
                a.known.insert(task_id, Local::Finished);
            }
            Action::ReportEnded { task_id, ended } => {
                updates.push(update(&task_id, TaskStatus::Stopped, ended.stop_code));
                a.known.insert(task_id, Local::Finished);
            }
            Action::Forget { task_id } => {
                a.known.remove(&task_id);
            }
            Action::RemoveOrphans { .. } | Action::Ignore { .. } => {}
        }
    }

    /// The leader's controllers, in the order the server runs them.
    fn leader_step(&mut self) {
        let at = |ms: u64| self.base + Duration::from_millis(ms);
        let lost = lost_nodes(
            &self.state,
            |n| self.liveness.get(n).map(|ms| at(*ms)),
            at(self.leader_since),
            at(self.now),
            Duration::from_millis(TTL_MS),
        );
        for (node, _) in lost {
            let now = self.now;
            self.apply(Command::MarkNodeDown {
                node,
                reason: "silent".into(),
                at: now,
            });
        }
        if let Some(c) = scheduling::plan(&self.state, self.now, &mut String::new()) {
            self.apply(c);
        }
        let mut ids = 0u64;
        let prefix = self.ids;
        let commands = services::plan(&self.state, self.now, self.leader_since, &mut || {
            ids += 1;
            format!("gen-{prefix}-{ids:04}")
        });
        self.ids += 1;
        for c in commands {
            self.apply(c);
        }
    }

    fn check(&self) -> Result<(), String> {
        let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut per_service: HashMap<&str, u64> = HashMap::new();
        for t in self.state.tasks() {
            if t.is_stopped() {
                continue;
            }
            if let Some(n) = t.node.as_deref() {
                let e = used.entry(n).or_default();
                e.0 += u64::from(t.cpu);
                e.1 += u64::from(t.memory);
                if t.last_status == TaskStatus::Running
                    && self
                        .state
                        .node(n)
                        .is_some_and(|n| n.status == NodeStatus::Down)
                {
                    return Err(format!("task {} is RUNNING on DOWN node {n}", t.task_id));
                }
            }
            if t.desired_status == DesiredStatus::Running {
                if let Some(g) = t.group.as_deref() {
                    *per_service.entry(g).or_default() += 1;
                }
            }
        }
        for n in self.state.nodes() {
            let (cpu, memory) = used.get(n.name.as_str()).copied().unwrap_or_default();
            if cpu > n.cpu.total || memory > n.memory.total {
                return Err(format!(
                    "node {} over capacity: {cpu} cpu, {memory} MiB",
                    n.name
                ));
            }
        }
        for svc in self.state.services() {
            let d = u64::from(svc.desired_count);
            let c = &svc.deployment_configuration;
            let min = (d * u64::from(c.minimum_healthy_percent)).div_ceil(100);
            let max = (d * u64::from(c.maximum_percent) / 100).max(if d > 0 { min + 1 } else { 0 });
            let n = per_service.get(svc.group().as_str()).copied().unwrap_or(0);
            if n > max {
                return Err(format!(
                    "service {} has {n} tasks, at most {max} allowed",
                    svc.name
                ));
            }
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for a in &self.agents {
            for id in a.running.keys() {
                if let Some(other) = seen.insert(id, &a.name) {
                    return Err(format!("task {id} runs on {other} and {}", a.name));
                }
                let lost = self
                    .state
                    .task("default", id)
                    .is_some_and(|t| t.is_stopped() && t.stop_code == Some(StopCode::NodeLost));
                if lost {
                    return Err(format!(
                        "task {id} was declared lost but still runs on {} (fencing failed)",
                        a.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every service runs its desired count on a revision that starts.
    fn converged(&self) -> bool {
        self.state.services().all(|svc| {
            let good = self
                .state
                .task_definition(&svc.namespace, &svc.task_definition)
                .is_some_and(|d| !d.containers[0].image.contains("missing"));
            let running = self
                .state
                .tasks()
                .filter(|t| {
                    t.group.as_deref() == Some(svc.group().as_str())
                        && t.last_status == TaskStatus::Running
                        && t.desired_status == DesiredStatus::Running
                })
                .count();
            good && running == svc.desired_count as usize
        })
    }

    fn heal(&mut self) {
        for i in 0..self.agents.len() {
            let a = &mut self.agents[i];
            if !a.up {
                a.up = true;
                a.last_ack = self.now;
            }
            a.cut = false;
            self.set_node(i, NodeStatus::Active);
        }
        self.loss = 0.0;
    }
}

fn update(task_id: &str, status: TaskStatus, code: Option<StopCode>) -> TaskStatusUpdate {
    TaskStatusUpdate {
        task_id: task_id.into(),
        last_status: status,
        containers: vec![ContainerState {
            last_status: status,
            health_status: HealthStatus::Unknown,
            ..ContainerState::pending("app", "img")
        }],
        stop_code: code,
        stopped_reason: code.map(|c| format!("{c}")),
        event: None,
        ip_address: None,
    }
}

fn short(c: &Command) -> String {
    let text = format!("{c:?}");
    text.chars().take(160).collect()
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut w = World::new(seed);
    for step in 0..FAULT_STEPS {
        w.inject();
        w.agents_step();
        w.leader_step();
        w.check().map_err(|e| format!("step {step}: {e}"))?;
        w.now += STEP_MS;
    }
    w.heal();
    let deadline = w.now + QUIET_MS;
    while w.now < deadline {
        w.agents_step();
        w.leader_step();
        w.check()
            .map_err(|e| format!("after healing, t={}: {e}", w.now))?;
        if w.converged() {
            return Ok(());
        }
        w.now += STEP_MS;
    }
    let summary: Vec<String> = w
        .state
        .services()
        .map(|s| {
            format!(
                "{} desired {} running {} td {} deployments {:?} backoff {:?} events {:?}",
                s.name,
                s.desired_count,
                s.running_count,
                s.task_definition,
                s.deployments
                    .iter()
                    .map(|d| format!("{} {} {}", d.task_definition, d.status, d.rollout_state))
                    .collect::<Vec<_>>(),
                s.backoff,
                s.events
                    .iter()
                    .rev()
                    .take(12)
                    .map(|e| format!("{} {}", e.at, e.message))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    Err(format!("services did not converge: {summary:?}"))
}

#[test]
fn the_control_plane_keeps_its_invariants_under_faults() {
    berth_tests::sim::run_seeds(
        1000,
        "BERTH_SIM_SEED={seed} BERTH_SIM_TRACE=1 cargo test -p berth-control --test control_sim",
        run_seed,
    );
}
