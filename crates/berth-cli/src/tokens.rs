//! `berth token` (API tokens of clients) and `berth cluster token` (join tokens of nodes):
//! create, list, revoke. A created token goes alone on the last line of standard output, what
//! it is on standard error, so `T=$(berth token create …)` captures only the token.

use std::time::Duration;

use anyhow::Context as _;
use berth_model::{format_timestamp, ApiTokenRecord, JoinTokenRecord, Timestamp};
use berth_proto::v1 as pb;
use serde::Serialize;

use crate::args::{JoinTokenCommand, TokenCommand};
use crate::output::{age, humanise, now_ms, render_list, render_table, Format};
use crate::{Client, GlobalArgs};

pub async fn run(global: &GlobalArgs, command: TokenCommand) -> anyhow::Result<()> {
    let mut client = Client::new(global)?;
    match command {
        TokenCommand::Create {
            role,
            ttl,
            description,
            aws,
        } => {
            let req = pb::CreateTokenRequest {
                namespace: global.namespace.clone(),
                role,
                ttl_secs: ttl_secs(ttl),
                description: description.unwrap_or_default(),
                aws,
            };
            let created = client
                .request(req, |mut c, req| async move { c.create_token(req).await })
                .await?;
            let aws_key_id = created
                .token
                .as_ref()
                .map(|t| t.aws_access_key_id.clone())
                .unwrap_or_default();
            let record: ApiTokenRecord = created
                .token
                .context("the server answered without the token's record")?
                .try_into()?;
            eprintln!(
                "created token {} ({} of {}, {}); it is shown only this once:",
                record.id,
                record.role,
                scope(&record.namespace),
                expiry(record.expires_at, now_ms())
            );
            if aws {
                // The secret access key is the token's secret: the same token also works as
                // `berth_<id>_<secret>` with --token.
                let token = berth_tls::ApiToken::parse(&created.secret_token)?;
                anyhow::ensure!(
                    !aws_key_id.is_empty(),
                    "the server made no AWS access key: is it older than this CLI?"
                );
                println!("AWS_ACCESS_KEY_ID={aws_key_id}");
                println!("AWS_SECRET_ACCESS_KEY={}", token.secret);
            } else {
                println!("{}", created.secret_token);
            }
        }
        TokenCommand::List => {
            let list = client
                .call(|mut c| async move { c.list_tokens(pb::ListTokensRequest {}).await })
                .await?;
            let tokens: Vec<ApiTokenRecord> = berth_proto::try_all(list.tokens)?;
            print!("{}", render_tokens(global.output, &tokens, now_ms())?);
        }
        TokenCommand::Revoke { token_or_id } => {
            // Only the ID travels when the whole token was given: the secret stays here.
            let id = berth_tls::ApiToken::parse(&token_or_id).map_or(token_or_id, |t| t.id);
            let req = pb::RevokeTokenRequest { token: id.clone() };
            client
                .request(req, |mut c, req| async move { c.revoke_token(req).await })
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

pub async fn run_join(
    client: &mut Client,
    output: Format,
    command: JoinTokenCommand,
) -> anyhow::Result<()> {
    match command {
        JoinTokenCommand::Create { role, ttl } => {
            let req = pb::CreateJoinTokenRequest {
                role,
                ttl_secs: ttl_secs(ttl),
            };
            let created = client
                .request(
                    req,
                    |mut c, req| async move { c.create_join_token(req).await },
                )
                .await?;
            let record: JoinTokenRecord = created
                .token
                .context("the server answered without the token's record")?
                .try_into()?;
            eprintln!(
                "created join token {} for {}s ({}); it is shown only this once:",
                record.id,
                record.role,
                expiry(record.expires_at, now_ms())
            );
            println!("{}", created.secret_token);
        }
        JoinTokenCommand::List => {
            let list = client
                .call(|mut c| async move { c.list_join_tokens(pb::ListJoinTokensRequest {}).await })
                .await?;
            let tokens: Vec<JoinTokenRecord> = berth_proto::try_all(list.tokens)?;
            print!("{}", render_join_tokens(output, &tokens, now_ms())?);
        }
        JoinTokenCommand::Revoke { token_or_id } => {
            let id = berth_tls::JoinToken::parse(&token_or_id).map_or(token_or_id, |t| t.id);
            let req = pb::RevokeJoinTokenRequest { token: id.clone() };
            client
                .request(
                    req,
                    |mut c, req| async move { c.revoke_join_token(req).await },
                )
                .await?;
            println!("join token {id} revoked");
        }
    }
    Ok(())
}

/// `--ttl` on the wire: whole seconds, rounded up (a `500ms` token still lasts a second); 0 is
/// "until revoked".
fn ttl_secs(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// `namespace team-a`, or `every namespace` for an admin's `*`.
fn scope(namespace: &str) -> String {
    if namespace == berth_model::ALL_NAMESPACES {
        "every namespace".to_owned()
    } else {
        format!("namespace {namespace}")
    }
}

/// `expires in 29d`, `expired 2h ago`, `never expires`.
fn expiry(expires_at: Option<Timestamp>, now: Timestamp) -> String {
    match expires_at {
        None => "never expires".to_owned(),
        Some(at) if at > now => format!("expires in {}", humanise(Duration::from_millis(at - now))),
        Some(at) => format!("expired {} ago", age(at, now)),
    }
}

/// The EXPIRES column: `in 29d`, `expired`, `never`; with `-o wide`, the time itself.
fn expires_cell(expires_at: Option<Timestamp>, now: Timestamp, wide: bool) -> String {
    match expires_at {
        None => "never".to_owned(),
        Some(at) if wide => format_timestamp(at),
        Some(at) if at > now => format!("in {}", humanise(Duration::from_millis(at - now))),
        Some(_) => "expired".to_owned(),
    }
}

/// An API token as JSON and YAML show it: never its secret or hash.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenJson<'a> {
    id: &'a str,
    namespace: &'a str,
    role: berth_model::AccessRole,
    created_at: String,
    /// RFC 3339, or null for a token that never expires.
    expires_at: Option<String>,
    description: &'a str,
    /// The AWS access key ID of an `--aws` token.
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_access_key_id: Option<String>,
}

/// API tokens, oldest first.
pub fn render_tokens(
    format: Format,
    tokens: &[ApiTokenRecord],
    now: Timestamp,
) -> anyhow::Result<String> {
    let mut tokens: Vec<&ApiTokenRecord> = tokens.iter().collect();
    tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let json: Vec<TokenJson> = tokens
        .iter()
        .map(|t| TokenJson {
            id: &t.id,
            namespace: &t.namespace,
            role: t.role,
            created_at: format_timestamp(t.created_at),
            expires_at: t.expires_at.map(format_timestamp),
            description: &t.description,
            aws_access_key_id: t.aws_access_key_id(),
        })
        .collect();
    // The AWS key column only when a token has one.
    let aws = tokens.iter().any(|t| t.aws_secret.is_some());
    render_list(format, &json, false, |wide| {
        let rows: Vec<Vec<String>> = tokens
            .iter()
            .map(|t| {
                let mut row = vec![
                    t.id.clone(),
                    t.namespace.clone(),
                    t.role.to_string(),
                    age(t.created_at, now),
                    expires_cell(t.expires_at, now, wide),
                ];
                if aws {
                    row.push(t.aws_access_key_id().unwrap_or_else(|| "-".into()));
                }
                row.push(t.description.clone());
                row
            })
            .collect();
        let mut header = vec!["ID", "NAMESPACE", "ROLE", "AGE", "EXPIRES"];
        if aws {
            header.push("AWS ACCESS KEY");
        }
        header.push("DESCRIPTION");
        render_table(&header, &rows)
    })
}

/// A join token as JSON and YAML show it: never its secret or hash.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinTokenJson<'a> {
    id: &'a str,
    role: berth_model::NodeRole,
    created_at: String,
    expires_at: Option<String>,
}

/// Join tokens, oldest first.
pub fn render_join_tokens(
    format: Format,
    tokens: &[JoinTokenRecord],
    now: Timestamp,
) -> anyhow::Result<String> {
    let mut tokens: Vec<&JoinTokenRecord> = tokens.iter().collect();
    tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let json: Vec<JoinTokenJson> = tokens
        .iter()
        .map(|t| JoinTokenJson {
            id: &t.id,
            role: t.role,
            created_at: format_timestamp(t.created_at),
            expires_at: t.expires_at.map(format_timestamp),
        })
        .collect();
    render_list(format, &json, false, |wide| {
        let rows: Vec<Vec<String>> = tokens
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.role.to_string(),
                    age(t.created_at, now),
                    expires_cell(t.expires_at, now, wide),
                ]
            })
            .collect();
        render_table(&["ID", "ROLE", "AGE", "EXPIRES"], &rows)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_seconds() {
        assert_eq!(ttl_secs(None), 0);
        assert_eq!(ttl_secs(Some(Duration::from_secs(3600))), 3600);
        assert_eq!(ttl_secs(Some(Duration::from_millis(500))), 1);
    }

    #[test]
    fn expiry_reads_as_a_phrase() {
        let now = 10 * 86_400_000;
        assert_eq!(expiry(None, now), "never expires");
        assert_eq!(expiry(Some(now + 3_600_000), now), "expires in 1h");
        assert_eq!(expiry(Some(now - 120_000), now), "expired 2m ago");
        assert_eq!(scope("*"), "every namespace");
        assert_eq!(scope("team-a"), "namespace team-a");
    }
}
