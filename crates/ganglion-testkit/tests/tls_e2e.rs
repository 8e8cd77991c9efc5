//! TLS and mTLS end to end, with certificates this test makes (rcgen): the Rust SDK with
//! a token over TLS, client certificates naming identities, certificates from another
//! CA or expired refused at the handshake, HTTP over TLS, and Python's grpcio.

mod common;

use std::sync::Arc;

use common::{Server, bus_options, read_response, request_with, soon};
use ganglion_bus::Bus;
use ganglion_client::{Client, ClientOptions, ClientTls};
use ganglion_config::token::{mint_token, token_hash};
use ganglion_core::bus::EventBus;
use ganglion_core::{BusError, Event, Topic};
use ganglion_server::auth::{AuthHandle, Policy};
use ganglion_server::{ClientCerts, ServerOptions, TlsOptions};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A certificate and its key, PEM.
#[derive(Clone)]
struct Pem {
    cert: String,
    key: String,
}

/// A CA, the server's certificate, and client certificates: good, from a foreign CA,
/// and expired.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    server: Pem,
    owner: Pem,
    foreign: Pem,
    expired: Pem,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    names: &[&str],
    expired: bool,
) -> Pem {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl Pki {
    fn new() -> Pki {
        let (ours, theirs) = (ca("ganglion test CA"), ca("someone else's CA"));
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: ours.pem(),
            server: leaf(&ours, "ganglion", &["localhost"], false),
            owner: leaf(&ours, "owner", &[], false),
            foreign: leaf(&theirs, "owner", &[], false),
            expired: leaf(&ours, "owner", &[], true),
        };
        for (name, text) in [
            ("ca.pem", &pki.ca),
            ("server.pem", &pki.server.cert),
            ("server.key", &pki.server.key),
        ] {
            std::fs::write(pki.dir.path().join(name), text).unwrap();
        }
        pki
    }

    fn tls(&self, grpc: ClientCerts, http: ClientCerts) -> TlsOptions {
        TlsOptions {
            cert_file: self.dir.path().join("server.pem"),
            key_file: self.dir.path().join("server.key"),
            client_ca_file: Some(self.dir.path().join("ca.pem")),
            grpc_client_certs: grpc,
            http_client_certs: http,
        }
    }
}

async fn start(dir: &std::path::Path, tls: TlsOptions, token: &str) -> Server {
    start_with(dir, tls, token, ServerOptions::default()).await
}

async fn start_with(
    dir: &std::path::Path,
    tls: TlsOptions,
    token: &str,
    options: ServerOptions,
) -> Server {
    let auth: ganglion_config::AuthConfig = serde_json::from_value(json!({
        "identities": {
            "owner": {
                "tokens": [token_hash(token)],
                "permissions": { "publish": { "allow": ["game.>"] } },
            },
        },
    }))
    .unwrap();
    let options = ServerOptions {
        auth: AuthHandle::new(Policy::compile(&auth, false).unwrap()),
        tls: Some(tls),
        ..options
    };
    Server::start(Bus::open(bus_options(dir)).unwrap(), options).await
}

fn sdk_options(
    server: &Server,
    pki: &Pki,
    token: Option<&str>,
    cert: Option<&Pem>,
) -> ClientOptions {
    let mut options = ClientOptions::new(format!("https://{}", server.grpc_addr));
    options.token = token.map(str::to_owned);
    options.tls = Some(ClientTls {
        ca_pem: Some(pki.ca.clone().into_bytes()),
        identity_pem: cert.map(|c| (c.cert.clone().into_bytes(), c.key.clone().into_bytes())),
        domain: Some("localhost".into()),
    });
    options
}

fn event(topic: &str) -> Event {
    Event::new(Topic::new(topic).unwrap(), bytes::Bytes::from_static(b"{}"))
        .with_content_type("application/json")
}

/// A TLS connection to the HTTP listener, trusting `pki`'s CA, presenting `cert`.
async fn https(
    server: &Server,
    pki: &Pki,
    cert: Option<&Pem>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.http).await?;
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

async fn https_get(
    server: &Server,
    pki: &Pki,
    cert: Option<&Pem>,
    token: Option<&str>,
    path: &str,
) -> std::io::Result<common::Response> {
    let mut stream = https(server, pki, cert).await?;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    stream
        .write_all(&request_with("GET", path, &headers, None))
        .await?;
    Ok(read_response(&mut stream, path).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_token_through_the_sdk_and_https() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let token = mint_token();
    let server = start(
        data.path(),
        pki.tls(ClientCerts::None, ClientCerts::None),
        &token,
    )
    .await;

    let client = Client::connect_with(sdk_options(&server, &pki, Some(&token), None))
        .await
        .unwrap();
    let ack = client.publish(event("game.table")).await.unwrap();
    assert_eq!(ack.seq, 1);
    let refused = client.publish(event("billing.charge")).await.unwrap_err();
    assert!(
        matches!(refused, BusError::PermissionDenied(_)),
        "{refused:?}"
    );

    // Over TLS without a token: who are you?
    let anonymous = Client::connect_with(sdk_options(&server, &pki, None, None))
        .await
        .unwrap();
    let refused = anonymous.publish(event("game.table")).await.unwrap_err();
    assert!(
        matches!(refused, BusError::Unauthenticated(_)),
        "{refused:?}"
    );

    // Plain text on a TLS port gets nowhere.
    let plain = Client::connect_with(ClientOptions {
        token: Some(token.clone()),
        ..ClientOptions::new(server.grpc.clone())
    })
    .await;
    match plain {
        Err(e) => assert!(matches!(e, BusError::Unavailable(_)), "{e:?}"),
        Ok(c) => assert!(c.publish(event("game.table")).await.is_err()),
    }

    // HTTPS: health for anyone, the rest by token.
    let health = https_get(&server, &pki, None, None, "/api/v1/health")
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    let topics = https_get(&server, &pki, None, None, "/api/v1/topics")
        .await
        .unwrap();
    assert_eq!(topics.status, 401, "{}", topics.body);
    let topics = https_get(&server, &pki, None, Some(&token), "/api/v1/topics")
        .await
        .unwrap();
    assert_eq!(topics.status, 403, "{}", topics.body);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_identities_and_bad_ones_are_refused() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let token = mint_token();
    let server = start(
        data.path(),
        pki.tls(ClientCerts::Required, ClientCerts::Optional),
        &token,
    )
    .await;

    // The certificate's CN names `owner`: no token needed, and owner's permissions apply.
    let client = Client::connect_with(sdk_options(&server, &pki, None, Some(&pki.owner)))
        .await
        .unwrap();
    client.publish(event("game.table")).await.unwrap();
    let refused = client.publish(event("billing.charge")).await.unwrap_err();
    assert!(
        matches!(refused, BusError::PermissionDenied(_)),
        "{refused:?}"
    );

    // No certificate, one from another CA, an expired one: the handshake fails.
    for (what, cert) in [
        ("no certificate", None),
        ("a foreign CA's", Some(&pki.foreign)),
        ("an expired one", Some(&pki.expired)),
    ] {
        let result =
            match Client::connect_with(sdk_options(&server, &pki, Some(&token), cert)).await {
                Err(e) => Err(e),
                Ok(c) => c.publish(event("game.table")).await.map(drop),
            };
        assert!(result.is_err(), "{what} was let in");
    }

    // HTTP asks for certificates but does not require them: a token will do, a foreign
    // certificate will not.
    let r = https_get(&server, &pki, Some(&pki.owner), None, "/api/v1/topics")
        .await
        .unwrap();
    assert_eq!(
        r.status, 403,
        "owner by certificate, without monitor: {}",
        r.body
    );
    let r = https_get(&server, &pki, None, None, "/api/v1/topics")
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    // With TLS 1.3 the client hears of its refused certificate when it reads.
    let answered = async {
        use tokio::io::AsyncReadExt as _;
        let mut stream = https(&server, &pki, Some(&pki.foreign)).await?;
        stream
            .write_all(&request_with("GET", "/api/v1/health", &[], None))
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    }
    .await;
    assert!(
        answered.as_ref().map_or(true, |raw| raw.is_empty()),
        "a foreign certificate over HTTP was answered: {answered:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_finishes_its_handshake_is_cut_and_holds_nobody_up() {
    use tokio::io::AsyncReadExt as _;
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let token = mint_token();
    let mut options = ServerOptions::default();
    options.connections.header_read_timeout = std::time::Duration::from_millis(300);
    let server = start_with(
        data.path(),
        pki.tls(ClientCerts::None, ClientCerts::None),
        &token,
        options,
    )
    .await;
    // Silent sockets on both listeners, and one that sends half a ClientHello.
    let mut silent = Vec::new();
    for addr in [server.grpc_addr, server.http, server.http] {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    silent[2]
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Meanwhile others are served.
    let client = Client::connect_with(sdk_options(&server, &pki, Some(&token), None))
        .await
        .unwrap();
    client.publish(event("game.table")).await.unwrap();
    let health = https_get(&server, &pki, None, None, "/api/v1/health")
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    // And the silent ones are closed by the server.
    for mut socket in silent {
        let mut buf = [0u8; 64];
        let read = soon(
            "the server to close a silent TLS peer",
            socket.read(&mut buf),
        )
        .await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    server.stop().await.unwrap();
}

/// The interpreter with grpcio: `$GANGLION_TEST_PYTHON`, the repository's `.venv`, or
/// `python3`.
fn python_with_grpc() -> Option<std::path::PathBuf> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("GANGLION_TEST_PYTHON").map(Into::into),
        Some(repo.join(".venv/bin/python")),
        Some("python3".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|python: &std::path::PathBuf| {
            std::process::Command::new(python)
                .args(["-c", "import grpc"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_publishes_over_mutual_tls_and_with_a_token() {
    use prost::Message as _;
    let Some(python) = python_with_grpc() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and no Python with grpcio (.ci/run installs it in .venv)");
        }
        eprintln!(
            "skipped: no Python with grpcio (pip install grpcio, or set GANGLION_TEST_PYTHON)"
        );
        return;
    };
    let pki = Pki::new();
    for (name, pem) in [("owner", &pki.owner), ("foreign", &pki.foreign)] {
        std::fs::write(pki.dir.path().join(format!("{name}.pem")), &pem.cert).unwrap();
        std::fs::write(pki.dir.path().join(format!("{name}.key")), &pem.key).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let token = mint_token();
    let server = start(
        data.path(),
        pki.tls(ClientCerts::Optional, ClientCerts::None),
        &token,
    )
    .await;
    let request = ganglion_proto::v1::PublishRequest {
        events: vec![ganglion_proto::v1::Event {
            topic: "game.python".into(),
            payload: b"{}".to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    // Raw bytes through a generic unary call: no generated stubs needed.
    let script = r#"
import sys, grpc
addr, ca, cert, key, token, request = sys.argv[1:7]
read = lambda p: open(p, "rb").read()
identity = (read(key), read(cert)) if cert != "-" else (None, None)
creds = grpc.ssl_channel_credentials(read(ca), *identity)
options = [("grpc.ssl_target_name_override", "localhost")]
with grpc.secure_channel(addr, creds, options) as channel:
    call = channel.unary_unary("/ganglion.v1.EventBus/Publish")
    metadata = [("authorization", "Bearer " + token)] if token != "-" else []
    try:
        reply = call(bytes.fromhex(request), metadata=metadata, timeout=10)
        print("OK", reply.hex())
    except grpc.RpcError as e:
        print("ERR", e.code().name)
"#;
    let dir = pki.dir.path().to_owned();
    let addr = server.grpc_addr.to_string();
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    let run = move |cert: &str, token: &str| {
        let (cert_file, key_file) = match cert {
            "-" => ("-".to_owned(), "-".to_owned()),
            name => (
                dir.join(format!("{name}.pem")).display().to_string(),
                dir.join(format!("{name}.key")).display().to_string(),
            ),
        };
        let output = std::process::Command::new(&python)
            .args(["-c", script])
            .arg(&addr)
            .arg(dir.join("ca.pem"))
            .args([cert_file, key_file, token.to_owned(), hex.clone()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            !stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let outcomes = soon(
        "the Python clients",
        tokio::task::spawn_blocking(move || {
            [
                run("owner", "-"),
                run("-", &token),
                run("-", "-"),
                run("foreign", &token),
            ]
        }),
    )
    .await
    .unwrap();
    let [by_cert, by_token, anonymous, foreign] = outcomes;
    for (what, got) in [("mTLS", &by_cert), ("a token", &by_token)] {
        let hex = got
            .strip_prefix("OK ")
            .unwrap_or_else(|| panic!("{what}: {got}"));
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let reply = ganglion_proto::v1::PublishResponse::decode(&bytes[..]).unwrap();
        assert_eq!(reply.acks.len(), 1, "{what}");
    }
    assert_eq!(anonymous, "ERR UNAUTHENTICATED");
    assert_eq!(
        foreign, "ERR UNAVAILABLE",
        "a foreign certificate fails the handshake"
    );
    server.stop().await.unwrap();
}
