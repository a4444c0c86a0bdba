//! The leader's controllers. Each is a plan from berth-control (state and clock in, commands
//! out) plus what it needs from the leader's memory; [`leader_loop`] runs every one of them the
//! same way: wake on its triggers, skip while this server does not lead, read the state with
//! the controller's [`ReadPolicy`], plan, and propose the commands one by one.

use std::time::{Duration, Instant};

use berth_control::autoscaling::Samples;
use berth_model::TaskMetrics;
use berth_state::{Command, CommandResult, Rejection, State};
use berth_store::{error_chain, Store};
use tracing::Instrument as _;

use crate::metrics::Metrics;
use crate::{now_ms, Liveness, Usage};

/// How a controller reads the state it plans from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Linearizable: a new leader must not decide from a state that lags behind what is
    /// already committed (it could start tasks twice, or scale from an old count). One
    /// linearizable read per term, then the leader's state caught up with its commit index
    /// ([`Store::read_leading_queued`]).
    Linearizable,
    /// This server's own state: for decisions the state machine checks again when it applies
    /// them (placements are refused when they no longer fit; DOWN is idempotent).
    Stale,
}

/// One of the leader's controllers.
pub trait Controller: Send + 'static {
    /// For log lines: what the controller does.
    const NAME: &'static str;
    const READ: ReadPolicy;
    /// Whether every applied change wakes it (besides its interval and leadership changes).
    const ON_APPLY: bool;

    /// How often it runs without any other trigger.
    fn interval(&self) -> Duration;

    /// Called before each round with whether this server leads.
    fn leading(&mut self, _leading: bool) {}

    /// The round's commands.
    fn plan(&mut self, state: &State, at: u64) -> Vec<Command>;

    /// Called with the answer to each proposed command.
    fn proposed(&mut self, _command: &Command, _result: &CommandResult) {}
}

/// Runs `controller` on this server for as long as the store is open; it acts only while this
/// server leads.
pub async fn leader_loop<C: Controller>(store: Store, mut controller: C) {
    let span = tracing::info_span!("controller", name = C::NAME);
    async move {
        let mut leader = store.leadership();
        let mut applied = store.watch();
        let mut tick = tokio::time::interval(controller.interval());
        loop {
            tokio::select! {
                r = applied.changed(), if C::ON_APPLY => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            let leading = *leader.borrow_and_update();
            controller.leading(leading);
            if !leading {
                continue;
            }
            // The clock is read with the state, once the state has caught up: a linearizable
            // read, or (leading, after one this term) the leader's applied commit index.
            let commands = match C::READ {
                ReadPolicy::Stale => store.read_stale_queued(|s| controller.plan(s, now_ms())),
                ReadPolicy::Linearizable => {
                    match store
                        .read_leading_queued(|s| controller.plan(s, now_ms()))
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!("read the state: {}", error_chain(&e));
                            continue;
                        }
                    }
                }
            };
            for command in commands {
                match store.propose(command.clone()).await {
                    Ok(result) => {
                        match &result {
                            CommandResult::Rejected(Rejection::Conflict(why)) => {
                                tracing::debug!(
                                    subject = %command.subject(),
                                    "changed meanwhile, deciding again: {why}"
                                );
                            }
                            CommandResult::Rejected(r) => {
                                tracing::warn!(subject = %command.subject(), "refused: {r}");
                            }
                            _ => {}
                        }
                        controller.proposed(&command, &result);
                    }
                    Err(e) => tracing::warn!(
                        subject = %command.subject(),
                        "propose: {}",
                        error_chain(&e)
                    ),
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Places pending tasks: one `PlaceTasks` entry per round, after every applied change.
pub struct Scheduler {
    pub metrics: Metrics,
    /// Where the next round starts (see [`berth_control::scheduling::plan`]).
    cursor: String,
    started: Instant,
}

impl Scheduler {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            cursor: String::new(),
            started: Instant::now(),
        }
    }
}

impl Controller for Scheduler {
    const NAME: &'static str = "scheduler";
    const READ: ReadPolicy = ReadPolicy::Stale;
    const ON_APPLY: bool = true;

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn plan(&mut self, state: &State, at: u64) -> Vec<Command> {
        self.started = Instant::now();
        berth_control::scheduling::plan(state, at, &mut self.cursor)
            .into_iter()
            .collect()
    }

    fn proposed(&mut self, command: &Command, result: &CommandResult) {
        let (Command::PlaceTasks { placements, .. }, CommandResult::Placed(placed)) =
            (command, result)
        else {
            return;
        };
        for p in placements {
            tracing::debug!(task_id = %p.task_id, node = %p.node, "placement proposed");
        }
        self.metrics.placed(*placed);
        self.metrics
            .scheduling_round(self.started.elapsed().as_secs_f64());
    }
}

/// Reconciles every service after every applied change.
pub struct ServiceReconciler;

impl Controller for ServiceReconciler {
    const NAME: &'static str = "services";
    const READ: ReadPolicy = ReadPolicy::Linearizable;
    const ON_APPLY: bool = true;

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn plan(&mut self, state: &State, at: u64) -> Vec<Command> {
        // Deployment deadlines that began before this server led count from then.
        let since = berth_store::leading_since();
        berth_control::services::plan(state, at, since, &mut || uuid::Uuid::new_v4().to_string())
    }

    fn proposed(&mut self, command: &Command, result: &CommandResult) {
        let Command::ReconcileService(r) = command else {
            return;
        };
        if matches!(result, CommandResult::Rejected(_)) {
            return;
        }
        for t in &r.start {
            tracing::debug!(task_id = %t.task_id, service = %r.name, "task created");
        }
        for o in &r.stop {
            tracing::debug!(task_id = %o.task_id, service = %r.name, "stop requested: {}", o.reason);
        }
    }
}

impl Samples for Usage {
    fn samples(&self, task_id: &str) -> Vec<TaskMetrics> {
        Usage::samples(self, task_id)
    }

    fn requests(
        &self,
        namespace: &str,
        name: &str,
    ) -> (
        Vec<berth_control::autoscaling::RequestSample>,
        berth_model::Timestamp,
    ) {
        Usage::requests(self, namespace, name)
    }
}

/// Scales autoscaled services from the samples in the leader's memory, once a second.
pub struct Autoscaler {
    pub usage: Usage,
}

impl Controller for Autoscaler {
    const NAME: &'static str = "autoscaler";
    const READ: ReadPolicy = ReadPolicy::Linearizable;
    const ON_APPLY: bool = false;

    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn plan(&mut self, state: &State, at: u64) -> Vec<Command> {
        // Cooldowns that began before this server led count from then.
        berth_control::autoscaling::plan(state, &self.usage, at, berth_store::leading_since())
    }
}

/// Nodes lost at once past this many are logged as one line: when a leader that was too busy
/// to hear its agents (or a new one that never heard them) finds thousands silent, a line each
/// (again every round until the write commits) cost it more than what it was short of.
const LOST_NODES_LOGGED_APART: usize = 10;

/// Logs the nodes a round declares DOWN (each command also carries its reason into the
/// node's events).
fn log_lost(commands: &[Command]) {
    let lost: Vec<(&String, &String)> = commands
        .iter()
        .filter_map(|c| match c {
            Command::MarkNodeDown { node, reason, .. } => Some((node, reason)),
            _ => None,
        })
        .collect();
    if lost.len() <= LOST_NODES_LOGGED_APART {
        for (node, reason) in lost {
            tracing::warn!(%node, "node lost: {reason}");
        }
        return;
    }
    let first: Vec<&str> = lost
        .iter()
        .take(LOST_NODES_LOGGED_APART)
        .map(|(n, _)| n.as_str())
        .collect();
    tracing::warn!(
        "{} nodes lost, their agents silent past the node TTL (the first: {}, …); each node's \
         events say since when",
        lost.len(),
        first.join(", ")
    );
}

/// Declares nodes whose agents are silent for the node TTL DOWN.
pub struct NodeMonitor {
    pub liveness: Liveness,
    pub ttl: Duration,
    /// When this server became the leader: nodes it never heard from count from then.
    leader_since: Option<Instant>,
}

impl NodeMonitor {
    pub fn new(liveness: Liveness, ttl: Duration) -> Self {
        Self {
            liveness,
            ttl,
            leader_since: None,
        }
    }
}

impl Controller for NodeMonitor {
    const NAME: &'static str = "nodes";
    const READ: ReadPolicy = ReadPolicy::Stale;
    const ON_APPLY: bool = false;

    fn interval(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(100))
    }

    fn leading(&mut self, leading: bool) {
        if !leading {
            self.leader_since = None;
        }
    }

    fn plan(&mut self, state: &State, at: u64) -> Vec<Command> {
        let since = *self.leader_since.get_or_insert_with(Instant::now);
        let commands = berth_control::nodes::plan(
            state,
            |n| self.liveness.last_seen(n),
            since,
            Instant::now(),
            self.ttl,
            at,
        );
        log_lost(&commands);
        commands
    }
}

/// Closes the metering ledger's buckets once they are over ([`berth_control::metering`]),
/// with what tasks used by the samples in this server's memory.
pub struct Meter {
    pub usage: Usage,
    pub policy: berth_control::metering::Policy,
}

impl Controller for Meter {
    const NAME: &'static str = "meter";
    // The bucket to close is where the committed ledger stands.
    const READ: ReadPolicy = ReadPolicy::Linearizable;
    const ON_APPLY: bool = false;

    fn interval(&self) -> Duration {
        (Duration::from_millis(self.policy.bucket_ms) / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    fn plan(&mut self, state: &State, at: u64) -> Vec<Command> {
        self.usage
            .metered_to(state.ledger().map(|l| l.accounted_to));
        berth_control::metering::plan(state, &self.usage, at, &self.policy)
    }

    fn proposed(&mut self, command: &Command, result: &CommandResult) {
        if let (Command::CloseUsage(c), CommandResult::Done) = (command, result) {
            tracing::debug!(
                start = c.start,
                end = c.end,
                "closed a bucket of the ledger"
            );
        }
    }
}

/// Removes finished work kept long enough: stopped tasks, unused INACTIVE revisions, nodes
/// DOWN for the node retention ([`berth_control::retention`]).
pub struct Retention {
    policy: berth_control::retention::Policy,
}

impl Retention {
    pub fn new(policy: berth_control::retention::Policy) -> Self {
        Self { policy }
    }
}

impl Controller for Retention {
    const NAME: &'static str = "retention";
    // A node read as DOWN must still be DOWN (the state machine checks that too).
    const READ: ReadPolicy = ReadPolicy::Linearizable;
    const ON_APPLY: bool = false;

    /// Often enough that a task goes within its retention plus a few seconds.
    fn interval(&self) -> Duration {
        (Duration::from_millis(self.policy.tasks_ms) / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    fn plan(&mut self, state: &State, at: u64) -> Vec<Command> {
        berth_control::retention::plan(state, at, &self.policy)
    }

    fn proposed(&mut self, command: &Command, result: &CommandResult) {
        if let (Command::Retire(r), CommandResult::Count(n)) = (command, result) {
            tracing::debug!(
                tasks = r.tasks.len(),
                forgotten = r.forget.len(),
                revisions = r.revisions.len(),
                nodes = r.nodes.len(),
                removed = n,
                "retention round"
            );
            for node in &r.nodes {
                tracing::info!(%node, "node removed: DOWN for longer than the node retention");
            }
        }
    }
}
