//! The web console's gateway, on the server's own address (`https://SERVER/ui/`): the app shell
//! and its files, served to anyone (they hold nothing of the cluster's), and a small JSON and
//! server-sent-events API for it under `/ui/api/`, each call authenticated by its bearer token
//! and carried out by the gRPC API's handlers (the same permissions, checks and audit lines).
//! Every answer sends a strict Content-Security-Policy: the page loads nothing from elsewhere
//! and runs no inline script.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use berth_model::Permission;
use berth_proto::v1 as pb;
use futures::StreamExt as _;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};
use tonic::Status;

use super::BerthService;
use crate::auth::{self, Caller};
use crate::now_ms;

/// What the page may load and run: only this server's own files, no inline script or style, no
/// frames, no forms posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The app's files, built into the binary.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/views.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/vendor/uPlot.min.css"),
    ),
];

/// How many intervals a usage chart shows.
const USAGE_POINTS: u64 = 12;

/// A row's key: namespace and service.
fn usage_key(r: &pb::UsageRow) -> (String, String) {
    (r.namespace.clone(), r.service.clone())
}

/// Per (namespace, service): the usage of each interval `[since_i, since_i+1)` (the answer
/// since one boundary less the answer since the next), and the totals since the first
/// boundary up to `now`.
fn usage_series(answers: &[(u64, Vec<pb::UsageRow>)], now: u64) -> Value {
    use std::collections::BTreeMap;
    type Figures = [u64; 4];
    let figures = |r: &pb::UsageRow| -> Figures {
        let a = r.accrued.unwrap_or_default();
        [
            a.task_ms,
            a.cpu_unit_ms,
            a.memory_mib_ms,
            a.used_cpu_unit_ms,
        ]
    };
    let at: Vec<BTreeMap<(String, String), Figures>> = answers
        .iter()
        .map(|(_, rows)| rows.iter().map(|r| (usage_key(r), figures(r))).collect())
        .collect();
    let keys: std::collections::BTreeSet<(String, String)> =
        at.iter().flat_map(|m| m.keys().cloned()).collect();
    let intervals = answers.len().saturating_sub(1);
    let series: Vec<Value> = keys
        .iter()
        .map(|key| {
            let get = |i: usize| {
                at.get(i)
                    .and_then(|m| m.get(key))
                    .copied()
                    .unwrap_or_default()
            };
            let mut per = vec![[0u64; 4]; intervals];
            for (i, slot) in per.iter_mut().enumerate() {
                let (from, to) = (get(i), get(i + 1));
                for f in 0..4 {
                    slot[f] = from[f].saturating_sub(to[f]);
                }
            }
            let column = |f: usize| per.iter().map(|p| p[f]).collect::<Vec<_>>();
            json!({
                "namespace": key.0,
                "service": key.1,
                "taskMs": column(0),
                "cpuUnitMs": column(1),
                "memoryMibMs": column(2),
                "usedCpuUnitMs": column(3),
            })
        })
        .collect();
    let totals: Vec<Value> = answers
        .first()
        .map(|(_, rows)| rows.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let a = r.accrued.unwrap_or_default();
            json!({
                "namespace": r.namespace,
                "service": r.service,
                "tasks": r.tasks,
                "taskMs": a.task_ms,
                "cpuUnitMs": a.cpu_unit_ms,
                "memoryMibMs": a.memory_mib_ms,
                "usedCpuUnitMs": a.used_cpu_unit_ms,
                "usedMemoryMibMs": a.used_memory_mib_ms,
                "sampledMs": a.sampled_ms,
                "memoryPeakBytes": a.memory_peak_bytes,
            })
        })
        .collect();
    json!({
        // Where each interval ends.
        "ends": answers.iter().skip(1).map(|(since, _)| *since).collect::<Vec<_>>(),
        "from": answers.first().map_or(now, |(since, _)| *since),
        "to": now,
        "series": series,
        "totals": totals,
    })
}

/// The most log lines a console's log view starts with.
const LOG_TAIL: u32 = 500;

fn secured(mut response: Response, cache: bool) -> Response {
    let headers = response.headers_mut();
    let set = |h: &mut http::HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(
        headers,
        header::CACHE_CONTROL,
        if cache { "no-cache" } else { "no-store" },
    );
    response
}

fn plain(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_answer(status: StatusCode, value: &Value) -> Response {
    secured(plain(status, "application/json", value.to_string()), false)
}

/// A gRPC handler's refusal as an HTTP answer: the same sentence.
fn refused(s: &Status) -> Response {
    use tonic::Code;
    let status = match s.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_answer(status, &json!({ "error": s.message() }))
}

/// The request's query parameters.
fn query(request: &Request) -> std::collections::BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding of one query component.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// A request's JSON body (at most 64 KiB).
async fn read_json(request: Request) -> Result<Value, Box<Response>> {
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| {
            Box::new(json_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "the request body is over 64 KiB"}),
            ))
        })?;
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(json_answer(
            StatusCode::BAD_REQUEST,
            &json!({"error": format!("the request body is not JSON: {e}")}),
        ))
    })
}

/// A model object as JSON, from its wire form.
fn to_json<W, M>(wire: W) -> Value
where
    M: TryFrom<W> + serde::Serialize,
{
    M::try_from(wire)
        .ok()
        .and_then(|m| serde_json::to_value(m).ok())
        .unwrap_or(Value::Null)
}

/// A watch event as the console reads it.
fn event_json(e: pb::WatchEvent) -> Value {
    use pb::watch_event::{Object, Type};
    let kind = match e.r#type() {
        Type::Sync => "SYNC",
        Type::Put => "PUT",
        Type::Deleted => "DELETED",
        Type::Synced => "SYNCED",
        Type::Unspecified => "UNSPECIFIED",
    };
    let object = match e.object {
        Some(Object::Task(t)) => to_json::<_, berth_model::Task>(t),
        Some(Object::Service(s)) => to_json::<_, berth_model::Service>(s),
        Some(Object::Node(n)) => to_json::<_, berth_model::Node>(n),
        Some(Object::TaskDefinition(d)) => to_json::<_, berth_model::TaskDefinition>(d),
        None => Value::Null,
    };
    json!({
        "type": kind,
        "revision": e.revision,
        "kind": e.kind,
        "name": e.name,
        "namespace": e.namespace,
        "object": object,
    })
}

/// How often a stream with nothing to say sends a comment: a browser that went away is noticed
/// (the write fails and the stream ends), the page knows its stream is alive, and the token is
/// checked again.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// A stream of server-sent events, one `data:` line of JSON each, with a comment line every
/// [`HEARTBEAT`] of silence; it ends when `events` ends or `still_allowed` says the caller's
/// token no longer is (revoked, expired).
fn event_stream(
    events: impl futures::Stream<Item = Value> + Send + 'static,
    still_allowed: impl Fn() -> bool + Send + 'static,
) -> Response {
    let events = Box::pin(events);
    let body = futures::stream::unfold(
        (events, still_allowed),
        |(mut events, still_allowed)| async move {
            let line = match tokio::time::timeout(HEARTBEAT, events.next()).await {
                Ok(Some(v)) => format!("data: {v}\n\n"),
                Ok(None) => return None,
                Err(_) if still_allowed() => ":\n\n".to_owned(),
                Err(_) => return None,
            };
            Some((
                Ok::<_, Infallible>(Bytes::from(line)),
                (events, still_allowed),
            ))
        },
    );
    let mut response = plain(StatusCode::OK, "text/event-stream", Body::from_stream(body));
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    secured(response, false)
}

impl BerthService {
    /// Whether the token `caller` authenticated with still authenticates, and still allows
    /// reading `namespace` (checked on each heartbeat of a stream).
    fn still_allowed(
        &self,
        caller: &Caller,
        namespace: Option<String>,
    ) -> impl Fn() -> bool + Send + 'static {
        let store = self.store.clone();
        let caller = caller.clone();
        move || {
            let Caller::Token(t) = &caller else {
                return false;
            };
            let current = store.credentials();
            current.api_token(&t.id).is_some_and(|now| {
                now.secret_hash == t.secret_hash
                    && now
                        .allows(Permission::Read, namespace.as_deref(), now_ms())
                        .is_ok()
            })
        }
    }

    /// The caller of a console call, by its bearer token.
    fn console_caller(&self, request: &Request) -> Result<Caller, Box<Response>> {
        let mut probe = tonic::Request::new(());
        if let Some(value) = request.headers().get(header::AUTHORIZATION) {
            probe.metadata_mut().insert(
                "authorization",
                tonic::metadata::MetadataValue::try_from(value.as_bytes()).map_err(|_| {
                    json_answer(
                        StatusCode::UNAUTHORIZED,
                        &json!({"error": "the authorization header is not text"}),
                    )
                })?,
            );
        } else {
            return Err(Box::new(json_answer(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "sign in with a berth token (`berth token create`)"}),
            )));
        }
        auth::authenticate(&self.store.credentials(), &probe).map_err(|s| Box::new(refused(&s)))
    }

    async fn console_api(&self, path: &str, request: Request) -> Response {
        let caller = match self.console_caller(&request) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let q = query(&request);
        let namespace = q.get("namespace").cloned().unwrap_or_default();
        let answer = match (request.method().as_str(), path) {
            ("GET", "session") => Ok(self.console_session(&caller)),
            ("GET", "cluster") => caller
                .authorize(Permission::Read, caller.scope(), now_ms())
                .map(|()| serde_json::to_value(self.store.cluster_status()).unwrap_or_default()),
            ("GET", "namespaces") => self
                .list_namespaces(&caller, pb::ListNamespacesRequest {})
                .await
                .map(|r| {
                    Value::Array(
                        r.into_inner()
                            .namespaces
                            .into_iter()
                            .map(|n| {
                                let usage = n.usage.map(berth_model::Usage::from);
                                json!({
                                    "name": n.name,
                                    "quota": n.quota.map(berth_model::Quota::from),
                                    "usage": usage,
                                })
                            })
                            .collect(),
                    )
                }),
            ("GET", "watch") => {
                let from_revision = q.get("from").and_then(|f| f.parse().ok()).unwrap_or(0);
                let scope = Some(namespace.clone())
                    .filter(|n| !n.is_empty())
                    .or_else(|| caller.scope().map(str::to_owned));
                let req = pb::WatchRequest {
                    namespace,
                    kinds: Vec::new(),
                    from_revision,
                };
                return match self.watch(&caller, req) {
                    Ok(stream) => event_stream(
                        stream
                            .into_inner()
                            .take_while(|e| std::future::ready(e.is_ok()))
                            .filter_map(|e| std::future::ready(e.ok().map(event_json))),
                        self.still_allowed(&caller, scope),
                    ),
                    Err(s) => refused(&s),
                };
            }
            ("GET", "nodes") => self
                .list_nodes(&caller, pb::ListNodesRequest::default())
                .await
                .map(|r| {
                    Value::Array(
                        r.into_inner()
                            .nodes
                            .into_iter()
                            .map(to_json::<_, berth_model::Node>)
                            .collect(),
                    )
                }),
            ("GET", "logs") => {
                let allowed = self.still_allowed(
                    &caller,
                    Some(namespace.clone())
                        .filter(|n| !n.is_empty())
                        .or_else(|| caller.scope().map(str::to_owned)),
                );
                let req = pb::TaskLogsRequest {
                    namespace,
                    task_id: q.get("task").cloned().unwrap_or_default(),
                    follow: q.get("follow").is_some_and(|f| f == "1"),
                    container: q.get("container").cloned().unwrap_or_default(),
                    tail: LOG_TAIL,
                    since: 0,
                    timestamps: false,
                };
                return match self.task_logs(&caller, req).await {
                    Ok(stream) => event_stream(
                        stream.into_inner().map(|chunk| match chunk {
                            Ok(c) => json!({
                                "container": c.container,
                                "stderr": c.stderr,
                                "text": String::from_utf8_lossy(&c.data),
                            }),
                            Err(s) => json!({ "error": s.message() }),
                        }),
                        allowed,
                    ),
                    Err(s) => refused(&s),
                };
            }
            ("GET", "usage") => self.console_usage(&caller, namespace, &q).await,
            ("POST", "scale") => {
                let body = match read_json(request).await {
                    Ok(b) => b,
                    Err(r) => return *r,
                };
                let (Some(name), Some(count)) = (
                    body["name"].as_str(),
                    body["desiredCount"]
                        .as_u64()
                        .and_then(|c| u32::try_from(c).ok()),
                ) else {
                    return json_answer(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "scale takes {\"name\": SERVICE, \"desiredCount\": N}"}),
                    );
                };
                self.change_service(
                    &caller,
                    namespace,
                    name.to_owned(),
                    berth_state::ServiceChange::Scale(count),
                )
                .await
                .map(|r| to_json::<_, berth_model::Service>(r.into_inner()))
            }
            ("GET", "task") => self
                .describe_task(
                    &caller,
                    pb::DescribeTaskRequest {
                        namespace,
                        task_id: q.get("task").cloned().unwrap_or_default(),
                        stale: false,
                    },
                )
                .await
                .map(|r| to_json::<_, berth_model::Task>(r.into_inner())),
            ("GET", "service") => self
                .describe_service(
                    &caller,
                    pb::DescribeServiceRequest {
                        namespace,
                        name: q.get("name").cloned().unwrap_or_default(),
                        stale: false,
                    },
                )
                .await
                .map(|r| to_json::<_, berth_model::Service>(r.into_inner())),
            ("POST", "service") => {
                let body = match read_json(request).await {
                    Ok(b) => b,
                    Err(r) => return *r,
                };
                let name = body["name"].as_str().unwrap_or_default().to_owned();
                match body["action"].as_str() {
                    Some("promote") => self
                        .change_service(
                            &caller,
                            namespace,
                            name,
                            berth_state::ServiceChange::Promote,
                        )
                        .await
                        .map(|r| to_json::<_, berth_model::Service>(r.into_inner())),
                    Some("delete") => self
                        .change_service(
                            &caller,
                            namespace,
                            name,
                            berth_state::ServiceChange::Delete,
                        )
                        .await
                        .map(|r| to_json::<_, berth_model::Service>(r.into_inner())),
                    Some("rollback") => self.console_roll_back(&caller, namespace, name).await,
                    _ => {
                        return json_answer(
                            StatusCode::BAD_REQUEST,
                            &json!({"error": "action: promote, rollback or delete"}),
                        )
                    }
                }
            }
            ("POST", "node") => {
                let body = match read_json(request).await {
                    Ok(b) => b,
                    Err(r) => return *r,
                };
                let status = match body["status"].as_str() {
                    Some("ACTIVE") => pb::NodeStatus::Active,
                    Some("DRAINING") => pb::NodeStatus::Draining,
                    _ => {
                        return json_answer(
                            StatusCode::BAD_REQUEST,
                            &json!({"error": "status: ACTIVE or DRAINING"}),
                        )
                    }
                };
                self.update_node_status(
                    &caller,
                    pb::UpdateNodeStatusRequest {
                        name: body["name"].as_str().unwrap_or_default().to_owned(),
                        status: status as i32,
                    },
                )
                .await
                .map(|r| to_json::<_, berth_model::Node>(r.into_inner()))
            }
            _ => {
                return json_answer(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no console call {} /ui/api/{path}", request.method())}),
                )
            }
        };
        match answer {
            Ok(v) => json_answer(StatusCode::OK, &v),
            Err(s) => refused(&s),
        }
    }

    /// The metering ledger over a period, as a series of intervals per namespace and service
    /// (for charts) and totals (for the table): the ledger answers usage since a time, so the
    /// usage of each interval is the difference of two answers.
    async fn console_usage(
        &self,
        caller: &Caller,
        namespace: String,
        q: &std::collections::BTreeMap<String, String>,
    ) -> Result<Value, Status> {
        let period_ms = match q.get("period").map(String::as_str) {
            None | Some("1h") => 3_600_000,
            Some("6h") => 6 * 3_600_000,
            Some("24h") => 24 * 3_600_000,
            Some("7d") => 7 * 24 * 3_600_000,
            Some(other) => {
                return Err(crate::status::bad_request(format!(
                    "period: {other:?} is not 1h, 6h, 24h or 7d"
                )))
            }
        };
        let by = match q.get("by").map(String::as_str) {
            None | Some("service") => "service",
            Some("namespace") => "namespace",
            Some(other) => {
                return Err(crate::status::bad_request(format!(
                    "by: {other:?} is not service or namespace"
                )))
            }
        };
        let now = now_ms();
        let step = period_ms / USAGE_POINTS;
        let mut answers = Vec::with_capacity(USAGE_POINTS as usize + 1);
        for i in 0..=USAGE_POINTS {
            let since = now.saturating_sub(period_ms) + i * step;
            let req = pb::GetUsageRequest {
                namespace: namespace.clone(),
                service: String::new(),
                since,
                by: by.to_owned(),
            };
            let rows = self.get_usage(caller, req).await?.into_inner().rows;
            answers.push((since, rows));
        }
        Ok(usage_series(&answers, now))
    }

    /// Rolls `name` back: applies it again with the latest ACTIVE revision of its family before
    /// the one it runs (as `berth apply` of the previous manifest would).
    async fn console_roll_back(
        &self,
        caller: &Caller,
        namespace: String,
        name: String,
    ) -> Result<Value, Status> {
        let current: berth_model::Service = self
            .describe_service(
                caller,
                pb::DescribeServiceRequest {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    stale: false,
                },
            )
            .await?
            .into_inner()
            .try_into()
            .map_err(|e: berth_proto::ConversionError| crate::status::internal(e.to_string()))?;
        let family = current.task_definition.family.clone();
        let running = current.task_definition.revision.unwrap_or(0);
        let previous = self
            .read(false, |s| {
                s.task_definitions(&namespace)
                    .filter(|d| {
                        d.family == family
                            && d.revision < running
                            && d.status == berth_model::TaskDefinitionStatus::Active
                    })
                    .map(|d| d.revision)
                    .max()
            })
            .await?
            .ok_or_else(|| {
                crate::status::precondition(format!(
                    "{family} has no ACTIVE revision before {running} to roll back to"
                ))
            })?;
        let mut spec = berth_ecs::service::spec_of(&current);
        spec.task_definition = berth_model::TaskDefinitionRef {
            family,
            revision: Some(previous),
        };
        let answer = self
            .apply_service(
                caller,
                pb::ApplyServiceRequest {
                    namespace,
                    spec: Some(spec.into()),
                    template: None,
                    dry_run: false,
                },
            )
            .await?
            .into_inner();
        Ok(answer
            .service
            .map(to_json::<_, berth_model::Service>)
            .unwrap_or(Value::Null))
    }

    /// Who the caller is and what the console may offer it.
    fn console_session(&self, caller: &Caller) -> Value {
        let now = now_ms();
        let (role, namespace) = match caller {
            Caller::Token(t) => (t.role.to_string(), caller.scope().map(str::to_owned)),
            Caller::Node(id) => (id.role.to_string(), None),
        };
        let may = |p| caller.authorize(p, caller.scope(), now).is_ok();
        json!({
            "who": caller.who(),
            "role": role,
            "namespace": namespace,
            "write": may(Permission::Write),
            "admin": caller.authorize(Permission::ManageCluster, None, now).is_ok(),
        })
    }
}

/// The console's routes, for the server's HTTP router.
pub fn routes(api: Arc<BerthService>) -> axum::Router {
    let handler = move |request: Request| {
        let api = api.clone();
        async move {
            let path = request.uri().path().to_owned();
            if path == "/ui" {
                // The app's URLs are relative to /ui/.
                let mut moved = plain(StatusCode::PERMANENT_REDIRECT, "text/plain", "");
                moved
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
                return secured(moved, true);
            }
            let Some(rest) = path.strip_prefix("/ui/") else {
                return secured(plain(StatusCode::NOT_FOUND, "text/plain", ""), false);
            };
            if let Some(call) = rest.strip_prefix("api/") {
                return api.console_api(call, request).await;
            }
            let file = if rest.is_empty() { "index.html" } else { rest };
            match ASSETS.iter().find(|(name, _, _)| *name == file) {
                Some((_, content_type, bytes)) if request.method() == http::Method::GET => secured(
                    plain(StatusCode::OK, content_type, Bytes::from_static(bytes)),
                    true,
                ),
                _ => secured(
                    plain(
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found\n",
                    ),
                    false,
                ),
            }
        }
    };
    axum::Router::new()
        .route("/ui", axum::routing::any(handler.clone()))
        .route("/ui/", axum::routing::any(handler.clone()))
        .route("/ui/{*rest}", axum::routing::any(handler))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(service: &str, cpu_unit_ms: u64) -> pb::UsageRow {
        pb::UsageRow {
            namespace: "default".into(),
            service: service.into(),
            accrued: Some(pb::UsageFigures {
                cpu_unit_ms,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_interval_is_the_difference_of_two_answers() {
        // Usage since 0, 10 and 20: web used 30, 20, 5 from then on; api appears at 10.
        let answers = vec![
            (0, vec![row("web", 30)]),
            (10, vec![row("api", 7), row("web", 20)]),
            (20, vec![row("web", 5)]),
        ];
        let v = usage_series(&answers, 30);
        assert_eq!(v["ends"], json!([10, 20]));
        let series = v["series"].as_array().expect("series");
        let web = series.iter().find(|s| s["service"] == "web").expect("web");
        assert_eq!(web["cpuUnitMs"], json!([10, 15]));
        let api = series.iter().find(|s| s["service"] == "api").expect("api");
        // Not in the first answer (a ledger that starts later): nothing to subtract from.
        assert_eq!(api["cpuUnitMs"], json!([0, 7]));
        assert_eq!(v["totals"][0]["cpuUnitMs"], 30);
    }

    #[test]
    fn queries_decode_and_bad_escapes_are_dropped() {
        assert_eq!(decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%2"), None);
    }
}
