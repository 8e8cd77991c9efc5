//! A server on ephemeral ports, and a tiny HTTP/1.1 client (no extra dependencies).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ganglion_bus::{Bus, BusOptions};
use ganglion_core::bus::StorageClass;
use ganglion_core::{Engine, Pattern};
use ganglion_server::{ServerError, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test after [`WAIT`].
pub async fn soon<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[derive(Debug)]
pub struct Server {
    pub grpc: String,
    pub grpc_addr: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

/// Bus options for tests: data in `dir`, `eph.>` ephemeral.
pub fn bus_options(dir: &std::path::Path) -> BusOptions {
    let mut options = BusOptions::new(dir);
    options
        .storage_classes
        .push((Pattern::new("eph.>").unwrap(), StorageClass::Ephemeral));
    options.max_event_bytes = 64 * 1024;
    options
}

impl Server {
    pub async fn start(bus: impl Engine, options: ServerOptions) -> Server {
        Server::start_on("127.0.0.1:0".parse().unwrap(), bus, options).await
    }

    pub async fn start_with(
        bus: impl Engine,
        coordinator: Arc<ganglion_coordinator::Coordinator>,
        options: ServerOptions,
    ) -> Server {
        Server::launch(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(bus),
            Some(coordinator),
            options,
        )
        .await
    }

    pub async fn start_on(
        grpc_addr: SocketAddr,
        bus: impl Engine,
        options: ServerOptions,
    ) -> Server {
        Server::launch(grpc_addr, Arc::new(bus), None, options).await
    }

    async fn launch(
        grpc_addr: SocketAddr,
        bus: Arc<dyn Engine>,
        coordinator: Option<Arc<ganglion_coordinator::Coordinator>>,
        options: ServerOptions,
    ) -> Server {
        let grpc = TcpListener::bind(grpc_addr).await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let task = match coordinator {
            Some(c) => tokio::spawn(ganglion_server::serve_with(
                bus, c, grpc, http, options, stopped,
            )),
            None => tokio::spawn(ganglion_server::serve(bus, grpc, http, options, stopped)),
        };
        Server {
            grpc: format!("http://{grpc_addr}"),
            grpc_addr,
            http: http_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        soon("the server to stop", self.task.take().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An HTTP response: status, headers (lower-cased names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn request_bytes(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    request_with(method, path, &[], body)
}

/// An HTTP/1.1 request with extra `headers`.
pub fn request_with(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    bytes
}

pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Response {
    http_bytes(addr, method, path, body.map(str::as_bytes)).await
}

pub async fn http_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Response {
    soon("an HTTP response", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may answer (413) before reading the whole body and close; a failed
        // write is then expected.
        let _ = stream.write_all(&request_bytes(method, path, body)).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        parse(&raw)
    })
    .await
}

/// Sends a request with a bearer token (if any) and reads the whole response.
pub async fn http_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    soon("an HTTP response", async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream
            .write_all(&request_with(
                method,
                path,
                &headers,
                body.map(str::as_bytes),
            ))
            .await;
        read_response(&mut stream, path).await
    })
    .await
}

/// Reads a response: to its end, or (for an event stream, which does not end) its head.
pub async fn read_response(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    path: &str,
) -> Response {
    let mut raw = Vec::new();
    if path.starts_with("/api/v1/stream") {
        let mut buf = [0u8; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let head = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(raw.len(), |at| at + 4);
        raw.truncate(head);
    } else {
        let _ = stream.read_to_end(&mut raw).await;
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A Server-Sent Events stream being read.
#[derive(Debug)]
pub struct Sse {
    stream: TcpStream,
    buffer: String,
}

impl Sse {
    pub async fn open(addr: SocketAddr, path: &str) -> (u16, Sse) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&request_bytes("GET", path, None))
            .await
            .unwrap();
        let mut sse = Sse {
            stream,
            buffer: String::new(),
        };
        let head = sse.read_until("\r\n\r\n").await;
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, sse)
    }

    async fn read_until(&mut self, marker: &str) -> String {
        soon("SSE data", async {
            loop {
                if let Some(at) = self.buffer.find(marker) {
                    let taken: String = self.buffer.drain(..at + marker.len()).collect();
                    return taken;
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the SSE stream ended; got {:?}", self.buffer);
                self.buffer.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
        .await
    }

    /// The next `data:` payload of an event named `name`.
    pub async fn next_data(&mut self, name: &str) -> String {
        loop {
            let line = self.read_until("\n").await;
            if line.starts_with(&format!("event: {name}")) {
                let data = self.read_until("\n").await;
                // Chunked framing may split lines; data lines carry no framing text.
                if let Some(data) = data.trim().strip_prefix("data: ") {
                    return data.to_owned();
                }
            }
        }
    }
}

pub fn shared<T>(value: T) -> Arc<T> {
    Arc::new(value)
}

/// Opens the bus in `dir` again after a server on it stopped: `serve` returns once the
/// log is synced, but connection tasks may drop their last handle on the old bus (and
/// its directory lock) a moment later.
pub async fn reopen_bus(dir: &std::path::Path) -> Bus {
    soon("the old bus to let go of its directory", async {
        loop {
            match Bus::open(bus_options(dir)) {
                Ok(bus) => return bus,
                Err(e) if e.to_string().contains("locked") => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopening the bus: {e}"),
            }
        }
    })
    .await
}
