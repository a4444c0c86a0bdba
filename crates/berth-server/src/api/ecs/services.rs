//! ECS's service calls.

use berth_ecs::arn::{Arn, Kind, Names, Resource};
use berth_ecs::protocol::{EcsError, ErrorType};
use berth_ecs::request::{flag, object, only, required};
use berth_ecs::service;
use berth_ecs::task::cluster_of;
use berth_model::{Service, ServiceSpec, ServiceStatus};
use berth_proto::v1 as pb;
use serde_json::{json, Value};

use super::tasks::arn_page;
use super::{ecs_error, missing, names_list, unconverted, BerthService};
use crate::auth::Caller;

fn not_found(cluster: &str, name: &str) -> EcsError {
    EcsError::new(
        ErrorType::ServiceNotFound,
        format!("Service not found: {name} is not a service of cluster {cluster}"),
    )
}

/// A service name or ARN of `field`, in the request's cluster: (cluster, name).
fn service_of(value: &str, cluster: &str, field: &str) -> Result<(String, String), EcsError> {
    match Arn::parse(value, Kind::Service, cluster)
        .map_err(|e| EcsError::invalid(format!("{field}: {e}")))?
    {
        Resource::Service { cluster, name } => Ok((cluster, name)),
        _ => Err(EcsError::invalid(format!("{field}: not a service"))),
    }
}

impl BerthService {
    async fn ecs_service(
        &self,
        caller: &Caller,
        cluster: &str,
        name: &str,
    ) -> Result<Option<Service>, EcsError> {
        self.ecs_read(caller, cluster, |s| s.service(cluster, name).cloned())
            .await
    }

    /// Applies `spec` in `cluster`; answers the service after the change.
    async fn ecs_apply(
        &self,
        caller: &Caller,
        cluster: &str,
        spec: ServiceSpec,
    ) -> Result<Service, EcsError> {
        let req = pb::ApplyServiceRequest {
            namespace: cluster.to_owned(),
            spec: Some(spec.into()),
            template: None,
            dry_run: false,
        };
        let answer = self
            .apply_service(caller, req)
            .await
            .map_err(ecs_error)?
            .into_inner();
        answer
            .service
            .ok_or_else(|| EcsError::new(ErrorType::Server, "no service answered"))?
            .try_into()
            .map_err(unconverted)
    }

    pub(super) async fn ecs_create_service(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let r = service::create_request(body)?;
        if self
            .ecs_service(caller, &r.cluster, &r.spec.name)
            .await?
            .is_some()
        {
            return Err(EcsError::invalid(format!(
                "Creation of service was not idempotent: service {} exists in cluster {}; change it with UpdateService",
                r.spec.name, r.cluster
            )));
        }
        let created = self.ecs_apply(caller, &r.cluster, r.spec).await?;
        Ok(json!({"service": service::describe(&created, names)}))
    }

    pub(super) async fn ecs_update_service(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let r = service::update_request(body)?;
        let current = self
            .ecs_service(caller, &r.cluster, &r.service)
            .await?
            .ok_or_else(|| not_found(&r.cluster, &r.service))?;
        if current.status == ServiceStatus::Draining {
            return Err(EcsError::new(
                ErrorType::ServiceNotActive,
                format!("Service was not ACTIVE: {} is being deleted", r.service),
            ));
        }
        let mut latest = current.clone();
        // A change of the desired count alone is a scale, applied to the service as it is
        // then (an autoscaler's or another client's change meanwhile is kept).
        if let (Some(count), None, None) = (
            r.desired_count,
            &r.task_definition,
            &r.deployment_configuration,
        ) {
            latest = self
                .change_service(
                    caller,
                    r.cluster.clone(),
                    r.service.clone(),
                    berth_state::ServiceChange::Scale(count),
                )
                .await
                .map_err(ecs_error)?
                .into_inner()
                .try_into()
                .map_err(unconverted)?;
        }
        let mut spec = service::spec_of(&current);
        let mut change = false;
        if let (Some(count), true) = (
            r.desired_count,
            r.task_definition.is_some() || r.deployment_configuration.is_some(),
        ) {
            spec.desired_count = count;
            change = true;
        }
        if let Some(def) = r.task_definition {
            spec.task_definition = def;
            change = true;
        }
        if let Some(d) = &r.deployment_configuration {
            spec.deployment_configuration =
                service::deployment_configuration(d, spec.deployment_configuration)?;
            change = true;
        }
        if change {
            latest = self.ecs_apply(caller, &r.cluster, spec).await?;
        }
        if r.force_new_deployment {
            let req = pb::RedeployServiceRequest {
                namespace: r.cluster.clone(),
                name: r.service.clone(),
            };
            latest = self
                .redeploy_service(caller, req)
                .await
                .map_err(ecs_error)?
                .into_inner()
                .try_into()
                .map_err(unconverted)?;
        }
        Ok(json!({"service": service::describe(&latest, names)}))
    }

    pub(super) async fn ecs_describe_services(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["cluster", "services", "include"], &[], "")?;
        let cluster = cluster_of(request)?;
        let mut services = Vec::new();
        let mut failures = Vec::new();
        for value in names_list(body, "services", None)? {
            let (cluster, name) = service_of(&value, &cluster, "services")?;
            match self.ecs_service(caller, &cluster, &name).await? {
                Some(s) => services.push(service::describe(&s, names)),
                None => failures.push(missing(&names.service(&cluster, &name))),
            }
        }
        Ok(json!({"services": services, "failures": failures}))
    }

    pub(super) async fn ecs_list_services(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(
            request,
            &["cluster", "maxResults", "nextToken"],
            &["launchType", "schedulingStrategy"],
            "",
        )?;
        let cluster = cluster_of(request)?;
        let list: Vec<String> = self
            .ecs_read(caller, &cluster, |s| {
                s.services()
                    .filter(|svc| svc.namespace == cluster)
                    .map(|svc| svc.name.clone())
                    .collect()
            })
            .await?;
        arn_page(
            list,
            String::clone,
            |name| names.service(&cluster, name),
            request,
            (100, false),
            "serviceArns",
        )
    }

    pub(super) async fn ecs_delete_service(
        &self,
        caller: &Caller,
        names: &Names,
        body: &Value,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        only(request, &["cluster", "service", "force"], &[], "")?;
        let cluster = cluster_of(request)?;
        let (cluster, name) = service_of(&required(request, "service")?, &cluster, "service")?;
        let current = self
            .ecs_service(caller, &cluster, &name)
            .await?
            .ok_or_else(|| not_found(&cluster, &name))?;
        if current.desired_count > 0 && !flag(request, "force")?.unwrap_or(false) {
            return Err(EcsError::invalid(
                "The service cannot be stopped while it is scaled above 0: set desiredCount to 0 first, or pass force",
            ));
        }
        let deleted = self
            .change_service(caller, cluster, name, berth_state::ServiceChange::Delete)
            .await
            .map_err(ecs_error)?
            .into_inner();
        let deleted: Service = deleted.try_into().map_err(unconverted)?;
        Ok(json!({"service": service::describe(&deleted, names)}))
    }

    /// Adds (`add`) or removes tags of a service; berth keeps the tags of tasks and task
    /// definitions as they were made.
    pub(super) async fn ecs_tag(
        &self,
        caller: &Caller,
        body: &Value,
        add: bool,
    ) -> Result<Value, EcsError> {
        let request = object(body, "the request body")?;
        let list = if add { "tags" } else { "tagKeys" };
        only(request, &["resourceArn", list], &[], "")?;
        let arn = required(request, "resourceArn")?;
        let Ok(Resource::Service { cluster, name }) = Arn::parse(&arn, Kind::Service, "")
            .map_err(|_| ())
            .and_then(|r| {
                if arn.starts_with("arn:") {
                    Ok(r)
                } else {
                    Err(())
                }
            })
        else {
            return Err(EcsError::invalid(format!(
                "resourceArn: berth changes the tags of services only ({arn} is not a service's ARN); tasks and task definitions keep the tags they were made with"
            )));
        };
        let current = self
            .ecs_service(caller, &cluster, &name)
            .await?
            .ok_or_else(|| not_found(&cluster, &name))?;
        let mut spec = service::spec_of(&current);
        if add {
            spec.meta
                .labels
                .extend(berth_ecs::taskdef::tags(request.get("tags"))?);
        } else {
            for key in berth_ecs::request::strings(request, "tagKeys")?.unwrap_or_default() {
                spec.meta.labels.remove(&key);
            }
        }
        self.ecs_apply(caller, &cluster, spec).await?;
        Ok(json!({}))
    }
}
