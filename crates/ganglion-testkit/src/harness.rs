//! The implementations the suite runs against, each on a virtual clock.

use std::sync::Arc;

use ganglion_bus::testing::TestBus;
use ganglion_bus::{Bus, BusOptions};
use ganglion_client::Client;
use ganglion_core::bus::{
    BusError, ReplayPages, StartPosition, StorageClass, SubscribeOptions, Subscription,
    SubscriptionId,
};
use ganglion_core::engine::Engine;
use ganglion_core::{BoxFuture, EventBus, ManualClock, Pattern};
use ganglion_server::ServerOptions;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A bus to run the scenarios against.
pub trait Harness: Send + Sync {
    /// The bus as a component uses it.
    fn bus(&self) -> &dyn EventBus;
    /// The engine that serves it (the same object, or the server's): what a scenario
    /// watches to know the engine has seen a step before it moves the clock.
    fn engine(&self) -> &dyn Engine;
    /// The engine's clock.
    fn clock(&self) -> &ManualClock;
}

/// Topics under `eph.>` are ephemeral in every harness; the rest are durable.
fn ephemeral_topics(mut options: BusOptions) -> BusOptions {
    options.storage_classes.push((
        Pattern::new("eph.>").expect("a pattern"),
        StorageClass::Ephemeral,
    ));
    options
}

/// The embedded engine with its log on disk (in a temporary directory).
#[derive(Debug)]
pub struct Embedded {
    bus: Bus,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

pub async fn embedded() -> Embedded {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::at_fixed_instant();
    let options = BusOptions {
        clock: Arc::new(clock.clone()),
        ..ephemeral_topics(BusOptions::new(dir.path()))
    };
    let bus = Bus::open(options).expect("the embedded bus opens");
    Embedded {
        bus,
        clock,
        _dir: dir,
    }
}

impl Harness for Embedded {
    fn bus(&self) -> &dyn EventBus {
        &self.bus
    }
    fn engine(&self) -> &dyn Engine {
        &self.bus
    }
    fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

/// `TestBus`, in memory.
#[derive(Debug)]
pub struct InMemory {
    bus: TestBus,
}

pub async fn test_bus() -> InMemory {
    InMemory {
        bus: TestBus::with_options(ephemeral_topics),
    }
}

impl Harness for InMemory {
    fn bus(&self) -> &dyn EventBus {
        &self.bus
    }
    fn engine(&self) -> &dyn Engine {
        &self.bus
    }
    fn clock(&self) -> &ManualClock {
        self.bus.clock()
    }
}

/// The remote client against a real server (gRPC on loopback) over a `TestBus`.
#[derive(Debug)]
pub struct Remote {
    client: Client,
    engine: TestBus,
    stop: Option<oneshot::Sender<()>>,
}

pub async fn remote() -> Remote {
    let engine = TestBus::with_options(ephemeral_topics);
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", grpc.local_addr().expect("an address"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ganglion_server::serve(
        Arc::new(engine.clone()),
        grpc,
        http,
        ServerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = Client::connect(url).await.expect("the client connects");
    Remote {
        client,
        engine,
        stop: Some(stop),
    }
}

impl Harness for Remote {
    fn bus(&self) -> &dyn EventBus {
        &self.client
    }
    fn engine(&self) -> &dyn Engine {
        &self.engine
    }
    fn clock(&self) -> &ManualClock {
        self.engine.clock()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `TestBus` used as a plain engine, with filters, batch windows and dead-lettering
/// applied above it by [`ganglion_core::bus::layer`]: the behaviour an engine without
/// them gets.
#[derive(Debug)]
pub struct Layered {
    bus: LayeredBus,
    engine: TestBus,
}

/// An `EventBus` whose subscriptions go through the layer; the rest is the engine's.
#[derive(Debug)]
pub struct LayeredBus {
    engine: Arc<dyn Engine>,
    clock: Arc<dyn ganglion_core::Clock>,
}

pub async fn layered() -> Layered {
    let engine = TestBus::with_options(ephemeral_topics);
    let bus = LayeredBus {
        engine: Arc::new(engine.clone()),
        clock: Arc::new(engine.clock().clone()),
    };
    Layered { bus, engine }
}

impl Harness for Layered {
    fn bus(&self) -> &dyn EventBus {
        &self.bus
    }
    fn engine(&self) -> &dyn Engine {
        &self.engine
    }
    fn clock(&self) -> &ManualClock {
        self.engine.clock()
    }
}

impl EventBus for LayeredBus {
    fn publish_batch(
        &self,
        events: Vec<ganglion_core::Event>,
    ) -> BoxFuture<'_, Result<Vec<ganglion_core::bus::PublishAck>, BusError>> {
        self.engine.publish_batch(events)
    }

    fn subscribe(
        &self,
        pattern: Pattern,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        let bus: Arc<dyn EventBus> = self.engine.clone();
        let clock = self.clock.clone();
        Box::pin(ganglion_core::bus::layer::subscribe_layered(
            bus, clock, pattern, options,
        ))
    }

    fn unsubscribe(&self, id: SubscriptionId) -> BoxFuture<'_, Result<(), BusError>> {
        self.engine.unsubscribe(id)
    }

    fn replay_pages(
        &self,
        pattern: Pattern,
        from: StartPosition,
        limit: usize,
        page_bytes: usize,
    ) -> BoxFuture<'_, Result<Box<dyn ReplayPages>, BusError>> {
        self.engine.replay_pages(pattern, from, limit, page_bytes)
    }

    fn dead_letters(
        &self,
        subscription: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ganglion_core::bus::DeadLetter>, BusError>> {
        self.engine.dead_letters(subscription, limit)
    }

    fn redrive(
        &self,
        subscription: String,
        seqs: Vec<u64>,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        self.engine.redrive(subscription, seqs)
    }

    fn topics(&self) -> BoxFuture<'_, Result<Vec<ganglion_core::bus::TopicInfo>, BusError>> {
        self.engine.topics()
    }
}
