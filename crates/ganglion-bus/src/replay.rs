//! Reading back: where a start position is in the log, and pages of matching events.
use std::sync::Arc;

use crate::{Core, codec, log_error};
use ganglion_core::bus::{ReplayPages, StartPosition};
use ganglion_core::{BoxFuture, BusError, Event, Pattern};

/// A replay of the embedded bus, a page at a time.
#[derive(Debug)]
pub(crate) struct BusPages {
    pub(crate) core: Arc<Core>,
    pub(crate) pattern: Pattern,
    pub(crate) next: u64,
    pub(crate) until: u64,
    pub(crate) left: usize,
    pub(crate) page_bytes: usize,
}

impl ReplayPages for BusPages {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Vec<Event>>, BusError>> {
        Box::pin(async move {
            if self.left == 0 || self.next >= self.until {
                return Ok(None);
            }
            let core = self.core.clone();
            let (pattern, next, until, left, bytes) = (
                self.pattern.clone(),
                self.next,
                self.until,
                self.left,
                self.page_bytes,
            );
            let (page, after) = tokio::task::spawn_blocking(move || {
                core.scan_page(&pattern, next, until, left, bytes)
            })
            .await
            .map_err(|e| BusError::Internal(e.to_string()))??;
            self.next = after;
            self.left -= page.len();
            Ok((!page.is_empty()).then_some(page))
        })
    }
}

impl Core {
    pub(crate) fn start_seq(&self, start: StartPosition) -> Result<u64, BusError> {
        Ok(match start {
            StartPosition::New => self.log.next_seq(),
            StartPosition::All => self.log.first_seq(),
            StartPosition::Seq(seq) => seq.max(1),
            StartPosition::Time(t) => self
                .log
                .seq_at_time(t)
                .map_err(log_error)?
                .unwrap_or_else(|| self.log.next_seq()),
        })
    }

    /// One page of logged events matching `pattern`, from `from` on, scanning the log
    /// no further than `until` (exclusive): at most `limit` events and `max_bytes` of
    /// them (always at least one). Returns the page and where the next one starts.
    pub(crate) fn scan_page(
        &self,
        pattern: &Pattern,
        from: u64,
        until: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, u64), BusError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        while out.len() < limit && next < until && (out.is_empty() || bytes < max_bytes) {
            let records = self.log.read(next, 1024).map_err(log_error)?;
            let Some(last) = records.last() else { break };
            let end = last.seq + 1;
            for record in records {
                if record.seq >= until
                    || out.len() >= limit
                    || (!out.is_empty() && bytes >= max_bytes)
                {
                    // Stopped before this record: the next page starts with it.
                    return Ok((out, record.seq));
                }
                match codec::decode_matching(&record.payload, record.seq, pattern) {
                    Ok(Some(event)) if !self.retention.expired(event.topic.as_str(), event.seq) => {
                        bytes += event.size();
                        out.push(event);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping undecodable record"),
                }
            }
            next = end;
        }
        Ok((out, next))
    }
}
