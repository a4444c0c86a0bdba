//! The cluster CA: its status, and starting a rotation (`crate::rotation`).

use berth_model::Permission;
use berth_proto::v1 as pb;
use berth_state::{Command, CommandResult};
use tonic::Response;

use super::{Answer, BerthService};
use crate::auth::Caller;
use crate::rotation;
use crate::{now_ms, status};

impl BerthService {
    pub(super) async fn get_ca(
        &self,
        _caller: &Caller,
        _req: pb::GetCaRequest,
    ) -> Answer<pb::CaStatus> {
        let members = rotation::members(&self.store);
        let status = self
            .read(false, |s| rotation::status(s, &members, &self.tls))
            .await?;
        Ok(Response::new(status))
    }

    pub(super) async fn rotate_ca(
        &self,
        caller: &Caller,
        _req: pb::RotateCaRequest,
    ) -> Answer<pb::CaStatus> {
        caller.authorize(Permission::ManageCluster, None, now_ms())?;
        let last = self.read(false, |s| s.ca_rotation().cloned()).await?;
        if let Some(r) = &last {
            if r.is_finished() && !self.tls.signs_with(&r.fingerprint) {
                return Err(status::not_yet(format!(
                    "this server has not moved to the CA of rotation {} yet; try again in a moment",
                    r.generation
                )));
            }
        }
        let generation = last.map_or(0, |r| r.generation) + 1;
        let rotation = rotation::start(&self.tls, generation).map_err(|e| {
            status::internal(format!(
                "create the new CA: {}",
                berth_model::error_chain(&e)
            ))
        })?;
        let command = Command::StartCaRotation {
            rotation: Box::new(rotation),
            at: now_ms(),
        };
        self.propose(caller, command, |r| match r {
            CommandResult::CaRotation(r) => Some(r),
            _ => None,
        })
        .await?;
        // This server follows at once, so that the answer shows it signing with the new CA.
        rotation::follow_now(&self.store, &self.tls, self.cert_ttl);
        let members = rotation::members(&self.store);
        let status = self
            .read(true, |s| rotation::status(s, &members, &self.tls))
            .await?;
        Ok(Response::new(status))
    }
}
