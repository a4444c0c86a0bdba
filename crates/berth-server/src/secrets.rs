//! Secrets on a server: sealing what clients send under the active keyring key, opening what
//! a node's tasks reference (only for the node that runs them, only until they run), keeping
//! every server's keyring complete, and rotating the key.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_model::{
    ApiTokenRecord, Assignment, ContainerSecrets, SealedValue, Secret, TaskSecrets, TaskStatus,
};
use berth_proto::v1::join_client::JoinClient;
use berth_state::{Command, CommandResult};
use berth_store::Store;
use tonic::Status;

use crate::keyring::{Keyring, KeyringError};
use crate::tls::ServerTls;
use crate::{now_ms, status};

/// How many times a put is retried when the active key changed under it.
const ATTEMPTS: usize = 3;
/// How long fetching a peer's keyring may take.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often servers exchange keyrings, so that each ends up with every key.
const EXCHANGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What a rotation of the secrets key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The key everything is sealed with now.
    pub key_id: String,
    /// How many secrets were sealed again.
    pub secrets: u32,
    /// How many `--aws` tokens' secrets were sealed again.
    pub tokens: u32,
    /// How many secrets and tokens could not be opened (their key is on no server that
    /// answered): they stay sealed under their old key.
    pub unreadable: u32,
}

/// Where the secret of the `--aws` token `id` is bound: no secret's namespace is empty, so a
/// token's sealed secret opens as nothing else, and nothing else opens as it.
fn token_place(id: &str) -> (&str, &str, &str) {
    ("", "api-token", id)
}

#[derive(Clone)]
pub struct Secrets {
    store: Store,
    keyring: Arc<Keyring>,
    tls: Arc<ServerTls>,
    /// Held while a background exchange runs.
    exchanging: Arc<tokio::sync::Mutex<()>>,
}

impl Secrets {
    pub fn new(store: Store, keyring: Arc<Keyring>, tls: Arc<ServerTls>) -> Self {
        Self {
            store,
            keyring,
            tls,
            exchanging: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tls(&self) -> &Arc<ServerTls> {
        &self.tls
    }

    /// Fetches the keyring of the server at `addr` and adds what this one lacks. The request
    /// carries no key: keys travel only in answers, which a server gives only to a caller with
    /// a server certificate.
    pub async fn pull(&self, addr: &str) -> anyhow::Result<String> {
        let exchange = async {
            let channel = self.tls.server_dialer()?.connect(addr).await?;
            let theirs = JoinClient::new(channel)
                .exchange_keyring(berth_proto::v1::KeyringRequest::default())
                .await?
                .into_inner();
            self.keyring.merge(&theirs.keys)?;
            anyhow::Ok(theirs.keys)
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))?
    }

    /// Makes every voter that answers hold this server's keys and this server theirs: each is
    /// asked to pull from this server (which answers it only once its certificate shows a
    /// server), and answers its own keyring. Answers how many voters answered holding
    /// `key_id` (every one that answered, when `None`).
    pub async fn exchange_with_peers(&self, key_id: Option<&str>) -> usize {
        let me = self.store.node_id();
        let members = self.store.cluster_status().members;
        let Some(mine) = members
            .iter()
            .find(|m| m.id == me)
            .map(|m| m.address.clone())
        else {
            return 0;
        };
        let peers: Vec<String> = members
            .into_iter()
            .filter(|m| m.id != me && m.role != berth_model::MemberRole::Learner)
            .map(|m| m.address)
            .collect();
        let Ok(dialer) = self.tls.server_dialer() else {
            return 0;
        };
        let asks = peers.into_iter().map(|addr| {
            let (dialer, mine) = (&dialer, mine.clone());
            async move {
                let exchange = async {
                    let channel = dialer.connect(&addr).await?;
                    let theirs = JoinClient::new(channel)
                        .exchange_keyring(berth_proto::v1::KeyringRequest { pull_from: mine })
                        .await?
                        .into_inner();
                    self.keyring.merge(&theirs.keys)?;
                    anyhow::Ok(key_id.is_none_or(|id| crate::keyring::holds(&theirs.keys, id)))
                };
                match tokio::time::timeout(EXCHANGE_TIMEOUT * 2, exchange).await {
                    Ok(Ok(holds)) => holds,
                    Ok(Err(e)) => {
                        tracing::warn!(%addr, "exchange the secrets keyring: {e:#}");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(%addr, "exchange the secrets keyring: timed out");
                        false
                    }
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|holds| *holds)
            .count()
    }

    /// Keeps every server's keyring complete: exchanges with the voters now and every
    /// [`EXCHANGE_EVERY`] (a server that was down when a key was made, or joined through a
    /// server that lacked one, gets it).
    pub async fn keep_keyrings_complete(self) {
        let mut every = tokio::time::interval(EXCHANGE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let history = self.store.read_stale(|s| s.secret_keys().history.clone());
            let missing: Vec<&String> = history
                .iter()
                .filter(|id| !self.keyring.contains(id))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(keys = ?missing, "this server lacks keys of the secrets keyring; asking its peers");
            }
            if !history.is_empty() {
                self.exchange_with_peers(None).await;
            }
        }
    }

    /// Makes sure this server holds `key_id`, asking its peers when it does not.
    async fn hold(&self, key_id: &str) -> Result<(), Status> {
        if self.keyring.contains(key_id) {
            return Ok(());
        }
        self.exchange_with_peers(None).await;
        if self.keyring.contains(key_id) {
            return Ok(());
        }
        Err(status::unreachable(format!(
            "key {key_id} of the secrets keyring is on no server that answered; the servers that hold it must be up"
        )))
    }

    /// A new key, shared with a majority of the members before the state names it active (so
    /// that losing this server cannot lose the key).
    async fn new_active_key(&self) -> Result<String, Status> {
        let id = self
            .keyring
            .generate()
            .map_err(|e| status::internal(format!("{e:#}")))?;
        let voters = self
            .store
            .cluster_status()
            .members
            .iter()
            .filter(|m| m.role != berth_model::MemberRole::Learner)
            .count();
        let holding = self.exchange_with_peers(Some(&id)).await + 1;
        if holding * 2 <= voters {
            return Err(status::unreachable(format!(
                "a new secrets key reached {holding} of {voters} servers; a majority must hold it before it is used"
            )));
        }
        self.store
            .propose(Command::ActivateSecretKey {
                key_id: id.clone(),
                at: now_ms(),
            })
            .await
            .map_err(status::from_store)?;
        Ok(id)
    }

    /// The active key, held by this server; the first one is made here.
    async fn active_key(&self) -> Result<String, Status> {
        let active = self
            .store
            .read(|s| s.secret_keys().active.clone())
            .await
            .map_err(status::from_store)?;
        match active {
            Some(id) => match self.hold(&id).await {
                Ok(()) => Ok(id),
                // No server that answers holds it (a backup restored without its keyring):
                // new values need no old key.
                Err(e) => {
                    tracing::warn!("{}; sealing new values under a new key", e.message());
                    self.new_active_key().await
                }
            },
            None => self.new_active_key().await,
        }
    }

    fn seal(
        &self,
        key_id: &str,
        namespace: &str,
        name: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Secret, Status> {
        let sealed = data
            .iter()
            .map(|(k, v)| {
                let value = self
                    .keyring
                    .seal(key_id, (namespace, name, k), v)
                    .map_err(|e| status::internal(e.to_string()))?;
                Ok((k.clone(), value))
            })
            .collect::<Result<_, Status>>()?;
        Ok(Secret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            data: sealed,
            version: 0,
            created_at: 0,
            updated_at: 0,
        })
    }

    /// The `PutSecret` command for `data` sealed under the active key, retried when the key
    /// changes in between (a rotation). `propose` answers the command's result.
    pub async fn put<F, Fut>(
        &self,
        namespace: &str,
        name: &str,
        data: &BTreeMap<String, Vec<u8>>,
        expect: Option<bool>,
        propose: F,
    ) -> Result<Secret, Status>
    where
        F: Fn(Command) -> Fut,
        Fut: std::future::Future<Output = Result<Secret, Status>>,
    {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let key_id = self.active_key().await?;
            let secret = self.seal(&key_id, namespace, name, data)?;
            let command = Command::PutSecret {
                secret: Box::new(secret),
                expect,
                at: now_ms(),
            };
            match propose(command).await {
                Err(e)
                    if e.code() == tonic::Code::Aborted
                        && e.message().contains("no longer the active key") =>
                {
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| status::internal("could not seal the secret")))
    }

    /// The secret of an `--aws` token with ID `id`, sealed under the active key.
    pub async fn seal_token(&self, id: &str, secret: &str) -> Result<SealedValue, Status> {
        let key_id = self.active_key().await?;
        self.keyring
            .seal(&key_id, token_place(id), secret.as_bytes())
            .map_err(|e| status::internal(e.to_string()))
    }

    /// The secret of an `--aws` token, opened; `None` for a bearer-only token. A key this
    /// server lacks is asked of the peers in the background (the next request may succeed).
    pub fn open_token(&self, record: &ApiTokenRecord) -> Result<Option<String>, KeyringError> {
        let Some(sealed) = &record.aws_secret else {
            return Ok(None);
        };
        match self.keyring.open_value(sealed, token_place(&record.id)) {
            Ok(plain) => String::from_utf8(plain)
                .map(Some)
                .map_err(|_| KeyringError::Corrupt),
            Err(e @ KeyringError::MissingKey(_)) => {
                self.complete_keyring_soon();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Seals every secret, and the secret of every `--aws` token, again under a new key.
    /// Secrets changed meanwhile under the old key are sealed again in the next round (at most
    /// [`ATTEMPTS`]).
    pub async fn rotate(&self) -> Result<Rotated, Status> {
        let key_id = self.new_active_key().await?;
        let mut count = 0;
        let mut unreadable = std::collections::BTreeSet::new();
        for _ in 0..ATTEMPTS {
            let (active, stale): (Option<String>, Vec<Secret>) = self
                .store
                .read(|s| {
                    let stale = s
                        .all_secrets()
                        .filter(|secret| secret.data.values().any(|v| v.key_id != key_id))
                        .cloned()
                        .collect();
                    (s.secret_keys().active.clone(), stale)
                })
                .await
                .map_err(status::from_store)?;
            if active.as_deref() != Some(key_id.as_str()) {
                return Err(status::precondition(
                    "another rotation of the secrets key started meanwhile; it seals every secret again",
                ));
            }
            // Each old key fetched once, whatever the number of secrets sealed with it.
            let old_keys: std::collections::BTreeSet<&str> = stale
                .iter()
                .flat_map(|s| s.data.values().map(|v| v.key_id.as_str()))
                .collect();
            for id in old_keys {
                let _ = self.hold(id).await;
            }
            let mut resealed = Vec::with_capacity(stale.len());
            for secret in stale {
                let place = format!("{}/{}", secret.namespace, secret.name);
                match self.open_all(&secret) {
                    Ok(data) => {
                        let mut again =
                            self.seal(&key_id, &secret.namespace, &secret.name, &data)?;
                        again.version = secret.version;
                        resealed.push(again);
                    }
                    Err(e) => {
                        tracing::warn!("rotate the secrets key: {}", e.message());
                        unreadable.insert(place);
                    }
                }
            }
            if resealed.is_empty() {
                break;
            }
            count += self
                .propose_in_batches(&resealed, |secrets| Command::ResealSecrets {
                    secrets,
                    at: now_ms(),
                })
                .await?;
        }
        let tokens = self.reseal_tokens(&key_id, &mut unreadable).await?;
        let unreadable = u32::try_from(unreadable.len()).unwrap_or(u32::MAX);
        tracing::info!(target: "berth::audit", key = %key_id, secrets = count, tokens, unreadable, "secrets sealed again under a new key");
        Ok(Rotated {
            key_id,
            secrets: count,
            tokens,
            unreadable,
        })
    }

    /// Seals the secrets of `--aws` tokens again under `key_id`; those that do not open are
    /// added to `unreadable`. Answers how many were sealed again.
    async fn reseal_tokens(
        &self,
        key_id: &str,
        unreadable: &mut std::collections::BTreeSet<String>,
    ) -> Result<u32, Status> {
        let stale: Vec<ApiTokenRecord> = self
            .store
            .read(|s| {
                s.api_tokens()
                    .into_iter()
                    .filter(|t| t.aws_secret.as_ref().is_some_and(|v| v.key_id != key_id))
                    .cloned()
                    .collect()
            })
            .await
            .map_err(status::from_store)?;
        let old_keys: std::collections::BTreeSet<&str> = stale
            .iter()
            .filter_map(|t| t.aws_secret.as_ref().map(|v| v.key_id.as_str()))
            .collect();
        for id in old_keys {
            let _ = self.hold(id).await;
        }
        let mut resealed = Vec::with_capacity(stale.len());
        for token in &stale {
            let opened = self.open_token(token).ok().flatten();
            let again = opened.and_then(|secret| {
                self.keyring
                    .seal(key_id, token_place(&token.id), secret.as_bytes())
                    .ok()
            });
            match again {
                Some(sealed) => resealed.push((token.id.clone(), sealed)),
                None => {
                    tracing::warn!(token = %token.id, "rotate the secrets key: the token's secret does not open");
                    unreadable.insert(format!("token {}", token.id));
                }
            }
        }
        self.propose_in_batches(&resealed, |secrets| Command::ResealApiTokens {
            secrets,
            at: now_ms(),
        })
        .await
    }

    /// Proposes `items` 64 at a time (no entry of the log grows with their number), each batch
    /// in the command `make` builds; answers how many the state machine counted.
    async fn propose_in_batches<T: Clone>(
        &self,
        items: &[T],
        make: impl Fn(Vec<T>) -> Command,
    ) -> Result<u32, Status> {
        let mut count = 0;
        for batch in items.chunks(64) {
            let result = self
                .store
                .propose(make(batch.to_vec()))
                .await
                .map_err(status::from_store)?;
            if let CommandResult::Count(n) = result {
                count += n;
            }
        }
        Ok(count)
    }

    fn open_all(&self, secret: &Secret) -> Result<BTreeMap<String, Vec<u8>>, Status> {
        secret
            .data
            .iter()
            .map(|(k, v)| {
                let value = self
                    .keyring
                    .open_value(v, (&secret.namespace, &secret.name, k))
                    .map_err(|e| {
                        status::internal(format!(
                            "secret {}/{}: {e}",
                            secret.namespace, secret.name
                        ))
                    })?;
                Ok((k.clone(), value))
            })
            .collect()
    }

    /// Fills in the secrets of the tasks of `desired` that are to start: a task that is
    /// running already needs none (its containers have their values), so values travel only
    /// until the task runs. A task whose secrets cannot be found gets the reason instead.
    ///
    /// A task whose secrets are sealed with a key this server lacks is not opened: its ID is
    /// answered (hold it back, and ask again soon) while the keyring is completed from the peers
    /// in the background, unless `give_up` says it waited long enough (it then gets the
    /// reason).
    pub fn open_for(
        &self,
        desired: &mut [Assignment],
        give_up: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let wanted = |a: &Assignment| {
            a.desired_status == berth_model::DesiredStatus::Running
                && a.last_status < TaskStatus::Running
                && a.containers.iter().any(|c| {
                    !c.secrets.is_empty()
                        || !c.secret_files.is_empty()
                        || c.repository_credentials.is_some()
                })
        };
        if !desired.iter().any(wanted) {
            return Vec::new();
        }
        let referenced: BTreeMap<(String, String), Secret> = self.store.read_stale(|s| {
            desired
                .iter()
                .filter(|a| wanted(a))
                .flat_map(|a| references(a).map(move |name| (a.namespace.clone(), name)))
                .filter_map(|(ns, name)| {
                    s.secret(&ns, &name)
                        .map(|secret| ((ns.clone(), name.clone()), secret.clone()))
                })
                .collect()
        });
        let lacks = |a: &Assignment| {
            references(a).any(|name| {
                referenced
                    .get(&(a.namespace.clone(), name))
                    .is_some_and(|s| s.data.values().any(|v| !self.keyring.contains(&v.key_id)))
            })
        };
        let mut held = Vec::new();
        for a in desired.iter_mut().filter(|a| wanted(a)) {
            if lacks(a) && !give_up(&a.task_id) {
                held.push(a.task_id.clone());
                continue;
            }
            a.secrets = self.open_task(a, &referenced);
        }
        if !held.is_empty() {
            self.complete_keyring_soon();
        }
        held
    }

    /// Asks the peers for the keys this server lacks, in the background (one exchange at a
    /// time).
    fn complete_keyring_soon(&self) {
        let Ok(guard) = self.exchanging.clone().try_lock_owned() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.exchange_with_peers(None).await;
            drop(guard);
        });
    }

    fn open_task(
        &self,
        a: &Assignment,
        referenced: &BTreeMap<(String, String), Secret>,
    ) -> TaskSecrets {
        let mut out = TaskSecrets::default();
        let result = (|| {
            for c in &a.containers {
                let mut opened = ContainerSecrets::default();
                let get = |secret: &str,
                           key: Option<&str>|
                 -> Result<BTreeMap<String, Vec<u8>>, String> {
                    let found = referenced
                        .get(&(a.namespace.clone(), secret.to_owned()))
                        .ok_or_else(|| {
                            format!(
                                "container {}: secret {secret} not found in namespace {}; create it with `berth secret create {secret} -n {}`",
                                c.name, a.namespace, a.namespace
                            )
                        })?;
                    let keys: Vec<&String> = match key {
                        Some(k) => {
                            vec![found.data.get_key_value(k).map(|(k, _)| k).ok_or_else(|| {
                                format!(
                                    "container {}: secret {secret} has no key {k} (it has {})",
                                    c.name,
                                    found.data.keys().cloned().collect::<Vec<_>>().join(", ")
                                )
                            })?]
                        }
                        None => found.data.keys().collect(),
                    };
                    keys.into_iter()
                        .map(|k| {
                            let value = self
                                .keyring
                                .open_value(&found.data[k], (&a.namespace, secret, k))
                                .map_err(|e| match e {
                                    KeyringError::MissingKey(_) => format!(
                                        "secret {secret}: {e}; the servers that hold it must be up"
                                    ),
                                    _ => format!("secret {secret}: {e}"),
                                })?;
                            Ok((k.clone(), value))
                        })
                        .collect()
                };
                for env in &c.secrets {
                    let mut value = get(&env.value_from.secret, Some(&env.value_from.key))?;
                    let bytes = value.remove(&env.value_from.key).unwrap_or_default();
                    let text = String::from_utf8(bytes)
                        .ok()
                        .filter(|t| !t.contains('\0'))
                        .ok_or_else(|| {
                            format!(
                                "container {}: secret {} is not text without NUL bytes, so it cannot be the variable {}; mount it with secretFiles instead",
                                c.name, env.value_from, env.name
                            )
                        })?;
                    opened.environment.insert(env.name.clone(), text);
                }
                for file in &c.secret_files {
                    opened
                        .files
                        .insert(file.path.clone(), get(&file.secret, None)?);
                }
                if let Some(creds) = &c.repository_credentials {
                    let name = &creds.credentials_parameter;
                    let mut values = get(name, None)?;
                    let mut take = |k: &str| {
                        values
                            .remove(k)
                            .and_then(|v| String::from_utf8(v).ok())
                            .ok_or_else(|| {
                                format!(
                                    "container {}: repositoryCredentials: secret {name} needs the keys username and password (UTF-8 text)",
                                    c.name
                                )
                            })
                    };
                    opened.registry = Some((take("username")?, take("password")?));
                }
                out.containers.insert(c.name.clone(), opened);
            }
            Ok::<(), String>(())
        })();
        let result = result.and_then(|()| {
            if out.size() > berth_model::MAX_TASK_SECRET_BYTES {
                return Err(format!(
                    "the task's secrets add up to {} bytes; a task may receive at most {} (its node's stream carries them in one message)",
                    out.size(),
                    berth_model::MAX_TASK_SECRET_BYTES
                ));
            }
            Ok(())
        });
        if let Err(reason) = result {
            return TaskSecrets {
                containers: BTreeMap::new(),
                error: Some(reason),
            };
        }
        out
    }
}

/// The names of the secrets an assignment's containers reference.
fn references(a: &Assignment) -> impl Iterator<Item = String> + '_ {
    a.containers.iter().flat_map(|c| {
        c.secrets
            .iter()
            .map(|s| s.value_from.secret.clone())
            .chain(c.secret_files.iter().map(|f| f.secret.clone()))
            .chain(
                c.repository_credentials
                    .iter()
                    .map(|r| r.credentials_parameter.clone()),
            )
    })
}

/// Keys a secret of the state, for clients: its keys, never its values.
pub fn info(s: &Secret) -> berth_proto::v1::SecretInfo {
    berth_proto::v1::SecretInfo {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        keys: s.data.keys().cloned().collect(),
        version: s.version,
        created_at: s.created_at,
        updated_at: s.updated_at,
        key_id: s
            .data
            .values()
            .next()
            .map(|v| v.key_id.clone())
            .unwrap_or_default(),
    }
}
