//! Identities and permissions, end to end: every gRPC method and HTTP route refuses a
//! caller without credentials, with a wrong token, or without the permission, and
//! serves one with it; the lease-theft, queue-forgery and subscription-takeover attacks
//! fail; reserved topics are the server's; tokens rotate without a restart.

mod common;

use std::sync::Arc;

use common::{Server, bus_options, http_as, soon};
use ganglion_bus::Bus;
use ganglion_client::Credentials;
use ganglion_config::token::{mint_token, token_hash};
use ganglion_coordinator::lease::PoolSpec;
use ganglion_coordinator::quota::QuotaSpec;
use ganglion_coordinator::{Coordinator, CoordinatorConfig, QueueSpec};
use ganglion_core::SystemClock;
use ganglion_proto::v1;
use ganglion_proto::v1::coordinator_client::CoordinatorClient;
use ganglion_proto::v1::event_bus_client::EventBusClient;
use ganglion_server::ServerOptions;
use ganglion_server::auth::{AuthHandle, Policy};
use serde_json::json;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// One token per identity.
struct Tokens {
    owner: String,
    thief: String,
    worker: String,
    nobody: String,
    root: String,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens {
            owner: mint_token(),
            thief: mint_token(),
            worker: mint_token(),
            nobody: mint_token(),
            root: mint_token(),
        }
    }
}

fn auth_config(t: &Tokens) -> ganglion_config::AuthConfig {
    let game = json!({ "allow": ["game.>"] });
    let all = json!({ "allow": [">"] });
    let any = json!({ "allow": ["*"] });
    serde_json::from_value(json!({
        "identities": {
            "owner": {
                "tokens": [token_hash(&t.owner)],
                "permissions": {
                    "publish": game, "subscribe": game, "replay": game,
                    "durables": { "allow": ["owner-*"] },
                    "dlq": { "allow": ["owner-*"] },
                    "resources": {
                        "pools": { "allow": ["gpu"] },
                        "quotas": { "allow": ["claude"] },
                        "submit": { "allow": ["claude"] },
                    },
                },
            },
            "thief": {
                "tokens": [token_hash(&t.thief)],
                "permissions": {
                    "publish": game, "subscribe": game, "replay": game,
                    "durables": { "allow": ["thief-*"] },
                    "resources": {
                        "pools": { "allow": ["gpu"] },
                        "submit": { "allow": ["claude"] },
                        "work": { "allow": ["claude"] },
                    },
                },
            },
            "worker": {
                "tokens": [token_hash(&t.worker)],
                "permissions": { "resources": { "work": { "allow": ["claude"] } } },
            },
            "nobody": { "tokens": [token_hash(&t.nobody)] },
            "root": {
                "tokens": [token_hash(&t.root)],
                "permissions": {
                    "publish": all, "subscribe": all, "replay": all,
                    "durables": any, "dlq": any,
                    "resources": { "pools": any, "quotas": any, "submit": any, "work": any },
                    "monitor": true, "admin": true,
                },
            },
        },
    }))
    .unwrap()
}

async fn start(dir: &std::path::Path, tokens: &Tokens) -> (Server, Arc<AuthHandle>) {
    let bus = Bus::open(bus_options(dir)).unwrap();
    let coordinator = Coordinator::open(
        CoordinatorConfig {
            pools: vec![PoolSpec::gpus("gpu", &["0"])],
            quotas: vec![QuotaSpec::parse("claude", "100 per 1h").unwrap()],
            queues: vec![QueueSpec::new("claude", "claude")],
            ..CoordinatorConfig::default()
        },
        Arc::new(SystemClock),
        Some(&dir.join("coordinator")),
    )
    .unwrap();
    let auth = AuthHandle::new(Policy::compile(&auth_config(tokens), false).unwrap());
    let options = ServerOptions {
        auth: auth.clone(),
        ..ServerOptions::default()
    };
    let server = Server::start_with(bus, Arc::new(coordinator), options).await;
    (server, auth)
}

type Bus_ = EventBusClient<InterceptedService<Channel, Credentials>>;
type Coord = CoordinatorClient<InterceptedService<Channel, Credentials>>;

async fn clients(server: &Server, token: Option<&str>) -> (Bus_, Coord) {
    let channel = Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let credentials = Credentials::new(token).unwrap();
    (
        EventBusClient::with_interceptor(channel.clone(), credentials.clone()),
        CoordinatorClient::with_interceptor(channel, credentials),
    )
}

/// How a call ended, as far as access goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Unauthenticated,
    Denied,
    /// Anything else: the call reached the service.
    Served(String),
}

fn outcome<T>(result: Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Served("ok".into()),
        Err(s) if s.code() == Code::Unauthenticated => Outcome::Unauthenticated,
        Err(s) if s.code() == Code::PermissionDenied => Outcome::Denied,
        Err(s) => Outcome::Served(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn event(topic: &str) -> v1::Event {
    v1::Event {
        topic: topic.into(),
        payload: b"{}".to_vec().into(),
        content_type: "application/json".into(),
        ..Default::default()
    }
}

const GRPC_METHODS: [&str; 21] = [
    "Publish",
    "PublishStream",
    "Subscribe",
    "Replay",
    "ListTopics",
    "ListDeadLetters",
    "RedriveDeadLetters",
    "PurgeTopics",
    "DeleteTopics",
    "ListSubscriptions",
    "Acquire",
    "Renew",
    "Release",
    "CheckFence",
    "TryAcquirePermit",
    "AcquirePermit",
    "Submit",
    "GetResponse",
    "Take",
    "Complete",
    "Status",
];

/// Calls `method` as the holder of `token`, with arguments that `root` may use.
async fn grpc_call(server: &Server, token: Option<&str>, method: &str) -> Outcome {
    use tokio_stream::StreamExt as _;
    let (mut bus, mut coord) = clients(server, token).await;
    match method {
        "Publish" => outcome(
            bus.publish(v1::PublishRequest {
                events: vec![event("game.table")],
                ..Default::default()
            })
            .await,
        ),
        "PublishStream" => {
            let requests = tokio_stream::iter(vec![v1::PublishRequest {
                events: vec![event("game.table")],
                ..Default::default()
            }])
            .chain(tokio_stream::pending());
            match bus.publish_stream(requests).await {
                Err(s) => outcome::<()>(Err(s)),
                Ok(response) => {
                    let first = soon("a publish response", response.into_inner().message())
                        .await
                        .unwrap()
                        .unwrap();
                    match first.error.map(|e| e.code) {
                        Some(code) if code == "UNAUTHENTICATED" => Outcome::Unauthenticated,
                        Some(code) if code == "PERMISSION_DENIED" => Outcome::Denied,
                        other => Outcome::Served(format!("{other:?}")),
                    }
                }
            }
        }
        "Subscribe" => {
            let open = v1::SubscribeRequest {
                request: Some(v1::subscribe_request::Request::Open(v1::OpenSubscription {
                    pattern: "game.>".into(),
                    ..Default::default()
                })),
            };
            let requests = tokio_stream::iter(vec![open]).chain(tokio_stream::pending());
            outcome(bus.subscribe(requests).await)
        }
        "Replay" => outcome(
            bus.replay(v1::ReplayRequest {
                pattern: "game.>".into(),
                ..Default::default()
            })
            .await,
        ),
        "ListTopics" => outcome(bus.list_topics(v1::ListTopicsRequest {}).await),
        "ListDeadLetters" => outcome(
            bus.list_dead_letters(v1::ListDeadLettersRequest {
                subscription: "owner-a".into(),
                limit: 10,
            })
            .await,
        ),
        "RedriveDeadLetters" => outcome(
            bus.redrive_dead_letters(v1::RedriveDeadLettersRequest {
                subscription: "owner-a".into(),
                seqs: vec![],
            })
            .await,
        ),
        "PurgeTopics" => outcome(
            bus.purge_topics(v1::PurgeTopicsRequest {
                pattern: "scratch.>".into(),
            })
            .await,
        ),
        "DeleteTopics" => outcome(
            bus.delete_topics(v1::DeleteTopicsRequest {
                pattern: "scratch.>".into(),
            })
            .await,
        ),
        "ListSubscriptions" => outcome(
            bus.list_subscriptions(v1::ListSubscriptionsRequest {})
                .await,
        ),
        "Acquire" => outcome(
            coord
                .acquire(v1::AcquireRequest {
                    pool: "gpu".into(),
                    wait_ms: 0,
                    ..Default::default()
                })
                .await,
        ),
        "Renew" => outcome(coord.renew(v1::RenewRequest { lease_id: 999 }).await),
        "Release" => outcome(coord.release(v1::ReleaseRequest { lease_id: 999 }).await),
        "CheckFence" => outcome(
            coord
                .check_fence(v1::CheckFenceRequest {
                    pool: "gpu".into(),
                    fencing_token: 1,
                })
                .await,
        ),
        "TryAcquirePermit" => outcome(
            coord
                .try_acquire_permit(v1::PermitRequest {
                    quota: "claude".into(),
                    ..Default::default()
                })
                .await,
        ),
        "AcquirePermit" => outcome(
            coord
                .acquire_permit(v1::PermitRequest {
                    quota: "claude".into(),
                    ..Default::default()
                })
                .await,
        ),
        "Submit" => outcome(
            coord
                .submit(v1::SubmitRequest {
                    queue: "claude".into(),
                    request: b"hello".to_vec().into(),
                    ..Default::default()
                })
                .await,
        ),
        "GetResponse" => outcome(
            coord
                .get_response(v1::GetResponseRequest {
                    queue: "claude".into(),
                    request_id: 999,
                    wait_ms: 0,
                })
                .await,
        ),
        "Take" => outcome(
            coord
                .take(v1::TakeRequest {
                    queue: "claude".into(),
                    wait_ms: 0,
                    ..Default::default()
                })
                .await,
        ),
        "Complete" => outcome(
            coord
                .complete(v1::CompleteRequest {
                    queue: "claude".into(),
                    request_id: 999,
                    result: None,
                })
                .await,
        ),
        "Status" => outcome(coord.status(v1::StatusRequest {}).await),
        other => panic!("no call for {other}"),
    }
}

/// Every HTTP route but health: method, path, body.
const HTTP_ROUTES: [(&str, &str, Option<&str>); 18] = [
    (
        "POST",
        "/api/v1/events",
        Some(r#"{"topic":"game.table","payload":{}}"#),
    ),
    ("GET", "/api/v1/events?pattern=game.%3E", None),
    ("GET", "/api/v1/stream?pattern=game.%3E", None),
    ("GET", "/api/v1/topics", None),
    (
        "POST",
        "/api/v1/topics/purge",
        Some(r#"{"pattern":"scratch.>"}"#),
    ),
    (
        "POST",
        "/api/v1/topics/delete",
        Some(r#"{"pattern":"scratch.>"}"#),
    ),
    ("GET", "/api/v1/subscriptions", None),
    ("GET", "/api/v1/metrics", None),
    ("GET", "/metrics", None),
    ("GET", "/api/v1/resources", None),
    (
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"wait_ms":0}"#),
    ),
    ("POST", "/api/v1/leases/999/renew", None),
    ("POST", "/api/v1/leases/999/release", None),
    ("POST", "/api/v1/quotas/claude/permits", Some("{}")),
    (
        "POST",
        "/api/v1/queues/claude/requests",
        Some(r#"{"request":"hi"}"#),
    ),
    ("GET", "/api/v1/queues/claude/requests/999", None),
    (
        "POST",
        "/api/v1/queues/claude/take",
        Some(r#"{"wait_ms":0}"#),
    ),
    (
        "POST",
        "/api/v1/queues/claude/requests/999/complete",
        Some("{}"),
    ),
];

async fn http_call(
    server: &Server,
    token: Option<&str>,
    route: (&str, &str, Option<&str>),
) -> Outcome {
    let (method, path, body) = route;
    let response = http_as(server.http, token, method, path, body).await;
    match response.status {
        401 => Outcome::Unauthenticated,
        403 => Outcome::Denied,
        status => Outcome::Served(format!("{status} {}", response.body)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_and_route_refuses_the_unauthorised_and_serves_the_authorised() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let (server, _auth) = start(dir.path(), &tokens).await;
    let wrong = mint_token();
    /// What a caller should get.
    type Expected = fn(&Outcome) -> bool;
    let refused_unknown: Expected = |o| *o == Outcome::Unauthenticated;
    let refused_denied: Expected = |o| *o == Outcome::Denied;
    let served: Expected = |o| matches!(o, Outcome::Served(_));
    let callers = [
        ("anonymous", None, refused_unknown),
        ("a wrong token", Some(wrong.as_str()), refused_unknown),
        (
            "an identity without the permission",
            Some(tokens.nobody.as_str()),
            refused_denied,
        ),
        ("an identity with it", Some(tokens.root.as_str()), served),
    ];
    let mut checked = 0;
    let mut wrongly = Vec::new();
    for (who, token, expected) in &callers {
        for method in GRPC_METHODS {
            let got = grpc_call(&server, *token, method).await;
            checked += 1;
            if !expected(&got) {
                wrongly.push(format!("gRPC {method} as {who}: {got:?}"));
            }
        }
        for route in HTTP_ROUTES {
            let got = http_call(&server, *token, route).await;
            checked += 1;
            if !expected(&got) {
                wrongly.push(format!("HTTP {} {} as {who}: {got:?}", route.0, route.1));
            }
        }
    }
    assert!(
        wrongly.is_empty(),
        "{} of {checked} calls judged wrongly:\n{}",
        wrongly.len(),
        wrongly.join("\n")
    );
    assert_eq!(checked, 4 * (21 + 18));

    // Health answers everyone, and says nothing private.
    for token in [None, Some(wrong.as_str())] {
        let health = http_as(server.http, token, "GET", "/api/v1/health", None).await;
        assert_eq!(health.status, 200, "{}", health.body);
    }
    // Refusals are counted by kind.
    let metrics = http_as(server.http, Some(&tokens.root), "GET", "/metrics", None).await;
    let count = |line: &str| {
        metrics
            .body
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {line} in the scrape"))
    };
    assert_eq!(
        count("ganglion_auth_refused_total{reason=\"unauthenticated\"}"),
        2 * 39
    );
    assert!(count("ganglion_auth_refused_total{reason=\"permission_denied\"}") >= 39);
    server.stop().await.unwrap();
}

/// A lease acquired over HTTP as `token`: its id.
async fn http_lease(server: &Server, token: &str) -> u64 {
    let r = http_as(
        server.http,
        Some(token),
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"wait_ms":0}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_or_an_admin_renews_or_releases_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let (server, _auth) = start(dir.path(), &tokens).await;
    let id = http_lease(&server, &tokens.owner).await;

    // The thief may lease the same pool, and sees the id; it still cannot touch the lease.
    for verb in ["release", "renew"] {
        let path = format!("/api/v1/leases/{id}/{verb}");
        let r = http_as(server.http, Some(&tokens.thief), "POST", &path, None).await;
        assert_eq!(r.status, 403, "{verb}: {}", r.body);
        assert!(
            r.body.contains("only its holder or an admin may"),
            "{}",
            r.body
        );
    }
    let (_, mut thief) = clients(&server, Some(&tokens.thief)).await;
    let status = thief
        .release(v1::ReleaseRequest { lease_id: id })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Still held by its owner: the thief waits in vain.
    let r = http_as(
        server.http,
        Some(&tokens.thief),
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"wait_ms":0}"#),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    // A holder cannot be claimed for another identity either.
    let r = http_as(
        server.http,
        Some(&tokens.thief),
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"holder":"owner","wait_ms":0}"#),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // The owner renews; an admin may release another's lease, and that is audited.
    let r = http_as(
        server.http,
        Some(&tokens.owner),
        "POST",
        &format!("/api/v1/leases/{id}/renew"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["holder"], "owner");
    let r = http_as(
        server.http,
        Some(&tokens.root),
        "POST",
        &format!("/api/v1/leases/{id}/release"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let metrics = http_as(server.http, Some(&tokens.root), "GET", "/metrics", None).await;
    assert!(
        metrics
            .body
            .contains("ganglion_audit_admin_actions_total 1"),
        "{}",
        metrics.body
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_worker_that_took_a_request_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let (server, _auth) = start(dir.path(), &tokens).await;
    let r = http_as(
        server.http,
        Some(&tokens.owner),
        "POST",
        "/api/v1/queues/claude/requests",
        Some(r#"{"request":"what next?"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.json()["request_id"].as_u64().unwrap();

    // Anonymous and unpermitted callers cannot take it.
    let r = http_as(
        server.http,
        None,
        "POST",
        "/api/v1/queues/claude/take",
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http_as(
        server.http,
        Some(&tokens.owner),
        "POST",
        "/api/v1/queues/claude/take",
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    let r = http_as(
        server.http,
        Some(&tokens.worker),
        "POST",
        "/api/v1/queues/claude/take",
        Some(r#"{"wait_ms":1000}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["request_id"].as_u64(), Some(id));
    assert_eq!(r.json()["component"], "owner");

    // Another worker of the queue may not forge the answer, over HTTP or gRPC.
    let complete = format!("/api/v1/queues/claude/requests/{id}/complete");
    let r = http_as(
        server.http,
        Some(&tokens.thief),
        "POST",
        &complete,
        Some(r#"{"response":"forged"}"#),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let (_, mut thief) = clients(&server, Some(&tokens.thief)).await;
    let status = thief
        .complete(v1::CompleteRequest {
            queue: "claude".into(),
            request_id: id,
            result: Some(v1::complete_request::Result::Response(
                b"forged".to_vec().into(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let r = http_as(
        server.http,
        Some(&tokens.worker),
        "POST",
        &complete,
        Some(r#"{"response":"the answer"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The answer is the submitter's: another submitter to the queue may not read it.
    let response = format!("/api/v1/queues/claude/requests/{id}");
    let r = http_as(server.http, Some(&tokens.thief), "GET", &response, None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http_as(server.http, Some(&tokens.owner), "GET", &response, None).await;
    assert_eq!(r.json()["response"], "the answer", "{}", r.body);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_is_joined_only_by_identities_allowed_its_name() {
    use tokio_stream::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let (server, _auth) = start(dir.path(), &tokens).await;
    let open = |durable: &str, pattern: &str| v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Open(v1::OpenSubscription {
            pattern: pattern.into(),
            options: Some(v1::SubscribeOptions {
                durable: durable.into(),
                ..Default::default()
            }),
        })),
    };
    let (mut owner, _) = clients(&server, Some(&tokens.owner)).await;
    let owned = owner
        .subscribe(
            tokio_stream::iter(vec![open("owner-analytics", "game.>")])
                .chain(tokio_stream::pending()),
        )
        .await
        .unwrap();
    drop(owned);
    let (mut thief, _) = clients(&server, Some(&tokens.thief)).await;
    for pattern in ["game.>", "game.x"] {
        let status = thief
            .subscribe(
                tokio_stream::iter(vec![open("owner-analytics", pattern)])
                    .chain(tokio_stream::pending()),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(!status.message().contains("game.>"), "{}", status.message());
    }
    // The thief's own durables are fine; a pattern beyond its permission is not.
    let own = thief
        .subscribe(
            tokio_stream::iter(vec![open("thief-1", "game.>")]).chain(tokio_stream::pending()),
        )
        .await;
    assert!(own.is_ok(), "{own:?}");
    let status = thief
        .subscribe(tokio_stream::iter(vec![open("thief-2", ">")]).chain(tokio_stream::pending()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_and_dead_letter_topics_are_written_only_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let (server, _auth) = start(dir.path(), &tokens).await;
    for topic in [
        "coordinator.lease.granted",
        "dlq.owner-analytics",
        "coordinator",
    ] {
        let body = format!(r#"{{"topic":"{topic}","payload":{{}}}}"#);
        let r = http_as(
            server.http,
            Some(&tokens.root),
            "POST",
            "/api/v1/events",
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 403, "{topic}: {}", r.body);
        assert!(r.body.contains("written only by the server"), "{}", r.body);
    }
    // Publishing outside an identity's topics names the topic.
    let r = http_as(
        server.http,
        Some(&tokens.owner),
        "POST",
        "/api/v1/events",
        Some(r#"{"topic":"billing.charge","payload":{}}"#),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.body
            .contains("identity owner may not publish billing.charge"),
        "{}",
        r.body
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new();
    let (server, auth) = start(dir.path(), &tokens).await;
    let publish = |token: String| {
        let addr = server.http;
        async move {
            http_as(
                addr,
                Some(&token),
                "POST",
                "/api/v1/events",
                Some(r#"{"topic":"game.t","payload":{}}"#),
            )
            .await
            .status
        }
    };
    assert_eq!(publish(tokens.owner.clone()).await, 200);

    // Roll over: the new token beside the old, then the old removed.
    let new = mint_token();
    let mut config = auth_config(&tokens);
    let owner = config.identities.get_mut("owner").unwrap();
    owner.tokens.push(token_hash(&new));
    auth.set(Policy::compile(&config, false).unwrap());
    assert_eq!(publish(tokens.owner.clone()).await, 200);
    assert_eq!(publish(new.clone()).await, 200);

    let owner = config.identities.get_mut("owner").unwrap();
    owner.tokens.remove(0);
    auth.set(Policy::compile(&config, false).unwrap());
    assert_eq!(publish(tokens.owner.clone()).await, 401);
    assert_eq!(publish(new).await, 200);
    server.stop().await.unwrap();
}

#[test]
fn bad_auth_config_is_refused_naming_the_key() {
    let error = Policy::compile(
        &serde_json::from_value(json!({
            "identities": { "a": { "tokens": ["sha256:nothex"] } }
        }))
        .unwrap(),
        false,
    )
    .unwrap_err();
    assert_eq!(error.0, "auth.identities.a.tokens.0");
    let error = Policy::compile(
        &serde_json::from_value(json!({
            "identities": { "a": { "permissions": { "publish": { "allow": ["game.>.x"] } } } }
        }))
        .unwrap(),
        false,
    )
    .unwrap_err();
    assert_eq!(error.0, "auth.identities.a.permissions.publish.allow.0");
}
