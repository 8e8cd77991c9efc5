//! Every committed fuzz input through its target: the seed corpora (`fuzz/corpus/`) and
//! whatever the fuzzers found (`fuzz/regressions/`), on stable Rust in the ordinary test
//! run. A crash found by `cargo fuzz` is committed under `fuzz/regressions/<target>/`.

use std::path::Path;

#[test]
fn every_committed_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut ran = 0;
    for (name, target) in ganglion_fuzz::TARGETS {
        let mut inputs = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} fails", path.display());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "{name} has no committed corpus");
        ran += inputs;
    }
    eprintln!("{ran} committed fuzz inputs passed");
}

/// Writes the seed corpora (`cargo test -p ganglion-fuzz -- --ignored write_seeds`):
/// small valid inputs of each kind, for the fuzzers to start from.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the seeds change"]
fn write_seeds() {
    use ganglion_core::{Event, Topic};
    use ganglion_proto::v1;
    use prost::Message as _;
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let event = |topic: &str, payload: &'static [u8]| {
        Event::new(
            Topic::new(topic).unwrap(),
            bytes::Bytes::from_static(payload),
        )
    };
    let events = [
        event("game.state.update", br#"{"game_id":"abc123","turn":4}"#)
            .with_content_type("application/json")
            .with_type("state")
            .with_source("game-server")
            .with_header("priority", "9"),
        event("a", b""),
        event("metrics.gpu.0", &[0, 1, 2, 255]).with_header("x", ""),
    ];
    let wire: Vec<v1::Event> = events
        .iter()
        .cloned()
        .map(ganglion_proto::convert::event_to_wire)
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("event_record", events.iter().map(|e| ganglion_bus::encode(e).to_vec()).collect()),
        (
            "log_recovery",
            vec![
                vec![0, 0, 0, 70, 0xff],
                vec![1, 1, 0, 100],
                vec![2, 2, 0, 0, b'G', b'L', b'O', b'G'],
                vec![3, 3, 0, 0],
                vec![255, 0, 1, 0, 0, 0, 0, 0],
            ],
        ),
        (
            "topic_pattern",
            [
                "game.>\ngame.*\ngame.x",
                "*.b\na.>\na.b",
                ">\n>\nx",
                "a.*.c\n*.b.>\na.b.c",
                "secret.>\n*.x\nsecret.x",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        ),
        (
            "proto_convert",
            vec![
                v1::PublishRequest { events: wire.clone(), ..Default::default() }.encode_to_vec(),
                v1::SubscribeRequest {
                    request: Some(v1::subscribe_request::Request::Open(v1::OpenSubscription {
                        pattern: "game.>".into(),
                        options: Some(v1::SubscribeOptions {
                            durable: "analytics".into(),
                            queue_group: "workers".into(),
                            ..Default::default()
                        }),
                    })),
                }
                .encode_to_vec(),
                v1::ReplayRequest { pattern: "game.*".into(), from_seq: 3, ..Default::default() }.encode_to_vec(),
            ],
        ),
        (
            "http_event_json",
            [
                r#"{"topic":"game.state.update","payload":{"game_id":"abc123"}}"#,
                r#"{"events":[{"topic":"a.b","payload":1},{"topic":"c","payload_base64":"AAEC","content_type":"application/octet-stream"}]}"#,
                r#"{"topic":"x","payload":null,"headers":{"priority":"3"},"type":"t","source":"s","id":"abc","idempotency_key":"k"}"#,
                r#"{"events":[]}"#,
                r#"[1,2]"#,
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        ),
        (
            "config_loader",
            vec![
                std::fs::read(root.join("ganglion.yaml")).unwrap(),
                std::fs::read(root.join("environments/production.yaml")).unwrap(),
                std::fs::read(root.join("environments/development.yaml")).unwrap(),
                b"server:\n  grpc_addr: 0.0.0.0:1\n  allow_anonymous: true\nauth:\n  identities:\n    a:\n      tokens: [\"sha256:00\"]\n".to_vec(),
            ],
        ),
    ];
    for (target, inputs) in seeds {
        let dir = fuzz.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, input) in inputs.into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), input).unwrap();
        }
    }
}
