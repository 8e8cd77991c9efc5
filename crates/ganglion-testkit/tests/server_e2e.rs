//! The server end to end: every gRPC method and HTTP route, over real sockets, with
//! their error paths; the client's coalescing and reconnection; graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, Sse, bus_options, http, http_bytes, soon};
use ganglion_bus::Bus;
use ganglion_client::Client;
use ganglion_core::bus::{EventBus, StartPosition, SubscribeOptions};
use ganglion_core::{BusError, Event, Pattern, Topic};
use ganglion_proto::v1;
use ganglion_server::{Limits, ServerOptions};
use serde_json::json;

fn topic(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

fn pattern(s: &str) -> Pattern {
    Pattern::new(s).unwrap()
}

fn open_bus(dir: &std::path::Path) -> Bus {
    Bus::open(bus_options(dir)).unwrap()
}

/// The value of one series (name and labels, as written) in a Prometheus scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn field_of(error: &BusError) -> &str {
    error
        .field()
        .unwrap_or_else(|| panic!("no field in {error:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_publish_subscribe_settle_dead_letter_redrive_replay_and_topics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_bus(dir.path()), ServerOptions::default()).await;
    let client = soon("connect", Client::connect(server.grpc.clone()))
        .await
        .unwrap();

    let options = SubscribeOptions {
        durable: Some("scorer".into()),
        max_deliveries: 2,
        ..SubscribeOptions::default()
    };
    let mut sub = soon(
        "subscribe",
        client.subscribe(pattern("game.*.update"), options),
    )
    .await
    .unwrap();
    assert_eq!(sub.name(), "scorer");

    // Unary Publish through the generated client.
    let mut rpc = client.rpc();
    let response = rpc
        .publish(v1::PublishRequest {
            events: vec![v1::Event {
                topic: "game.state.update".into(),
                r#type: "GameStateUpdate".into(),
                payload: Bytes::from_static(b"{\"round\":1}"),
                headers: [("idempotency_key".to_owned(), "k1".to_owned())].into(),
                ..Default::default()
            }],
            request_id: 7,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.request_id, 7);
    let first = &response.acks[0];
    assert!(first.seq > 0 && !first.duplicate && !first.id.is_empty());

    // The same idempotency key through the client's PublishStream: a duplicate.
    let again = client
        .publish(
            Event::new(topic("game.state.update"), "ignored").with_header("idempotency_key", "k1"),
        )
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);

    // A batch through the stream.
    let acks = client
        .publish_batch(vec![
            Event::new(topic("game.poison.update"), "bad"),
            Event::new(topic("game.other.thing"), "not matched"),
        ])
        .await
        .unwrap();
    assert_eq!(acks.len(), 2);
    assert!(acks[0].seq > first.seq && acks[1].seq > acks[0].seq);

    // Deliveries: ack the first, nack the poison once (attempt 2 follows), then term it.
    let d = soon("first delivery", sub.next()).await.unwrap();
    assert_eq!(d.event().unwrap().seq, first.seq);
    assert_eq!(d.event().unwrap().event_type, "GameStateUpdate");
    assert_eq!(d.attempt(), 1);
    d.ack();
    let d = soon("poison", sub.next()).await.unwrap();
    assert_eq!(d.event().unwrap().topic.as_str(), "game.poison.update");
    d.nack(Some(Duration::from_millis(10)), "cannot parse");
    let d = soon("poison again", sub.next()).await.unwrap();
    assert_eq!(d.attempt(), 2);
    d.term("still cannot parse");

    // ListDeadLetters, then RedriveDeadLetters back to the subscription.
    let letters = soon("dead letter", async {
        loop {
            let letters = client.dead_letters("scorer".into(), 10).await.unwrap();
            if !letters.is_empty() {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].origin_topic, "game.poison.update");
    assert_eq!(letters[0].origin_seq, acks[0].seq);
    assert_eq!(letters[0].last_error, "still cannot parse");
    assert_eq!(client.redrive("scorer".into(), vec![]).await.unwrap(), 1);
    let d = soon("redriven", sub.next()).await.unwrap();
    assert_eq!(d.event().unwrap().payload, Bytes::from_static(b"bad"));
    d.ack();

    // Replay from a sequence, and from a time.
    let replayed = client
        .replay(pattern("game.>"), StartPosition::Seq(acks[0].seq), 10)
        .await
        .unwrap();
    assert_eq!(
        replayed
            .iter()
            .map(|e| e.topic.as_str())
            .take(2)
            .collect::<Vec<_>>(),
        ["game.poison.update", "game.other.thing"]
    );
    let since = client
        .replay(
            pattern("game.state.*"),
            StartPosition::Time(std::time::UNIX_EPOCH + Duration::from_secs(1)),
            10,
        )
        .await
        .unwrap();
    assert_eq!(since.len(), 1);

    // ListTopics counts what was published.
    let topics = client.topics().await.unwrap();
    let names: Vec<&str> = topics.iter().map(|t| t.topic.as_str()).collect();
    assert!(
        names.contains(&"game.state.update") && names.contains(&"dlq.scorer"),
        "{names:?}"
    );

    // Per-subscription metrics: 4 deliveries (first, poison twice, redriven), 2 acks,
    // 1 nack, 1 redelivery, 1 dead letter. Acks travel on the stream: poll.
    let scrape = soon("the subscription's counters", async {
        loop {
            let body = http(server.http, "GET", "/metrics", None).await.body;
            if sample(
                &body,
                "ganglion_bus_acked_events_total{subscription=\"scorer\"}",
            ) == Some(2.0)
            {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for (series, value) in [
        (
            "ganglion_bus_delivered_events_total{subscription=\"scorer\"}",
            4.0,
        ),
        (
            "ganglion_bus_redelivered_events_total{subscription=\"scorer\"}",
            1.0,
        ),
        (
            "ganglion_bus_nacked_events_total{subscription=\"scorer\"}",
            1.0,
        ),
        (
            "ganglion_bus_dead_lettered_events_total{subscription=\"scorer\"}",
            1.0,
        ),
        (
            "ganglion_bus_subscription_in_flight_events{subscription=\"scorer\"}",
            0.0,
        ),
        (
            "ganglion_bus_subscription_members{subscription=\"scorer\"}",
            1.0,
        ),
        // Three published, one redriven back; the dead letter and its redrive marker.
        ("ganglion_bus_published_events_total{prefix=\"game\"}", 4.0),
        ("ganglion_bus_published_events_total{prefix=\"dlq\"}", 2.0),
    ] {
        assert_eq!(
            sample(&scrape, series),
            Some(value),
            "{series} in\n{scrape}"
        );
    }
    let latency = sample(&scrape, "ganglion_bus_delivery_latency_seconds_count").unwrap();
    assert!(latency >= 2.0, "first deliveries are sampled: {latency}");

    // Unsubscribe by id ends the stream.
    client.unsubscribe(sub.id()).await.unwrap();
    assert!(soon("end", sub.next()).await.is_none());
    assert!(matches!(
        client.unsubscribe(sub.id()).await,
        Err(BusError::NotFound { .. })
    ));

    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_name_the_field_and_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        limits: Limits {
            max_subscriptions_per_connection: 2,
            max_replay_events: 50,
            ..Limits::default()
        },
        ..ServerOptions::default()
    };
    let server = Server::start(open_bus(dir.path()), options).await;
    let client = Client::connect(server.grpc.clone()).await.unwrap();
    let mut rpc = client.rpc();

    // A bad topic in a unary publish names the event.
    let status = rpc
        .publish(v1::PublishRequest {
            events: vec![
                v1::Event {
                    topic: "ok.one".into(),
                    ..Default::default()
                },
                v1::Event {
                    topic: "bad..topic".into(),
                    ..Default::default()
                },
            ],
            request_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status
            .metadata()
            .get("ganglion-field")
            .unwrap()
            .to_str()
            .unwrap(),
        "events[1].topic"
    );

    // Too large an event (the test bus allows 64 KiB).
    let err = client
        .publish(Event::new(topic("big.one"), vec![0u8; 100 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "events[0].payload", "{err:?}");

    // Concurrent publishers coalesced into one frame: only the bad one fails.
    let good = client.publish_batch(vec![Event::new(topic("ok.two"), "fine")]);
    let bad = client.publish(Event::new(topic("big.two"), vec![0u8; 100 * 1024]));
    let also_good = client.publish(Event::new(topic("ok.three"), "fine"));
    let (good, bad, also_good) = tokio::join!(good, bad, also_good);
    assert!(good.is_ok() && also_good.is_ok(), "{good:?} {also_good:?}");
    assert!(bad.is_err());

    // Bad subscribe options and patterns.
    let err = client
        .subscribe(
            pattern("a.>"),
            SubscribeOptions {
                durable: Some("has space".into()),
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "durable");
    let open = |pattern: &str| v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Open(v1::OpenSubscription {
            pattern: pattern.into(),
            options: None,
        })),
    };
    let status = rpc
        .subscribe(tokio_stream::iter(vec![open("a.>.b")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("ganglion-field").unwrap(),
        "open.pattern"
    );
    let status = rpc
        .subscribe(tokio_stream::iter(vec![v1::SubscribeRequest {
            request: Some(v1::subscribe_request::Request::Ack(v1::Ack {
                seqs: vec![1],
            })),
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("open"), "{}", status.message());

    // Replay: both positions, or too many events.
    let status = rpc
        .replay(v1::ReplayRequest {
            pattern: ">".into(),
            from_seq: 1,
            since_ms: 1,
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.metadata().get("ganglion-field").unwrap(), "since_ms");
    let status = rpc
        .replay(v1::ReplayRequest {
            pattern: ">".into(),
            from_seq: 1,
            since_ms: 0,
            limit: 51,
        })
        .await
        .unwrap_err();
    assert_eq!(status.metadata().get("ganglion-field").unwrap(), "limit");

    // Two subscriptions per connection, then RESOURCE_EXHAUSTED; closing one frees a slot.
    let first = client
        .subscribe(pattern("s.one"), SubscribeOptions::default())
        .await
        .unwrap();
    let _second = client
        .subscribe(pattern("s.two"), SubscribeOptions::default())
        .await
        .unwrap();
    let err = client
        .subscribe(pattern("s.three"), SubscribeOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::ResourceExhausted { .. }), "{err:?}");
    drop(first);
    soon("a freed slot", async {
        loop {
            match client
                .subscribe(pattern("s.three"), SubscribeOptions::default())
                .await
            {
                Ok(sub) => return sub,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;

    // Dead letters of a subscription that never existed: none.
    assert!(
        client
            .dead_letters("nobody".into(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_need_nothing_else() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_bus(dir.path()), ServerOptions::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "ganglion.v1.EventBus"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["ganglion.v1.EventBus", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "ganglion.v1.EventBus".into(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );

    // The v1alpha protocol too (Python's grpcio-reflection, older grpcurl).
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let response = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("not a service list: {response:?}");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "ganglion.v1.Coordinator"),
            "{list:?}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_answer_and_errors_have_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions {
        limits: Limits {
            max_http_body_bytes: 200 * 1024,
            max_sse_clients: 1,
            ..Limits::default()
        },
        ..ServerOptions::default()
    };
    let server = Server::start(open_bus(dir.path()), options).await;
    let addr = server.http;

    let r = http(addr, "GET", "/api/v1/health", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["components"]["log"]["status"], "ok");
    assert_eq!(r.json()["engine"], "embedded", "health names the engine");

    // A live stream first, so it sees what is published next.
    let (status, mut sse) = Sse::open(addr, "/api/v1/stream?pattern=game.%3E").await;
    assert_eq!(status, 200);
    // The SSE limit is 1: a second stream is refused with 429 and a Retry-After.
    let r = http(addr, "GET", "/api/v1/stream?pattern=game.%3E", None).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "RESOURCE_EXHAUSTED");
    assert!(r.header("retry-after").is_some());

    let r = http(
        addr,
        "POST",
        "/api/v1/events",
        Some(r#"{"topic":"game.state.update","payload":{"round":3},"type":"GameStateUpdate","headers":{"correlation_id":"c-1"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seq = r.json()["seq"].as_u64().unwrap();
    assert!(seq > 0 && r.json()["duplicate"] == json!(false));

    let live: serde_json::Value = serde_json::from_str(&sse.next_data("event").await).unwrap();
    assert_eq!(live["seq"], seq);
    assert_eq!(live["payload"], json!({"round": 3}));
    assert_eq!(live["headers"]["correlation_id"], "c-1");

    let r = http(
        addr,
        "POST",
        "/api/v1/events",
        Some(r#"{"events":[{"topic":"game.a.b","payload":[1,2]},{"topic":"game.bin","payload_base64":"AAEC","content_type":"application/octet-stream"}]}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["acks"].as_array().unwrap().len(), 2);

    // Replay from a sequence and by age; binary payloads come back as base64.
    let r = http(
        addr,
        "GET",
        &format!("/api/v1/events?pattern=game.%3E&from_seq={seq}&limit=10"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["payload"], json!([1, 2]));
    assert_eq!(events[2]["payload_base64"], "AAEC");
    let r = http(
        addr,
        "GET",
        "/api/v1/events?pattern=game.state.*&since=1h",
        None,
    )
    .await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 1);

    let r = http(addr, "GET", "/api/v1/topics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("game.state.update"));

    // Errors: 400 with the field, 413, 404.
    let cases = [
        (r#"{"topic":"game..x","payload":1}"#, 400, Some("topic")),
        (
            r#"{"events":[{"topic":"ok.x"},{"topic":"ok.y","headers":{"n":1}}]}"#,
            400,
            Some("events[1].headers.n"),
        ),
        (r#"{"topic":"ok.x","colour":"red"}"#, 400, Some("colour")),
        (r#"{"payload":1}"#, 400, Some("topic")),
        (r#"not json"#, 400, Some("body")),
        (r#"[1,2]"#, 400, Some("body")),
    ];
    for (body, status, field) in cases {
        let r = http(addr, "POST", "/api/v1/events", Some(body)).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(
            r.json()["error"]["field"].as_str(),
            field,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.json()["error"]["code"], "INVALID_ARGUMENT");
    }
    // An event over the bus's 64 KiB limit, in a body under the HTTP limit: 413.
    let big = format!(
        r#"{{"topic":"big.x","payload":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let r = http(addr, "POST", "/api/v1/events", Some(&big)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"]["field"], "payload");
    // A body over the HTTP limit: 413 before parsing.
    let huge = vec![b' '; 300 * 1024];
    let r = http_bytes(addr, "POST", "/api/v1/events", Some(&huge)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "TOO_LARGE");

    let r = http(addr, "GET", "/api/v1/events?pattern=a.%3E.b", None).await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("pattern"))
    );
    let r = http(addr, "GET", "/api/v1/events?from_seq=1&since=5m", None).await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("since"))
    );
    let r = http(addr, "GET", "/api/v1/events?since=yesterday", None).await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("since"))
    );
    let r = http(addr, "GET", "/api/v1/nothing-here", None).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );

    // Metrics: the JSON summary and the Prometheus text count what happened.
    let r = http(addr, "GET", "/api/v1/metrics", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["events"]["published"], 3);
    assert!(r.json()["refused"]["INVALID_ARGUMENT"].as_u64().unwrap() >= 5);
    assert_eq!(r.json()["subscriptions"]["sse_clients"], 1);
    let consumers = r.json()["subscriptions"]["consumers"].clone();
    assert_eq!(consumers.as_array().map(Vec::len), Some(1), "{consumers}");
    assert_eq!(consumers[0]["members"], 1, "the SSE stream's subscription");
    let r = http(addr, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        r.body
            .contains("\nganglion_server_published_events_total 3\n"),
        "{}",
        r.body
    );
    assert!(r.body.contains("# TYPE ganglion_log_fsyncs_total counter"));

    drop(sse);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_answers_503_and_not_serving() {
    use ganglion_log::storage::MemStorage;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let storage = std::sync::Arc::new(MemStorage::new());
    let bus = Bus::open_on_storage(
        bus_options(std::path::Path::new("/unused")),
        storage.clone(),
    )
    .unwrap();
    let server = Server::start(bus, ServerOptions::default()).await;
    let client = Client::connect(server.grpc.clone()).await.unwrap();
    client
        .publish(Event::new(topic("ok.before"), "x"))
        .await
        .unwrap();

    storage.fail_syncs_after(0);
    let err = client
        .publish(Event::new(topic("ok.after"), "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Unavailable(_)), "{err:?}");

    let r = http(
        server.http,
        "POST",
        "/api/v1/events",
        Some(r#"{"topic":"ok.http","payload":1}"#),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "UNAVAILABLE");
    // Both refusals (gRPC and HTTP) are counted as UNAVAILABLE, not as bad input.
    let r = http(server.http, "GET", "/api/v1/metrics", None).await;
    assert_eq!(r.json()["refused"]["UNAVAILABLE"], 2, "{}", r.body);
    assert_eq!(r.json()["refused"]["INVALID_ARGUMENT"], 0, "{}", r.body);
    let r = http(server.http, "GET", "/api/v1/health", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["components"]["log"]["status"], "failed");

    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    soon("NOT_SERVING", async {
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: "ganglion.v1.EventBus".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == ServingStatus::NotServing as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(client);
    // Shutting down a bus whose log failed reports the failure rather than hiding it.
    let _ = server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_not_serving_until_space_returns() {
    use ganglion_log::storage::MemStorage;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let storage = std::sync::Arc::new(MemStorage::new());
    let bus = Bus::open_on_storage(
        bus_options(std::path::Path::new("/unused")),
        storage.clone(),
    )
    .unwrap();
    let server = Server::start(bus, ServerOptions::default()).await;
    let client = Client::connect(server.grpc.clone()).await.unwrap();
    client.publish(Event::new(topic("a.b"), "x")).await.unwrap();
    storage.set_capacity(Some(0));
    let err = client
        .publish(Event::new(topic("a.b"), "y"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    let r = http(server.http, "GET", "/api/v1/health", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["components"]["log"]["status"], "no_space");

    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = |serving: ServingStatus| {
        let mut health = health.clone();
        async move {
            loop {
                let status = health
                    .check(HealthCheckRequest {
                        service: "ganglion.v1.EventBus".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status;
                if status == serving as i32 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    soon("NOT_SERVING", status(ServingStatus::NotServing)).await;
    storage.set_capacity(None);
    soon("SERVING again", status(ServingStatus::Serving)).await;
    let r = http(server.http, "GET", "/api/v1/health", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_a_reason_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_bus(dir.path()), ServerOptions::default()).await;
    let client = Client::connect(server.grpc.clone()).await.unwrap();
    let mut sub = client
        .subscribe(pattern("keep.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let (_, mut sse) = Sse::open(server.http, "/api/v1/stream?pattern=keep.%3E").await;
    let ack = client
        .publish(Event::new(topic("keep.me"), "safe"))
        .await
        .unwrap();
    soon("delivery", sub.next()).await.unwrap().ack();
    sse.next_data("event").await;

    server.stop().await.unwrap();
    assert!(soon("the stream to end", sub.next()).await.is_none());
    assert_eq!(
        sub.closed_reason().as_deref(),
        Some("the server is shutting down")
    );

    let bus = common::reopen_bus(dir.path()).await;
    let kept = bus
        .replay(pattern("keep.>"), StartPosition::All, 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].seq, ack.seq);
}

/// An ack the client sends just as the server begins to stop is applied, not dropped:
/// the stream stops delivering, waits for what its client holds, then closes; the
/// durable resumes after the acked event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_acks_of_what_a_subscriber_holds() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_bus(dir.path()), ServerOptions::default()).await;
    let client = Client::connect(server.grpc.clone()).await.unwrap();
    let durable = || SubscribeOptions {
        durable: Some("holder".into()),
        ..SubscribeOptions::default()
    };
    let mut sub = client.subscribe(pattern("h.>"), durable()).await.unwrap();
    client
        .publish(Event::new(topic("h.one"), "1"))
        .await
        .unwrap();
    let held = soon("one", sub.next()).await.unwrap();

    // Health turns NOT_SERVING when shutdown begins: watched on a stream opened before.
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "ganglion.v1.EventBus".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let stopping = tokio::spawn(server.stop());
    soon("shutdown to begin", async {
        while let Some(status) = health.message().await.unwrap() {
            if status.status == ServingStatus::NotServing as i32 {
                return;
            }
        }
        panic!("the health stream ended before NOT_SERVING");
    })
    .await;
    drop(health); // an open watch would hold the server until its drain timeout
    held.ack();
    assert!(soon("the stream to end", sub.next()).await.is_none());
    soon("the server to stop", stopping).await.unwrap().unwrap();

    let bus = common::reopen_bus(dir.path()).await;
    let mut sub = bus.subscribe(pattern("h.>"), durable()).await.unwrap();
    let two = bus.publish(Event::new(topic("h.two"), "2")).await.unwrap();
    let next = soon("two", sub.next()).await.unwrap();
    assert_eq!(
        next.event().unwrap().seq,
        two.seq,
        "the acked event came again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_and_a_durable_subscription_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_bus(dir.path()), ServerOptions::default()).await;
    let addr = server.grpc_addr;
    let mut options = ganglion_client::ClientOptions::new(server.grpc.clone());
    options.reconnect_initial = Duration::from_millis(20);
    options.reconnect_max = Duration::from_millis(200);
    let client = Client::connect_with(options).await.unwrap();
    let durable = SubscribeOptions {
        durable: Some("resumer".into()),
        ..SubscribeOptions::default()
    };
    let mut sub = client.subscribe(pattern("r.>"), durable).await.unwrap();
    client
        .publish(Event::new(topic("r.one"), "1"))
        .await
        .unwrap();
    soon("one", sub.next()).await.unwrap().ack();
    // Acks travel on the stream: wait until the subscription has applied it.
    soon("the ack", async {
        loop {
            let body = http(server.http, "GET", "/metrics", None).await.body;
            let acked = "ganglion_bus_acked_events_total{subscription=\"resumer\"}";
            if sample(&body, acked) == Some(1.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    server.stop().await.unwrap();
    // The stream ended with the shutdown reason: the subscription is closed, not
    // reconnecting (the server said why).
    assert!(soon("closed", sub.next()).await.is_none());

    let server = Server::start_on(
        addr,
        common::reopen_bus(dir.path()).await,
        ServerOptions::default(),
    )
    .await;
    // Publishing reconnects on its own (the first attempt may race the restart).
    let ack = soon("publish after restart", async {
        loop {
            match client.publish(Event::new(topic("r.two"), "2")).await {
                Ok(ack) => return ack,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    // The durable subscription resumes after its last ack: "two", not "one" again.
    let mut sub = client
        .subscribe(
            pattern("r.>"),
            SubscribeOptions {
                durable: Some("resumer".into()),
                ..SubscribeOptions::default()
            },
        )
        .await
        .unwrap();
    let d = soon("two", sub.next()).await.unwrap();
    assert_eq!(d.event().unwrap().seq, ack.seq);
    d.ack();
    drop(sub);
    drop(client);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_listed_connected_or_not_and_topics_can_be_purged_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(open_bus(dir.path()), ServerOptions::default()).await;
    let client = Client::connect(server.grpc.clone()).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rpc = v1::event_bus_client::EventBusClient::new(channel);

    // A durable with a custom dead-letter topic: one dead letter, then it goes away.
    let options = SubscribeOptions {
        durable: Some("scorer".into()),
        max_deliveries: 1,
        dead_letter_topic: Some(topic("failures.scorer")),
        ..SubscribeOptions::default()
    };
    let mut sub = client.subscribe(pattern("game.>"), options).await.unwrap();
    for i in 0..3 {
        client
            .publish(Event::new(topic("game.move"), i.to_string()))
            .await
            .unwrap();
    }
    soon("a delivery", sub.next())
        .await
        .unwrap()
        .term("bad move");
    soon("the dead letter", async {
        loop {
            let r = http(server.http, "GET", "/metrics", None).await;
            if sample(
                &r.body,
                "ganglion_bus_dead_letter_events{subscription=\"scorer\"}",
            ) == Some(1.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(sub);

    // Listed while away, with its backlog, over gRPC and HTTP, and in /metrics.
    let listed = soon("a parked durable", async {
        loop {
            let list = rpc
                .list_subscriptions(v1::ListSubscriptionsRequest {})
                .await
                .unwrap()
                .into_inner()
                .subscriptions;
            if let Some(s) = list
                .into_iter()
                .find(|s| s.name == "scorer" && s.members == 0)
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(listed.durable && listed.lag >= 2, "{listed:?}");
    assert_eq!(listed.dead_letter_topic, "failures.scorer");
    assert_eq!(listed.dead_letters, 1);
    let r = http(server.http, "GET", "/api/v1/subscriptions", None).await;
    let scorer = r.json()["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "scorer")
        .cloned()
        .unwrap();
    assert_eq!(
        (scorer["members"].clone(), scorer["dead_letters"].clone()),
        (json!(0), json!(1))
    );
    let r = http(server.http, "GET", "/metrics", None).await;
    assert!(
        sample(
            &r.body,
            "ganglion_bus_subscription_lag_records{subscription=\"scorer\"}"
        )
        .is_some_and(|lag| lag >= 2.0),
        "the away durable's lag stays in the scrape"
    );

    // Purge over gRPC: the events are gone from replays; later ones are kept.
    let purged = rpc
        .purge_topics(v1::PurgeTopicsRequest {
            pattern: "game.>".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((purged.topics, purged.events), (1, 3));
    let replay = client
        .replay(pattern("game.>"), StartPosition::All, 100)
        .await
        .unwrap();
    assert!(replay.is_empty(), "{replay:?}");
    client
        .publish(Event::new(topic("game.move"), "after"))
        .await
        .unwrap();
    assert_eq!(
        client
            .replay(pattern("game.>"), StartPosition::All, 100)
            .await
            .unwrap()
            .len(),
        1
    );

    // Delete over HTTP: the topic is forgotten.
    let r = http(
        server.http,
        "POST",
        "/api/v1/topics/delete",
        Some(r#"{"pattern": "failures.>"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["topics"], json!(["failures.scorer"]));
    let r = http(server.http, "GET", "/api/v1/topics", None).await;
    assert!(!r.body.contains("failures.scorer"), "{}", r.body);
    let r = http(
        server.http,
        "POST",
        "/api/v1/topics/purge",
        Some(r#"{"pattern": "a..b"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].clone()),
        (400, json!("pattern"))
    );
    drop(client);
    server.stop().await.unwrap();
}
