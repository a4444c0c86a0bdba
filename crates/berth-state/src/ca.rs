//! Rotations of the cluster CA ([`berth_model::CaRotation`]): started by an operator, adopted
//! by each server as it begins to sign with the new CA, finished by the leader once nothing
//! depends on the old CA any more.

use berth_model::{CaRotation, NodeStatus, Timestamp};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

impl State {
    /// The last rotation of the cluster CA, finished or not.
    pub fn ca_rotation(&self) -> Option<&CaRotation> {
        self.ca_rotation.as_ref()
    }

    /// The generation of the CA the cluster signs with (0 before any rotation).
    pub fn ca_generation(&self) -> u64 {
        self.ca_rotation.as_ref().map_or(0, |r| r.generation)
    }

    /// The generation of the CA whose certificate has SHA-256 `fingerprint`: the last
    /// rotation's new CA, the CA it replaced, or 0 (the first CA, or one not known here).
    pub fn ca_generation_of(&self, fingerprint: &str) -> u64 {
        match &self.ca_rotation {
            Some(r) if r.fingerprint == fingerprint => r.generation,
            Some(r) if r.from_fingerprint == fingerprint => r.generation - 1,
            _ => 0,
        }
    }

    /// Whether node `node` uses a certificate from CA generation `generation` or a later one
    /// (its agent said so: [`berth_model::CertificateRecord::in_use`]).
    pub fn node_has_ca(&self, node: &str, generation: u64) -> bool {
        self.certificates.get(node).is_some_and(|c| {
            c.certificates
                .iter()
                .any(|r| r.in_use && r.ca_generation >= generation)
        })
    }

    /// Whether node `node` should renew its certificate to follow the cluster CA: a rotation
    /// runs and the node uses no certificate from its new CA, or the last rotation finished
    /// after the node's newest certificate was issued (so the node still trusts the old CA
    /// too: it was away when the rotation finished).
    pub fn node_behind_ca(&self, node: &str) -> bool {
        let Some(r) = &self.ca_rotation else {
            return false;
        };
        match r.finished_at {
            None => !self.node_has_ca(node, r.generation),
            Some(finished) => self
                .certificates
                .get(node)
                .is_some_and(|c| c.certificates.iter().all(|c| c.issued_at < finished)),
        }
    }

    /// Whether node `node`'s agent saying it uses certificate `serial` is news the running
    /// rotation waits for: the certificate is recorded for the node, from the rotation's new
    /// CA, and not yet known to be in use.
    pub fn certificate_use_news(&self, node: &str, serial: &str) -> bool {
        let Some(r) = self.ca_rotation.as_ref().filter(|r| !r.is_finished()) else {
            return false;
        };
        self.certificates.get(node).is_some_and(|c| {
            c.certificates
                .iter()
                .any(|c| c.serial == serial && c.ca_generation >= r.generation && !c.in_use)
        })
    }

    pub(crate) fn certificate_in_use(
        &mut self,
        node: &str,
        serial: &str,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let record = self
            .certificates
            .get_mut(node)
            .and_then(|c| c.certificates.iter_mut().find(|c| c.serial == serial));
        let Some(record) = record else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "certificate {serial} of node {node} is not recorded"
            )));
        };
        if !record.in_use {
            record.in_use = true;
            changed.push(Key::Certificates(node.to_owned()));
        }
        CommandResult::Done
    }

    /// Nodes that are not DOWN and use no certificate from CA generation `generation` (or a
    /// later one): a rotation to it cannot finish before they renew.
    pub fn nodes_without_ca(&self, generation: u64) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.status != NodeStatus::Down)
            .filter(|n| !self.node_has_ca(&n.name, generation))
            .map(|n| n.name.clone())
            .collect()
    }

    pub(crate) fn start_ca_rotation(
        &mut self,
        mut rotation: Box<CaRotation>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        if let Err(e) = rotation.validate() {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        if let Some(last) = &self.ca_rotation {
            if !last.is_finished() {
                return CommandResult::Rejected(Rejection::Conflict(format!(
                    "CA rotation {} has been running since {}; wait until it finishes (`berth cluster ca status` shows what it waits for)",
                    last.generation,
                    berth_model::format_timestamp(last.started_at)
                )));
            }
            if rotation.from_fingerprint != last.fingerprint {
                return CommandResult::Rejected(Rejection::Conflict(format!(
                    "the CA to replace ({}) is not the cluster's current CA ({})",
                    rotation.from_fingerprint, last.fingerprint
                )));
            }
        }
        let next = self.ca_generation() + 1;
        if rotation.generation != next {
            return CommandResult::Rejected(Rejection::Conflict(format!(
                "CA rotation {} was asked for, but the next one is {next}",
                rotation.generation
            )));
        }
        rotation.started_at = at;
        rotation.finished_at = None;
        changed.push(Key::CaRotation);
        self.ca_rotation = Some(*rotation.clone());
        CommandResult::CaRotation(rotation)
    }

    pub(crate) fn adopt_ca_rotation(
        &mut self,
        server: u64,
        generation: u64,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        match &mut self.ca_rotation {
            Some(r) if r.generation == generation && !r.is_finished() => {
                if r.servers_adopted.insert(server) {
                    changed.push(Key::CaRotation);
                }
                CommandResult::Done
            }
            _ => CommandResult::Rejected(Rejection::Conflict(format!(
                "CA rotation {generation} is not running"
            ))),
        }
    }

    pub(crate) fn finish_ca_rotation(
        &mut self,
        generation: u64,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        match &mut self.ca_rotation {
            Some(r) if r.generation == generation && !r.is_finished() => {
                r.finished_at = Some(at);
                // Every server holds the new CA by now: its sealed key must not outlive the
                // rotation in snapshots and backups (the old key, if it leaked, opens it).
                r.sealed_key.clear();
                changed.push(Key::CaRotation);
            }
            _ => {
                return CommandResult::Rejected(Rejection::Conflict(format!(
                    "CA rotation {generation} is not running"
                )))
            }
        }
        // Certificates of older CAs are no longer trusted: forget them.
        for (node, certs) in &mut self.certificates {
            let before = certs.certificates.len();
            certs.certificates.retain(|c| c.ca_generation >= generation);
            if certs.certificates.len() != before {
                changed.push(Key::Certificates(node.clone()));
            }
        }
        CommandResult::Done
    }
}
