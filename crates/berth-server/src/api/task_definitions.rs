//! Task definitions: register a revision, list and describe them.

use berth_proto::v1 as pb;
use berth_state::{Command, CommandResult};
use tonic::{Response, Status};

use berth_model::Permission;

use super::{scoped, selector, Answer, BerthService};
use crate::auth::Caller;
use crate::{now_ms, status};

/// The largest task definition, encoded, in bytes (ECS's limit): it travels in every desired
/// set of a node that runs one of its tasks.
pub const MAX_TASK_DEFINITION_BYTES: usize = 64 * 1024;

/// Refuses a task definition larger than [`MAX_TASK_DEFINITION_BYTES`] encoded.
pub(super) fn check_size(spec: &berth_model::TaskDefinitionSpec) -> Result<(), Status> {
    let size = berth_proto::encoded_len(spec);
    if size > MAX_TASK_DEFINITION_BYTES {
        return Err(status::bad_request(format!(
            "taskDefinition: {size} bytes encoded is too large; a task definition has at most {MAX_TASK_DEFINITION_BYTES} (64 KiB, as in ECS): move large content into an image or a secret file"
        )));
    }
    Ok(())
}

impl BerthService {
    pub(super) async fn deregister_task_definition(
        &self,
        caller: &Caller,
        req: pb::DeregisterTaskDefinitionRequest,
    ) -> Answer<pb::DeregisterTaskDefinitionResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Write)?;
        let reference: berth_model::TaskDefinitionRef = req
            .task_definition
            .parse()
            .map_err(|e: berth_model::ValidationError| status::invalid("", &e))?;
        let command = Command::DeregisterTaskDefinition {
            namespace,
            family: reference.family,
            revision: reference.revision,
            at: now_ms(),
        };
        let defs = self
            .propose(caller, command, |r| match r {
                CommandResult::TaskDefinitions(defs) => Some(defs),
                _ => None,
            })
            .await?;
        Ok(Response::new(pb::DeregisterTaskDefinitionResponse {
            task_definitions: defs.into_iter().map(Into::into).collect(),
        }))
    }

    pub(super) async fn register_task_definition(
        &self,
        caller: &Caller,
        req: pb::RegisterTaskDefinitionRequest,
    ) -> Answer<pb::RegisterTaskDefinitionResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Write)?;
        let spec: berth_model::TaskDefinitionSpec = req
            .spec
            .ok_or_else(|| status::missing("spec"))?
            .try_into()
            .map_err(|e: berth_proto::ConversionError| status::invalid_request("spec.", &e))?;
        spec.validate().map_err(|e| status::invalid("spec.", &e))?;
        let (def, created) = self
            .register(caller, namespace, spec, req.reuse_identical)
            .await?;
        Ok(Response::new(pb::RegisterTaskDefinitionResponse {
            task_definition: Some(def.into()),
            created,
        }))
    }

    /// Registers the next revision of `spec.family` (with `reuse_identical`, answers the latest
    /// one when it is identical); `true` when a revision was created.
    pub(super) async fn register(
        &self,
        caller: &Caller,
        namespace: String,
        spec: berth_model::TaskDefinitionSpec,
        reuse_identical: bool,
    ) -> Result<(berth_model::TaskDefinition, bool), Status> {
        check_size(&spec)?;
        let command = Command::RegisterTaskDefinition {
            namespace,
            spec,
            reuse_identical,
            at: now_ms(),
        };
        self.propose(caller, command, |r| match r {
            CommandResult::TaskDefinition {
                task_definition,
                created,
            } => Some((task_definition, created)),
            _ => None,
        })
        .await
    }

    pub(super) async fn list_task_definitions(
        &self,
        caller: &Caller,
        req: pb::ListTaskDefinitionsRequest,
    ) -> Answer<pb::ListTaskDefinitionsResponse> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        let selector = selector(&req.selector)?;
        let defs = self
            .read(req.stale, |s| {
                s.task_definitions(&namespace)
                    .filter(|d| req.family.is_empty() || d.family == req.family)
                    .filter(|d| selector.matches(&d.meta.labels))
                    .cloned()
                    .map(Into::into)
                    .collect()
            })
            .await?;
        Ok(Response::new(pb::ListTaskDefinitionsResponse {
            task_definitions: defs,
        }))
    }

    pub(super) async fn describe_task_definition(
        &self,
        caller: &Caller,
        req: pb::DescribeTaskDefinitionRequest,
    ) -> Answer<pb::TaskDefinition> {
        let namespace = scoped(caller, req.namespace, Permission::Read)?;
        let def = self
            .task_definition(&namespace, &req.task_definition, req.stale)
            .await?;
        Ok(Response::new(def.into()))
    }
}
