//! `berth secret create|update|get|list|delete|rotate-key` (and `get secrets`): secrets of a
//! namespace. Values go to the servers and never come back: every listing shows keys only.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use berth_model::format_timestamp;
use berth_proto::v1 as pb;
use serde::Serialize;

use crate::args::{SecretCommand, SecretValues};
use crate::output::{age, now_ms, render_list, render_table, Format};
use crate::{Client, GlobalArgs};

pub async fn run(global: &GlobalArgs, command: SecretCommand) -> anyhow::Result<()> {
    let mut client = Client::new(global)?;
    match command {
        SecretCommand::Create { name, values } => {
            let s = put_values(
                &mut client,
                global,
                name,
                &values,
                pb::SecretPrecondition::Absent,
            )
            .await?;
            println!("secret/{} created ({})", s.name, keys(&s));
        }
        SecretCommand::Update { name, values } => {
            let s = put_values(
                &mut client,
                global,
                name,
                &values,
                pb::SecretPrecondition::Present,
            )
            .await?;
            println!(
                "secret/{} updated ({}); tasks that run read it when they started: `berth service redeploy SERVICE` replaces them",
                s.name,
                keys(&s)
            );
        }
        SecretCommand::Get { name } => get(&mut client, global, name.as_deref()).await?,
        SecretCommand::List => get(&mut client, global, None).await?,
        SecretCommand::Delete { name } => delete(&mut client, global, &name).await?,
        SecretCommand::RotateKey => {
            let answer = client
                .call(
                    |mut c| async move { c.rotate_secret_key(pb::RotateSecretKeyRequest {}).await },
                )
                .await?;
            println!(
                "secrets sealed again under key {}: {} secrets, {} AWS tokens",
                answer.key_id, answer.secrets, answer.tokens
            );
            if answer.unreadable > 0 {
                bail!(
                    "{} secrets or AWS tokens could not be opened (their key is on no server that answered) and keep their old key",
                    answer.unreadable
                );
            }
        }
    }
    Ok(())
}

fn keys(s: &pb::SecretInfo) -> String {
    match s.keys.len() {
        1 => format!("1 key: {}", s.keys[0]),
        n => format!("{n} keys: {}", s.keys.join(", ")),
    }
}

/// [`put`] of the values the flags name (read from literals, files and standard input).
async fn put_values(
    client: &mut Client,
    global: &GlobalArgs,
    name: String,
    values: &SecretValues,
    precondition: pb::SecretPrecondition,
) -> anyhow::Result<pb::SecretInfo> {
    let data = values.read(&mut std::io::stdin())?;
    put(client, global, name, data, precondition).await
}

/// Creates or replaces a secret (what `apply` of a Secret manifest does too).
pub async fn put(
    client: &mut Client,
    global: &GlobalArgs,
    name: String,
    data: BTreeMap<String, Vec<u8>>,
    precondition: pb::SecretPrecondition,
) -> anyhow::Result<pb::SecretInfo> {
    let req = pb::PutSecretRequest {
        namespace: global.namespace.clone(),
        name,
        data,
        precondition: precondition as i32,
    };
    client
        .request(req, |mut c, req| async move { c.put_secret(req).await })
        .await
}

pub async fn delete(client: &mut Client, global: &GlobalArgs, name: &str) -> anyhow::Result<()> {
    let req = pb::DeleteSecretRequest {
        namespace: global.namespace.clone(),
        name: name.to_owned(),
    };
    client
        .request(req, |mut c, req| async move { c.delete_secret(req).await })
        .await?;
    println!("secret/{name} deleted");
    Ok(())
}

/// `get secrets` and `get secret NAME`: keys, never values.
pub async fn get(
    client: &mut Client,
    global: &GlobalArgs,
    name: Option<&str>,
) -> anyhow::Result<()> {
    let list = match name {
        Some(name) => {
            let req = pb::GetSecretRequest {
                namespace: global.namespace.clone(),
                name: name.to_owned(),
            };
            vec![
                client
                    .request(req, |mut c, req| async move { c.get_secret(req).await })
                    .await?,
            ]
        }
        None => {
            let req = pb::ListSecretsRequest {
                namespace: global.namespace.clone(),
            };
            client
                .request(req, |mut c, req| async move { c.list_secrets(req).await })
                .await?
                .secrets
        }
    };
    print!(
        "{}",
        render_secrets(global.output, &list, name.is_some(), now_ms())?
    );
    Ok(())
}

/// A secret as JSON and YAML show it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretJson<'a> {
    namespace: &'a str,
    name: &'a str,
    keys: &'a [String],
    version: u64,
    created_at: String,
    updated_at: String,
}

pub fn render_secrets(
    format: Format,
    secrets: &[pb::SecretInfo],
    single: bool,
    now: u64,
) -> anyhow::Result<String> {
    let json: Vec<SecretJson> = secrets
        .iter()
        .map(|s| SecretJson {
            namespace: &s.namespace,
            name: &s.name,
            keys: &s.keys,
            version: s.version,
            created_at: format_timestamp(s.created_at),
            updated_at: format_timestamp(s.updated_at),
        })
        .collect();
    render_list(format, &json, single, |_| {
        let rows: Vec<Vec<String>> = secrets
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.keys.join(","),
                    s.version.to_string(),
                    age(s.updated_at, now),
                ]
            })
            .collect();
        render_table(&["NAME", "KEYS", "VERSION", "UPDATED"], &rows)
    })
}

impl SecretValues {
    /// The keys and values the flags name, read from literals, files and `stdin`.
    pub fn read(&self, stdin: &mut dyn std::io::Read) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let mut data = BTreeMap::new();
        let mut add = |key: String, value: Vec<u8>| {
            if data.insert(key.clone(), value).is_some() {
                bail!("key {key} is given twice");
            }
            Ok(())
        };
        for literal in &self.from_literal {
            let Some((key, value)) = literal.split_once('=') else {
                // Not the text itself: it may be the value, with the key forgotten.
                bail!("--from-literal takes KEY=VALUE; one of them has no '='");
            };
            add(key.to_owned(), value.as_bytes().to_vec())?;
        }
        for file in &self.from_file {
            let (key, path) = match file.split_once('=') {
                Some((key, path)) => (key.to_owned(), std::path::PathBuf::from(path)),
                None => {
                    let path = std::path::PathBuf::from(file);
                    let key = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .with_context(|| format!("--from-file {file:?}: name the key: KEY=PATH"))?
                        .to_owned();
                    (key, path)
                }
            };
            let value = std::fs::read(&path)
                .with_context(|| format!("--from-file: read {}", path.display()))?;
            add(key, value)?;
        }
        if let Some(key) = &self.from_stdin {
            let mut value = Vec::new();
            stdin
                .read_to_end(&mut value)
                .context("--from-stdin: read standard input")?;
            add(key.clone(), value)?;
        }
        if data.is_empty() {
            bail!("a secret needs at least one value: --from-literal KEY=VALUE, --from-file [KEY=]PATH or --from-stdin KEY");
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_literals_files_and_stdin_and_listings_show_keys_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "CERT").expect("write");
        let values = SecretValues {
            from_literal: vec!["user=admin".into(), "password=a=b".into()],
            from_file: vec![
                cert.display().to_string(),
                format!("key.pem={}", cert.display()),
            ],
            from_stdin: Some("token".into()),
        };
        let data = values.read(&mut &b"from-stdin"[..]).expect("read");
        assert_eq!(data["password"], b"a=b");
        assert_eq!(data["tls.crt"], b"CERT");
        assert_eq!(data["key.pem"], b"CERT");
        assert_eq!(data["token"], b"from-stdin");
        let twice = SecretValues {
            from_literal: vec!["a=1".into(), "a=2".into()],
            from_file: vec![],
            from_stdin: None,
        };
        assert_eq!(
            twice.read(&mut &b""[..]).unwrap_err().to_string(),
            "key a is given twice"
        );
        let info = pb::SecretInfo {
            namespace: "default".into(),
            name: "db".into(),
            keys: vec!["password".into(), "user".into()],
            version: 2,
            created_at: 1_000,
            updated_at: 61_000,
            key_id: "k1".into(),
        };
        let table = render_secrets(Format::Table, std::slice::from_ref(&info), false, 121_000)
            .expect("table");
        assert_eq!(
            table,
            "NAME   KEYS            VERSION   UPDATED\ndb     password,user   2         1m\n"
        );
        let yaml = render_secrets(Format::Yaml, &[info], true, 121_000).expect("yaml");
        assert!(yaml.contains("keys:\n- password\n- user\n"), "{yaml}");
    }
}
