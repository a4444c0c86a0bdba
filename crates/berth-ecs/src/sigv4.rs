//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`), checked. The AWS CLI and SDKs sign every
//! request with the secret of an access key; the signature is an HMAC under a key derived
//! from that secret, so whoever checks it must hold the secret itself (a hash of it cannot
//! check anything). What is checked, as AWS does: the form of the `Authorization` header,
//! that `host` and `x-amz-date` are among the signed headers, that `X-Amz-Date` is the day of
//! the credential's scope and within 15 minutes of the server's clock, and the signature over
//! the canonical request (method, path, query, the signed headers, the body's SHA-256),
//! compared in constant time. The region and service of the scope are signed like the rest,
//! and not otherwise required to be anything.

use ring::{digest, hmac};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The service requests are signed for: ECS's.
pub const SERVICE: &str = "ecs";

/// How far a request's `X-Amz-Date` may be from the server's clock, either way (AWS's bound).
pub const MAX_SKEW_SECS: u64 = 15 * 60;

/// What an `Authorization` header of SigV4 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// The credential scope's day, `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case names, in the order they were signed.
    pub signed_headers: Vec<String>,
    pub signature: Vec<u8>,
}

/// Why a request's signature is not accepted. The messages say what to fix and never carry
/// the secret or the signature expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Authorization` header.
    #[error("the request is not signed: sign it with AWS Signature Version 4 and an access key from `berth token create --aws`")]
    Missing,
    /// A header SigV4 needs is absent or not in its form.
    #[error("{0}")]
    Malformed(String),
    /// `X-Amz-Date` is too far from the server's clock.
    #[error("Signature expired: {0} is more than 15 minutes from the server's time; check the client's clock")]
    Expired(String),
    /// The signature is not the one the secret gives.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")]
    Mismatch,
}

impl SigError {
    /// The error type AWS answers with (the `__type` of an awsJson1_1 error).
    pub fn code(&self) -> &'static str {
        match self {
            SigError::Missing => "MissingAuthenticationTokenException",
            SigError::Malformed(_) => "IncompleteSignatureException",
            SigError::Expired(_) | SigError::Mismatch => "InvalidSignatureException",
        }
    }
}

/// A request as received.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded as on the wire).
    pub path: &'a str,
    /// The query string as sent, without the `?`; empty when there is none.
    pub query: &'a str,
    /// Every header, names in any case; a name may repeat.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl Request<'_> {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    }

    /// The `Authorization` header, read.
    pub fn authorization(&self) -> Result<Authorization, SigError> {
        match self.values("authorization").as_slice() {
            [] => Err(SigError::Missing),
            [one] => parse_authorization(one),
            _ => Err(malformed(
                "the request has more than one Authorization header",
            )),
        }
    }
}

fn malformed(what: impl Into<String>) -> SigError {
    SigError::Malformed(what.into())
}

/// Reads `AWS4-HMAC-SHA256 Credential=KEY/DAY/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            malformed(format!(
                "Authorization header requires the {ALGORITHM} algorithm (Signature Version 4)"
            ))
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, v) = part.trim().split_once('=').ok_or_else(|| {
            malformed(format!(
                "Authorization header: {:?} is not KEY=VALUE",
                part.trim()
            ))
        })?;
        match key {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let missing =
        |what: &str| malformed(format!("Authorization header requires a {what} parameter"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(malformed(format!(
            "Credential {credential:?} is not ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    };
    let region_form = |r: &str| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if *service != SERVICE {
        return Err(malformed(format!(
            "Credential {credential:?} is scoped to service {service:?}; sign for {SERVICE:?}"
        )));
    }
    if key.is_empty()
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || !region_form(region)
    {
        return Err(malformed(format!(
            "Credential {credential:?} is not ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request"
        )));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(malformed(format!(
            "SignedHeaders {signed:?} is not a list of lower-case header names joined by ';'"
        )));
    }
    let signature = from_hex(signature)
        .filter(|s| s.len() == digest::SHA256_OUTPUT_LEN)
        .ok_or_else(|| malformed("Signature is not 64 hexadecimal digits"))?;
    Ok(Authorization {
        access_key_id: (*key).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: (*service).to_owned(),
        signed_headers,
        signature,
    })
}

/// Checks `request`'s signature `auth` with `secret`, the access key's secret, at `now` (Unix
/// seconds).
pub fn verify(
    request: &Request<'_>,
    auth: &Authorization,
    secret: &str,
    now: u64,
) -> Result<(), SigError> {
    // X-Amz-Target picks the operation: unsigned, a captured request could be replayed as
    // another operation with the same body.
    let target = (!request.values("x-amz-target").is_empty()).then_some("x-amz-target");
    for required in ["host", "x-amz-date"].into_iter().chain(target) {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(malformed(format!("SignedHeaders must include {required}")));
        }
    }
    let amz_date = match request.values("x-amz-date").as_slice() {
        [one] => *one,
        _ => return Err(malformed("the request needs one X-Amz-Date header")),
    };
    let at = parse_amz_date(amz_date).ok_or_else(|| {
        malformed(format!(
            "X-Amz-Date {amz_date:?} is not a time of the form YYYYMMDDTHHMMSSZ"
        ))
    })?;
    if !amz_date.starts_with(&auth.date) {
        return Err(malformed(format!(
            "the credential's date {} is not the day of X-Amz-Date {amz_date}",
            auth.date
        )));
    }
    if at.abs_diff(now) > MAX_SKEW_SECS {
        return Err(SigError::Expired(amz_date.to_owned()));
    }
    let body_hash = to_hex(digest::digest(&digest::SHA256, request.body).as_ref());
    if let [claimed] = request.values("x-amz-content-sha256").as_slice() {
        if *claimed != body_hash {
            return Err(malformed(
                "x-amz-content-sha256 is not the SHA-256 of the body: the body must be signed",
            ));
        }
    }
    let canonical = canonical_request(request, &auth.signed_headers, &body_hash)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        to_hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    hmac::verify(&key, string_to_sign.as_bytes(), &auth.signature).map_err(|_| SigError::Mismatch)
}

/// Signs `request` as the AWS SDKs do, for Rust clients and tests: every header of the
/// request is signed (it must hold `host` and `x-amz-date`). Answers the `Authorization`
/// header's value.
pub fn sign(
    request: &Request<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
) -> Result<String, SigError> {
    let amz_date = match request.values("x-amz-date").as_slice() {
        [one] => *one,
        _ => return Err(malformed("the request needs one X-Amz-Date header")),
    };
    let date = amz_date
        .get(..8)
        .ok_or_else(|| malformed("X-Amz-Date is not of the form YYYYMMDDTHHMMSSZ"))?;
    let mut signed: Vec<String> = request
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| n != "authorization")
        .collect();
    signed.sort_unstable();
    signed.dedup();
    let body_hash = to_hex(digest::digest(&digest::SHA256, request.body).as_ref());
    let canonical = canonical_request(request, &signed, &body_hash)?;
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        to_hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let key = signing_key(secret, date, region, SERVICE);
    let signature = to_hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
        signed.join(";")
    ))
}

/// SigV4's key for one day, region and service.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &key);
        key = hmac::sign(&k, part.as_bytes()).as_ref().to_vec();
    }
    hmac::Key::new(hmac::HMAC_SHA256, &key)
}

fn canonical_request(
    request: &Request<'_>,
    signed_headers: &[String],
    body_hash: &str,
) -> Result<String, SigError> {
    let mut headers = String::new();
    for name in signed_headers {
        let values = request.values(name);
        if values.is_empty() {
            return Err(malformed(format!(
                "signed header {name} is not in the request"
            )));
        }
        let joined: Vec<String> = values
            .iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        headers.push_str(&format!("{name}:{}\n", joined.join(",")));
    }
    Ok(format!(
        "{}\n{}\n{}\n{headers}\n{}\n{body_hash}",
        request.method,
        canonical_path(request.path),
        canonical_query(request.query),
        signed_headers.join(";"),
    ))
}

/// The path as the SDKs sign it for every service but S3: the path as sent (already
/// percent-encoded) encoded once more, `/` and `~` kept (botocore's `quote(path, safe="/~")`,
/// so `%20` signs as `%2520`). Dot segments are not removed: ECS's calls all go to `/`.
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    encode(path.as_bytes(), true)
}

/// The query's `name=value` pairs as sent, sorted (as botocore signs them: the SDKs send each
/// pair already encoded in SigV4's form).
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `YYYYMMDDTHHMMSSZ` as Unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !digits(0..8) || !digits(9..15) {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> { s.get(range)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (years counted from March).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from(days * 86_400 + hour * 3_600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A request signed by botocore 1.44.8 (`SigV4Auth(credentials, "ecs", "us-east-1")`, the
    // clock set to 2026-12-02T12:30:00Z), as the aws CLI and boto3 send it.
    const KEY: &str = "BKIDEXAMPLE0123456789";
    const SECRET: &str = "s3cr3t/EXAMPLEKEY+abcdefghijklmnopqrstuv";
    const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=BKIDEXAMPLE0123456789/20261202/us-east-1/ecs/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=f4c4dbdece1f8bfc13a359ce87862d6733c22fe79fed4d494b7de4929c60095a";
    const BODY: &[u8] = br#"{"cluster":"default","taskDefinition":"web:1","count":2}"#;
    /// 2026-12-02T12:30:00Z.
    const SIGNED_AT: u64 = 1_796_214_600;

    fn headers(target: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "127.0.0.1:8444"),
            ("X-Amz-Target", target),
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Date", "20261202T123000Z"),
            ("Authorization", AUTHORIZATION),
        ]
    }

    fn check(
        headers: &[(&str, &str)],
        body: &[u8],
        secret: &str,
        now: u64,
    ) -> Result<(), SigError> {
        let request = Request {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body,
        };
        let auth = request.authorization()?;
        assert_eq!(auth.access_key_id, KEY);
        verify(&request, &auth, secret, now)
    }

    const RUN_TASK: &str = "AmazonEC2ContainerServiceV20141113.RunTask";

    #[test]
    fn a_request_botocore_signed_is_accepted() {
        check(&headers(RUN_TASK), BODY, SECRET, SIGNED_AT).expect("botocore's signature");
        // Within the allowed skew either way.
        check(&headers(RUN_TASK), BODY, SECRET, SIGNED_AT + MAX_SKEW_SECS).expect("15 min later");
        check(&headers(RUN_TASK), BODY, SECRET, SIGNED_AT - MAX_SKEW_SECS).expect("15 min earlier");
    }

    #[test]
    fn signing_gives_botocore_s_signature() {
        let mut unsigned = headers(RUN_TASK);
        unsigned.retain(|(n, _)| *n != "Authorization");
        let request = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &unsigned,
            body: BODY,
        };
        assert_eq!(
            sign(&request, KEY, SECRET, "us-east-1").as_deref(),
            Ok(AUTHORIZATION)
        );
    }

    #[test]
    fn a_changed_secret_body_or_signed_header_is_refused() {
        let wrong = check(&headers(RUN_TASK), BODY, "another secret", SIGNED_AT);
        assert_eq!(wrong, Err(SigError::Mismatch));
        assert_eq!(
            wrong.expect_err("mismatch").code(),
            "InvalidSignatureException"
        );
        let body = br#"{"cluster":"default","taskDefinition":"web:1","count":20}"#;
        assert_eq!(
            check(&headers(RUN_TASK), body, SECRET, SIGNED_AT),
            Err(SigError::Mismatch)
        );
        let target = "AmazonEC2ContainerServiceV20141113.StopTask";
        assert_eq!(
            check(&headers(target), BODY, SECRET, SIGNED_AT),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn an_old_or_future_request_is_refused_as_expired() {
        let late = check(
            &headers(RUN_TASK),
            BODY,
            SECRET,
            SIGNED_AT + MAX_SKEW_SECS + 1,
        );
        assert!(matches!(late, Err(SigError::Expired(_))), "{late:?}");
        let early = check(
            &headers(RUN_TASK),
            BODY,
            SECRET,
            SIGNED_AT - MAX_SKEW_SECS - 1,
        );
        assert!(matches!(early, Err(SigError::Expired(_))), "{early:?}");
    }

    #[test]
    fn unsigned_or_malformed_requests_say_what_is_wrong() {
        let mut unsigned = headers(RUN_TASK);
        unsigned.retain(|(n, _)| *n != "Authorization");
        let e = check(&unsigned, BODY, SECRET, SIGNED_AT).expect_err("unsigned");
        assert_eq!(e.code(), "MissingAuthenticationTokenException");

        for (bad, says) in [
            ("Basic dXNlcjpwYXNz", "AWS4-HMAC-SHA256"),
            ("AWS4-HMAC-SHA256 Credential=K/20261202/us-east-1/ecs/aws4_request, Signature=00", "SignedHeaders"),
            ("AWS4-HMAC-SHA256 Credential=K/2026/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature=00", "YYYYMMDD"),
            ("AWS4-HMAC-SHA256 Credential=K/20261202/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature=xyz", "64 hexadecimal"),
        ] {
            let e = parse_authorization(bad).expect_err(bad);
            assert_eq!(e.code(), "IncompleteSignatureException");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }

        // host must be signed.
        let sig = "0".repeat(64);
        let auth = format!("AWS4-HMAC-SHA256 Credential={KEY}/20261202/us-east-1/ecs/aws4_request, SignedHeaders=x-amz-date, Signature={sig}");
        let mut h = headers(RUN_TASK);
        h.retain(|(n, _)| *n != "Authorization");
        h.push(("Authorization", &auth));
        let e = check(&h, BODY, SECRET, SIGNED_AT).expect_err("host unsigned");
        assert!(e.to_string().contains("must include host"), "{e}");

        // The operation's header must be signed when sent.
        let auth = AUTHORIZATION.replace(
            "SignedHeaders=content-type;host;x-amz-date;x-amz-target",
            "SignedHeaders=content-type;host;x-amz-date",
        );
        let mut h = headers(RUN_TASK);
        h.retain(|(n, _)| *n != "Authorization");
        h.push(("Authorization", &auth));
        let e = check(&h, BODY, SECRET, SIGNED_AT).expect_err("target unsigned");
        assert!(e.to_string().contains("must include x-amz-target"), "{e}");

        // Signed for another service, or with a region not of AWS's form.
        for scope in ["/us-east-1/s3/", "/us:east/ecs/", "//ecs/"] {
            let auth = AUTHORIZATION.replace("/us-east-1/ecs/", scope);
            let e = parse_authorization(&auth).expect_err(scope);
            assert_eq!(e.code(), "IncompleteSignatureException", "{scope}");
        }

        // The scope's day must be X-Amz-Date's.
        let auth = AUTHORIZATION.replace("/20261202/", "/20261201/");
        let mut h = headers(RUN_TASK);
        h.retain(|(n, _)| *n != "Authorization");
        h.push(("Authorization", &auth));
        let e = check(&h, BODY, SECRET, SIGNED_AT).expect_err("another day");
        assert!(e.to_string().contains("not the day of X-Amz-Date"), "{e}");
    }

    #[test]
    fn canonical_forms_follow_sigv4() {
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(
            canonical_path("/a%20b/c~d"),
            "/a%2520b/c~d",
            "encoded once more, as every SDK signs for a service other than S3"
        );
        assert_eq!(
            canonical_query("b=2&a=2&a=1&c"),
            "a=1&a=2&b=2&c=",
            "sorted by name then value, a bare name gets an empty value"
        );
        assert_eq!(canonical_query("k=a%2Fb"), "k=a%2Fb", "as sent");
        assert_eq!(parse_amz_date("2026120+T123000Z"), None);
        assert_eq!(parse_amz_date("20261202T-1-1-1Z"), None);
        assert_eq!(from_hex("+f"), None);
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20261202T123000Z"), Some(SIGNED_AT));
        assert_eq!(parse_amz_date("20000229T235959Z"), Some(951_868_799));
        assert_eq!(parse_amz_date("20261302T123000Z"), None);
        assert_eq!(parse_amz_date("2026-12-02T12:30"), None);
    }
}
