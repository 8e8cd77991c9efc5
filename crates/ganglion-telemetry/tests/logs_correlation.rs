//! A correlation id set on a published event is on the log lines of its delivery and in
//! the headers of the events its handler publishes; the log filter changes live.

use std::time::Duration;

use ganglion_bus::testing::TestBus;
use ganglion_core::bus::SubscribeOptions;
use ganglion_core::{Event, EventBus, Pattern, Topic, headers};
use ganglion_telemetry::testing::CapturedLogs;
use ganglion_telemetry::{Format, Logs};

#[tokio::test]
async fn the_correlation_id_follows_an_event_into_its_handlers_logs_and_publications() {
    let captured = CapturedLogs::default();
    // One test per binary installs the global subscriber.
    let logs = Logs::init_with_writer("info", Format::Json, captured.clone()).unwrap();

    let test = TestBus::new();
    let bus = &test;
    let options = SubscribeOptions {
        max_deliveries: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = bus
        .subscribe(Pattern::new("orders.>").unwrap(), options)
        .await
        .unwrap();
    bus.publish(
        Event::new(Topic::new("orders.placed").unwrap(), "{}")
            .with_header(headers::CORRELATION_ID, "corr-42"),
    )
    .await
    .unwrap();

    let delivery = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    let context = delivery.context().unwrap();
    assert_eq!(context.correlation_id, "corr-42");
    context
        .scope(async {
            tracing::info!("reserving stock");
            bus.publish(Event::new(Topic::new("stock.reserved").unwrap(), "{}"))
                .await
                .unwrap();
            // An explicit correlation id is kept.
            bus.publish(
                Event::new(Topic::new("audit.note").unwrap(), "{}")
                    .with_header(headers::CORRELATION_ID, "other"),
            )
            .await
            .unwrap();
        })
        .await;
    // The handler fails for good: the bus dead-letters it and says so.
    delivery.nack(None, "out of stock");

    let derived = test.published_on("stock.>");
    assert_eq!(derived.len(), 1);
    assert_eq!(derived[0].correlation_id(), Some("corr-42"));
    assert_eq!(
        test.published_on("audit.>")[0].correlation_id(),
        Some("other")
    );
    // Outside any handler nothing is inherited.
    bus.publish(Event::new(Topic::new("stock.free").unwrap(), "{}"))
        .await
        .unwrap();
    assert_eq!(test.published_on("stock.free")[0].correlation_id(), None);

    let dead_lettered = async {
        loop {
            if captured
                .lines()
                .iter()
                .any(|l| l.contains("event dead-lettered"))
            {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), dead_lettered)
        .await
        .expect("the bus logs the dead letter");
    let lines = captured.lines();
    let handler = lines
        .iter()
        .find(|l| l.contains("reserving stock"))
        .unwrap();
    assert!(
        handler.contains(r#""correlation_id":"corr-42""#),
        "{handler:?}"
    );
    assert!(handler.starts_with('{'), "JSON lines: {handler:?}");
    let dlq = lines
        .iter()
        .find(|l| l.contains("event dead-lettered"))
        .unwrap();
    assert!(dlq.contains(r#""correlation_id":"corr-42""#), "{dlq:?}");

    // The filter changes live: debug lines appear once enabled, and a bad filter is
    // refused.
    tracing::debug!("before the change");
    logs.set_filter("debug").unwrap();
    tracing::debug!("after the change");
    assert!(logs.set_filter("=[").is_err());
    let lines = captured.lines();
    assert!(!lines.iter().any(|l| l.contains("before the change")));
    assert!(lines.iter().any(|l| l.contains("after the change")));
}
