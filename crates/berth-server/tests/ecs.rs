//! The ECS endpoint of an in-process server, called over plain HTTP on loopback with requests
//! signed here (`berth_ecs::sigv4::sign`, checked against botocore's signatures): an `--aws`
//! token's secret opens before and after a rotation of the secrets key, which seals it again;
//! a request changed after signing, a bearer-only token and an oversized body are refused with
//! ECS's error types. (The aws CLI and boto3 drive the endpoint in `tests/e2e/ecs.rs`.)

use std::time::Duration;

use berth_proto::v1::berth_client::BerthClient;
use berth_proto::v1::{CreateTokenRequest, RotateSecretKeyRequest};
use berth_server::{Server, ServerConfig};
use berth_tls::net::Dialer;
use berth_tls::tls::{client_config, Trust};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TARGET: &str = "AmazonEC2ContainerServiceV20141113.";

/// Now as `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
fn amz_date() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    // 2026-12-02T12:30:00.000Z -> 20261202T123000Z
    let text = berth_model::format_timestamp(ms);
    let (seconds, _) = text.split_once('.').unwrap_or((&text, ""));
    format!("{}Z", seconds.replace(['-', ':'], ""))
}

struct Call<'a> {
    operation: &'a str,
    body: Vec<u8>,
    key: (&'a str, &'a str),
    /// Changes the request after it was signed.
    tamper: Option<&'a str>,
}

/// A signed `ListClusters`.
fn list<'a>(key: (&'a str, &'a str)) -> Call<'a> {
    Call {
        operation: "ListClusters",
        body: b"{}".to_vec(),
        key,
        tamper: None,
    }
}

/// One ECS call over HTTP/1.1: the status and the answer's JSON.
async fn call(addr: &str, c: Call<'_>) -> anyhow::Result<(u16, Value)> {
    let target = format!("{TARGET}{}", c.operation);
    let date = amz_date();
    let length = c.body.len().to_string();
    let headers: Vec<(&str, &str)> = vec![
        ("host", addr),
        ("content-type", "application/x-amz-json-1.1"),
        ("content-length", &length),
        ("x-amz-date", &date),
        ("x-amz-target", &target),
    ];
    let request = berth_ecs::sigv4::Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body: &c.body,
    };
    let authorization = berth_ecs::sigv4::sign(&request, c.key.0, c.key.1, "eu-west-1")?;
    let mut text = String::from("POST / HTTP/1.1\r\nconnection: close\r\n");
    for (name, value) in &headers {
        let value = match (*name, c.tamper) {
            ("x-amz-target", Some(other)) => format!("{TARGET}{other}"),
            _ => (*value).to_owned(),
        };
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("authorization: {authorization}\r\n\r\n"));
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(text.as_bytes()).await?;
    stream.write_all(&c.body).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn aws_keys_sign_calls_and_survive_a_rotation_of_the_secrets_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::new(Some(1), dir.path().to_path_buf(), "127.0.0.1:0".parse()?);
    config.ecs_listen = Some("127.0.0.1:0".parse()?);
    let server = Server::start(config).await?;
    let (address, ecs) = (
        server.address.to_string(),
        server.ecs_address.expect("ECS").to_string(),
    );
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let path = dir.path().join("admin.toml");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin.toml");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let credentials: toml::Table = toml::from_str(&std::fs::read_to_string(&path)?)?;
    let ca = credentials["ca"].as_str().expect("ca").to_owned();
    let token = credentials["token"].as_str().expect("token").to_owned();
    let channel = Dialer::new(client_config(&Trust::Ca(ca), None)?)
        .connect(&address)
        .await?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut api = BerthClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });

    let created = api
        .create_token(CreateTokenRequest {
            role: "admin".into(),
            aws: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let key_id = created.token.expect("record").aws_access_key_id;
    let secret = berth_tls::ApiToken::parse(&created.secret_token)?.secret;
    assert!(key_id.starts_with("BERTH"), "{key_id}");
    let key = (key_id.as_str(), secret.as_str());
    let (status, body) = call(&ecs, list(key)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["clusterArns"][0], "arn:aws:ecs:eu-west-1:000000000000:cluster/default",
        "{body}"
    );

    // A rotation seals the token's secret again under the new key; it still signs.
    let rotated = api
        .rotate_secret_key(RotateSecretKeyRequest {})
        .await?
        .into_inner();
    assert_eq!((rotated.tokens, rotated.unreadable), (1, 0), "{rotated:?}");
    let (status, body) = call(&ecs, list(key)).await?;
    assert_eq!(status, 200, "{body}");

    // Signed as ListClusters, sent as DeleteCluster: the signature covers X-Amz-Target.
    let tampered = Call {
        tamper: Some("DeleteCluster"),
        ..list(key)
    };
    let (status, body) = call(&ecs, tampered).await?;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("InvalidSignatureException"))
    );
    // A token made without --aws has no AWS secret to check a signature with.
    let plain = api
        .create_token(CreateTokenRequest {
            role: "viewer".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let plain_id = berth_model::aws_access_key_id(&plain.token.expect("record").id);
    let (status, body) = call(&ecs, list((plain_id.as_str(), "x"))).await?;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("UnrecognizedClientException"))
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("without --aws")),
        "{body}"
    );
    // The body is read up to 1 MiB.
    let big = Call {
        body: vec![b' '; (1 << 20) + 1],
        ..list(key)
    };
    let (status, body) = call(&ecs, big).await?;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("ClientException")),
        "{body}"
    );
    Ok(())
}
