//! Group commit on the leader: writers queue their commands, and one task proposes what
//! queued meanwhile as one Raft entry.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use berth_state::{Command, CommandResult};

use crate::error::Attempt;
use crate::{MembershipError, NoQuorum, Raft, StoreError};

/// A command waiting for the group committer.
pub(crate) struct Pending {
    pub(crate) command: Command,
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Result<CommandResult, StoreError>>,
}

/// The most commands one Raft entry carries.
const MAX_BATCH: usize = 1024;

/// Group commit on the leader: proposes the commands that queued while the previous entry was
/// being committed as one [`Command::Batch`] entry, so concurrent writers (API clients, agents'
/// status reports, controllers) share one Raft round trip and one fsync per member. A lone
/// command goes into the log as itself.
pub(crate) async fn group_commit(
    raft: Raft,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    quorum_timeout: Duration,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let deadline = batch
            .iter()
            .map(|p| p.deadline)
            .max()
            .unwrap_or_else(Instant::now);
        if batch.len() == 1 {
            let p = batch.remove(0);
            let _ = p
                .reply
                .send(client_write(&raft, p.command, deadline, quorum_timeout).await);
            continue;
        }
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        match client_write(&raft, Command::Batch(commands), deadline, quorum_timeout).await {
            Ok(CommandResult::Batch(results)) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(other) => {
                for reply in replies {
                    let _ = reply.send(Err(StoreError::BatchAnswer { kind: other.kind() }));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.duplicate()));
                }
            }
        }
    }
}

async fn client_write(
    raft: &Raft,
    command: Command,
    deadline: Instant,
    quorum_timeout: Duration,
) -> Result<CommandResult, StoreError> {
    let started = Instant::now();
    let resp = tokio::time::timeout_at(deadline, raft.client_write(command))
        .await
        .map_err(|_| {
            timed_out(
                raft,
                quorum_timeout,
                Attempt::Write,
                started.elapsed(),
                NoQuorum::NotCommitted,
            )
        })?
        .map_err(|e| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
                leader_id: f.leader_id,
                leader_addr: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                MembershipError::Refused(Box::new(e)).into()
            }
            RaftError::Fatal(e) => StoreError::Fatal(Box::new(e)),
        })?;
    Ok(resp.data)
}

/// Why an attempt that ran out of time after `waited` did, as this member's Raft sees it: a
/// leader that a majority acknowledged during the wait (within `quorum_timeout` too), or that
/// is the only voter, is too busy, not cut off; otherwise, or when this member cannot tell,
/// `cut_off`. (An acknowledgement from before the attempt began says nothing of a partition
/// that started since: a write timeout shorter than the quorum timeout must not make one look
/// like a busy cluster.)
pub(crate) fn timed_out(
    raft: &Raft,
    quorum_timeout: Duration,
    what: Attempt,
    waited: Duration,
    cut_off: NoQuorum,
) -> StoreError {
    let m = raft.metrics().borrow().clone();
    let voters = m.membership_config.membership().voter_ids().count();
    let leading = m.current_leader == Some(m.id);
    let answered = m
        .millis_since_quorum_ack
        .is_some_and(|ms| Duration::from_millis(ms) <= quorum_timeout.min(waited));
    if leading && (voters == 1 || answered) {
        NoQuorum::Overloaded { what }.into()
    } else {
        cut_off.into()
    }
}
