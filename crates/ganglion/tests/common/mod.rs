//! Helpers shared by the binary's tests: a real `ganglion serve` on ephemeral ports,
//! the client commands, and plain HTTP requests.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ganglion");
// `ganglion serve` runs `GANGLION_TEST_SERVER_BIN` when set: to show that a test fails
// against an earlier build.

pub struct Served {
    pub child: Child,
    pub grpc: String,
    pub http: String,
    pub log: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ganglion serve` on ports the OS picks and reads them off its start-up line.
pub fn serve(data_dir: &std::path::Path) -> Served {
    serve_with_env(data_dir, &[])
}

/// [`serve`] with extra environment variables (`GANGLION__…` settings).
pub fn serve_with_env(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Served {
    serve_with(data_dir, env, &[])
}

/// [`serve`] with extra environment variables and command-line flags.
pub fn serve_with(data_dir: &std::path::Path, env: &[(&str, &str)], flags: &[&str]) -> Served {
    serve_config(
        data_dir,
        "coordinator:\n  pools:\n    gpu: { gpus: [\"0\"] }\n    redis: { capacity: 20 }\n  quotas:\n    claude: { rule: \"100 per 1h\", shares: { advisor: 2 } }\n  breakers:\n    claude-api: {}\n",
        env,
        flags,
    )
}

/// `ganglion serve --config <data_dir>.yaml` holding `yaml`, on ephemeral ports.
pub fn serve_config(
    data_dir: &std::path::Path,
    yaml: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> Served {
    let config = data_dir.with_extension("yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut child =
        Command::new(std::env::var("GANGLION_TEST_SERVER_BIN").unwrap_or_else(|_| BIN.to_owned()))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("ganglion serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .expect("a start-up line within 30 s");
        if line.contains("ganglion serving") {
            break line;
        }
    };
    let after = |marker: &str| {
        let rest = &line[line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} in {line}"))
            + marker.len()..];
        rest.split(|c: char| c == ',' || c.is_whitespace())
            .next()
            .unwrap()
            .to_owned()
    };
    assert!(line.contains(&data_dir.display().to_string()), "{line}");
    Served {
        grpc: format!("http://{}", after("gRPC on ")),
        http: after("HTTP on "),
        child,
        log,
    }
}

/// Sends SIGTERM and waits (up to 30 s) for a clean exit.
pub fn stop(server: &mut Served) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = (0..300)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            server.child.try_wait().unwrap()
        })
        .expect("the server exits within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

pub fn ganglion(server: &Served, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--server", &server.grpc])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Runs the binary without a server, for commands that work on files.
pub fn offline(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts a GET whose response streams (SSE) and returns once its head has arrived;
/// the stream stays open until the connection is dropped.
pub fn open_stream(addr: &str, path: &str) -> std::net::TcpStream {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

/// A GET over a plain TCP connection (the binary's tests carry no HTTP client).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    body.to_owned()
}

/// One HTTP/1.1 request over a plain TCP connection: the status and the body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A test that needs something this machine may lack: skipped with the reason, except
/// under `CI=true`, where it fails.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// A small tmpfs mounted for a test (unmounted on drop): a disk that fills.
pub struct SmallDisk {
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (after printing why) where mounting is not allowed.
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(SmallDisk { path, _dir: dir }),
            Ok(out) => {
                skip_or_fail(&format!(
                    "cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip_or_fail(&format!("cannot run mount: {e}"));
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A process's resident memory now and at its peak (VmRSS, VmHWM), in bytes.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}
