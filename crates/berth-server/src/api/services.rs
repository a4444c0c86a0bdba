//! Services: apply (or dry-run) a spec, list and describe them, and operators' changes.

use berth_control::autoscaling::current_metrics;
use berth_model::{ServiceSpec, TaskDefinitionSpec};
use berth_proto::v1 as pb;
use berth_state::{Command, CommandResult, ServiceChange};
use tonic::Response;

use berth_model::Permission;

use super::{namespace, scoped, selector, Answer, BerthService};
use crate::auth::Caller;
use crate::{now_ms, status};

impl BerthService {
    #[tracing::instrument(skip_all, fields(service = req.spec.as_ref().map_or("", |s| s.name.as_str())))]
    pub(super) async fn apply_service(
        &self,
        caller: &Caller,
        req: pb::ApplyServiceRequest,
    ) -> Answer<pb::ApplyServiceResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Write)?;
        let mut wire = req.spec.ok_or_else(|| status::missing("spec"))?;
        let name = wire.name.clone();
        if req.template.is_some() || wire.task_definition.is_empty() {
            // The family of an inline template is the service's name.
            wire.task_definition = name.clone();
        }
        let mut spec: ServiceSpec = wire
            .try_into()
            .map_err(|e: berth_proto::ConversionError| status::invalid_request("spec.", &e))?;
        spec.validate().map_err(|e| status::invalid("spec.", &e))?;
        let template = match req.template {
            Some(t) => {
                let mut t: TaskDefinitionSpec =
                    t.try_into().map_err(|e: berth_proto::ConversionError| {
                        status::invalid_request("template.", &e)
                    })?;
                t.family = name.clone();
                t.validate().map_err(|e| status::invalid("template.", &e))?;
                super::task_definitions::check_size(&t)?;
                Some(t)
            }
            None => None,
        };
        if req.dry_run {
            return self.dry_run_service(&namespace, spec, template).await;
        }
        let def = match template {
            Some(t) => self.register(caller, namespace.clone(), t, true).await?.0,
            None => {
                self.task_definition(&namespace, &spec.task_definition.to_string(), false)
                    .await?
            }
        };
        spec.task_definition = def.reference();
        let command = Command::ApplyService {
            namespace,
            spec: Box::new(spec),
            deployment_id: uuid::Uuid::new_v4().to_string(),
            at: now_ms(),
        };
        self.propose(caller, command, |r| match r {
            CommandResult::Service {
                service,
                created,
                changed,
                deployment_started,
            } => Some(pb::ApplyServiceResponse {
                service: Some((*service).into()),
                created,
                changed,
                deployment_started,
                plan: Vec::new(),
            }),
            _ => None,
        })
        .await
        .map(Response::new)
    }

    /// What applying `spec` would change, and where the tasks it would start would go.
    async fn dry_run_service(
        &self,
        namespace: &str,
        spec: ServiceSpec,
        template: Option<TaskDefinitionSpec>,
    ) -> Answer<pb::ApplyServiceResponse> {
        let preview = self
            .read(false, |s| {
                berth_control::preview::apply_service(s, namespace, spec, template.as_ref())
            })
            .await?
            .map_err(status::from_rejection)?;
        Ok(Response::new(pb::ApplyServiceResponse {
            created: preview.existing.is_none(),
            service: preview.existing.map(Into::into),
            changed: preview.changed,
            deployment_started: preview.deployment_started,
            plan: preview.plan.into_iter().map(Into::into).collect(),
        }))
    }

    pub(super) async fn list_services(
        &self,
        caller: &Caller,
        req: pb::ListServicesRequest,
    ) -> Answer<pb::ListServicesResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        let now = now_ms();
        let selector = selector(&req.selector)?;
        let services = self
            .read(req.stale, |s| {
                s.services()
                    .filter(|svc| svc.namespace == namespace && selector.matches(&svc.meta.labels))
                    .map(|svc| {
                        let mut svc = svc.clone();
                        svc.metrics = current_metrics(s, &svc, &self.usage, now);
                        svc.into()
                    })
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    pub(super) async fn describe_service(
        &self,
        caller: &Caller,
        req: pb::DescribeServiceRequest,
    ) -> Answer<pb::Service> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        let now = now_ms();
        let service = self
            .read(req.stale, |s| {
                s.service(&namespace, &req.name).cloned().map(|mut svc| {
                    svc.metrics = current_metrics(s, &svc, &self.usage, now);
                    svc
                })
            })
            .await?
            .ok_or_else(|| {
                status::not_found(format!(
                    "service {} not found in namespace {namespace}; `berth get services` lists them",
                    req.name
                ))
            })?;
        Ok(Response::new(service.into()))
    }

    /// Scale, delete or promote.
    #[tracing::instrument(skip(self, caller, namespace), fields(service = %name))]
    pub(super) async fn change_service(
        &self,
        caller: &Caller,
        namespace: String,
        name: String,
        change: ServiceChange,
    ) -> Answer<pb::Service> {
        let namespace = scoped(caller, namespace, Permission::Write)?;
        let command = Command::UpdateService {
            namespace,
            name,
            change,
            at: now_ms(),
        };
        self.propose(caller, command, |r| match r {
            CommandResult::Service { service, .. } => Some(Response::new((*service).into())),
            _ => None,
        })
        .await
    }

    /// An ingress's traffic report, kept in this server's memory if it leads (the autoscaler
    /// reads it there); other servers answer with the leader's address.
    pub(super) async fn report_traffic(
        &self,
        caller: &Caller,
        req: pb::TrafficReport,
    ) -> Answer<pb::TrafficReportResponse> {
        caller.ingress_only("report traffic")?;
        if !self.store.is_leader() {
            return Err(status::not_leader(self.store.leader_addr()));
        }
        let services = req
            .services
            .into_iter()
            .map(|s| crate::usage::ServiceTraffic {
                namespace: s.namespace,
                name: s.name,
                requests: s.requests,
                in_flight: s.in_flight,
                interval_ms: s.interval_ms,
            })
            .collect();
        // By the ingress's name, so that a restarted ingress continues its own series.
        let source = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            caller.who().hash(&mut h);
            h.finish()
        };
        self.usage.record_traffic(source, services, now_ms());
        Ok(Response::new(pb::TrafficReportResponse {}))
    }

    /// A request waits at an ingress for a service at zero: one task, at once. A service
    /// already awake is answered as it is.
    pub(super) async fn activate_service(
        &self,
        caller: &Caller,
        req: pb::ActivateServiceRequest,
    ) -> Answer<pb::Service> {
        caller.ingress_only("wake services")?;
        let namespace = namespace(req.namespace)?;
        // The version may move between the read and the proposal (the reconciler): a few
        // tries.
        for _ in 0..5 {
            let svc = self
                .read(false, |s| s.service(&namespace, &req.name).cloned())
                .await?
                .ok_or_else(|| {
                    status::not_found(format!(
                        "service {} not found in namespace {namespace}",
                        req.name
                    ))
                })?;
            if svc.desired_count > 0 {
                return Ok(Response::new(svc.into()));
            }
            if svc.status != berth_model::ServiceStatus::Active {
                return Err(status::precondition(format!(
                    "service {} is being deleted",
                    req.name
                )));
            }
            if svc.autoscaling.and_then(|a| a.scale_to_zero).is_none() {
                return Err(status::precondition(format!(
                    "service {} is at zero but has no scaleToZero: scale it with `berth scale`",
                    req.name
                )));
            }
            let command = Command::AutoScale(berth_state::ScalingDecision {
                namespace: namespace.clone(),
                name: req.name.clone(),
                version: svc.version,
                desired_count: 1,
                scale_out: true,
                reason: format!("woke 0 -> 1: a request is waiting at {}", caller.who()),
                at: now_ms(),
            });
            let result = self
                .store
                .propose(command)
                .await
                .map_err(status::from_store)?;
            let outcome = match &result {
                CommandResult::Rejected(r) => format!("refused: {r}"),
                _ => "done".to_owned(),
            };
            tracing::info!(target: "berth::audit", caller = %caller.who(), %namespace, service = %req.name, "wake: {outcome}");
            match result {
                CommandResult::Rejected(berth_state::Rejection::Conflict(_)) => continue,
                CommandResult::Rejected(r) => return Err(status::from_rejection(r)),
                _ => {}
            }
        }
        let svc = self
            .read(false, |s| s.service(&namespace, &req.name).cloned())
            .await?
            .ok_or_else(|| status::not_found(format!("service {} is gone", req.name)))?;
        Ok(Response::new(svc.into()))
    }
}
