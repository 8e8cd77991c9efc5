//! Publish and deliver spans reach a real OTLP/gRPC receiver as one trace that crosses a
//! handler: publish → deliver → (handler publishes) publish → deliver.

use std::time::Duration;

use ganglion_bus::testing::TestBus;
use ganglion_core::bus::SubscribeOptions;
use ganglion_core::{Event, EventBus, Pattern, Topic, headers};
use ganglion_telemetry::testing::{CapturedLogs, OtlpReceiver, ReceivedSpan};
use ganglion_telemetry::{Format, Logs, OtlpOptions, Traces};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_deliver_spans_form_one_trace_across_a_handler() {
    let mut receiver = OtlpReceiver::start().await.unwrap();
    let traces = Traces::otlp(&OtlpOptions {
        endpoint: receiver.endpoint().to_owned(),
        service_name: "trace-test".into(),
        token: Some("s3cret".into()),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    // The log level is `warn`: spans are exported whatever the log filter says.
    let lines = CapturedLogs::default();
    let logs = Logs::init_traced("warn", Format::Json, lines.clone(), &traces).unwrap();
    tracing::info!("before the change");
    // The log level still changes live when traces are on.
    logs.set_filter("info").unwrap();
    tracing::info!("after the change");
    let written = lines.text();
    assert!(
        !written.contains("before the change") && written.contains("after the change"),
        "{written}"
    );

    let bus = TestBus::new();
    let pattern = |p: &str| Pattern::new(p).unwrap();
    let mut orders = bus
        .subscribe(pattern("orders.>"), SubscribeOptions::default())
        .await
        .unwrap();
    let mut shipping = bus
        .subscribe(pattern("shipping.>"), SubscribeOptions::default())
        .await
        .unwrap();
    bus.publish(Event::new(Topic::new("orders.placed").unwrap(), "{}"))
        .await
        .unwrap();

    let wait = Duration::from_secs(10);
    let order = tokio::time::timeout(wait, orders.next())
        .await
        .unwrap()
        .unwrap();
    let logged_parent = order
        .event()
        .unwrap()
        .header(headers::TRACEPARENT)
        .expect("the published event carries its publish span's traceparent")
        .to_owned();
    order
        .context()
        .unwrap()
        .scope(async {
            bus.publish(Event::new(Topic::new("shipping.requested").unwrap(), "{}"))
                .await
                .unwrap();
        })
        .await;
    order.ack();
    drop(order);
    let shipment = tokio::time::timeout(wait, shipping.next())
        .await
        .unwrap()
        .unwrap();
    shipment.ack();
    drop(shipment);

    let flushing = traces.clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .unwrap()
        .unwrap();

    let messaging = |s: &ReceivedSpan| s.name == "publish" || s.name == "deliver";
    let spans = receiver
        .wait_for(wait, |spans| {
            spans.iter().filter(|s| messaging(s)).count() >= 4
        })
        .await
        .expect("the receiver got four publish and deliver spans within 10 s");
    let get = |name: &str, topic: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.attributes
                        .get("messaging.destination.name")
                        .map(String::as_str)
                        == Some(topic)
            })
            .unwrap_or_else(|| panic!("no {name} span for {topic}: {spans:#?}"))
    };
    let publish_order = get("publish", "orders.placed");
    let deliver_order = get("deliver", "orders.placed");
    let publish_shipping = get("publish", "shipping.requested");
    let deliver_shipping = get("deliver", "shipping.requested");

    for span in [deliver_order, publish_shipping, deliver_shipping] {
        assert_eq!(
            span.trace_id, publish_order.trace_id,
            "one trace: {spans:#?}"
        );
        assert_eq!(span.service_name, "trace-test");
        assert_eq!(span.authorization.as_deref(), Some("Bearer s3cret"));
    }
    assert!(
        publish_order.parent_span_id.is_empty(),
        "the first publish is the root"
    );
    assert_eq!(deliver_order.parent_span_id, publish_order.span_id);
    assert_eq!(publish_shipping.parent_span_id, deliver_order.span_id);
    assert_eq!(deliver_shipping.parent_span_id, publish_shipping.span_id);

    assert_eq!(publish_order.kind, "producer");
    assert_eq!(deliver_order.kind, "consumer");
    assert_eq!(publish_order.attributes["messaging.system"], "ganglion");
    assert_eq!(deliver_order.attributes["ganglion.attempt"], "1");
    assert!(
        deliver_order.attributes["messaging.consumer.group.name"].starts_with("sub-"),
        "{deliver_order:?}"
    );
    // The header the event was logged with names the publish span.
    assert_eq!(
        logged_parent,
        format!("00-{}-{}-01", publish_order.trace_id, publish_order.span_id)
    );
}
