//! Cluster-wide records: client tokens of recent `CreateTasks` (so retries create nothing
//! twice) and replacing the whole state from a backup.

use berth_model::Timestamp;
use serde::{Deserialize, Serialize};

use crate::command::CommandResult;
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

impl State {
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
        // and the certificates recorded (the backup's were issued by another CA).
        let rotation = self.ca_rotation.take();
        let objects = objects
            .into_iter()
            .filter(|o| !matches!(o, Object::CaRotation(_) | Object::Certificates(_)));
        *self = State::from_objects(objects);
        self.ca_rotation = rotation;
        changed.extend(self.objects().map(|o| o.key()));
        CommandResult::Done
    }
}
