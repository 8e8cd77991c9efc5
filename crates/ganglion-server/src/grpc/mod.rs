//! gRPC: connections served on front threads (see the crate docs), health, reflection,
//! and the services: `bus` (`ganglion.v1.EventBus`), `coordinator` (`ganglion.v1.Coordinator`)
//! and `subscribe` (one subscription stream).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use ganglion_proto::v1::event_bus_server::EventBusServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::conn::{self, Admission, ConnGuard, Connections, Transport};
use crate::{ServerError, State};

mod bus;
pub(crate) mod coordinator;
mod subscribe;

use bus::GrpcBus;
pub(crate) use bus::{purge_topics, replay_limit};
use coordinator::GrpcCoordinator;
use ganglion_proto::v1::coordinator_server::CoordinatorServer;

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gRPC services a connection is served: all of them, or health alone (for
/// connections let in over the caps, from the reserve).
#[derive(Clone)]
struct Services {
    all: tonic::service::Routes,
    health_only: tonic::service::Routes,
}

/// Every call but health on a connection let in over the caps.
async fn too_many_connections() -> axum::response::Response {
    let status = Status::unavailable(
        "every connection is busy: this one serves grpc.health.v1 only; try again",
    );
    axum::response::IntoResponse::into_response(status.into_http::<axum::body::Body>())
}

/// A connection the acceptor let in, for a front to serve.
struct Accepted {
    stream: std::net::TcpStream,
    guard: ConnGuard,
    health_only: bool,
}

/// Serves the bus, the coordinator, health and reflection on `listener` until the
/// state says stop.
pub(crate) async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    threads: usize,
    connections: Arc<Connections>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(), ServerError> {
    let services = services(&state).await;
    // Dropping this future (the drain timeout aborts it) drops `_cut`, which cuts every
    // front's connections at once.
    let (_cut, cut) = watch::channel(());
    let fronts = (0..threads.max(1))
        .map(|index| {
            Front::start(
                index,
                services.clone(),
                state.limits.max_concurrent_streams,
                state.clone(),
                cut.clone(),
                tls.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut next = 0;
    let mut stopped = std::pin::pin!(state.stopped());
    while let Some((stream, peer)) =
        crate::conn::accept(&listener, stopped.as_mut(), Transport::Grpc).await
    {
        let (guard, health_only) = match connections.admit(peer, Transport::Grpc) {
            Admission::Served(guard) => (guard, false),
            Admission::HealthOnly(guard) => (guard, true),
            Admission::Refused => continue,
        };
        // Nagle would hold small frames (one event at a time to a subscriber that sends
        // nothing back) until the peer's delayed ACK, about 2 ms here.
        let stream = match stream.set_nodelay(true).and_then(|()| stream.into_std()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "a gRPC connection failed as it was accepted");
                continue;
            }
        };
        let accepted = Accepted {
            stream,
            guard,
            health_only,
        };
        if fronts[next].connections.send(accepted).await.is_err() {
            // Its thread ended with an error (returned below); serving on without it
            // would drop every connection handed to it.
            tracing::error!(
                thread = next,
                "a gRPC thread stopped: no longer accepting gRPC connections"
            );
            break;
        }
        next = (next + 1) % fronts.len();
    }
    drop(listener);
    let mut result = Ok(());
    for front in fronts {
        drop(front.connections);
        let ended = front.done.await.unwrap_or_else(|_| {
            Err(ServerError::GrpcThread(std::io::Error::other(
                "it panicked",
            )))
        });
        result = result.and(ended);
    }
    result
}

/// The services, behind the authentication middleware: everything (health, reflection
/// v1 and v1alpha for grpcio-reflection and older grpcurl, the bus, the coordinator),
/// and health alone for connections let in from the reserve.
async fn services(state: &Arc<State>) -> Services {
    let limits = &state.limits;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<EventBusServer<GrpcBus>>()
        .await;
    health_reporter
        .set_serving::<CoordinatorServer<GrpcCoordinator>>()
        .await;
    tokio::spawn(watch_health(state.clone(), health_reporter));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ganglion_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the committed descriptor set decodes");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the committed descriptor set decodes");
    let bus = EventBusServer::new(GrpcBus {
        state: state.clone(),
    })
    .max_decoding_message_size(limits.max_grpc_message_bytes)
    .max_encoding_message_size(limits.max_grpc_message_bytes);
    let coordinator = CoordinatorServer::new(GrpcCoordinator {
        state: state.clone(),
    })
    .max_decoding_message_size(limits.max_grpc_message_bytes)
    .max_encoding_message_size(limits.max_grpc_message_bytes);
    let authenticate =
        axum::middleware::from_fn_with_state(state.clone(), crate::auth::authenticate);
    Services {
        all: tonic::service::Routes::from(
            tonic::service::Routes::new(health_service.clone())
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(bus)
                .add_service(coordinator)
                .into_axum_router()
                .layer(authenticate.clone()),
        )
        .prepare(),
        health_only: tonic::service::Routes::from(
            tonic::service::Routes::new(health_service)
                .into_axum_router()
                .fallback(too_many_connections)
                .layer(authenticate),
        )
        .prepare(),
    }
}

/// One gRPC front: a thread with a current-thread runtime that serves the connections
/// handed to it. A connection's HTTP/2 framing, its calls and their replies all run on
/// one thread, so a call costs no wake-ups between worker threads, and fronts share
/// nothing but the bus and the coordinator behind them.
struct Front {
    connections: mpsc::Sender<Accepted>,
    done: tokio::sync::oneshot::Receiver<Result<(), ServerError>>,
}

impl Front {
    fn start(
        index: usize,
        services: Services,
        max_streams: u32,
        state: Arc<State>,
        mut cut: watch::Receiver<()>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Front, ServerError> {
        let (connections, mut accepted) = mpsc::channel::<Accepted>(64);
        let (finished, done) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::GrpcThread)?;
        std::thread::Builder::new()
            .name(format!("ganglion-grpc-{index}"))
            .spawn(move || {
                let served = runtime.block_on(async move {
                    // Each connection task holds a sender; all gone: all served.
                    let (open, mut drained) = mpsc::channel::<()>(1);
                    loop {
                        let next = tokio::select! {
                            next = accepted.recv() => next,
                            _ = cut.changed() => return Ok(()),
                        };
                        let Some(Accepted {
                            stream,
                            guard,
                            health_only,
                        }) = next
                        else {
                            break;
                        };
                        let stream = tokio::net::TcpStream::from_std(stream)
                            .map_err(ServerError::GrpcThread)?;
                        let service = if health_only {
                            services.health_only.clone()
                        } else {
                            services.all.clone()
                        };
                        let (open, stopped) = (open.clone(), state.stopped());
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let connections = guard.connections().clone();
                            if let Some((io, peer)) =
                                conn::secure(stream, tls.as_ref(), &connections).await
                            {
                                conn::serve_http2(io, peer, service, max_streams, guard, stopped)
                                    .await;
                            }
                            drop(open);
                        });
                    }
                    drop(open);
                    tokio::select! {
                        _ = drained.recv() => {}
                        _ = cut.changed() => {}
                    }
                    Ok(())
                });
                // Dropping the runtime ends every call still open on this front.
                drop(runtime);
                let _ = finished.send(served);
            })
            .map_err(ServerError::GrpcThread)?;
        Ok(Front { connections, done })
    }
}

/// Reports NOT_SERVING while HTTP health says 503 (the log refuses appends, the
/// coordinator cannot write its state), SERVING otherwise.
async fn watch_health(state: Arc<State>, reporter: tonic_health::server::HealthReporter) {
    let mut serving = true;
    let mut stopped = std::pin::pin!(state.stopped());
    loop {
        let (healthy, _) = state.health();
        if healthy != serving {
            serving = healthy;
            if healthy {
                reporter.set_serving::<EventBusServer<GrpcBus>>().await;
            } else {
                reporter.set_not_serving::<EventBusServer<GrpcBus>>().await;
            }
        }
        tokio::select! {
            _ = &mut stopped => {
                reporter.set_not_serving::<EventBusServer<GrpcBus>>().await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
