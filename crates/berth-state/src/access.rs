//! Tokens: clients' API tokens (a role in a namespace) and join tokens (a node role), stored
//! as their secrets' hashes. Creating or revoking either kind also forgets every token of that
//! kind that has expired by the command's time, so expired records do not pile up; until then
//! an expired token is still stored but allows nothing (`allows` checks the expiry).

use berth_model::{ApiTokenRecord, JoinTokenRecord, SealedValue, Timestamp};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

impl State {
    /// An API token by ID, expired or not.
    pub fn api_token(&self, id: &str) -> Option<&ApiTokenRecord> {
        self.api_tokens.get(id)
    }

    /// Every API token, oldest first (ties by ID).
    pub fn api_tokens(&self) -> Vec<&ApiTokenRecord> {
        let mut tokens: Vec<&ApiTokenRecord> = self.api_tokens.values().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        tokens
    }

    /// A join token by ID, expired or not.
    pub fn join_token(&self, id: &str) -> Option<&JoinTokenRecord> {
        self.join_tokens.get(id)
    }

    /// Every join token, oldest first (ties by ID).
    pub fn join_tokens(&self) -> Vec<&JoinTokenRecord> {
        let mut tokens: Vec<&JoinTokenRecord> = self.join_tokens.values().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        tokens
    }

    pub(crate) fn create_api_token(
        &mut self,
        mut record: ApiTokenRecord,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        record.created_at = at;
        record.normalize();
        if let Err(e) = record.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        if let Err(r) = check_expiry(record.expires_at, at) {
            return CommandResult::Rejected(r);
        }
        if !record.role.is_cluster_wide() && !self.namespace_exists(&record.namespace) {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "namespace {0} not found; create it first with `berth namespace create {0}`",
                record.namespace
            )));
        }
        if let Some(sealed) = &record.aws_secret {
            if Some(&sealed.key_id) != self.secret_keys().active.as_ref() {
                return CommandResult::Rejected(Rejection::Conflict(format!(
                    "the secret of API token {} was sealed with key {}, which is no longer the active key; try again",
                    record.id, sealed.key_id
                )));
            }
        }
        self.expire_api_tokens(at, changed);
        if self.api_tokens.contains_key(&record.id) {
            return CommandResult::Rejected(Rejection::Conflict(format!(
                "API token {} already exists",
                record.id
            )));
        }
        changed.push(Key::ApiToken(record.id.clone()));
        self.api_tokens.insert(record.id.clone(), record.clone());
        CommandResult::ApiToken(Box::new(record))
    }

    pub(crate) fn revoke_api_token(
        &mut self,
        id: &str,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let Some(record) = self.api_tokens.remove(id) else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "API token {id} not found; `berth token list` lists them"
            )));
        };
        changed.push(Key::ApiToken(id.to_owned()));
        self.expire_api_tokens(at, changed);
        CommandResult::ApiToken(Box::new(record))
    }

    /// Replaces the sealed secrets of `--aws` tokens with theirs sealed again under the active
    /// key; tokens gone, without a sealed secret, or given one under another key are skipped.
    pub(crate) fn reseal_api_tokens(
        &mut self,
        secrets: Vec<(String, SealedValue)>,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let active = self.secret_keys().active.clone();
        let mut replaced = 0;
        for (id, sealed) in secrets {
            let Some(record) = self.api_tokens.get_mut(&id) else {
                continue;
            };
            if record.aws_secret.is_none() || Some(&sealed.key_id) != active.as_ref() {
                continue;
            }
            record.aws_secret = Some(sealed);
            replaced += 1;
            changed.push(Key::ApiToken(id));
        }
        CommandResult::Count(replaced)
    }

    pub(crate) fn create_join_token(
        &mut self,
        mut record: JoinTokenRecord,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        record.created_at = at;
        if let Err(e) = record.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        if let Err(r) = check_expiry(record.expires_at, at) {
            return CommandResult::Rejected(r);
        }
        self.expire_join_tokens(at, changed);
        if self.join_tokens.contains_key(&record.id) {
            return CommandResult::Rejected(Rejection::Conflict(format!(
                "join token {} already exists",
                record.id
            )));
        }
        changed.push(Key::JoinToken(record.id.clone()));
        self.join_tokens.insert(record.id.clone(), record.clone());
        CommandResult::JoinToken(Box::new(record))
    }

    pub(crate) fn revoke_join_token(
        &mut self,
        id: &str,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let Some(record) = self.join_tokens.remove(id) else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "join token {id} not found; `berth cluster token list` lists them"
            )));
        };
        changed.push(Key::JoinToken(id.to_owned()));
        self.expire_join_tokens(at, changed);
        CommandResult::JoinToken(Box::new(record))
    }

    /// Forgets API tokens expired at `now`. A scan of every token: there are few, and it runs
    /// only on token commands.
    fn expire_api_tokens(&mut self, now: Timestamp, changed: &mut Vec<Key>) {
        let expired: Vec<String> = self
            .api_tokens
            .values()
            .filter(|t| t.is_expired(now))
            .map(|t| t.id.clone())
            .collect();
        for id in expired {
            self.api_tokens.remove(&id);
            changed.push(Key::ApiToken(id));
        }
    }

    fn expire_join_tokens(&mut self, now: Timestamp, changed: &mut Vec<Key>) {
        let expired: Vec<String> = self
            .join_tokens
            .values()
            .filter(|t| t.is_expired(now))
            .map(|t| t.id.clone())
            .collect();
        for id in expired {
            self.join_tokens.remove(&id);
            changed.push(Key::JoinToken(id));
        }
    }

    /// Forgets the API tokens scoped to `namespace` (it is being deleted: a namespace created
    /// again under the name must not inherit them).
    pub(crate) fn revoke_namespace_tokens(&mut self, namespace: &str, changed: &mut Vec<Key>) {
        let scoped: Vec<String> = self
            .api_tokens
            .values()
            .filter(|t| !t.role.is_cluster_wide() && t.namespace == namespace)
            .map(|t| t.id.clone())
            .collect();
        for id in scoped {
            self.api_tokens.remove(&id);
            changed.push(Key::ApiToken(id));
        }
    }
}

/// A token must not be created already expired.
fn check_expiry(expires_at: Option<Timestamp>, at: Timestamp) -> Result<(), Rejection> {
    match expires_at {
        Some(e) if e <= at => Err(Rejection::Invalid(format!(
            "the token would expire at {}, before it is created ({}); give a positive TTL",
            berth_model::format_timestamp(e),
            berth_model::format_timestamp(at)
        ))),
        _ => Ok(()),
    }
}
