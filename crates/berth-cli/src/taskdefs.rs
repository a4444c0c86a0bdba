//! Task definitions: registering a spec as a revision, listing and describing revisions.

use anyhow::Context as _;
use berth_model::{TaskDefinition, TaskDefinitionSpec};
use berth_proto::v1 as pb;

use crate::Client;

/// Registers `spec` as the next revision of its family, or answers the latest one when it is
/// identical; `true` when a revision was created.
pub async fn register(
    client: &mut Client,
    namespace: &str,
    spec: TaskDefinitionSpec,
) -> anyhow::Result<(TaskDefinition, bool)> {
    let req = pb::RegisterTaskDefinitionRequest {
        namespace: namespace.to_owned(),
        spec: Some(spec.into()),
        reuse_identical: true,
    };
    let r = client
        .request(req, |mut c, req| async move {
            c.register_task_definition(req).await
        })
        .await?;
    let def = r
        .task_definition
        .context("server sent no task definition")?;
    Ok((def.try_into()?, r.created))
}

/// The revisions of `namespace` (of `family` only, unless empty) whose labels match `selector`,
/// oldest first.
pub async fn list(
    client: &mut Client,
    namespace: &str,
    family: &str,
    stale: bool,
    selector: &str,
) -> anyhow::Result<Vec<TaskDefinition>> {
    let req = pb::ListTaskDefinitionsRequest {
        namespace: namespace.to_owned(),
        family: family.to_owned(),
        stale,
        selector: selector.to_owned(),
    };
    let r = client
        .request(req, |mut c, req| async move {
            c.list_task_definitions(req).await
        })
        .await?;
    Ok(berth_proto::try_all(r.task_definitions)?)
}

/// One revision: `FAMILY:REV`, or a bare family for its latest.
pub async fn describe(
    client: &mut Client,
    namespace: &str,
    reference: &str,
    stale: bool,
) -> anyhow::Result<TaskDefinition> {
    let req = pb::DescribeTaskDefinitionRequest {
        namespace: namespace.to_owned(),
        task_definition: reference.to_owned(),
        stale,
    };
    let def = client
        .request(req, |mut c, req| async move {
            c.describe_task_definition(req).await
        })
        .await?;
    Ok(def.try_into()?)
}

/// `berth delete taskdef FAMILY[:REV]` and `delete -f` of a TaskDefinition manifest: the
/// revision (every revision of the family) becomes INACTIVE, as ECS deregisters it.
pub async fn deregister(
    client: &mut Client,
    namespace: &str,
    reference: &str,
) -> anyhow::Result<()> {
    let req = pb::DeregisterTaskDefinitionRequest {
        namespace: namespace.to_owned(),
        task_definition: reference.to_owned(),
    };
    let answer = client
        .request(req, |mut c, req| async move {
            c.deregister_task_definition(req).await
        })
        .await?;
    if answer.task_definitions.is_empty() {
        println!("taskdefinition/{reference} already INACTIVE");
    }
    for d in answer.task_definitions {
        println!(
            "taskdefinition/{}:{} deregistered (INACTIVE: what runs it keeps it; new runs are refused)",
            d.family, d.revision
        );
    }
    Ok(())
}
