//! Secrets, stored sealed: the state never holds a value in clear, nor a key of the keyring
//! that seals them — only which key is active. Sealing and opening happen in the servers.

use berth_model::{Secret, SecretKeys, Timestamp};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

impl State {
    /// A secret by namespace and name.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The secrets of `namespace`, by name.
    pub fn secrets<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Secret> + 'a {
        self.secrets
            .iter()
            .filter(move |((ns, _), _)| ns == namespace)
            .map(|(_, s)| s)
    }

    /// Every secret of every namespace.
    pub fn all_secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.values()
    }

    /// Which keyring key seals new values.
    pub fn secret_keys(&self) -> &SecretKeys {
        &self.secret_keys
    }

    /// Creates or replaces a secret; `expect`: it must exist already (`Some(true)`) or not yet
    /// (`Some(false)`). Its values must be sealed with the active key.
    pub(crate) fn put_secret(
        &mut self,
        mut secret: Secret,
        expect: Option<bool>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let (namespace, name) = (secret.namespace.clone(), secret.name.clone());
        if !self.namespace_exists(&namespace) {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "namespace {namespace} not found"
            )));
        }
        let active = self.secret_keys.active.as_deref();
        if let Some(stale) = secret
            .data
            .values()
            .find(|v| Some(v.key_id.as_str()) != active)
        {
            return CommandResult::Rejected(Rejection::Conflict(format!(
                "secret {namespace}/{name} was sealed with key {}, which is no longer the active key; try again",
                stale.key_id
            )));
        }
        let old = self.secret(&namespace, &name);
        match (expect, old) {
            (Some(true), None) => {
                return CommandResult::Rejected(Rejection::NotFound(format!(
                    "secret {namespace}/{name} not found"
                )))
            }
            (Some(false), Some(_)) => {
                return CommandResult::Rejected(Rejection::Conflict(format!(
                    "secret {namespace}/{name} exists already; replace it with `berth apply` or delete it first"
                )))
            }
            _ => {}
        }
        secret.version = old.map_or(1, |o| o.version + 1);
        secret.created_at = old.map_or(at, |o| o.created_at);
        secret.updated_at = at;
        changed.push(Key::Secret {
            namespace: namespace.clone(),
            name: name.clone(),
        });
        self.secrets.insert((namespace, name), secret.clone());
        CommandResult::Secret(Box::new(secret))
    }

    pub(crate) fn delete_secret(
        &mut self,
        namespace: &str,
        name: &str,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        match self
            .secrets
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            Some(secret) => {
                changed.push(Key::Secret {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                });
                CommandResult::Secret(Box::new(secret))
            }
            None => CommandResult::Rejected(Rejection::NotFound(format!(
                "secret {namespace}/{name} not found"
            ))),
        }
    }

    /// Deletes every secret of a namespace being deleted.
    pub(crate) fn delete_namespace_secrets(&mut self, namespace: &str, changed: &mut Vec<Key>) {
        let names: Vec<String> = self.secrets(namespace).map(|s| s.name.clone()).collect();
        for name in names {
            self.delete_secret(namespace, &name, changed);
        }
    }

    /// Makes `key_id` the key new values are sealed with (kept in the history of keys).
    pub(crate) fn activate_secret_key(
        &mut self,
        key_id: String,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if key_id.is_empty() {
            return CommandResult::Rejected(Rejection::Invalid("a key ID is required".into()));
        }
        if self.secret_keys.active.as_deref() != Some(key_id.as_str()) {
            if !self.secret_keys.history.contains(&key_id) {
                self.secret_keys.history.push(key_id.clone());
            }
            self.secret_keys.active = Some(key_id);
            changed.push(Key::SecretKeys);
        }
        CommandResult::Done
    }

    /// Replaces the values of secrets sealed again under the active key, each only if it has
    /// not changed since it was read (same version). Answers how many were replaced.
    pub(crate) fn reseal_secrets(
        &mut self,
        secrets: Vec<Secret>,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let active = self.secret_keys.active.clone();
        let mut replaced = 0;
        for resealed in secrets {
            let key = (resealed.namespace.clone(), resealed.name.clone());
            let Some(current) = self.secrets.get_mut(&key) else {
                continue;
            };
            let sealed_with_active = resealed
                .data
                .values()
                .all(|v| Some(&v.key_id) == active.as_ref());
            if current.version != resealed.version
                || !sealed_with_active
                || current.data.keys().ne(resealed.data.keys())
            {
                continue;
            }
            current.data = resealed.data;
            replaced += 1;
            changed.push(Key::Secret {
                namespace: key.0,
                name: key.1,
            });
        }
        CommandResult::Count(replaced)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_model::{Quota, SealedValue};

    use super::*;
    use crate::Command;

    fn sealed(key_id: &str, nonce: &str) -> Secret {
        Secret {
            namespace: "default".into(),
            name: "db".into(),
            data: BTreeMap::from([(
                "password".into(),
                SealedValue {
                    key_id: key_id.into(),
                    nonce: nonce.into(),
                    ciphertext: "c2VhbGVk".into(),
                },
            )]),
            version: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn put(s: &mut State, secret: Secret, expect: Option<bool>, at: u64) -> CommandResult {
        s.apply(Command::PutSecret {
            secret: Box::new(secret),
            expect,
            at,
        })
        .0
    }

    #[test]
    fn secrets_are_versioned_sealed_with_the_active_key_and_resealed_only_if_unchanged() {
        let mut s = State::default();
        assert!(matches!(
            put(&mut s, sealed("k1", "n1"), None, 5),
            CommandResult::Rejected(Rejection::Conflict(_))
        ));
        s.apply(Command::ActivateSecretKey {
            key_id: "k1".into(),
            at: 5,
        });
        let CommandResult::Secret(first) = put(&mut s, sealed("k1", "n1"), Some(false), 6) else {
            panic!("created");
        };
        assert_eq!((first.version, first.created_at), (1, 6));
        assert!(matches!(
            put(&mut s, sealed("k1", "n2"), Some(false), 7),
            CommandResult::Rejected(Rejection::Conflict(m)) if m.contains("exists already")
        ));
        let CommandResult::Secret(second) = put(&mut s, sealed("k1", "n2"), Some(true), 8) else {
            panic!("replaced");
        };
        assert_eq!(
            (second.version, second.created_at, second.updated_at),
            (2, 6, 8)
        );

        // A rotation: the new key becomes active, a reseal read at version 1 is stale.
        s.apply(Command::ActivateSecretKey {
            key_id: "k2".into(),
            at: 9,
        });
        assert_eq!(s.secret_keys().history, ["k1", "k2"]);
        let mut stale = sealed("k2", "n3");
        stale.version = 1;
        let mut current = sealed("k2", "n4");
        current.version = 2;
        let (result, _) = s.apply(Command::ResealSecrets {
            secrets: vec![stale],
            at: 10,
        });
        assert_eq!(result, CommandResult::Count(0));
        let (result, changed) = s.apply(Command::ResealSecrets {
            secrets: vec![current],
            at: 10,
        });
        assert_eq!(result, CommandResult::Count(1));
        assert_eq!(changed.len(), 1);
        let stored = s.secret("default", "db").expect("kept");
        assert_eq!(
            (stored.version, stored.data["password"].key_id.as_str()),
            (2, "k2")
        );
        crate::tests::round_trips(&s);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_secrets() {
        let mut s = State::default();
        s.apply(Command::ActivateSecretKey {
            key_id: "k1".into(),
            at: 1,
        });
        s.apply(Command::CreateNamespace {
            name: "team-a".into(),
            quota: Quota::default(),
            at: 1,
        });
        let mut secret = sealed("k1", "n1");
        secret.namespace = "team-a".into();
        assert!(matches!(
            put(&mut s, secret, None, 2),
            CommandResult::Secret(_)
        ));
        let mut elsewhere = sealed("k1", "n1");
        elsewhere.namespace = "nowhere".into();
        assert!(matches!(
            put(&mut s, elsewhere, None, 2),
            CommandResult::Rejected(Rejection::NotFound(_))
        ));
        s.apply(Command::DeleteNamespace {
            name: "team-a".into(),
            at: 3,
        });
        assert_eq!(s.secrets("team-a").count(), 0);
        crate::tests::round_trips(&s);
    }
}
