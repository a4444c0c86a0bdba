//! Agent nodes' certificate records: the serials of the certificates issued to each node that
//! may still be used (see [`berth_model::NodeCertificates`]). A join or a renewal records one;
//! recording forgets the node's expired ones (so a node keeps about two), and removing the
//! node forgets them all. Records of a node that never records again stay until it is removed:
//! a few short strings.

use berth_model::{CertificateRecord, NodeCertificates, Timestamp, MAX_NODE_CERTIFICATES};

use crate::command::{CommandResult, Rejection};
use crate::{Key, State};

impl State {
    /// The certificates recorded for agent node `node`.
    pub fn node_certificates(&self, node: &str) -> Option<&NodeCertificates> {
        self.certificates.get(node)
    }

    /// Whether the certificate with `serial` is recorded for agent node `node`: only then may
    /// it attach the node's stream or renew.
    pub fn certificate_recorded(&self, node: &str, serial: &str) -> bool {
        self.certificates
            .get(node)
            .is_some_and(|c| c.contains(serial))
    }

    /// Records `record` (issued at `at`) for `node`.
    pub(crate) fn record_certificate(
        &mut self,
        node: String,
        record: CertificateRecord,
        renewing: Option<String>,
        at: Timestamp,
        changed: &mut Vec<Key>,
    ) -> CommandResult {
        let expires_at = record.expires_at;
        if let Err(e) = berth_model::validate_name("node", &node).and_then(|()| record.validate()) {
            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
        }
        if record.is_expired(at) {
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "certificate {} of node {node} expired at {}, before it was recorded",
                record.serial,
                berth_model::format_timestamp(expires_at)
            )));
        }
        if let Some(old) = renewing.filter(|old| !self.certificate_recorded(&node, old)) {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "certificate {old} of node {node} is not recorded: it was revoked or the node removed; join again with a token"
            )));
        }
        let mut certs = self
            .certificates
            .get(&node)
            .cloned()
            .unwrap_or_else(|| NodeCertificates::new(node.clone()));
        if certs.contains(&record.serial) {
            return CommandResult::Done;
        }
        certs.certificates.retain(|c| !c.is_expired(at));
        certs.certificates.push(record);
        certs.certificates.sort_by_key(|c| c.expires_at);
        let excess = certs
            .certificates
            .len()
            .saturating_sub(MAX_NODE_CERTIFICATES);
        certs.certificates.drain(..excess);
        changed.push(Key::Certificates(node.clone()));
        self.certificates.insert(node, certs);
        CommandResult::Done
    }

    /// Forgets every certificate of `node`: none of them attaches or renews any more.
    pub(crate) fn revoke_certificates(&mut self, node: &str, changed: &mut Vec<Key>) {
        if self.certificates.remove(node).is_some() {
            changed.push(Key::Certificates(node.to_owned()));
        }
    }
}
