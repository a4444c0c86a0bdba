//! Calling the `Join` service on whichever server answers: the configured servers in turn, with
//! a capped back-off (a server may still be starting), until a deadline; a follower's leader
//! hint is followed at once; a definite refusal ends the attempts.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Each RPC of the `Join` service may take this long.
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// One failed attempt.
#[derive(Debug)]
pub(super) enum Attempt {
    /// No TLS connection (refused, unreachable, or a handshake that failed: for a join, a
    /// server whose CA is not the one the token pins).
    Connect(tonic::transport::Error),
    /// The server answered with an error.
    Status(tonic::Status),
    /// The server presented another CA than the join token pins: it is not this token's
    /// cluster, and asking again will not change that.
    OtherCa,
}

impl From<tonic::transport::Error> for Attempt {
    fn from(e: tonic::transport::Error) -> Self {
        Self::Connect(e)
    }
}

impl From<tonic::Status> for Attempt {
    fn from(s: tonic::Status) -> Self {
        Self::Status(s)
    }
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {}", berth_model::error_chain(e)),
            Self::Status(s) => write!(f, "{:?}: {}", s.code(), s.message()),
            Self::OtherCa => f.write_str("its CA does not match the join token's fingerprint"),
        }
    }
}

/// Why no server gave an answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    /// A server refused for good (the token, the name, the request): trying again or
    /// elsewhere would not help.
    #[error("server {server} refused: {}", status.message())]
    Refused {
        server: String,
        status: tonic::Status,
    },
    #[error("no server answered within {}: {}", humantime::format_duration(*within), last.join("; "))]
    Deadline { within: Duration, last: Vec<String> },
    /// A server's CA is not the one the join token pins.
    #[error("server {server} presented a CA that does not match the join token's fingerprint: the token is from another cluster (create one on this cluster with `berth cluster token create --role agent`)")]
    OtherCa { server: String },
}

/// Whether an answer with `code` is final: the server understood the request and said no.
/// Anything else (unreachable, no leader yet, overloaded, an older server) is worth another try.
/// So is ALREADY_EXISTS: a join under the name of a node that is not DOWN yet, which is what an
/// agent restarted quickly with an expired certificate meets until the servers notice it left.
pub(super) fn is_final(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
    )
}

/// Calls `attempt` on the servers in turn until one answers, one refuses for good, or `within`
/// has passed.
pub(super) async fn call_servers<T, F, Fut>(
    servers: &[String],
    within: Duration,
    mut attempt: F,
) -> Result<T, CallError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let deadline = Instant::now() + within;
    let mut backoff = Duration::from_millis(100);
    // The last error of each server, in the order of `servers` (then redirects).
    let mut last: Vec<(String, String)> = Vec::new();
    let mut next = 0;
    let mut redirect: Option<String> = None;
    // Followers that point at each other during an election must not be asked in a tight loop.
    let mut redirects = 0;
    loop {
        let server = redirect.take().unwrap_or_else(|| {
            next += 1;
            servers[(next - 1) % servers.len()].clone()
        });
        let error = match tokio::time::timeout_at(deadline, attempt(server.clone())).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(Attempt::Status(status))) if is_final(status.code()) => {
                return Err(CallError::Refused { server, status });
            }
            Ok(Err(Attempt::OtherCa)) => return Err(CallError::OtherCa { server }),
            Ok(Err(Attempt::Status(status))) => {
                let hint = status
                    .metadata()
                    .get(berth_proto::LEADER_HINT)
                    .and_then(|v| v.to_str().ok())
                    .filter(|leader| *leader != server)
                    .map(str::to_owned);
                if let Some(leader) = hint.filter(|_| redirects < 2) {
                    tracing::debug!(%server, %leader, "redirected to the leader");
                    redirects += 1;
                    redirect = Some(leader);
                    continue;
                }
                redirects = 0;
                Attempt::Status(status).to_string()
            }
            Ok(Err(e)) => e.to_string(),
            // Cut short by the deadline: an earlier error of this server says more.
            Err(_) => String::new(),
        };
        // Said once per server and error, while the attempts go on.
        let seen = last.iter_mut().find(|(s, _)| *s == server);
        if !error.is_empty() && seen.as_ref().is_none_or(|(_, e)| *e != error) {
            tracing::warn!(%server, "{error} (trying again)");
        }
        match seen {
            Some(_) if error.is_empty() => {}
            Some(entry) => entry.1 = error,
            None if error.is_empty() => last.push((server, "no answer".to_owned())),
            None => last.push((server, error)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CallError::Deadline {
                within,
                last: last.into_iter().map(|(s, e)| format!("{s}: {e}")).collect(),
            });
        }
        // A full round without success waits; the next server in the round is tried at once.
        if next % servers.len() == 0 {
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
