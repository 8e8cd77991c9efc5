//! How an event is stored in a log record (format version 1, little-endian):
//!
//! ```text
//! u8   version (1)
//! u16  topic length,        topic
//! u16  id length,           id
//! u16  type length,         type
//! u16  source length,       source
//! u16  content type length, content type
//! u64  timestamp, ms since the Unix epoch
//! u16  header count, then per header: u16 name length, name, u32 value length, value
//! ...  payload: the rest of the record
//! ```
//!
//! The topic comes first so routing can read it without decoding the rest. The payload
//! is a slice of the record's buffer, never a copy.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use ganglion_core::{Event, Topic};

const VERSION: u8 = 1;

/// A record that is not an event of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq} is not a valid event: {reason}")]
pub struct DecodeError {
    pub seq: u64,
    pub reason: &'static str,
}

fn put_str16(buf: &mut BytesMut, s: &str) {
    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Encodes `event` (whose strings the bus has already checked against the u16 limits).
pub fn encode(event: &Event) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + event.size());
    buf.extend_from_slice(&[VERSION]);
    put_str16(&mut buf, event.topic.as_str());
    event.id.with_str(|id| put_str16(&mut buf, id));
    put_str16(&mut buf, &event.event_type);
    put_str16(&mut buf, &event.source);
    put_str16(&mut buf, &event.content_type);
    buf.extend_from_slice(&event.timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&(event.headers.len() as u16).to_le_bytes());
    for (name, value) in &event.headers {
        put_str16(&mut buf, name);
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    buf.extend_from_slice(&event.payload);
    buf.freeze()
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    seq: u64,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError {
            seq: self.seq,
            reason,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        match self.bytes.get(self.at..self.at + n) {
            Some(b) => {
                self.at += n;
                Ok(b)
            }
            None => self.fail("truncated"),
        }
    }

    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize)
    }

    fn str_of(&mut self, len: usize) -> Result<&'a str, DecodeError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).or_else(|_| self.fail("a string is not UTF-8"))
    }

    fn str16(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u16()?;
        self.str_of(len)
    }

    fn start(bytes: &'a [u8], seq: u64) -> Result<Self, DecodeError> {
        let mut r = Reader { bytes, at: 0, seq };
        if r.take(1)? != [VERSION] {
            return r.fail("unknown format version");
        }
        Ok(r)
    }
}

/// The topic of an encoded event, without decoding the rest.
pub fn peek_topic(record: &[u8], seq: u64) -> Result<&str, DecodeError> {
    Reader::start(record, seq)?.str16()
}

/// An encoded event's type and the value of header `name`, without decoding the rest
/// (nothing is allocated): for counting dead letters as the log is read through.
pub(crate) fn peek_type_and_header<'a>(
    record: &'a [u8],
    name: &str,
) -> Option<(&'a str, Option<&'a str>)> {
    let mut r = Reader::start(record, 0).ok()?;
    r.str16().ok()?; // topic
    r.str16().ok()?; // id
    let event_type = r.str16().ok()?;
    r.str16().ok()?; // source
    r.str16().ok()?; // content type
    r.take(8).ok()?; // timestamp
    let count = r.u16().ok()?;
    for _ in 0..count {
        let header = r.str16().ok()?;
        let len = u32::from_le_bytes(r.take(4).ok()?.try_into().ok()?) as usize;
        let value = r.str_of(len).ok()?;
        if header == name {
            return Some((event_type, Some(value)));
        }
    }
    Some((event_type, None))
}

/// Decodes record `seq` if its topic matches `pattern` (`Ok(None)` if not), reading
/// only the topic of the records it skips.
pub(crate) fn decode_matching(
    record: &Bytes,
    seq: u64,
    pattern: &ganglion_core::Pattern,
) -> Result<Option<Event>, DecodeError> {
    if !pattern.matches_str(peek_topic(record, seq)?) {
        return Ok(None);
    }
    decode(record, seq).map(Some)
}

/// Decodes the event stored as log record `seq`.
pub fn decode(record: &Bytes, seq: u64) -> Result<Event, DecodeError> {
    let mut r = Reader::start(record, seq)?;
    let topic = r.str16()?;
    let topic = Topic::new(topic).or_else(|_| r.fail("the topic is invalid"))?;
    let id = ganglion_core::EventId::from(r.str16()?);
    let event_type = r.str16()?.to_owned();
    let source = r.str16()?.to_owned();
    let content_type = r.str16()?.to_owned();
    let timestamp_ms = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let count = r.u16()?;
    let mut headers = BTreeMap::new();
    for _ in 0..count {
        let name = r.str16()?.to_owned();
        let len = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
        headers.insert(name, r.str_of(len)?.to_owned());
    }
    Ok(Event {
        id,
        topic,
        event_type,
        source,
        timestamp_ms,
        headers,
        payload: record.slice(r.at..),
        content_type,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_the_topic_can_be_peeked() {
        let event = Event::new(Topic::new("game.state.update").unwrap(), "payload")
            .with_type("GameStateUpdate")
            .with_source("game-server")
            .with_content_type("application/json")
            .with_header("correlation_id", "c-1")
            .with_header("x", "");
        let mut event = Event {
            timestamp_ms: 1234,
            ..event
        };
        let record = encode(&event);
        assert_eq!(peek_topic(&record, 9).unwrap(), "game.state.update");
        event.seq = 9;
        assert_eq!(decode(&record, 9).unwrap(), event);
    }

    #[test]
    fn garbage_is_an_error_naming_the_record_never_a_panic() {
        let record = encode(&Event::new(Topic::new("a.b").unwrap(), "p").with_header("k", "v"));
        for cut in 0..record.len() - 1 {
            let _ = decode(&record.slice(..cut), 3);
        }
        let err = decode(&Bytes::from_static(b"\x02rest"), 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 3 is not a valid event: unknown format version"
        );
        assert!(decode(&record.slice(..5), 3).is_err());
    }
}
