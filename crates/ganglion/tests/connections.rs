//! Connections that would exhaust the server: thousands of idle sockets and half-sent
//! request heads, and every slot busy. Health keeps answering over HTTP and gRPC; idle
//! sockets are timed out and make room; busy caps leave a reserve for health checks.
//! Real sockets against a real `ganglion serve`, with generous time bounds.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn connect(addr: &str) -> TcpStream {
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_nodelay(true).unwrap();
    socket
}

fn metric(http: &str, name: &str) -> u64 {
    let (status, body) = common::http(http, "GET", "/metrics", "");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn grpc_health(grpc: &str) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(grpc.to_owned())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await;
        let Ok(channel) = channel else { return false };
        let status = tokio::time::timeout(
            Duration::from_secs(5),
            HealthClient::new(channel).check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await;
        matches!(status, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32)
    })
}

/// Whether the server has closed `socket` (end of file or a reset), waiting up to `wait`.
fn closed_by_server(socket: &mut TcpStream, wait: Duration) -> bool {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response or an HTTP/2 preface: read on
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn two_thousand_idle_sockets_leave_health_answering_and_are_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_with_env(
        &dir.path().join("data"),
        &[("GANGLION__SERVER__HEADER_READ_TIMEOUT_MS", "3000")],
    );
    let http_addr: SocketAddr = served.http.parse().unwrap();
    let grpc_addr = served.grpc.trim_start_matches("http://").to_owned();

    // 2,100 sockets that never finish a request: half-sent HTTP heads, and gRPC
    // connections that send nothing (not even the HTTP/2 preface).
    let mut idle = Vec::new();
    for i in 0..2100 {
        if i % 2 == 0 {
            let mut s = connect(&http_addr.to_string());
            s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            idle.push(s);
        } else {
            idle.push(connect(&grpc_addr));
        }
    }

    // Health answers over both, from the same address as the idle sockets.
    let (status, body) = http(&served.http, "GET", "/api/v1/health", "");
    assert_eq!(status, 200, "{body}");
    assert!(grpc_health(&served.grpc), "gRPC health answers SERVING");
    // More than 1,000 from one address: the idle ones made room.
    assert!(metric(&served.http, "ganglion_server_connections_evicted_total") > 0);
    let open = metric(&served.http, "ganglion_server_connections{");
    assert!(open <= 1000, "{open} connections open from one address");

    // Every idle socket is closed by the server: made room, or timed out.
    let started = Instant::now();
    let mut closed = 0;
    for socket in &mut idle {
        let left = Duration::from_secs(20).saturating_sub(started.elapsed());
        if closed_by_server(socket, left.max(Duration::from_millis(10))) {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len(), "{closed} of {} closed", idle.len());
    assert!(metric(&served.http, "ganglion_server_connections_timed_out_total") > 0);
    let (status, _) = http(&served.http, "GET", "/api/v1/health", "");
    assert_eq!(status, 200);
}

#[test]
fn when_every_connection_is_busy_new_ones_still_get_health() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_with_env(
        &dir.path().join("data"),
        &[("GANGLION__LIMITS__MAX_CONNECTIONS_PER_PEER", "20")],
    );
    // Twenty live event streams: busy connections, none idle to make room.
    let streams: Vec<TcpStream> = (0..20)
        .map(|_| open_stream(&served.http, "/api/v1/stream?pattern=a.%3E"))
        .collect();
    // A new connection is served health, and a clear 503 for anything else.
    let (status, body) = http(&served.http, "GET", "/api/v1/health", "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(&served.http, "GET", "/api/v1/topics", "");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("health checks and /metrics only"), "{body}");
    assert!(grpc_health(&served.grpc));
    assert!(
        metric(
            &served.http,
            "ganglion_server_connections_health_only_total"
        ) >= 3
    );
    drop(streams);
    // Once the streams end, connections are served in full again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = http(&served.http, "GET", "/api/v1/topics", "");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "served in full again");
        std::thread::sleep(Duration::from_millis(100));
    }
}
