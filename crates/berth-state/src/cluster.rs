//! Cluster-wide records: client tokens of recent `CreateTasks` and answers of recent store
//! requests (so retries create nothing twice), and replacing the whole state from a backup.

use berth_model::Timestamp;
use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult};
use crate::{Key, Object, State};

/// How long a client token is remembered (as ECS's `clientToken`, for an hour).
pub const CLIENT_TOKEN_TTL_MS: u64 = 3_600_000;

/// The tasks one `CreateTasks` with a client token created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientToken {
    pub token: String,
    pub at: Timestamp,
    pub task_ids: Vec<String>,
}

/// How long the answer to a [`crate::Command::Request`] is remembered after its `at`: far
/// beyond the store's write deadline (5 s by default), within which every retry of it is
/// proposed.
pub const REQUEST_TTL_MS: u64 = 60_000;

/// How many of the latest request answers are kept whatever their age, so a clock that jumps
/// forget none a retry may still need. Every member holds them in memory, and a `RunTask`'s
/// answer lists every task it created (a thousand IDs, about 40 KB, in the soak's churn): at
/// 1,000 they took 50 MB of each server's memory, filled over ten minutes, where the minute of
/// the TTL needed a tenth of that.
pub const REQUESTS_KEPT: usize = 256;

/// The answer a [`crate::Command::Request`] got when first applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRequest {
    pub id: String,
    pub at: Timestamp,
    /// The order requests were applied in: one more than the latest before it.
    pub seq: u64,
    pub answer: Answer,
}

/// A kept answer: as it was, or (tasks, which a `RunTask` of a thousand makes a megabyte of)
/// by ID, answered as they are when asked again, as a client token's are. Secret material is
/// never kept: a secret's sealed values and a token's hash are blanked (the callers read
/// names, keys and versions), so a deleted secret or a rotated key leaves nothing behind here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Answer {
    Result(CommandResult),
    Tasks(Vec<String>),
    Task(String),
}

impl State {
    fn keep(result: &CommandResult) -> Answer {
        match result {
            CommandResult::Tasks(tasks) => {
                Answer::Tasks(tasks.iter().map(|t| t.task_id.clone()).collect())
            }
            CommandResult::Task(task) => Answer::Task(task.task_id.clone()),
            CommandResult::Secret(secret) => {
                let mut secret = secret.clone();
                for value in secret.data.values_mut() {
                    value.nonce.clear();
                    value.ciphertext.clear();
                }
                Answer::Result(CommandResult::Secret(secret))
            }
            CommandResult::ApiToken(record) => {
                let mut record = record.clone();
                record.secret_hash.clear();
                Answer::Result(CommandResult::ApiToken(record))
            }
            CommandResult::JoinToken(record) => {
                let mut record = record.clone();
                record.secret_hash.clear();
                Answer::Result(CommandResult::JoinToken(record))
            }
            other => Answer::Result(other.clone()),
        }
    }

    fn answer(&self, kept: &Answer) -> CommandResult {
        match kept {
            Answer::Result(result) => result.clone(),
            Answer::Tasks(ids) => CommandResult::Tasks(
                ids.iter()
                    .filter_map(|id| self.task_by_id(id))
                    .cloned()
                    .collect(),
            ),
            Answer::Task(id) => match self.task_by_id(id) {
                Some(task) => CommandResult::Task(Box::new(task.clone())),
                None => CommandResult::Rejected(crate::Rejection::NotFound(format!(
                    "task {id} was removed by retention"
                ))),
            },
        }
    }
}

impl State {
    /// Applies `command` unless a request with the same `id` was applied before, whose
    /// answer is then answered again.
    pub(crate) fn apply_request(
        &mut self,
        id: String,
        at: Timestamp,
        command: Command,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        self.expire_requests(at, changed);
        if let Some(seen) = self.requests.get(&id) {
            return self.answer(&seen.answer);
        }
        let result = self.dispatch(command, changed);
        let seq = self.request_order.keys().next_back().map_or(1, |s| s + 1);
        self.request_order.insert(seq, id.clone());
        changed.push(Key::Request(id.clone()));
        self.requests.insert(
            id.clone(),
            AppliedRequest {
                id,
                at,
                seq,
                answer: Self::keep(&result),
            },
        );
        result
    }

    /// Forgets the oldest request answers beyond the latest [`REQUESTS_KEPT`] whose `at` lies
    /// more than [`REQUEST_TTL_MS`] from `now` (the request's time), either way.
    fn expire_requests(&mut self, now: Timestamp, changed: &mut Vec<Key>) {
        while self.requests.len() > REQUESTS_KEPT {
            let Some((&seq, id)) = self.request_order.first_key_value() else {
                break;
            };
            let at = self.requests.get(id).map_or(0, |r| r.at);
            if now.abs_diff(at) <= REQUEST_TTL_MS {
                break;
            }
            let id = id.clone();
            self.request_order.remove(&seq);
            self.requests.remove(&id);
            changed.push(Key::Request(id));
        }
    }

    /// Forgets client tokens older than [`CLIENT_TOKEN_TTL_MS`] at `now` (the command's time).
    pub(crate) fn expire_client_tokens(&mut self, now: Timestamp, changed: &mut Vec<Key>) {
        let cutoff = now.saturating_sub(CLIENT_TOKEN_TTL_MS);
        while let Some((at, token)) = self.token_ages.first().cloned() {
            if at >= cutoff {
                break;
            }
            self.token_ages.remove(&(at, token.clone()));
            self.client_tokens.remove(&token);
            changed.push(Key::ClientToken(token));
        }
    }

    pub(crate) fn replace_state(
        &mut self,
        objects: Vec<Object>,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        changed.extend(self.objects().map(|o| o.key()));
        // The CA is this cluster's own, not the backup's: so are the record of its rotations
        // and the certificates recorded (the backup's were issued by another CA). The answers
        // kept for retries were the backup's cluster's.
        let rotation = self.ca_rotation.take();
        let objects = objects.into_iter().filter(|o| {
            !matches!(
                o,
                Object::CaRotation(_) | Object::Certificates(_) | Object::Request(_)
            )
        });
        *self = State::from_objects(objects);
        self.ca_rotation = rotation;
        changed.extend(self.objects().map(|o| o.key()));
        CommandResult::Done
    }
}
