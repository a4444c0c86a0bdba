//! The store against a real on-disk database: bootstrap, writes, restart recovery, snapshots.

use std::time::{Duration, Instant};

use berth_model::{ContainerDefinition, TaskDefinitionSpec};
use berth_state::{Command, CommandResult};
use berth_store::{Store, StoreConfig};

fn spec(family: &str) -> TaskDefinitionSpec {
    TaskDefinitionSpec {
        meta: Default::default(),
        family: family.into(),
        cpu: 256,
        memory: 64,
        containers: vec![ContainerDefinition::new("app", "busybox")],
        placement: Default::default(),
        ephemeral_storage: None,
    }
}

/// A lone member's settings in `dir`, with quick elections and heartbeats.
fn config(dir: &std::path::Path) -> StoreConfig {
    let mut config = StoreConfig::new(1, dir.to_path_buf(), "127.0.0.1:1".into());
    config.election_timeout = (Duration::from_millis(150), Duration::from_millis(300));
    config.heartbeat_interval = Duration::from_millis(50);
    config
}

async fn open(dir: &std::path::Path) -> Store {
    Store::open(config(dir)).await.expect("open store")
}

/// Registers a revision of family `web` (or, with `reuse_identical`, answers the latest).
async fn register_web(store: &Store, reuse_identical: bool, at: u64) -> CommandResult {
    store
        .propose(Command::RegisterTaskDefinition {
            namespace: "default".into(),
            spec: spec("web"),
            reuse_identical,
            at,
        })
        .await
        .expect("propose")
}

/// How many revisions of the default namespace's families the store holds.
async fn revisions(store: &Store) -> usize {
    store
        .read(|s| s.task_definitions("default").count())
        .await
        .expect("read")
}

/// The store in `dir` opened again, once it leads.
async fn reopen(dir: &std::path::Path) -> Store {
    let store = open(dir).await;
    wait_leader(&store).await;
    store
}

/// Bootstraps the new member `store` as a cluster of its own and waits until it leads.
async fn bootstrap(store: &Store) {
    assert!(store.bootstrap_if_new().await.expect("bootstrap"));
    wait_leader(store).await;
}

async fn wait_leader(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut leader = store.leadership();
    while !*leader.borrow_and_update() {
        assert!(Instant::now() < deadline, "no leader within 10s");
        let _ = tokio::time::timeout(Duration::from_millis(100), leader.changed()).await;
    }
}

#[tokio::test]
async fn state_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stored;
    {
        let store = open(dir.path()).await;
        bootstrap(&store).await;
        for _ in 0..3 {
            let r = register_web(&store, false, 7).await;
            assert!(matches!(
                r,
                CommandResult::TaskDefinition { created: true, .. }
            ));
        }
        // Asked for, and the store shut down at once: the snapshot is built while the store
        // stops, and the stop waits for it (the reopen below finds the database free).
        store.raft().trigger().snapshot().await.expect("snapshot");
        store.shutdown().await;
        stored = store.stored();
        // The state on disk is the snapshot, if the stop let its build finish: its file's
        // size.
        let size = match &snapshot_files(dir.path())[..] {
            [] => 0,
            [one] => std::fs::metadata(dir.path().join(one))
                .expect("snapshot")
                .len(),
            more => panic!("snapshot files: {more:?}"),
        };
        assert_eq!(stored.object_bytes, size);
        assert!(
            stored.log_entries >= 4 && stored.log_bytes > 0,
            "{stored:?}"
        );
        assert!(stored.file_bytes.is_some_and(|b| b > 0), "{stored:?}");
    }
    let store = open(dir.path()).await;
    // Counted again from the file, the same; the file's length is redb's to choose (it gives
    // free pages at its end back on close, and commits once on open).
    let again = store.stored();
    assert_eq!(
        (again.log_entries, again.log_bytes, again.object_bytes),
        (stored.log_entries, stored.log_bytes, stored.object_bytes)
    );
    assert!(again.file_bytes.is_some_and(|b| b > 0), "{again:?}");
    assert!(
        !store.bootstrap_if_new().await.expect("bootstrap"),
        "restart must not re-bootstrap"
    );
    wait_leader(&store).await;
    let revisions = store
        .read(|s| {
            s.task_definitions("default")
                .map(|d| d.revision)
                .collect::<Vec<_>>()
        })
        .await
        .expect("read");
    assert_eq!(revisions, vec![1, 2, 3]);
    let r = register_web(&store, true, 8).await;
    match r {
        CommandResult::TaskDefinition {
            task_definition,
            created,
        } => {
            assert!(!created);
            assert_eq!(task_definition.revision, 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    let status = store.cluster_status();
    assert_eq!(status.leader, Some(1));
    assert!(
        status.commit_index >= 4,
        "commit index {}",
        status.commit_index
    );
}

/// Creates (or, with `revoke`, revokes) admin API token `id`.
async fn token(store: &Store, id: &str, revoke: bool) -> CommandResult {
    let command = match revoke {
        false => Command::CreateApiToken {
            record: berth_model::ApiTokenRecord::new(
                id,
                "0".repeat(64),
                "",
                berth_model::AccessRole::Admin,
                1,
                None,
            ),
            at: 1,
        },
        true => Command::RevokeApiToken {
            id: id.into(),
            at: 2,
        },
    };
    store.propose(command).await.expect("propose")
}

#[tokio::test]
async fn the_published_credentials_hold_every_acknowledged_write_and_what_a_start_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path()).await;
        bootstrap(&store).await;
        let known = |store: &Store, id: &str| store.credentials().api_token(id).is_some();
        assert!(!known(&store, "t1"));
        token(&store, "t1", false).await;
        let before = store.credentials();
        assert!(before.api_token("t1").is_some());
        token(&store, "t2", false).await;
        assert!(known(&store, "t2"));
        token(&store, "t2", true).await;
        assert!(known(&store, "t1") && !known(&store, "t2"));
        // A copy taken before stays as it was.
        assert!(before.api_token("t2").is_none());
        store.raft().trigger().snapshot().await.expect("snapshot");
        new_snapshot(dir.path(), None).await;
        // Written after the snapshot: a start loads the snapshot, then applies this again.
        token(&store, "t3", false).await;
        store.shutdown().await;
    }
    let store = reopen(dir.path()).await;
    // Once the restarted member has applied everything committed (t3's commit was written
    // with no later append: the member learns it again as it leads).
    store.read(|_| ()).await.expect("read");
    let credentials = store.credentials();
    let found: Vec<bool> = ["t1", "t2", "t3"]
        .iter()
        .map(|id| credentials.api_token(id).is_some())
        .collect();
    assert_eq!(found, [true, false, true]);
}

/// The snapshot files beside the database: `snapshot-ID.json.deflate`.
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    names.sort();
    names
}

/// Waits until the one snapshot file is not `old`; answers its name.
async fn new_snapshot(dir: &std::path::Path, old: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files = snapshot_files(dir);
        if let [one] = &files[..] {
            if Some(one.as_str()) != old && one.ends_with(".json.deflate") {
                return one.clone();
            }
        }
        assert!(Instant::now() < deadline, "snapshot files: {files:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A snapshot is a file beside the database (not a value inside it), which the next snapshot
/// replaces; a restart removes what a crash could leave (a half-written file, a replaced one)
/// and keeps the current one.
#[tokio::test]
async fn snapshots_are_files_beside_the_database_and_replace_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second);
    {
        let store = open(dir.path()).await;
        bootstrap(&store).await;
        register_web(&store, false, 7).await;
        store.raft().trigger().snapshot().await.expect("snapshot");
        first = new_snapshot(dir.path(), None).await;
        register_web(&store, false, 8).await;
        store.raft().trigger().snapshot().await.expect("snapshot");
        second = new_snapshot(dir.path(), Some(&first)).await;
        let bytes = std::fs::read(dir.path().join(&second)).expect("read snapshot");
        // A marker byte, then DEFLATE of the JSON.
        assert_eq!(bytes[0], 1);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::DeflateDecoder::new(&bytes[1..]),
            &mut text,
        )
        .expect("DEFLATE of JSON");
        assert!(text.contains("\"family\":\"web\""), "{text}");
        // The state's bytes on disk are the snapshot's.
        assert_eq!(store.stored().object_bytes, bytes.len() as u64);
        store.shutdown().await;
    }
    // What a crash could leave behind.
    std::fs::write(dir.path().join(&first), b"{}").expect("write");
    std::fs::write(dir.path().join("snapshot-9-9-9.json.deflate.tmp"), b"{").expect("write");
    std::fs::write(dir.path().join("snapshot-9-9-9.json"), b"{}").expect("write");
    let store = open(dir.path()).await;
    assert_eq!(snapshot_files(dir.path()), vec![second.clone()]);
    wait_leader(&store).await;
    assert_eq!(revisions(&store).await, 2);
}

/// A snapshot is built once enough bytes went into the log, however few entries they were:
/// the log's size on disk stays bounded when its entries are large batches.
#[tokio::test]
async fn a_snapshot_is_built_after_enough_bytes_of_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.snapshot_every = 1_000_000;
    config.snapshot_log_bytes = 2048;
    let store = Store::open(config).await.expect("open store");
    bootstrap(&store).await;
    assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
    // A revision is a few hundred bytes of log, compressed.
    let mut written = 0;
    while snapshot_files(dir.path()).is_empty() {
        assert!(written < 100, "no snapshot after {written} revisions");
        register_web(&store, false, written).await;
        written += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(written > 2, "a snapshot after {written} revisions");
    store.shutdown().await;
}

/// Concurrent writers share Raft entries (group commit), each still gets its own answer, and
/// everything survives a restart without a snapshot (the state machine writes nothing of its
/// own: a start applies the log again).
#[tokio::test]
async fn concurrent_writes_are_committed_together_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path()).await;
        bootstrap(&store).await;
        let before = store.cluster_status().commit_index;
        let mut writes = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let store = store.clone();
            writes.spawn(async move {
                let r = register_web(&store, false, 7).await;
                match r {
                    CommandResult::TaskDefinition {
                        task_definition,
                        created: true,
                    } => task_definition.revision,
                    other => panic!("unexpected {other:?}"),
                }
            });
        }
        let mut revisions = writes.join_all().await;
        revisions.sort_unstable();
        assert_eq!(revisions, (1..=64).collect::<Vec<_>>());
        let entries = store.cluster_status().commit_index - before;
        assert!(entries < 64, "64 writes took {entries} entries");
        store.shutdown().await;
    }
    assert_eq!(revisions(&reopen(dir.path()).await).await, 64);
}

/// What a member applied before it stopped is in its local state as soon as it opens again,
/// less at most the last round's entries, without an election or a snapshot: the commit index
/// goes to disk with each append, and the open applies the log up to it. (The state on disk is
/// the last snapshot; local reads, such as an API token's check, must not see the cluster as
/// it was then.)
#[tokio::test]
async fn a_reopened_member_applies_its_log_up_to_the_commit_index_it_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path()).await;
        bootstrap(&store).await;
        for at in 0..4 {
            register_web(&store, false, at).await;
        }
        store.shutdown().await;
    }
    assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
    let store = open(dir.path()).await;
    let local = store.read_stale(|s| s.task_definitions("default").count());
    assert!(local >= 3, "{local} of 4 revisions right after the open");
}

#[tokio::test]
async fn a_lone_member_keeps_no_applied_entry_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path()).await;
        bootstrap(&store).await;
        for at in 0..20 {
            register_web(&store, false, at).await;
        }
        // Released once the apply shows in Raft's metrics, a moment after the answer.
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.log_tail().0 > 0 {
            assert!(
                Instant::now() < deadline,
                "the tail still holds {:?} (entries, bytes) of a log its only member applied",
                store.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.shutdown().await;
    }
    // What it no longer holds in memory is on disk.
    assert_eq!(revisions(&reopen(dir.path()).await).await, 20);
}

/// How many objects a listing holds besides the answers kept for retried writes.
fn listed(objects: &berth_state::ObjectsCopy) -> usize {
    objects
        .object_refs()
        .filter(|o| !matches!(o, berth_state::ObjectRef::Request(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_starting_together_share_one_listing_until_it_is_too_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    bootstrap(&store).await;
    register_web(&store, false, 1).await;
    let (first_rev, first) = store.listing();
    let (again_rev, again) = store.listing();
    assert_eq!(first_rev, again_rev);
    assert!(std::sync::Arc::ptr_eq(&first, &again), "a second copy");
    assert_eq!(listed(&first), 1);
    // A few writes later it is still shared: watchers catch up from the change feed.
    register_web(&store, false, 2).await;
    assert!(std::sync::Arc::ptr_eq(&first, &store.listing().1));
    // Once no watcher holds it, it is gone: the next one lists anew.
    drop(again);
    let weak = std::sync::Arc::downgrade(&first);
    drop(first);
    assert!(weak.upgrade().is_none(), "a listing outlives its readers");
    let (_, first) = store.listing();
    for at in 0..=berth_store::LISTING_REUSE {
        register_web(&store, false, at + 3).await;
    }
    let (rev, fresh) = store.listing();
    assert!(
        !std::sync::Arc::ptr_eq(&first, &fresh),
        "too old, yet shared"
    );
    assert!(rev > first_rev + berth_store::LISTING_REUSE);
    assert_eq!(
        usize::try_from(berth_store::LISTING_REUSE).expect("fits") + 3,
        listed(&fresh)
    );
    let _ = first_rev;
}

#[tokio::test]
async fn a_leaders_controller_reads_see_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    bootstrap(&store).await;
    let revisions = |s: &berth_state::State| s.task_definitions("default").count();
    // The first read of the term is linearizable; later ones read the leader's own state
    // once it applied what it knows committed: each must see the write acknowledged before.
    for expected in 1..=20 {
        register_web(&store, false, 7).await;
        let seen = store.read_leading_queued(revisions).await.expect("read");
        assert_eq!(seen, expected);
    }
    store.shutdown().await;
}

/// Raft's core runs on threads of its own (`berth-raft`), not on the runtime that opened the
/// store and serves the API and agent streams, and they ask for a higher priority (granted
/// where the process may raise it: CAP_SYS_NICE, as root on CI has).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_runs_on_threads_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    bootstrap(&store).await;
    let (thread, nice) = store
        .raft()
        .with_raft_state(|_| {
            let nice = rustix::process::getpriority_process(None).expect("getpriority");
            (std::thread::current().name().map(str::to_owned), nice)
        })
        .await
        .expect("raft runs");
    assert_eq!(thread.as_deref(), Some("berth-raft"));
    let here = rustix::process::getpriority_process(None).expect("getpriority");
    // Whether this process may raise a thread's priority as the store asks (five steps, with
    // CAP_SYS_NICE or a high enough RLIMIT_NICE): asked of a thread of its own, which then ends.
    let target = (here - 5).max(-20);
    let may_raise =
        std::thread::spawn(move || rustix::process::setpriority_process(None, target).is_ok())
            .join()
            .expect("probe thread");
    if target == here {
        // Already at the highest priority: nothing to raise.
        assert_eq!(nice, here);
    } else if may_raise {
        assert!(
            nice < here,
            "Raft's threads at nice {nice}, the test's at {here}"
        );
    } else {
        assert_eq!(nice, here, "Raft's threads at the process's priority");
    }
    // Writes still go through from this runtime.
    assert!(matches!(
        register_web(&store, false, 1).await,
        CommandResult::TaskDefinition { created: true, .. }
    ));
    store.shutdown().await;
}

/// A write that runs out of time on a leader nobody is cut off from (here the only voter)
/// says the servers are too busy, not that a majority is unreachable, and is counted as
/// failed.
#[tokio::test]
async fn a_write_out_of_time_on_a_reachable_majority_says_the_servers_are_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    // No time at all: the write is proposed, and its answer cannot be there yet.
    config.write_timeout = Duration::ZERO;
    let store = Store::open(config).await.expect("open store");
    bootstrap(&store).await;
    let e = store
        .propose(Command::RegisterTaskDefinition {
            namespace: "default".into(),
            spec: spec("web"),
            reuse_identical: false,
            at: 1,
        })
        .await
        .expect_err("no time to commit");
    assert!(
        matches!(
            e,
            berth_store::StoreError::NoQuorum(berth_store::NoQuorum::Overloaded {
                what: berth_store::Attempt::Write,
                ..
            })
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains("too busy"), "{text}");
    assert!(!text.contains("reachable"), "{text}");
    // Counted as a write that failed (what `berth_raft_failed_writes_total` shows).
    assert_eq!(store.failed_writes(), 1);
    store.shutdown().await;
}

/// Adding a server that takes nothing from the leader (nothing listens at its address) fails
/// once it has taken nothing for twelve write timeouts, naming the server and what to check;
/// it stays a learner, which a voter count leaves out, and can be removed.
#[tokio::test]
async fn adding_a_server_that_never_catches_up_fails_once_it_stalls_and_leaves_a_learner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    // Twelve write timeouts (1.2 s) are longer than a snapshot request and a write timeout.
    config.write_timeout = Duration::from_millis(100);
    config.install_snapshot_timeout = Duration::from_millis(500);
    let store = Store::open(config).await.expect("open store");
    bootstrap(&store).await;
    // A port nothing listens on: bound, then closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let started = Instant::now();
    let e = store
        .add_member(2, addr, true)
        .await
        .expect_err("server 2 cannot catch up");
    let took = started.elapsed();
    assert!(
        matches!(
            e,
            berth_store::StoreError::Membership(berth_store::MembershipError::Stalled {
                id: 2,
                ..
            })
        ),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(10),
        "failed after {took:?}, not once stalled for 1.2 s"
    );
    let text = e.to_string();
    assert!(
        text.contains("server 2") && text.contains("learner"),
        "{text}"
    );
    let status = store.cluster_status();
    let learner = status.members.iter().find(|m| m.id == 2).expect("member 2");
    assert_eq!(learner.role, berth_model::MemberRole::Learner);
    // Refused for what it asked, not a write that failed to commit.
    assert_eq!(store.failed_writes(), 0);
    store.remove_member(2).await.expect("remove the learner");
    assert!(store.cluster_status().members.iter().all(|m| m.id != 2));
    store.shutdown().await;
}
