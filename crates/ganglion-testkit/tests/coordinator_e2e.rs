//! The coordinator over gRPC: leases held by a stream (and released when its process is
//! SIGKILLed), fencing, permits, the request queue, status, and their errors.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, bus_options, soon};
use ganglion_bus::Bus;
use ganglion_coordinator::lease::PoolSpec;
use ganglion_coordinator::quota::QuotaSpec;
use ganglion_coordinator::{Coordinator, CoordinatorConfig, QueueSpec};
use ganglion_core::SystemClock;
use ganglion_proto::v1;
use ganglion_proto::v1::coordinator_client::CoordinatorClient;
use ganglion_server::ServerOptions;
use tonic::transport::Channel;

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        pools: vec![PoolSpec::gpus("gpu", &["0"])],
        quotas: vec![QuotaSpec::parse("claude", "2 per 1h").unwrap()],
        queues: vec![QueueSpec::new("claude", "claude")],
        ..CoordinatorConfig::default()
    }
}

async fn start(dir: &std::path::Path) -> Server {
    let bus = Bus::open(bus_options(dir)).unwrap();
    let coordinator = Coordinator::open(
        config(),
        Arc::new(SystemClock),
        Some(&dir.join("coordinator")),
    )
    .unwrap();
    Server::start_with(bus, Arc::new(coordinator), ServerOptions::default()).await
}

async fn client(server: &Server) -> CoordinatorClient<Channel> {
    CoordinatorClient::connect(server.grpc.clone())
        .await
        .unwrap()
}

fn acquire(holder: &str, wait_ms: u64) -> v1::AcquireRequest {
    v1::AcquireRequest {
        pool: "gpu".into(),
        holder: holder.into(),
        wait_ms,
        ..Default::default()
    }
}

async fn granted(stream: &mut tonic::Streaming<v1::LeaseUpdate>) -> v1::Lease {
    match soon("a grant", stream.message())
        .await
        .unwrap()
        .unwrap()
        .update
    {
        Some(v1::lease_update::Update::Granted(lease)) => lease,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_fences_permits_queue_and_status_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;

    // A lease held by its stream; the GPU's device id comes with it.
    let mut held = c.acquire(acquire("trainer", 0)).await.unwrap().into_inner();
    let lease = granted(&mut held).await;
    assert_eq!(lease.cuda_visible_devices, "0");
    let fence = |token| v1::CheckFenceRequest {
        pool: "gpu".into(),
        fencing_token: token,
    };
    assert!(
        c.check_fence(fence(lease.fencing_token))
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    let busy = c.acquire(acquire("advisor", 0)).await.unwrap_err();
    assert_eq!(busy.code(), tonic::Code::DeadlineExceeded);

    // Ending the stream releases it; the next holder gets a newer token.
    drop(held);
    let mut next = soon("the next grant", async {
        loop {
            match c.acquire(acquire("advisor", 2000)).await {
                Ok(stream) => return stream.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let second = granted(&mut next).await;
    assert!(second.fencing_token > lease.fencing_token);
    let stale = c
        .check_fence(fence(lease.fencing_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.valid && !stale.reason.is_empty());
    c.renew(v1::RenewRequest {
        lease_id: second.id,
    })
    .await
    .unwrap();
    c.release(v1::ReleaseRequest {
        lease_id: second.id,
    })
    .await
    .unwrap();
    // Its stream says so, then ends.
    match soon("the release on the stream", next.message())
        .await
        .unwrap()
        .and_then(|u| u.update)
    {
        Some(v1::lease_update::Update::Released(r)) => assert!(!r.reason.is_empty()),
        other => panic!("expected the release, got {other:?}"),
    }
    assert!(
        soon("the stream's end", next.message())
            .await
            .unwrap()
            .is_none()
    );
    let err = c
        .release(v1::ReleaseRequest {
            lease_id: second.id,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .acquire(v1::AcquireRequest {
            pool: "tpu".into(),
            holder: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .acquire(v1::AcquireRequest {
            amount: 5,
            ..acquire("x", 0)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.metadata().get("ganglion-field").unwrap(), "amount");

    // Permits: 2 per hour, then RESOURCE_EXHAUSTED with a retry-after.
    let permit = |component: &str| v1::PermitRequest {
        quota: "claude".into(),
        component: component.into(),
        ..Default::default()
    };
    assert_eq!(
        c.try_acquire_permit(permit("advisor"))
            .await
            .unwrap()
            .into_inner()
            .remaining,
        1
    );
    assert_eq!(
        c.acquire_permit(permit("advisor"))
            .await
            .unwrap()
            .into_inner()
            .remaining,
        0
    );
    let denied = c.try_acquire_permit(permit("advisor")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::ResourceExhausted);
    let retry: u64 = denied
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 3_500_000, "{retry}");
    let err = c
        .try_acquire_permit(v1::PermitRequest {
            quota: "nope".into(),
            ..permit("a")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The queue: the quota is used up, so a fallback answers at once, degraded; a
    // request without one waits, and no worker can take it within its wait.
    let submitted = c
        .submit(v1::SubmitRequest {
            queue: "claude".into(),
            request: Bytes::from_static(b"q"),
            fallback: Some(Bytes::from_static(b"safe")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let answer = c
        .get_response(v1::GetResponseRequest {
            queue: "claude".into(),
            request_id: submitted.request_id,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.ready && answer.degraded);
    assert_eq!(
        answer.result,
        Some(v1::get_response_response::Result::Response(
            Bytes::from_static(b"safe")
        ))
    );
    let waiting = c
        .submit(v1::SubmitRequest {
            queue: "claude".into(),
            request: Bytes::from_static(b"q2"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pending = c
        .get_response(v1::GetResponseRequest {
            queue: "claude".into(),
            request_id: waiting.request_id,
            wait_ms: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!pending.ready);
    let taken = c
        .take(v1::TakeRequest {
            queue: "claude".into(),
            worker: "w".into(),
            wait_ms: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!taken.taken, "the quota grants no call for an hour");
    let err = c
        .complete(v1::CompleteRequest {
            queue: "claude".into(),
            request_id: 999,
            result: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let status = c.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.pools[0].name, "gpu");
    assert_eq!(status.pools[0].free, 1);
    assert_eq!(status.quotas[0].used, 2);
    assert!(status.quotas[0].near_limit);
    assert_eq!(status.queues[0].depth, 1);

    drop(c);
    server.stop().await.unwrap();
}

/// Run by the test below as a child process: holds the GPU over a stream until killed.
#[allow(clippy::print_stdout)] // the child's report to its parent
#[tokio::test]
#[ignore = "a child process of the tests of holders that die or pause"]
async fn child_holder() {
    let url = std::env::var("GANGLION_TEST_SERVER").expect("run by its parent test");
    let mut c = CoordinatorClient::connect(url).await.unwrap();
    let mut stream = c.acquire(acquire("doomed", 0)).await.unwrap().into_inner();
    let lease = granted(&mut stream).await;
    println!("GRANTED {}", lease.fencing_token);
    loop {
        let _ = stream.message().await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_sigkill_loses_its_lease_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (mut child, token) = holder_child(&server).await;

    let mut c = client(&server).await;
    let waiter = {
        let mut c = c.clone();
        tokio::spawn(async move {
            let mut stream = c
                .acquire(acquire("next", 30_000))
                .await
                .unwrap()
                .into_inner();
            let lease = granted(&mut stream).await;
            (lease, Instant::now(), stream)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "the child still holds the GPU");

    let killed = Instant::now();
    signal(&child, "-KILL");
    let _ = child.wait();
    let (lease, granted_at, _stream) = soon("the waiter's grant", waiter).await.unwrap();
    let took = granted_at.duration_since(killed);
    assert!(
        took < Duration::from_secs(1),
        "the next waiter waited {took:?} after the holder died"
    );
    assert!(lease.fencing_token > token);
    let stale = c
        .check_fence(v1::CheckFenceRequest {
            pool: "gpu".into(),
            fencing_token: token,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.valid);
    drop(_stream);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_message_limit_applies_to_the_coordinator_too() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(bus_options(dir.path())).unwrap();
    let coordinator = Coordinator::open(config(), Arc::new(SystemClock), None).unwrap();
    let options = ServerOptions {
        limits: ganglion_server::Limits {
            max_grpc_message_bytes: 256 * 1024,
            ..Default::default()
        },
        ..ServerOptions::default()
    };
    let server = Server::start_with(bus, Arc::new(coordinator), options).await;
    // The client may send what it likes; the server's limit decides.
    let mut c = client(&server)
        .await
        .max_encoding_message_size(64 * 1024 * 1024);
    let submit = |size: usize| v1::SubmitRequest {
        queue: "claude".into(),
        request: Bytes::from(vec![b'x'; size]),
        ..Default::default()
    };
    c.submit(submit(200 * 1024)).await.unwrap();
    let refused = c.submit(submit(400 * 1024)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused}");
    server.stop().await.unwrap();
}

/// Starts `child_holder` against `server`; returns it and its lease's fencing token.
async fn holder_child(server: &Server) -> (std::process::Child, u64) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_holder", "--nocapture"])
        .env("GANGLION_TEST_SERVER", &server.grpc)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let token: u64 = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("GRANTED ").map(|t| t.parse().unwrap()))
            .expect("the child reports its grant")
    })
    .await
    .unwrap();
    (child, token)
}

fn signal(child: &std::process::Child, signal: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_with_sigstop_loses_its_lease_within_its_ttl() {
    // A paused process keeps its TCP connection (the kernel still acknowledges), so
    // only the HTTP/2 keepalive can tell: unanswered pings close the connection, and
    // with it the stream that held the lease.
    let ttl = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(bus_options(dir.path())).unwrap();
    let config = CoordinatorConfig {
        leases: ganglion_coordinator::lease::PoolsOptions {
            ttl,
            ..Default::default()
        },
        ..config()
    };
    let coordinator = Coordinator::open(config, Arc::new(SystemClock), None).unwrap();
    let options = ServerOptions {
        connections: ganglion_server::ConnectionLimits {
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..ServerOptions::default()
    };
    let server = Server::start_with(bus, Arc::new(coordinator), options).await;
    let (mut child, token) = holder_child(&server).await;

    let c = client(&server).await;
    let waiter = {
        let mut c = c.clone();
        tokio::spawn(async move {
            let mut stream = c
                .acquire(acquire("next", 30_000))
                .await
                .unwrap()
                .into_inner();
            let lease = granted(&mut stream).await;
            (lease, Instant::now(), stream)
        })
    };
    // Held well past the TTL while the holder is alive: the stream keeps it.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert!(
        !waiter.is_finished(),
        "the live holder kept the GPU past its TTL"
    );

    let paused = Instant::now();
    signal(&child, "-STOP");
    let (lease, granted_at, _stream) = soon("the waiter's grant", waiter).await.unwrap();
    let took = granted_at.duration_since(paused);
    assert!(
        took <= ttl + Duration::from_secs(1),
        "the paused holder kept the GPU {took:?} (TTL {ttl:?})"
    );
    assert!(lease.fencing_token > token);
    signal(&child, "-KILL");
    let _ = child.wait();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_resources_routes() {
    use common::http;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.http;

    let r = http(
        addr,
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"holder":"trainer","priority":3}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let lease = r.json();
    assert_eq!(lease["cuda_visible_devices"], "0");
    let id = lease["id"].as_u64().unwrap();

    let r = http(addr, "GET", "/api/v1/resources", None).await;
    assert_eq!(r.status, 200);
    let resources = r.json();
    assert_eq!(resources["pools"][0]["free"], 0);
    assert_eq!(resources["pools"][0]["holders"][0]["holder"], "trainer");
    assert_eq!(resources["quotas"][0]["name"], "claude");
    assert_eq!(resources["queues"][0]["quota"], "claude");

    // Busy: 429 after the wait; unknown pool 404; bad bodies 400 naming the field.
    let r = http(
        addr,
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"holder":"advisor","wait_ms":10}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (429, json!("DEADLINE_EXCEEDED"))
    );
    let r = http(
        addr,
        "POST",
        "/api/v1/resources/tpu/acquire",
        Some(r#"{"holder":"x"}"#),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = http(
        addr,
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"holder":"x","colour":1}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, json!("colour"))
    );
    let r = http(
        addr,
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"priority":1}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, json!("holder"))
    );

    let r = http(addr, "POST", &format!("/api/v1/leases/{id}/renew"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(addr, "POST", &format!("/api/v1/leases/{id}/release"), None).await;
    assert_eq!(r.status, 200);
    let r = http(addr, "POST", &format!("/api/v1/leases/{id}/renew"), None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (409, json!("STALE"))
    );
    let r = http(addr, "POST", "/api/v1/leases/abc/release", None).await;
    assert_eq!(r.status, 400);

    // Permits: two, then 429 with a Retry-After of about an hour.
    for remaining in [1, 0] {
        let r = http(
            addr,
            "POST",
            "/api/v1/quotas/claude/permits",
            Some(r#"{"component":"advisor"}"#),
        )
        .await;
        assert_eq!(
            (r.status, r.json()["remaining"].clone()),
            (200, json!(remaining)),
            "{}",
            r.body
        );
    }
    let r = http(
        addr,
        "POST",
        "/api/v1/quotas/claude/permits",
        Some(r#"{"component":"advisor"}"#),
    )
    .await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "{retry}");
    let r = http(
        addr,
        "POST",
        "/api/v1/quotas/nope/permits",
        Some(r#"{"component":"a"}"#),
    )
    .await;
    assert_eq!(r.status, 404);

    // Quotas and pools in the Prometheus text and the JSON summary.
    let r = http(addr, "GET", "/metrics", None).await;
    for line in [
        "ganglion_coordinator_quota_used_calls{quota=\"claude\"} 2",
        "ganglion_coordinator_quota_remaining_calls{quota=\"claude\"} 0",
        "ganglion_coordinator_quota_near_limit{quota=\"claude\"} 1",
        "ganglion_coordinator_pool_free_units{pool=\"gpu\"} 1",
        "ganglion_coordinator_pool_capacity_units{pool=\"gpu\"} 1",
        // Granted lease requests, each with its time in line.
        "ganglion_coordinator_lease_wait_seconds_count{pool=\"gpu\"} 1",
    ] {
        assert!(
            r.body.contains(&format!("\n{line}\n")),
            "{line} missing from:\n{}",
            r.body
        );
    }
    let r = http(addr, "GET", "/api/v1/metrics", None).await;
    assert_eq!(r.json()["coordinator"]["quotas"][0]["used"], 2);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_http_gets_a_json_error_naming_the_field() {
    use common::http;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.http;
    let field = |r: &common::Response| r.json()["error"]["field"].as_str().map(str::to_owned);

    // Every field is checked, also those this request does not use.
    let r = http(
        addr,
        "POST",
        "/api/v1/quotas/claude/permits",
        Some(r#"{"component":"advisor","priority":"high"}"#),
    )
    .await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (400, Some("priority")),
        "{}",
        r.body
    );
    // A field the route does not have is named, with the ones it does.
    let r = http(
        addr,
        "POST",
        "/api/v1/queues/claude/take",
        Some(r#"{"worker":"w","colour":"red"}"#),
    )
    .await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (400, Some("colour")),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("worker") && r.body.contains("wait_ms"),
        "{}",
        r.body
    );
    // A request given twice, as JSON and as base64.
    let r = http(
        addr,
        "POST",
        "/api/v1/queues/claude/requests",
        Some(r#"{"request":{"q":1},"request_base64":"eHg="}"#),
    )
    .await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (400, Some("request_base64")),
        "{}",
        r.body
    );
    // A body that is not an object.
    let r = http(addr, "POST", "/api/v1/queues/claude/take", Some("[1]")).await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (400, Some("body")),
        "{}",
        r.body
    );
    // A lease id is digits only.
    let r = http(addr, "POST", "/api/v1/leases/+1/release", None).await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (400, Some("id")),
        "{}",
        r.body
    );
    // A path that is not valid percent-encoded UTF-8 gets JSON too.
    let r = http(addr, "POST", "/api/v1/leases/%FF/release", None).await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (400, Some("path")),
        "{}",
        r.body
    );
    let r = http(addr, "DELETE", "/api/v1/resources", None).await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (405, Some("method")),
        "{}",
        r.body
    );
    // Waits have a ceiling.
    let r = http(
        addr,
        "POST",
        "/api/v1/resources/gpu/acquire",
        Some(r#"{"holder":"x","wait_ms":86400000}"#),
    )
    .await;
    assert_eq!(
        (r.status, field(&r).as_deref()),
        (400, Some("wait_ms")),
        "{}",
        r.body
    );
    // A long name is not echoed back whole.
    let long = "p".repeat(4000);
    let r = http(
        addr,
        "POST",
        &format!("/api/v1/resources/{long}/acquire"),
        Some(r#"{"holder":"x"}"#),
    )
    .await;
    assert_eq!(r.status, 404, "{}", &r.body[..200.min(r.body.len())]);
    assert!(r.body.len() < 300, "{} bytes of error", r.body.len());
    server.stop().await.unwrap();
}

/// A call that outlives the drain timeout (a permit waited for over an hour) is cut:
/// `serve` returns, the caller gets an error rather than a hang, and calls on other
/// connections, served by other gRPC threads, are cut with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_still_open_after_the_drain_timeout_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(bus_options(dir.path())).unwrap();
    let coordinator = Coordinator::open(config(), Arc::new(SystemClock), None).unwrap();
    let options = ServerOptions {
        drain_timeout: Duration::from_millis(200),
        grpc_threads: 2,
        ..ServerOptions::default()
    };
    let server = Server::start_with(bus, Arc::new(coordinator), options).await;
    let permit = v1::PermitRequest {
        quota: "claude".into(),
        component: "advisor".into(),
        wait_ms: 3_600_000,
        ..Default::default()
    };
    let mut first = client(&server).await;
    for _ in 0..2 {
        first.try_acquire_permit(permit.clone()).await.unwrap();
    }
    // Two waiters on two connections: the acceptor hands them to different threads.
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let mut c = client(&server).await;
        let permit = permit.clone();
        waiters.push(tokio::spawn(async move { c.acquire_permit(permit).await }));
    }
    // Both are waiting in line before shutdown begins.
    let quota = || async {
        let status = first.clone().status(v1::StatusRequest::default()).await;
        status.unwrap().into_inner().quotas[0].waiters
    };
    soon("both waiters in line", async {
        while quota().await < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    server.stop().await.unwrap();
    for waiter in waiters {
        let cut = soon("the waiter to be cut", waiter).await.unwrap();
        assert!(cut.is_err(), "a cut call ends with an error: {cut:?}");
    }
}

/// Each step of a lease is published on the bus as `coordinator.lease.<step>`, in the
/// order it happened, whichever gRPC thread made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_steps_are_published_on_the_bus_in_order() {
    use ganglion_core::Pattern;
    use ganglion_core::bus::{EventBus as _, SubscribeOptions};

    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(bus_options(dir.path())).unwrap();
    let mut steps = bus
        .subscribe(
            Pattern::new("coordinator.lease.>").unwrap(),
            SubscribeOptions::default(),
        )
        .await
        .unwrap();
    let coordinator = Coordinator::open(config(), Arc::new(SystemClock), None).unwrap();
    let options = ServerOptions {
        grpc_threads: 2,
        ..ServerOptions::default()
    };
    let server = Server::start_with(bus, Arc::new(coordinator), options).await;
    // The holder and the releaser use two connections, so two threads.
    let mut holder = client(&server).await;
    let mut other = client(&server).await;
    let mut leases = Vec::new();
    for round in 0..3 {
        let mut stream = holder
            .acquire(acquire(&format!("trainer-{round}"), 0))
            .await
            .unwrap()
            .into_inner();
        let lease = granted(&mut stream).await;
        other
            .release(v1::ReleaseRequest { lease_id: lease.id })
            .await
            .unwrap();
        leases.push(lease.id);
    }

    let mut seen = Vec::new();
    while seen.len() < 6 {
        let delivery = soon("a lease event", steps.next()).await.unwrap();
        for event in delivery.events() {
            let body: serde_json::Value = serde_json::from_slice(&event.event.payload).unwrap();
            seen.push((
                event.event.topic.to_string(),
                event.event.event_type.clone(),
                body["lease"].as_u64().unwrap(),
            ));
        }
    }
    let expected: Vec<_> = leases
        .iter()
        .flat_map(|&id| {
            [
                (
                    "coordinator.lease.granted".to_owned(),
                    "LeaseGranted".to_owned(),
                    id,
                ),
                (
                    "coordinator.lease.released".to_owned(),
                    "LeaseReleased".to_owned(),
                    id,
                ),
            ]
        })
        .collect();
    assert_eq!(seen, expected);
    server.stop().await.unwrap();
}

/// A caller that gives up (its call is cancelled) leaves the line: a waiting permit or
/// lease request is withdrawn, so nothing is later granted to no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_leaves_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let permit = v1::PermitRequest {
        quota: "claude".into(),
        component: "advisor".into(),
        wait_ms: 3_600_000,
        ..Default::default()
    };
    for _ in 0..2 {
        c.try_acquire_permit(permit.clone()).await.unwrap();
    }
    let mut holder = c.acquire(acquire("trainer", 0)).await.unwrap().into_inner();
    granted(&mut holder).await;

    let waiting = |c: &CoordinatorClient<Channel>| {
        let mut c = c.clone();
        async move {
            let status = c.status(v1::StatusRequest::default()).await.unwrap();
            let status = status.into_inner();
            let gpu = status.pools.iter().find(|p| p.name == "gpu").unwrap();
            (status.quotas[0].waiters, gpu.waiters)
        }
    };
    let permit_call = tokio::spawn({
        let mut c = c.clone();
        async move { c.acquire_permit(permit).await }
    });
    let lease_call = tokio::spawn({
        let mut c = c.clone();
        async move { c.acquire(acquire("advisor", 3_600_000)).await }
    });
    soon("both callers in line", async {
        while waiting(&c).await != (1, 1) {
            tokio::task::yield_now().await;
        }
    })
    .await;

    permit_call.abort();
    lease_call.abort();
    soon("both callers out of line", async {
        while waiting(&c).await != (0, 0) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    drop(holder);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_queue_over_http_survives_a_restart() {
    use common::http;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.http;

    // One JSON request from the advisor, one binary one from analytics.
    let r = http(
        addr,
        "POST",
        "/api/v1/queues/claude/requests",
        Some(r#"{"request":{"prompt":"next move?"},"component":"advisor","priority":5}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.json()["request_id"].as_u64().unwrap();
    let r = http(
        addr,
        "POST",
        "/api/v1/queues/claude/requests",
        Some(r#"{"request_base64":"AP8A","component":"analytics","idempotency_key":"k1"}"#),
    )
    .await;
    let second = r.json()["request_id"].as_u64().unwrap();
    // The same idempotency key gives the same id.
    let r = http(
        addr,
        "POST",
        "/api/v1/queues/claude/requests",
        Some(r#"{"request_base64":"AP8A","component":"analytics","idempotency_key":"k1"}"#),
    )
    .await;
    assert_eq!(r.json()["request_id"], json!(second));
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/queues/claude/requests/{first}"),
        None,
    )
    .await;
    assert_eq!(r.json()["ready"], false, "{}", r.body);

    // Taken by a worker that then goes away with the server.
    let r = http(
        addr,
        "POST",
        "/api/v1/queues/claude/take",
        Some(r#"{"worker":"w1"}"#),
    )
    .await;
    let taken = r.json();
    assert_eq!(
        (
            taken["taken"].clone(),
            taken["request_id"].clone(),
            taken["component"].clone()
        ),
        (json!(true), json!(first), json!("advisor")),
        "the higher priority first: {}",
        r.body
    );
    assert_eq!(taken["request"], json!({"prompt": "next move?"}));
    server.stop().await.unwrap();

    // After the restart both requests are still there, the taken one back in line
    // first. Taking it again draws a second call from the quota (the first worker may
    // have made its call), which leaves none for the other request this hour.
    let server = start(dir.path()).await;
    let addr = server.http;
    let take = |wait_ms: u64| {
        let body = format!(r#"{{"worker":"w2","wait_ms":{wait_ms}}}"#);
        async move {
            http(addr, "POST", "/api/v1/queues/claude/take", Some(&body))
                .await
                .json()
        }
    };
    let again = take(1000).await;
    assert_eq!(
        (again["request_id"].clone(), again["request"].clone()),
        (json!(first), json!({"prompt": "next move?"})),
    );
    assert_eq!(take(20).await["taken"], false);
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/queues/claude/requests/{second}"),
        None,
    )
    .await;
    assert_eq!((r.status, r.json()["ready"].clone()), (200, json!(false)));
    let r = http(
        addr,
        "POST",
        &format!("/api/v1/queues/claude/requests/{first}/complete"),
        Some(r#"{"response":{"move":"e4"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/queues/claude/requests/{first}?wait_ms=1000"),
        None,
    )
    .await;
    let answer = r.json();
    assert_eq!(
        (answer["ready"].clone(), answer["response"].clone()),
        (json!(true), json!({"move": "e4"})),
        "{}",
        r.body
    );
    // The answer itself survives a restart (within its retention).
    server.stop().await.unwrap();
    let server = start(dir.path()).await;
    let addr = server.http;
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/queues/claude/requests/{first}"),
        None,
    )
    .await;
    assert_eq!(r.json()["response"], json!({"move": "e4"}), "{}", r.body);

    // Errors name what is wrong.
    for (method, path, body, status, field) in [
        (
            "POST",
            "/api/v1/queues/claude/requests",
            r#"{}"#,
            400,
            "request",
        ),
        (
            "POST",
            "/api/v1/queues/claude/requests",
            r#"{"request":1,"request_base64":"AA=="}"#,
            400,
            "request_base64",
        ),
        (
            "POST",
            "/api/v1/queues/claude/requests",
            r#"{"request_base64":"%%%"}"#,
            400,
            "request_base64",
        ),
        (
            "POST",
            "/api/v1/queues/claude/requests",
            r#"{"request":1,"component":"a b"}"#,
            400,
            "component",
        ),
        ("POST", "/api/v1/queues/claude/take", r#"{}"#, 400, "worker"),
        (
            "POST",
            "/api/v1/queues/claude/requests/1/complete",
            r#"{"response":1,"error":"x"}"#,
            400,
            "error",
        ),
    ] {
        let r = http(addr, method, path, Some(body)).await;
        assert_eq!(
            (r.status, r.json()["error"]["field"].clone()),
            (status, json!(field)),
            "{method} {path} {body}: {}",
            r.body
        );
    }
    let r = http(addr, "GET", "/api/v1/queues/claude/requests/+1", None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http(addr, "GET", "/api/v1/queues/nope/requests/1", None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http(addr, "GET", "/api/v1/queues/claude/requests/999", None).await;
    assert_eq!(r.status, 404, "{}", r.body);

    server.stop().await.unwrap();
}
