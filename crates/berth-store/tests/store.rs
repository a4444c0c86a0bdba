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

async fn open(dir: &std::path::Path) -> Store {
    let mut config = StoreConfig::new(1, dir.to_path_buf(), "127.0.0.1:1".into());
    config.election_timeout = (Duration::from_millis(150), Duration::from_millis(300));
    config.heartbeat_interval = Duration::from_millis(50);
    Store::open(config).await.expect("open store")
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
    {
        let store = open(dir.path()).await;
        assert!(store.bootstrap_if_new().await.expect("bootstrap"));
        wait_leader(&store).await;
        for _ in 0..3 {
            let r = register_web(&store, false, 7).await;
            assert!(matches!(
                r,
                CommandResult::TaskDefinition { created: true, .. }
            ));
        }
        store.raft().trigger().snapshot().await.expect("snapshot");
        store.shutdown().await;
    }
    let store = open(dir.path()).await;
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

/// Concurrent writers share Raft entries (group commit), each still gets its own answer, and
/// everything survives a restart without a snapshot (the state machine's own writes are not
/// fsynced: what a crash or stop loses is applied again from the log).
#[tokio::test]
async fn concurrent_writes_are_committed_together_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path()).await;
        assert!(store.bootstrap_if_new().await.expect("bootstrap"));
        wait_leader(&store).await;
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
    let store = open(dir.path()).await;
    wait_leader(&store).await;
    let count = store
        .read(|s| s.task_definitions("default").count())
        .await
        .expect("read");
    assert_eq!(count, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_starting_together_share_one_listing_until_it_is_too_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    assert!(store.bootstrap_if_new().await.expect("bootstrap"));
    wait_leader(&store).await;
    register_web(&store, false, 1).await;
    let (first_rev, first) = store.listing();
    let (again_rev, again) = store.listing();
    assert_eq!(first_rev, again_rev);
    assert!(std::sync::Arc::ptr_eq(&first, &again), "a second copy");
    assert_eq!(first.len(), 1);
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
        fresh.len()
    );
    let _ = first_rev;
}
