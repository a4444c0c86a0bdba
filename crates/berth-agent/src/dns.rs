//! The DNS answers of a node's service discovery (RFC 1035 messages, pure): `A` queries for
//! `SERVICE.NAMESPACE.berth.internal` get the address the node serves that service on; other
//! `berth.internal` names do not exist; every other name is refused, so that a task's resolver
//! asks its next name server. Only what a stub resolver sends is understood: one question, no
//! compression in it.

use std::net::Ipv4Addr;

/// The zone service discovery answers for.
pub const ZONE: &str = "berth.internal";

/// Seconds resolvers may keep an answer: short, since a service's address on a node changes
/// only when the agent restarts, but names come and go with services.
const TTL: u32 = 5;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// What a name is to the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A service's address on this node.
    Address(Ipv4Addr),
    /// A name in the zone that names no service.
    NoSuchName,
}

/// The `(namespace, service)` a name in the zone stands for: `SERVICE.NAMESPACE.berth.internal`
/// (any case, with or without the final dot). `None` for names outside the zone.
pub fn service_of(name: &str) -> Option<Option<(String, String)>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let rest = name.strip_suffix(ZONE)?;
    if !rest.is_empty() && !rest.ends_with('.') {
        return None; // e.g. `notberth.internal`
    }
    let labels: Vec<&str> = rest.trim_end_matches('.').split('.').collect();
    Some(match labels.as_slice() {
        [service, namespace] if !service.is_empty() && !namespace.is_empty() => {
            Some(((*namespace).to_owned(), (*service).to_owned()))
        }
        _ => None,
    })
}

/// The answer to the DNS query `query`, or `None` when it is not worth one (not a query, too
/// short to hold a header). `lookup` is asked about names in the zone only.
pub fn answer(query: &[u8], lookup: impl Fn(&str, &str) -> Lookup) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    let questions = u16::from_be_bytes([query[4], query[5]]);
    // Errors about the message itself carry the header only.
    let header = &query[..12];
    if opcode != 0 {
        return Some(reply(header, RCODE_NOTIMP, None));
    }
    if questions != 1 {
        return Some(reply(header, RCODE_FORMERR, None));
    }
    let Some((name, end)) = read_name(query, 12) else {
        return Some(reply(header, RCODE_FORMERR, None));
    };
    let Some(fixed) = query.get(end..end + 4) else {
        return Some(reply(header, RCODE_FORMERR, None));
    };
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let Some(target) = service_of(&name) else {
        return Some(reply(&query[..end + 4], RCODE_REFUSED, None));
    };
    let found = target.map_or(Lookup::NoSuchName, |(ns, svc)| lookup(&ns, &svc));
    let query = &query[..end + 4];
    Some(match found {
        Lookup::NoSuchName => reply(query, RCODE_NXDOMAIN, None),
        // The name exists; it has only an IPv4 address (an AAAA query gets no records).
        Lookup::Address(_) if qtype != TYPE_A || qclass != CLASS_IN => reply(query, 0, None),
        Lookup::Address(addr) => reply(query, 0, Some(addr)),
    })
}

/// A question's name from `at` (labels, no compression) and where the name ends.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // a compression pointer, or garbage
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += len;
        if at > 12 + 255 {
            return None;
        }
    }
    Some((labels.join("."), at))
}

/// A response to `query` (header and question): authoritative, recursion not available, with
/// `rcode`, and an `A` record for the question's name when `address` is given.
fn reply(query: &[u8], rcode: u8, address: Option<Ipv4Addr>) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.len() + 16);
    out.extend_from_slice(&query[..2]); // ID
    let rd = query[2] & 0x01;
    out.push(0x80 | 0x04 | rd); // QR, AA, RD copied
    out.push(rcode & 0x0f); // RA = 0
    let has_question = query.len() > 12;
    out.extend_from_slice(&u16::from(has_question).to_be_bytes());
    out.extend_from_slice(&u16::from(address.is_some()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    if has_question {
        out.extend_from_slice(&query[12..]);
    }
    if let Some(addr) = address {
        out.extend_from_slice(&[0xc0, 12]); // the question's name
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as a stub resolver sends it: ID 0xbeef, RD, one question.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(u8::try_from(label.len()).expect("short label"));
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn lookup(ns: &str, svc: &str) -> Lookup {
        match (ns, svc) {
            ("default", "web") => Lookup::Address(Ipv4Addr::new(10, 220, 255, 254)),
            _ => Lookup::NoSuchName,
        }
    }

    /// `(rcode, answers, the answer's address)`.
    fn check(q: &[u8]) -> (u8, u16, Option<Ipv4Addr>) {
        let a = answer(q, lookup).expect("an answer");
        assert_eq!(&a[..2], &q[..2], "the query's ID");
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        let answers = u16::from_be_bytes([a[6], a[7]]);
        let addr = (answers == 1).then(|| {
            let o = &a[a.len() - 4..];
            Ipv4Addr::new(o[0], o[1], o[2], o[3])
        });
        (a[3] & 0x0f, answers, addr)
    }

    #[test]
    fn a_service_name_resolves_to_its_address_on_the_node() {
        let addr = Some(Ipv4Addr::new(10, 220, 255, 254));
        assert_eq!(check(&query("web.default.berth.internal", 1)), (0, 1, addr));
        assert_eq!(
            check(&query("WEB.Default.Berth.Internal.", 1)),
            (0, 1, addr)
        );
        // It exists, with no IPv6 address.
        assert_eq!(
            check(&query("web.default.berth.internal", 28)),
            (0, 0, None)
        );
    }

    #[test]
    fn other_names_in_the_zone_do_not_exist_and_the_rest_is_refused() {
        for name in [
            "api.default.berth.internal",
            "berth.internal",
            "a.b.c.berth.internal",
        ] {
            assert_eq!(check(&query(name, 1)), (RCODE_NXDOMAIN, 0, None), "{name}");
        }
        for name in [
            "example.com",
            "notberth.internal",
            "web.default.berth.internal.evil",
        ] {
            assert_eq!(check(&query(name, 1)), (RCODE_REFUSED, 0, None), "{name}");
        }
    }

    #[test]
    fn malformed_queries_get_format_errors_or_nothing() {
        assert_eq!(answer(&[0; 5], lookup), None);
        let mut response = query("web.default.berth.internal", 1);
        response[2] |= 0x80;
        assert_eq!(answer(&response, lookup), None);
        let mut cut = query("web.default.berth.internal", 1);
        cut.truncate(20);
        assert_eq!(check(&cut).0, RCODE_FORMERR);
        let mut two = query("web.default.berth.internal", 1);
        two[5] = 2;
        assert_eq!(check(&two).0, RCODE_FORMERR);
        let mut pointer = query("x", 1);
        pointer[12] = 0xc0;
        assert_eq!(check(&pointer).0, RCODE_FORMERR);
    }

    #[test]
    fn names_map_to_namespace_and_service() {
        assert_eq!(
            service_of("web.prod.berth.internal"),
            Some(Some(("prod".into(), "web".into())))
        );
        assert_eq!(service_of("prod.berth.internal"), Some(None));
        assert_eq!(service_of("example.org"), None);
    }
}
