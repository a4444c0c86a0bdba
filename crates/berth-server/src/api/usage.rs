//! The metering ledger, read: `berth usage`.

use berth_control::metering::{By, Query};
use berth_model::{Permission, ALL_NAMESPACES};
use berth_proto::v1 as pb;
use tonic::Response;

use super::{scoped, Answer, BerthService};
use crate::auth::Caller;
use crate::{now_ms, status};

impl BerthService {
    pub(super) async fn get_usage(
        &self,
        caller: &Caller,
        req: pb::GetUsageRequest,
    ) -> Answer<pb::GetUsageResponse> {
        let namespace = if req.namespace == ALL_NAMESPACES {
            caller.authorize(Permission::Read, None, now_ms())?;
            None
        } else {
            Some(scoped(caller, req.namespace, Permission::Read)?)
        };
        let by: By = req.by.parse().map_err(status::bad_request)?;
        let query = Query {
            namespace,
            service: Some(req.service).filter(|s| !s.is_empty()),
            since: req.since,
            by,
        };
        let usage = self.usage.clone();
        let report = self
            .read(false, |s| {
                berth_control::metering::report(s, &query, now_ms(), &usage)
            })
            .await?;
        Ok(Response::new(pb::GetUsageResponse {
            rows: report
                .rows
                .into_iter()
                .map(|r| pb::UsageRow {
                    namespace: r.namespace,
                    service: r.service.unwrap_or_default(),
                    task_definition: r.task_definition.unwrap_or_default(),
                    task_id: r.task_id.unwrap_or_default(),
                    tasks: r.tasks,
                    accrued: Some(r.accrued.into()),
                })
                .collect(),
            from: report.from,
            to: report.to,
            accounted_to: report.accounted_to,
        }))
    }
}
