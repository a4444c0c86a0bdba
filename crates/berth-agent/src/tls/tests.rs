//! The agent's TLS flags and decisions: the advertise rule, join token flags, the renewal
//! threshold, what a join's answer must be, and which refusals are final.

use std::net::SocketAddr;
use std::time::Duration;

use berth_tls::{ClusterCa, Identity, JoinToken, NodeKey, Role};

use super::call::is_final;
use super::renew::{renew_at, renewal_due, retry_after};
use super::*;

fn listen(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// `--listen`, `--advertise` → the address servers dial when the API is bound to port 7401,
/// or the error.
fn check_advertise(l: &str, flag: Option<&str>, expected: &str) {
    let got = match Advertise::new(listen(l), flag) {
        Ok(a) => a.address(7401),
        Err(e) => format!("error: {e}"),
    };
    assert_eq!(got, expected, "--listen {l} --advertise {flag:?}");
}

#[test]
fn the_advertised_address_defaults_to_the_listen_address_but_never_an_unspecified_one() {
    check_advertise("127.0.0.1:0", None, "127.0.0.1:7401");
    check_advertise("10.0.0.5:7401", None, "10.0.0.5:7401");
    check_advertise("[::1]:0", None, "[::1]:7401");
    check_advertise(
        "0.0.0.0:7401",
        None,
        "error: the agent API listens on 0.0.0.0:7401, which servers cannot dial; set --advertise HOST[:PORT] to the address servers reach this node at",
    );
    check_advertise(
        "[::]:0",
        None,
        "error: the agent API listens on [::]:0, which servers cannot dial; set --advertise HOST[:PORT] to the address servers reach this node at",
    );
    // With --advertise: a host takes the API's port, a host:port is taken as it is.
    check_advertise("0.0.0.0:0", Some("10.0.0.5"), "10.0.0.5:7401");
    check_advertise("0.0.0.0:7401", Some("10.0.0.5:9000"), "10.0.0.5:9000");
    check_advertise("[::]:0", Some("fd00::5"), "[fd00::5]:7401");
    check_advertise("[::]:0", Some("[fd00::5]"), "[fd00::5]:7401");
    check_advertise("[::]:0", Some("[fd00::5]:9000"), "[fd00::5]:9000");
    check_advertise(
        "0.0.0.0:0",
        Some("Node-1.Example.com"),
        "node-1.example.com:7401",
    );
    check_advertise("0.0.0.0:0", Some("node-1:9000"), "node-1:9000");
    for (flag, reason) in [
        (
            "0.0.0.0",
            "an unspecified address cannot be dialled; give this node's address",
        ),
        (
            "[::]:7401",
            "an unspecified address cannot be dialled; give this node's address",
        ),
        (
            "node-1:0",
            "port 0 cannot be dialled; leave the port out to use the API's port",
        ),
        ("node-1:http", "expected HOST or HOST:PORT"),
        ("", "not an IP address or a DNS name"),
        ("node_1", "not an IP address or a DNS name"),
        ("-node", "not an IP address or a DNS name"),
        ("http://node-1", "expected HOST or HOST:PORT"),
    ] {
        check_advertise(
            "0.0.0.0:0",
            Some(flag),
            &format!("error: --advertise {flag:?}: {reason}"),
        );
    }
    let host_only = Advertise::new(listen("0.0.0.0:0"), Some("10.0.0.5")).expect("valid");
    assert!(!host_only.has_port());
    assert_eq!(host_only.to_string(), "10.0.0.5");
    assert!(Advertise::new(listen("0.0.0.0:0"), Some("10.0.0.5:1"))
        .expect("valid")
        .has_port());
}

#[test]
fn a_join_token_comes_from_the_flag_or_a_file_trimmed() {
    let token = JoinToken::generate(&"ab".repeat(32)).expect("token");
    let text = token.to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("  {text}\n\n")).expect("write");

    assert!(join_token(None, None).expect("no token").is_none());
    assert_eq!(
        join_token(Some(&text), None).expect("flag"),
        Some(token.clone())
    );
    assert_eq!(join_token(None, Some(&file)).expect("file"), Some(token));

    let err = |flag: Option<&str>, path: Option<&Path>| {
        let e = join_token(flag, path).expect_err("refused");
        berth_model::error_chain(&e)
    };
    assert_eq!(
        err(Some(&text), Some(&file)),
        "give either --join-token or --join-token-file, not both"
    );
    assert_eq!(
        err(Some("BERTHJ1-x"), None),
        "--join-token: not a join token: expected BERTHJ1-<CA hash>-<id>-<secret>, as `berth cluster token create` prints it"
    );
    std::fs::write(&file, "\n  \n").expect("write");
    assert_eq!(
        err(None, Some(&file)),
        format!("the join token file {} is empty", file.display())
    );
    std::fs::write(&file, "berth_0123_4567\n").expect("write");
    assert!(err(None, Some(&file)).starts_with(&format!(
        "the join token file {}: not a join token",
        file.display()
    )));
    let missing = dir.path().join("missing");
    assert!(err(None, Some(&missing))
        .starts_with(&format!("read the join token file {}: ", missing.display())));
}

#[test]
fn certificates_are_renewed_when_two_thirds_of_their_life_have_passed() {
    // (issued at, not after, now) → due?
    for (issued, not_after, now, due) in [
        (0, 24 * 3600, 16 * 3600 - 1, false),
        (0, 24 * 3600, 16 * 3600, true),
        (1000, 1030, 1019, false),
        (1000, 1030, 1020, true),
        (1000, 1010, 1006, true), // 6.67 s: renewed at 6 s, never after
        (1000, 1030, 2000, true), // expired
        (1000, 1000, 1000, true), // no life at all
        (1000, 900, 950, true),   // nonsense: renew at once rather than never
        (0, i64::MAX, i64::MAX / 3 * 2 - 1, false),
    ] {
        assert_eq!(
            renewal_due(issued, not_after, now),
            due,
            "issued {issued}, not after {not_after}, now {now}"
        );
    }
    assert_eq!(renew_at(1000, 1030), 1020);
    assert_eq!(renew_at(0, 24 * 3600), 16 * 3600);
    // After a failure: a tenth of what is left, between 1 s and 1 min.
    assert_eq!(retry_after(0, 24 * 3600), Duration::from_secs(60));
    assert_eq!(retry_after(1020, 1030), Duration::from_secs(1));
    assert_eq!(retry_after(1000, 1300), Duration::from_secs(30));
    assert_eq!(retry_after(2000, 1000), Duration::from_secs(1));
}

#[test]
fn refusals_that_another_try_would_not_change_are_final() {
    use tonic::Code;
    for code in [
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::InvalidArgument,
        Code::FailedPrecondition,
        Code::NotFound,
    ] {
        assert!(is_final(code), "{code:?}");
    }
    for code in [
        Code::AlreadyExists,
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Internal,
        Code::Unknown,
        Code::ResourceExhausted,
        Code::Unimplemented,
        Code::Aborted,
    ] {
        assert!(!is_final(code), "{code:?}");
    }
}

fn issue(ca: &ClusterCa, identity: &Identity, sans: &[&str]) -> String {
    let key = NodeKey::generate().expect("key");
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    ca.issue(
        &key.csr(identity).expect("csr"),
        identity,
        &sans,
        berth_tls::DEFAULT_CERT_TTL,
    )
    .expect("issue")
    .cert_pem
}

#[test]
fn the_agent_reads_whom_its_certificate_names_and_for_which_hosts() {
    let ca = ClusterCa::create("t").expect("ca");
    let me = Identity::new(Role::Agent, "node-1");
    let cert = issue(&ca, &me, &["10.0.0.5", "node-1.example.com", "fd00::5"]);
    let info = CertInfo::read(&cert).expect("read");
    assert_eq!(info.identity, Some(me));
    let day = unix_now() + 24 * 3600;
    assert!((info.not_after - day).abs() < 60, "{}", info.not_after);
    assert!(info.not_before < info.not_after);
    for (host, named) in [
        ("10.0.0.5", true),
        ("fd00::5", true),
        ("node-1.example.com", true),
        ("NODE-1.example.com", true),
        ("10.0.0.6", false),
        ("127.0.0.1", false),
        ("node-2.example.com", false),
    ] {
        assert_eq!(info.names(host), named, "{host}");
    }
    assert!(CertInfo::read("not a certificate").is_err());
}

/// What a server answers: `cert` from `ca`, with `trust` and `chain` (empty: the CA alone).
fn answer(ca: &ClusterCa, cert: &str, trust: &str, chain: &str) -> Material {
    Material::answered(
        ca.cert_pem().to_owned(),
        None,
        cert.to_owned(),
        "key".into(),
        trust,
        chain,
    )
}

#[test]
fn a_join_answer_must_name_this_agent_with_the_pinned_ca() {
    let ca = ClusterCa::create("t").expect("ca");
    let pinned = ca.fingerprint().expect("fingerprint");
    let me = Identity::new(Role::Agent, "node-1");
    let mine = issue(&ca, &me, &["127.0.0.1"]);
    let check = |answered: Material| {
        check_answer(&answered, Vouch::Pinned(&pinned), &me)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(check(answer(&ca, &mine, "", "")), Ok(()));

    let other = ClusterCa::create("other").expect("ca");
    let theirs = issue(&other, &me, &[]);
    let refused = "the server answered a certificate that does not chain to a CA this node trusts (for a join: the one the token pins)";
    assert_eq!(check(answer(&other, &theirs, "", "")), Err(refused.into()));
    // A certificate that its answered CA did not sign.
    assert_eq!(check(answer(&ca, &theirs, "", "")), Err(refused.into()));
    let someone_else = issue(&ca, &Identity::new(Role::Agent, "node-2"), &[]);
    assert_eq!(
        check(answer(&ca, &someone_else, "", "")),
        Err("the server answered a certificate of agent node-2".into())
    );
    let a_server = issue(&ca, &Identity::new(Role::Server, "1"), &[]);
    assert_eq!(
        check(answer(&ca, &a_server, "", "")),
        Err("the server answered a certificate of server 1".into())
    );
    assert_eq!(
        check(answer(&ca, "junk", "", "")),
        Err("the server answered a certificate that cannot be read".into())
    );
}

#[test]
fn a_renewal_moves_onto_a_rotated_ca_only_when_the_trusted_ca_vouches_for_it() {
    let old = ClusterCa::create("t").expect("ca");
    let (new, cross) = old.successor("t").expect("successor");
    let me = Identity::new(Role::Agent, "node-1");
    let trust_both = format!("{}{}", old.cert_pem(), new.cert_pem());
    let chain = format!("{cross}{}{}", new.cert_pem(), old.cert_pem());
    let from_new = issue(&new, &me, &["127.0.0.1"]);
    let check = |answered: &Material, trusted: &str| {
        check_answer(answered, Vouch::Trusted(trusted), &me)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    // During the rotation: the old CA vouches for the new one through the cross-signed one.
    let during = answer(&new, &from_new, &trust_both, &chain);
    assert_eq!(check(&during, old.cert_pem()), Ok(()));
    assert!(during.trusts(&old.fingerprint().expect("fp")));
    // Without the cross-signed certificate, nothing vouches for the new CA.
    let unvouched = answer(&new, &from_new, &trust_both, new.cert_pem());
    assert!(check(&unvouched, old.cert_pem()).is_err());
    // A CA to trust that nothing vouches for is refused.
    let stranger = ClusterCa::create("stranger").expect("ca");
    let sneaky = answer(
        &new,
        &from_new,
        &format!("{trust_both}{}", stranger.cert_pem()),
        &chain,
    );
    assert_eq!(
        check(&sneaky, old.cert_pem()),
        Err("the server answered a CA to trust that no CA this node trusts vouches for".into())
    );
    // After the rotation: the new CA alone, which the agent trusts already.
    let after = answer(&new, &from_new, "", "");
    assert_eq!(check(&after, &trust_both), Ok(()));
    assert!(!after.trusts(&old.fingerprint().expect("fp")));
    // An agent that never learnt of the rotation cannot be moved without the cross-signature.
    assert!(check(&after, old.cert_pem()).is_err());
}
