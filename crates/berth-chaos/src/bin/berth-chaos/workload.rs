//! Concurrent clients of the public API, each recording what it asked, when, and what it was
//! answered (or that no answer came): the history the checker judges.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use berth_chaos::check::Operation;
use berth_chaos::history::History;
use berth_chaos::model::{
    RegisterInput, RegisterOutput, RevisionsInput, RevisionsOutput, TokensInput, TokensOutput,
};
use berth_proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tonic::Code;

/// Families whose revisions clients register and read: `fam-a-M`, `fam-b-M` in minute M of
/// the run, so that each family's history (and the checker's states) stays small.
pub const FAMILIES: &[&str] = &["fam-a", "fam-b"];
/// How long clients use one generation of families.
const FAMILY_EPOCH: Duration = Duration::from_secs(60);
/// Token runs per client family before the client moves to a new one.
const RUNS_PER_GROUP: u32 = 50;
/// Services whose desired counts clients set and read: `svc-a-E`, `svc-b-E` in epoch E of
/// [`SERVICE_EPOCH`], so that each one's history (and the checker's states) stays small.
const SERVICES: &[&str] = &["svc-a", "svc-b"];
/// How long clients use one generation of services.
const SERVICE_EPOCH: Duration = Duration::from_secs(60);
/// How long before its epoch [`rotate_services`] creates a generation, and how long after
/// the epoch it deletes it.
const SERVICE_OVERLAP: Duration = Duration::from_secs(15);
/// Every service's desired count before the run.
pub const INITIAL_COUNT: u64 = 1;
/// How long one call may take before it counts as unanswered: the servers' write timeout
/// (3 s) plus a forward.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client's family for its token runs, one per group of [`RUNS_PER_GROUP`]: its tasks carry
/// the label `chaos-group=FAMILY`, which lists them.
fn group_family(client: u32, group: u32) -> String {
    format!("chaos-c{client}-g{group}")
}

/// The service `prefix` of epoch `epoch`.
fn service(prefix: &str, epoch: u64) -> String {
    format!("{prefix}-{epoch}")
}

/// What creates (or sets again) service `name` at the initial count.
fn apply_service(name: &str, image: &str) -> pb::ApplyServiceRequest {
    pb::ApplyServiceRequest {
        namespace: String::new(),
        spec: Some(pb::ServiceSpec {
            name: name.into(),
            desired_count: INITIAL_COUNT as u32,
            ..Default::default()
        }),
        template: Some(spec(name, 0, image)),
        ..Default::default()
    }
}

/// Registers what the workload needs before it starts: the first epoch's services, at their
/// initial count.
pub async fn prepare(addresses: &str, image: &str) -> anyhow::Result<()> {
    let first = addresses.split(',').next().unwrap_or_default();
    let mut api = berth_tests::api(first).await?;
    for prefix in SERVICES {
        api.apply_service(apply_service(&service(prefix, 0), image))
            .await?;
    }
    Ok(())
}

/// Creates each epoch's services [`SERVICE_OVERLAP`] before the epoch starts and deletes
/// them that long after it ended, until `stop` is set. A creation sets the desired count, so
/// each attempt is a write of the initial count in the history, answered or not; a deletion
/// sets it to 0 while the service drains, so each attempt is a write of 0 (once the service
/// is gone, reads answer NotFound, which records nothing).
pub async fn rotate_services(mut client: Client, stop: Arc<AtomicBool>) {
    let epoch = SERVICE_EPOCH.as_nanos() as u64;
    let overlap = SERVICE_OVERLAP.as_nanos() as u64;
    // The next epoch to create, and the oldest one not yet deleted.
    let (mut create, mut delete) = (1u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let now = client.recorder.now();
        if now + overlap >= create * epoch && client.create_services(create).await {
            create += 1;
        }
        if now >= (delete + 1) * epoch + overlap && client.delete_services(delete).await {
            delete += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A small task definition whose content is `tag` (its container's `TAG` variable): `image`
/// (busybox, from the run's registry) sleeping for a day, which a hollow agent plays and the
/// real agent runs.
fn spec(family: &str, tag: u64, image: &str) -> pb::TaskDefinitionSpec {
    pb::TaskDefinitionSpec {
        family: family.into(),
        cpu: 16,
        memory: 16,
        containers: vec![pb::ContainerDefinition {
            name: "app".into(),
            image: image.into(),
            command: vec!["sleep".into(), "86400".into()],
            essential: true,
            stop_timeout: 1,
            environment: [("TAG".to_owned(), tag.to_string())].into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The history being recorded, on one clock.
pub struct Recorder {
    start: Instant,
    /// The image of every task definition.
    image: String,
    history: Mutex<History>,
}

impl Recorder {
    pub fn new(image: &str) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            image: image.to_owned(),
            history: Mutex::new(History {
                initial_count: INITIAL_COUNT,
                ..History::default()
            }),
        })
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.history.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn history(&self) -> History {
        self.with(|h| h.clone())
    }
}

/// What a call came back with: an answer, a refusal that changed nothing (NotFound apart: for
/// a describe it is the answer), or nothing known.
enum Outcome<T> {
    Answer(T),
    Missing,
    Refused,
    Unknown,
}

/// Refusals the server answered: the call took no effect. Anything else (no quorum, a
/// timeout, a lost connection, an internal error) may have taken effect or not.
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unauthenticated
            | Code::ResourceExhausted
    )
}

/// One client: one call at a time, to a server picked at random for each.
pub struct Client {
    pub id: u32,
    addresses: Vec<String>,
    connections: HashMap<String, berth_tests::Api>,
    rng: StdRng,
    recorder: Arc<Recorder>,
    tags: u64,
    /// A token whose run got no answer: sent again before a new one, as a client retries.
    retry: Option<String>,
    tokens: u64,
    /// The current group of token runs, whether its family is registered, and its runs.
    group: u32,
    group_ready: bool,
    group_runs: u32,
    /// Revisions this client saw registered, per family (what it asks to describe).
    seen: HashMap<String, u32>,
    /// Its tasks that were answered, to stop some of them (capacity is finite).
    tasks: Vec<String>,
    /// When the last call came back.
    returned: u64,
    /// Reads answered from the answering server's own state (`--stale`), which may be behind:
    /// only to check that the checker catches what that breaks.
    pub stale: bool,
}

impl Client {
    pub fn new(id: u32, addresses: &str, seed: u64, recorder: Arc<Recorder>) -> Self {
        Self {
            id,
            addresses: addresses.split(',').map(str::to_owned).collect(),
            connections: HashMap::new(),
            rng: StdRng::seed_from_u64(seed ^ (u64::from(id) << 32)),
            recorder,
            tags: 0,
            retry: None,
            tokens: 0,
            group: 0,
            group_ready: false,
            group_runs: 0,
            seen: HashMap::new(),
            tasks: Vec::new(),
            returned: 0,
            stale: false,
        }
    }

    /// Runs operations until `stop` is set.
    pub async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let server = self.rng.gen_range(0..self.addresses.len());
            let choice = self.rng.gen_range(0..100);
            match choice {
                0..=14 => self.register(server).await,
                15..=21 => self.latest(server).await,
                22..=24 => {
                    let family = self.family();
                    self.list_revisions(server, &family).await
                }
                25..=34 => self.describe(server).await,
                35..=49 => self.scale(server).await,
                50..=59 => self.describe_service(server).await,
                60..=74 => self.run_task(server).await,
                75..=84 => self.list(server).await,
                // As many stops as runs: the nodes' capacity is never used up.
                _ => self.stop_one(server).await,
            }
            // A little room between calls, as clients have.
            let pause = self.rng.gen_range(20..80);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Reads every object once, after the faults healed: what the final state holds goes into
    /// the history, so a write acknowledged and then lost is a violation.
    /// `services` whether to read every service's desired count, `families` the families the
    /// history names, `groups` how many groups of token runs this client went through.
    pub async fn final_reads(&mut self, services: bool, families: &[String], groups: u32) {
        if services {
            self.read_services().await;
        }
        for family in families {
            let server = self.rng.gen_range(0..self.addresses.len());
            self.list_revisions(server, family).await;
        }
        for group in 0..groups {
            self.group = group;
            self.group_ready = true;
            let server = self.rng.gen_range(0..self.addresses.len());
            self.list(server).await;
        }
    }

    async fn connect(&mut self, server: usize) -> Option<berth_tests::Api> {
        let addr = self.addresses[server].clone();
        if let Some(api) = self.connections.get(&addr) {
            return Some(api.clone());
        }
        let api = tokio::time::timeout(CALL_TIMEOUT, berth_tests::api(&addr))
            .await
            .ok()?
            .ok()?;
        self.connections.insert(addr, api.clone());
        Some(api)
    }

    /// Runs `call` on server `server` within the call timeout.
    async fn call<T, F, Fut>(&mut self, server: usize, call: F) -> Outcome<T>
    where
        F: FnOnce(berth_tests::Api) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let Some(api) = self.connect(server).await else {
            // Not even connected: nothing was sent.
            return Outcome::Refused;
        };
        let result = tokio::time::timeout(CALL_TIMEOUT, call(api)).await;
        self.returned = self.recorder.now();
        match result {
            Ok(Ok(answer)) => Outcome::Answer(answer.into_inner()),
            Ok(Err(status)) if status.code() == Code::NotFound => Outcome::Missing,
            Ok(Err(status)) if refused(status.code()) => Outcome::Refused,
            Ok(Err(_)) | Err(_) => {
                // The connection may be what failed: dial again next time.
                self.connections.remove(&self.addresses[server]);
                Outcome::Unknown
            }
        }
    }

    fn record<I, O>(&self, key: &str, call: u64, input: I, output: Option<O>) -> Operation<I, O> {
        let answered = output.is_some();
        Operation {
            client: self.id,
            key: key.to_owned(),
            call,
            ret: answered.then_some(self.returned),
            input,
            output,
        }
    }

    /// One of the families of the current minute.
    fn family(&mut self) -> String {
        let epoch = self.recorder.now() / FAMILY_EPOCH.as_nanos() as u64;
        format!(
            "{}-{epoch}",
            FAMILIES[self.rng.gen_range(0..FAMILIES.len())]
        )
    }

    async fn register(&mut self, server: usize) {
        let family = self.family();
        let family = family.as_str();
        self.tags += 1;
        let tag = (u64::from(self.id) << 40) | self.tags;
        let request = pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(spec(family, tag, &self.recorder.image)),
            reuse_identical: false,
        };
        let call = self.recorder.now();
        let outcome = self
            .call(server, |mut api| async move {
                api.register_task_definition(request).await
            })
            .await;
        let output = match outcome {
            Outcome::Refused | Outcome::Missing => return,
            Outcome::Unknown => None,
            Outcome::Answer(r) => {
                let revision = r.task_definition.map_or(0, |d| d.revision);
                self.saw(family, revision);
                Some(RevisionsOutput::Registered { revision })
            }
        };
        let op = self.record(family, call, RevisionsInput::Register { tag }, output);
        self.recorder.with(|h| h.revisions.push(op));
    }

    fn saw(&mut self, family: &str, revision: u32) {
        let known = self.seen.entry(family.to_owned()).or_default();
        *known = (*known).max(revision);
    }

    async fn latest(&mut self, server: usize) {
        let family = self.family();
        self.latest_of(server, &family).await;
    }

    async fn latest_of(&mut self, server: usize, family: &str) {
        let request = pb::DescribeTaskDefinitionRequest {
            namespace: String::new(),
            task_definition: family.to_owned(),
            stale: self.stale,
        };
        let call = self.recorder.now();
        let outcome = self
            .call(server, |mut api| async move {
                api.describe_task_definition(request).await
            })
            .await;
        let output = match outcome {
            Outcome::Refused => return,
            Outcome::Unknown => None,
            Outcome::Missing => Some(RevisionsOutput::Latest(None)),
            Outcome::Answer(d) => {
                self.saw(family, d.revision);
                Some(RevisionsOutput::Latest(Some((d.revision, tag_of(&d)))))
            }
        };
        let op = self.record(family, call, RevisionsInput::Latest, output);
        self.recorder.with(|h| h.revisions.push(op));
    }

    async fn describe(&mut self, server: usize) {
        let family = self.family();
        // Now and then one past what this client saw: it may exist by now, or not.
        let known = self.seen.get(&family).copied().unwrap_or(0);
        let revision = self.rng.gen_range(1..=known + 1);
        self.describe_of(server, &family, revision).await;
    }

    async fn describe_of(&mut self, server: usize, family: &str, revision: u32) {
        let request = pb::DescribeTaskDefinitionRequest {
            namespace: String::new(),
            task_definition: format!("{family}:{revision}"),
            stale: self.stale,
        };
        let call = self.recorder.now();
        let outcome = self
            .call(server, |mut api| async move {
                api.describe_task_definition(request).await
            })
            .await;
        let output = match outcome {
            Outcome::Refused => return,
            Outcome::Unknown => None,
            Outcome::Missing => Some(RevisionsOutput::Described(None)),
            Outcome::Answer(d) => Some(RevisionsOutput::Described(Some(tag_of(&d)))),
        };
        let op = self.record(family, call, RevisionsInput::Describe { revision }, output);
        self.recorder.with(|h| h.revisions.push(op));
    }

    async fn list_revisions(&mut self, server: usize, family: &str) {
        let request = pb::ListTaskDefinitionsRequest {
            namespace: String::new(),
            family: family.to_owned(),
            stale: self.stale,
            selector: String::new(),
        };
        let call = self.recorder.now();
        let outcome = self
            .call(server, |mut api| async move {
                api.list_task_definitions(request).await
            })
            .await;
        let output = match outcome {
            Outcome::Refused | Outcome::Missing => return,
            Outcome::Unknown => None,
            Outcome::Answer(r) => {
                let mut revisions: Vec<(u32, u64)> = r
                    .task_definitions
                    .iter()
                    .filter(|d| d.family == family)
                    .map(|d| (d.revision, tag_of(d)))
                    .collect();
                revisions.sort_unstable();
                Some(RevisionsOutput::Listed(
                    revisions.into_iter().map(|(_, tag)| tag).collect(),
                ))
            }
        };
        let op = self.record(family, call, RevisionsInput::List, output);
        self.recorder.with(|h| h.revisions.push(op));
    }

    /// One of the services of the current epoch.
    fn service(&mut self) -> String {
        let epoch = self.recorder.now() / SERVICE_EPOCH.as_nanos() as u64;
        service(SERVICES[self.rng.gen_range(0..SERVICES.len())], epoch)
    }

    /// Creates epoch `epoch`'s services; answers whether each creation was answered.
    async fn create_services(&mut self, epoch: u64) -> bool {
        for prefix in SERVICES {
            let name = service(prefix, epoch);
            let server = self.rng.gen_range(0..self.addresses.len());
            let request = apply_service(&name, &self.recorder.image);
            let call = self.recorder.now();
            let outcome = self
                .call(
                    server,
                    |mut api| async move { api.apply_service(request).await },
                )
                .await;
            let output = match outcome {
                Outcome::Refused | Outcome::Missing => return false,
                Outcome::Unknown => None,
                Outcome::Answer(_) => Some(RegisterOutput::Written),
            };
            let answered = output.is_some();
            let op = self.record(&name, call, RegisterInput::Write(INITIAL_COUNT), output);
            self.recorder.with(|h| h.counts.push(op));
            if !answered {
                return false;
            }
        }
        true
    }

    /// Deletes epoch `epoch`'s services; answers whether both are gone or going.
    async fn delete_services(&mut self, epoch: u64) -> bool {
        for prefix in SERVICES {
            let name = service(prefix, epoch);
            let server = self.rng.gen_range(0..self.addresses.len());
            let request = pb::DeleteServiceRequest {
                namespace: String::new(),
                name: name.clone(),
            };
            let call = self.recorder.now();
            let outcome = self
                .call(server, |mut api| async move {
                    api.delete_service(request).await
                })
                .await;
            let output = match outcome {
                // Gone, or draining already (a deletion before took effect).
                Outcome::Missing | Outcome::Refused => continue,
                Outcome::Unknown => None,
                Outcome::Answer(_) => Some(RegisterOutput::Written),
            };
            let answered = output.is_some();
            let op = self.record(&name, call, RegisterInput::Write(0), output);
            self.recorder.with(|h| h.counts.push(op));
            if !answered {
                return false;
            }
        }
        true
    }

    /// Reads the desired count of every service listed (after the faults healed: an
    /// acknowledged scale that is gone is a violation).
    async fn read_services(&mut self) {
        let server = self.rng.gen_range(0..self.addresses.len());
        let outcome = self
            .call(server, |mut api| async move {
                api.list_services(pb::ListServicesRequest::default()).await
            })
            .await;
        let Outcome::Answer(listed) = outcome else {
            return;
        };
        for s in listed.services {
            let server = self.rng.gen_range(0..self.addresses.len());
            self.describe_service_named(server, &s.name).await;
        }
    }

    async fn scale(&mut self, server: usize) {
        let name = self.service();
        let name = name.as_str();
        let count = self.rng.gen_range(0..=3u32);
        let request = pb::ScaleServiceRequest {
            namespace: String::new(),
            name: name.to_owned(),
            desired_count: count,
        };
        let call = self.recorder.now();
        let outcome = self
            .call(
                server,
                |mut api| async move { api.scale_service(request).await },
            )
            .await;
        let output = match outcome {
            Outcome::Refused | Outcome::Missing => return,
            Outcome::Unknown => None,
            Outcome::Answer(_) => Some(RegisterOutput::Written),
        };
        let op = self.record(name, call, RegisterInput::Write(u64::from(count)), output);
        self.recorder.with(|h| h.counts.push(op));
    }

    /// Reads the desired count of one of the current services, or now and then of one of the
    /// epoch before (deleted 15 s into this one).
    async fn describe_service(&mut self, server: usize) {
        let epoch = self.recorder.now() / SERVICE_EPOCH.as_nanos() as u64;
        let epoch = if epoch > 0 && self.rng.gen_range(0..4) == 0 {
            epoch - 1
        } else {
            epoch
        };
        let name = service(SERVICES[self.rng.gen_range(0..SERVICES.len())], epoch);
        self.describe_service_named(server, &name).await;
    }

    async fn describe_service_named(&mut self, server: usize, name: &str) {
        let request = pb::DescribeServiceRequest {
            namespace: String::new(),
            name: name.to_owned(),
            stale: self.stale,
        };
        let call = self.recorder.now();
        let outcome = self
            .call(server, |mut api| async move {
                api.describe_service(request).await
            })
            .await;
        let output = match outcome {
            Outcome::Refused | Outcome::Missing => return,
            Outcome::Unknown => None,
            Outcome::Answer(s) => Some(RegisterOutput::Value(u64::from(s.desired_count))),
        };
        let op = self.record(name, call, RegisterInput::Read, output);
        self.recorder.with(|h| h.counts.push(op));
    }

    /// Registers the current group's family (not part of any history: it only makes the
    /// group's tasks listable on their own); answers whether it is there.
    async fn ready_group(&mut self, server: usize) -> bool {
        if self.group_ready {
            return true;
        }
        let family = group_family(self.id, self.group);
        let mut spec = spec(&family, 0, &self.recorder.image);
        spec.labels.insert("chaos-group".into(), family.clone());
        let request = pb::RegisterTaskDefinitionRequest {
            namespace: String::new(),
            spec: Some(spec),
            // A retry after an unanswered attempt answers the revision that one made.
            reuse_identical: true,
        };
        let outcome = self
            .call(server, |mut api| async move {
                api.register_task_definition(request).await
            })
            .await;
        self.group_ready = matches!(outcome, Outcome::Answer(_));
        self.group_ready
    }

    async fn run_task(&mut self, server: usize) {
        if self.retry.is_none() && self.group_runs >= RUNS_PER_GROUP {
            self.group += 1;
            self.group_ready = false;
            self.group_runs = 0;
        }
        if !self.ready_group(server).await {
            return;
        }
        let family = group_family(self.id, self.group);
        let token = match self.retry.take() {
            Some(token) => token,
            None => {
                self.tokens += 1;
                format!("c{}-{}", self.id, self.tokens)
            }
        };
        let request = pb::RunTaskRequest {
            namespace: String::new(),
            task_definition: family.clone(),
            count: 1,
            client_token: token.clone(),
            ..Default::default()
        };
        let call = self.recorder.now();
        let outcome = self
            .call(server, |mut api| async move { api.run_task(request).await })
            .await;
        let output = match outcome {
            // Not sent, or refused: send it again next time all the same.
            Outcome::Refused | Outcome::Missing => {
                self.retry = Some(token);
                return;
            }
            Outcome::Unknown => {
                self.retry = Some(token.clone());
                None
            }
            Outcome::Answer(r) => {
                let task = r
                    .tasks
                    .first()
                    .map(|t| t.task_id.clone())
                    .unwrap_or_default();
                self.tasks.push(task.clone());
                self.group_runs += 1;
                Some(TokensOutput::Ran { task })
            }
        };
        let op = self.record(&family, call, TokensInput::Run { token }, output);
        self.recorder.with(|h| h.tokens.push(op));
    }

    /// Lists the current group's tasks.
    async fn list(&mut self, server: usize) {
        if !self.group_ready {
            return;
        }
        let family = group_family(self.id, self.group);
        let request = pb::ListTasksRequest {
            namespace: String::new(),
            stale: self.stale,
            selector: format!("chaos-group={family}"),
            ..Default::default()
        };
        let call = self.recorder.now();
        let outcome = self
            .call(
                server,
                |mut api| async move { api.list_tasks(request).await },
            )
            .await;
        let output = match outcome {
            Outcome::Refused | Outcome::Missing => return,
            Outcome::Unknown => None,
            Outcome::Answer(r) => Some(TokensOutput::Listed(
                r.tasks
                    .into_iter()
                    .map(|t| t.task_id)
                    .collect::<BTreeSet<_>>(),
            )),
        };
        let op = self.record(&family, call, TokensInput::List, output);
        self.recorder.with(|h| h.tokens.push(op));
    }

    /// Stops one of this client's older tasks (not part of any model: a stopped task is still
    /// listed), so that the nodes' capacity is not used up.
    async fn stop_one(&mut self, server: usize) {
        if self.tasks.len() < 3 {
            return;
        }
        let task = self.tasks.remove(0);
        let request = pb::StopTaskRequest {
            namespace: String::new(),
            task_id: task,
            reason: "chaos workload".into(),
        };
        let _ = self
            .call(
                server,
                |mut api| async move { api.stop_task(request).await },
            )
            .await;
    }
}

/// Every family the history names.
pub fn families_of(history: &History) -> Vec<String> {
    let families: BTreeSet<&String> = history.revisions.iter().map(|op| &op.key).collect();
    families.into_iter().cloned().collect()
}

/// How many groups of token runs each client went through: the groups its operations name.
pub fn groups_of(history: &History, client: u32) -> u32 {
    let prefix = format!("chaos-c{client}-g");
    history
        .tokens
        .iter()
        .filter_map(|op| op.key.strip_prefix(&prefix)?.parse::<u32>().ok())
        .max()
        .map_or(0, |g| g + 1)
}

/// A revision's content: its container's `TAG`.
fn tag_of(d: &pb::TaskDefinition) -> u64 {
    d.containers
        .first()
        .and_then(|c| c.environment.get("TAG"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX)
}
