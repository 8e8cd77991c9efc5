//! The fuzz targets' bodies. Each takes arbitrary bytes and must neither panic nor hang
//! whatever they hold; where a property is cheap to state it is asserted too (a
//! failed assertion is a finding like a crash).
//!
//! `fuzz/` (cargo fuzz, libFuzzer) runs them coverage-guided; `tests/corpus.rs` replays
//! every committed corpus file and every regression through them on stable Rust, in the
//! ordinary test run. [`TARGETS`] names them all.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ganglion_core::{Pattern, Topic};
use ganglion_log::storage::{MemStorage, Storage as _};
use ganglion_log::{Log, LogOptions, Recovery};
use prost::Message as _;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz binary and corpus directory.
pub const TARGETS: [(&str, Target); 6] = [
    ("event_record", event_record),
    ("log_recovery", log_recovery),
    ("topic_pattern", topic_pattern),
    ("proto_convert", proto_convert),
    ("http_event_json", http_event_json),
    ("config_loader", config_loader),
];

/// A log record's payload decoded as an event (what replay and subscriptions read).
pub fn event_record(data: &[u8]) {
    let record = Bytes::copy_from_slice(data);
    let topic = ganglion_bus::peek_topic(data, 7).map(str::to_owned);
    if let Ok(event) = ganglion_bus::decode(&record, 7) {
        // What decodes re-encodes to the same event, and peeking agrees.
        assert_eq!(topic.as_deref().ok(), Some(event.topic.as_str()));
        let again = ganglion_bus::decode(&ganglion_bus::encode(&event), 7).unwrap();
        assert_eq!(again, event);
    }
}

const LOG_DIR: &str = "/fuzz-log";

fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 512,
        index_interval_bytes: 128,
        ..LogOptions::default()
    }
}

/// A closed log of 40 records over several small segments, built once.
fn written_log() -> &'static MemStorage {
    static LOG: OnceLock<MemStorage> = OnceLock::new();
    LOG.get_or_init(|| {
        let storage = MemStorage::new();
        let log = Log::open_with_storage(Arc::new(storage.clone()), LOG_DIR, small_segments())
            .expect("a log opens on empty storage");
        for n in 0..40u64 {
            let payload = Bytes::from(format!("record {n} {}", "x".repeat((n as usize * 7) % 40)));
            log.append_blocking(vec![payload]).expect("append");
        }
        log.close().expect("close");
        storage
    })
}

/// Damage to a written log's files: `data[0]` picks the file, `data[1]` the damage
/// (overwrite at an offset, truncate, replace, delete), the rest says where and with
/// what. Verify, then open both ways; an opened log reads back and takes an append.
pub fn log_recovery(data: &[u8]) {
    let [file, op, hi, lo, rest @ ..] = data else {
        return;
    };
    let storage = written_log().snapshot();
    let dir = Path::new(LOG_DIR);
    let mut names = storage.list(dir).unwrap_or_default();
    names.sort();
    if names.is_empty() {
        return;
    }
    let path = dir.join(&names[usize::from(*file) % names.len()]);
    let bytes = storage.read_file(&path).unwrap_or_default();
    let at = usize::from(u16::from_be_bytes([*hi, *lo])) % (bytes.len() + 1);
    match op % 4 {
        0 => {
            let mut damaged = bytes.clone();
            for (i, b) in rest.iter().enumerate() {
                match damaged.get_mut(at + i) {
                    Some(slot) => *slot = *b,
                    None => damaged.push(*b),
                }
            }
            storage.write_file(&path, damaged);
        }
        1 => storage.write_file(&path, bytes[..at].to_vec()),
        2 => storage.write_file(&path, rest.to_vec()),
        _ => {
            let _ = storage.remove(&path);
        }
    }
    let storage: Arc<dyn ganglion_log::storage::Storage> = Arc::new(storage);
    let _ = Log::verify_with_storage(storage.clone(), dir, small_segments());
    for recovery in [Recovery::Strict, Recovery::DropDamagedTail] {
        let options = LogOptions {
            recovery,
            ..small_segments()
        };
        if let Ok(log) = Log::open_with_storage(storage.clone(), dir, options) {
            let mut next = 1;
            while let Ok(records) = log.read(next, 100) {
                let Some(last) = records.last() else { break };
                next = last.seq + 1;
            }
            let ack = log.append_blocking(vec![Bytes::from_static(b"after")]);
            if let Ok(ack) = ack {
                // Never a number already given.
                assert!(
                    ack.first_seq >= next,
                    "{ack:?} reissued a sequence below {next}"
                );
            }
            let _ = log.close();
        }
    }
}

/// Topic and pattern grammar, and the permission algebra over it: lines are a pattern,
/// a pattern and a topic. Containment must imply matching.
pub fn topic_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let (a, b, t) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    let (a, b, t) = (Pattern::new(a), Pattern::new(b), Topic::new(t));
    if let (Ok(a), Ok(b)) = (&a, &b) {
        let contains = ganglion_server::auth::contains(a, b);
        let overlaps = ganglion_server::auth::overlaps(a, b);
        assert_eq!(overlaps, ganglion_server::auth::overlaps(b, a));
        assert!(
            !contains || overlaps,
            "{a:?} contains {b:?} but they share no topic"
        );
        if let Ok(t) = &t {
            if contains && b.matches(t) {
                assert!(a.matches(t), "{a:?} contains {b:?}, which matches {t:?}");
            }
            if a.matches(t) && b.matches(t) {
                assert!(overlaps, "{a:?} and {b:?} both match {t:?}");
            }
        }
    }
}

/// The wire's messages decoded and converted to the core's types, as the server does
/// with every request.
pub fn proto_convert(data: &[u8]) {
    use ganglion_proto::{convert, v1};
    if let Ok(request) = v1::PublishRequest::decode(data) {
        let _ = convert::events_from_wire(request.events);
    }
    if let Ok(v1::SubscribeRequest {
        request: Some(v1::subscribe_request::Request::Open(open)),
    }) = v1::SubscribeRequest::decode(data)
    {
        let _ = convert::pattern_from_wire(&open.pattern, "open.pattern");
        let _ = convert::options_from_wire(open.options);
    }
    if let Ok(replay) = v1::ReplayRequest::decode(data) {
        let _ = convert::pattern_from_wire(&replay.pattern, "pattern");
        let _ = convert::replay_start(replay.from_seq, replay.since_ms);
    }
}

/// A `POST /api/v1/events` body. Refusals name a field.
pub fn http_event_json(data: &[u8]) {
    if let Err(error) = ganglion_server::events_from_json(data) {
        assert!(error.field().is_some(), "{error:?} names no field");
    }
}

/// A config file as the loader reads it (`ganglion.yaml` of a config directory), and
/// the access policy it describes.
pub fn config_loader(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("ganglion.yaml"), data).is_err() {
        return;
    }
    if let Ok(loaded) = ganglion_config::Loader::new(dir.path()).load() {
        let config = loaded.config();
        let _ = ganglion_server::auth::Policy::compile(&config.auth, config.server.allow_anonymous);
    }
}
