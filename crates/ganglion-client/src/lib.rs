//! The Rust SDK: [`Client`] implements [`EventBus`], the trait the embedded bus
//! implements, so a component written against `EventBus` runs in-process or against a
//! `ganglion serve` without code changes.
//!
//! # What it does for you
//!
//! - **Coalescing**: concurrent `publish` calls are gathered into batch frames on one
//!   pipelined `PublishStream` (up to [`ClientOptions::pipeline`] frames in flight); each
//!   caller still gets exactly its own acks. If the server refuses a coalesced frame for
//!   a bad event, the callers' batches are resent one by one, so one caller's mistake
//!   never fails another's events.
//! - **Reconnects** with exponential backoff (100 ms doubling to 5 s). Publishes in flight
//!   when a connection breaks fail with `Unavailable` — they may or may not have been
//!   logged, so publish with an `idempotency_key` to retry safely. A subscription is
//!   reopened with the same options: a durable one resumes where acks stopped (its
//!   unacked events are redelivered); a non-durable one misses what was published while
//!   it was disconnected.
//! - **Flow control**: a subscriber that does not keep up stops reading its stream; gRPC
//!   flow control then holds the server, and the bus holds the rest in the log
//!   (`max_in_flight`).

mod publish;
mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_core::bus::{
    DeadLetter, EventBus, PublishAck, ReplayPages, StartPosition, SubscribeOptions, Subscription,
    SubscriptionId, TopicInfo,
};
use ganglion_core::{BoxFuture, BusError, Event, Pattern};
use ganglion_proto::convert::{self, error_from_status, system_time_ms};
use ganglion_proto::v1;
use ganglion_proto::v1::event_bus_client::EventBusClient;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The generated bus client over this SDK's connection, credentials attached.
pub type Rpc = EventBusClient<InterceptedService<Channel, Credentials>>;
/// The generated coordinator client over this SDK's connection, credentials attached.
pub type CoordinatorRpc =
    v1::coordinator_client::CoordinatorClient<InterceptedService<Channel, Credentials>>;

/// TLS for the connection: the CA that signed the server's certificate (the system's
/// roots are not consulted), and a client certificate for mTLS.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM of the CA certificates to trust.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate chain and its key, for mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the server's certificate against; default: the endpoint's host.
    pub domain: Option<String>,
}

/// Attaches the bearer token to every call.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// Credentials carrying `token` (none: calls go without).
    pub fn new(token: Option<&str>) -> Result<Credentials, BusError> {
        let authorization = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| BusError::invalid("token", "must be printable ASCII"))
            })
            .transpose()?;
        Ok(Credentials { authorization })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel to `options.endpoint` (TLS when `options.tls` is set or the endpoint is
/// `https://`), connected within the connect timeout.
pub async fn channel(options: &ClientOptions) -> Result<Channel, BusError> {
    let mut endpoint = Endpoint::from_shared(options.endpoint.clone())
        .map_err(|e| BusError::invalid("endpoint", e))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024);
    if let Some(tls) = &options.tls {
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &tls.ca_pem {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity_pem {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| BusError::invalid("tls", e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| {
        let mut message = format!("cannot reach {}: {e}", options.endpoint);
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        BusError::Unavailable(message)
    })
}

/// How the client connects and batches.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `http://host:port` of a `ganglion serve` gRPC listener.
    pub endpoint: String,
    pub connect_timeout: Duration,
    /// Most events in one coalesced publish frame. A caller's batch at least this large
    /// is sent as a frame of its own; smaller ones are packed together up to it. (A
    /// packed frame keeps a copy of its events, to resend each caller's batch alone if
    /// the server refuses the frame, so packing stops where batching has paid off.)
    pub max_frame_events: usize,
    /// Most payload bytes in one coalesced publish frame (a single larger batch is sent
    /// alone).
    pub max_frame_bytes: usize,
    /// Publish frames in flight on the stream before callers wait.
    pub pipeline: usize,
    /// Largest gRPC message accepted from the server.
    pub max_message_bytes: usize,
    /// First and longest wait between reconnection attempts.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// A bearer token sent with every call (see the server's `auth.identities`).
    pub token: Option<String>,
    /// TLS, and a client certificate for mTLS. Without it, plain text.
    pub tls: Option<ClientTls>,
}

impl ClientOptions {
    pub fn new(endpoint: impl Into<String>) -> ClientOptions {
        ClientOptions {
            endpoint: endpoint.into(),
            connect_timeout: Duration::from_secs(5),
            max_frame_events: 256,
            max_frame_bytes: 4 * 1024 * 1024,
            pipeline: 32,
            max_message_bytes: 16 * 1024 * 1024,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            token: None,
            tls: None,
        }
    }
}

/// A connection to a Ganglion server. Cheap to clone; clones share the connection and
/// the publish stream.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rpc: Rpc,
    coordinator: CoordinatorRpc,
    options: ClientOptions,
    publisher: mpsc::Sender<publish::Job>,
    subscriptions: Mutex<HashMap<SubscriptionId, tokio::task::AbortHandle>>,
    next_subscription: AtomicU64,
}

impl Client {
    /// Connects to `endpoint` (`http://127.0.0.1:50051`) with default options.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client, BusError> {
        Client::connect_with(ClientOptions::new(endpoint)).await
    }

    /// Connects, failing if the server cannot be reached within the connect timeout.
    pub async fn connect_with(options: ClientOptions) -> Result<Client, BusError> {
        let channel = channel(&options).await?;
        let credentials = Credentials::new(options.token.as_deref())?;
        let rpc = EventBusClient::with_interceptor(channel.clone(), credentials.clone())
            .max_decoding_message_size(options.max_message_bytes)
            .max_encoding_message_size(options.max_message_bytes);
        let coordinator =
            v1::coordinator_client::CoordinatorClient::with_interceptor(channel, credentials)
                .max_decoding_message_size(options.max_message_bytes)
                .max_encoding_message_size(options.max_message_bytes);
        let publisher = publish::spawn(rpc.clone(), options.clone());
        Ok(Client {
            inner: Arc::new(Inner {
                rpc,
                coordinator,
                options,
                publisher,
                subscriptions: Mutex::new(HashMap::new()),
                next_subscription: AtomicU64::new(1),
            }),
        })
    }

    /// The generated gRPC client, for calls this SDK does not wrap.
    pub fn rpc(&self) -> Rpc {
        self.inner.rpc.clone()
    }

    /// The generated coordinator client on the same connection and credentials.
    pub fn coordinator(&self) -> CoordinatorRpc {
        self.inner.coordinator.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventBus for Client {
    fn publish_batch(
        &self,
        mut events: Vec<Event>,
    ) -> BoxFuture<'_, Result<Vec<PublishAck>, BusError>> {
        // Ids for events without one (so the client knows them), and, when published
        // while handling another event, its correlation and trace carried on.
        let spans = ganglion_core::trace::publishing(&mut events);
        Box::pin(async move {
            if events.is_empty() {
                return Err(BusError::invalid(
                    "events",
                    "at least one event is required",
                ));
            }
            let acks = publish::submit(&self.inner.publisher, events).await;
            drop(spans);
            acks
        })
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(async move {
            options.validate()?;
            let id = SubscriptionId(self.inner.next_subscription.fetch_add(1, Ordering::Relaxed));
            let (subscription, task) = subscribe::open(
                self.inner.rpc.clone(),
                &self.inner.options,
                id,
                pattern,
                options,
            )
            .await?;
            lock(&self.inner.subscriptions).insert(id, task);
            let guard = Unregister {
                inner: Arc::downgrade(&self.inner),
                id,
            };
            Ok(subscription.with_guard(guard))
        })
    }

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            match lock(&self.inner.subscriptions).remove(&id) {
                Some(task) => {
                    task.abort();
                    Ok(())
                }
                None => Err(BusError::NotFound {
                    what: format!("subscription {id}"),
                }),
            }
        })
    }

    fn replay_pages(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
        _page_bytes: usize,
    ) -> BoxFuture<'_, Result<Box<dyn ReplayPages>, BusError>> {
        Box::pin(async move {
            let (from_seq, since_ms) = match from.for_replay()? {
                StartPosition::New | StartPosition::All => (0, 0),
                StartPosition::Seq(0) => (0, 0),
                StartPosition::Seq(seq) => (seq, 0),
                StartPosition::Time(t) => (0, system_time_ms(t).max(1)),
            };
            let request = v1::ReplayRequest {
                pattern: pattern.as_str().to_owned(),
                from_seq,
                since_ms,
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            };
            let stream = self
                .inner
                .rpc
                .clone()
                .replay(request)
                .await
                .map_err(|s| error_from_status(&s))?
                .into_inner();
            let pages: Box<dyn ReplayPages> = Box::new(RemotePages { stream });
            Ok(pages)
        })
    }

    fn dead_letters(
        &self,
        subscription: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BusError>> {
        Box::pin(async move {
            let response = self
                .inner
                .rpc
                .clone()
                .list_dead_letters(v1::ListDeadLettersRequest {
                    subscription,
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                })
                .await
                .map_err(|s| error_from_status(&s))?;
            response
                .into_inner()
                .dead_letters
                .into_iter()
                .map(convert::dead_letter_from_wire)
                .collect()
        })
    }

    fn redrive(
        &self,
        subscription: String,
        seqs: Vec<u64>,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            let response = self
                .inner
                .rpc
                .clone()
                .redrive_dead_letters(v1::RedriveDeadLettersRequest { subscription, seqs })
                .await
                .map_err(|s| error_from_status(&s))?;
            Ok(response.into_inner().redriven)
        })
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<TopicInfo>, BusError>> {
        Box::pin(async move {
            let response = self
                .inner
                .rpc
                .clone()
                .list_topics(v1::ListTopicsRequest {})
                .await
                .map_err(|s| error_from_status(&s))?;
            response
                .into_inner()
                .topics
                .into_iter()
                .map(convert::topic_from_wire)
                .collect()
        })
    }
}

/// Dropping a subscription stops its task (which ends the server-side subscription).
struct Unregister {
    inner: std::sync::Weak<Inner>,
    id: SubscriptionId,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade()
            && let Some(task) = lock(&inner.subscriptions).remove(&self.id)
        {
            task.abort();
        }
    }
}

/// Exponential backoff for reconnecting: `initial`, doubling, at most `max`.
#[derive(Debug)]
struct Reconnect {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Reconnect {
    fn new(options: &ClientOptions) -> Reconnect {
        Reconnect {
            next: options.reconnect_initial,
            initial: options.reconnect_initial,
            max: options.reconnect_max,
        }
    }

    /// The wait before the next attempt (and doubles the one after).
    fn delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A replay from the server: each response message is a page (the server bounds them
/// in bytes).
#[derive(Debug)]
struct RemotePages {
    stream: tonic::Streaming<v1::ReplayResponse>,
}

impl ReplayPages for RemotePages {
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Vec<Event>>, BusError>> {
        Box::pin(async move {
            loop {
                let Some(page) = self
                    .stream
                    .message()
                    .await
                    .map_err(|s| error_from_status(&s))?
                else {
                    return Ok(None);
                };
                let events = page
                    .events
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| convert::event_from_wire(e, &format!("events[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if !events.is_empty() {
                    return Ok(Some(events));
                }
            }
        })
    }
}
