//! The server over `TestBus` instead of the embedded engine: it needs only the `Engine`
//! contract, and the virtual clock drives what the server's clients see of time (an ack
//! deadline here) with no sleeping.

mod common;

use std::time::Duration;

use common::{Server, http, soon};
use ganglion_bus::testing::TestBus;
use ganglion_client::Client;
use ganglion_core::bus::{EventBus, SubscribeOptions};
use ganglion_core::{Engine, Event, Pattern, Topic};
use ganglion_server::ServerOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_over_test_bus_records_what_clients_publish_and_reports_its_engine() {
    let bus = TestBus::new();
    let server = Server::start(bus.clone(), ServerOptions::default()).await;
    let client = soon("connect", Client::connect(server.grpc.clone()))
        .await
        .unwrap();

    let topic = Topic::new("game.state.update").unwrap();
    let ack = client
        .publish(Event::new(topic.clone(), "{\"round\":1}"))
        .await
        .unwrap();
    let body = r#"{"topic":"game.state.update","payload":{"round":2}}"#;
    let r = http(server.http, "POST", "/api/v1/events", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let published = bus.published_on("game.>");
    assert_eq!(published.len(), 2, "both publishes went through the engine");
    assert_eq!(published[0].seq, ack.seq);
    assert_eq!(published[1].payload, "{\"round\":2}");

    let health = http(server.http, "GET", "/api/v1/health", None).await;
    assert_eq!(health.json()["engine"], "test");
    assert_eq!(health.json()["components"]["log"]["next_seq"], 3);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_subscribers_ack_deadline_passes_on_the_virtual_clock() {
    let bus = TestBus::new();
    let server = Server::start(bus.clone(), ServerOptions::default()).await;
    let client = soon("connect", Client::connect(server.grpc.clone()))
        .await
        .unwrap();
    let options = SubscribeOptions {
        durable: Some("slow".into()),
        ack_deadline: Duration::from_secs(30),
        ..SubscribeOptions::default()
    };
    let mut sub = soon(
        "subscribe",
        client.subscribe(Pattern::new("jobs.>").unwrap(), options),
    )
    .await
    .unwrap();
    bus.publish(Event::new(Topic::new("jobs.render").unwrap(), "frame 1"))
        .await
        .unwrap();
    let first = soon("the first delivery", sub.next()).await.unwrap();
    assert_eq!(first.attempt(), 1);

    // Not settled: on the virtual clock the deadline passes at once; once the engine has
    // counted it (and set the backoff from that moment), the backoff (at most 120 ms
    // with jitter) does too.
    bus.clock().advance(Duration::from_secs(30));
    soon("the deadline to be counted", async {
        while Engine::subscriptions(&bus)
            .iter()
            .all(|s| s.name != "slow" || s.ack_timeouts == 0)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bus.clock().advance(Duration::from_millis(120));
    let again = soon("the redelivery", sub.next()).await.unwrap();
    assert_eq!(again.attempt(), 2);
    assert_eq!(again.event().unwrap().payload, "frame 1");
    again.ack();
    server.stop().await.unwrap();
}
