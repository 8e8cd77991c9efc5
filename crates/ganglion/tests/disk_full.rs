//! A full disk, for real (a small tmpfs): health says so, grants that cannot be written
//! are refused, and a restart on the still-full disk starts and serves reads and
//! releases; once space returns, everything resumes. Nothing half-written is left.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Polls `f` until it returns `Some`, for up to 20 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temporaries(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(temporaries(&path));
        } else if path.to_string_lossy().ends_with(".tmp") {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn a_full_disk_turns_health_to_503_refuses_grants_and_a_restart_still_serves_reads() {
    let Some(disk) = SmallDisk::mount("6m") else {
        return;
    };
    let data = disk.path.join("data");
    // Room to give back later.
    let filler = disk.path.join("filler");
    std::fs::write(&filler, vec![1u8; 512 * 1024]).unwrap();

    let mut server = serve(&data);
    let (status, body) = http(
        &server.http,
        "POST",
        "/api/v1/resources/gpu/acquire",
        r#"{"holder": "trainer"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let lease = json(&body)["id"].as_u64().unwrap();

    // Publish events until the disk is full: big ones, then smaller ones for the last
    // pages.
    let mut published = 0;
    let mut refusal = (0, String::new());
    for size in [64 * 1024, 4096, 256] {
        let event = format!(
            r#"{{"topic": "game.state", "payload": "{}"}}"#,
            "x".repeat(size)
        );
        refusal = loop {
            let (status, body) = http(&server.http, "POST", "/api/v1/events", &event);
            if status != 200 {
                break (status, body);
            }
            published += 1;
            assert!(published < 10_000, "the disk never filled");
        };
    }
    assert_eq!(refusal.0, 503, "{}", refusal.1);
    assert!(published > 10, "{published} events fitted");
    let (status, body) = http(&server.http, "GET", "/api/v1/health", "");
    assert_eq!(status, 503, "{body}");
    let health = json(&body);
    assert_eq!(health["components"]["log"]["status"], "no_space", "{body}");
    assert!(
        health["components"]["log"]["reason"]
            .as_str()
            .unwrap()
            .contains("full")
    );

    // Grants need their state written: once a write has failed, they are refused.
    eventually("a grant refused for the full disk", || {
        let (status, body) = http(
            &server.http,
            "POST",
            "/api/v1/resources/redis/acquire",
            r#"{"holder": "cache"}"#,
        );
        (status == 503).then_some(body)
    });
    let (status, body) = http(
        &server.http,
        "POST",
        "/api/v1/quotas/claude/permits",
        r#"{"component": "advisor"}"#,
    );
    assert_eq!(
        status, 503,
        "a quota grant that cannot be journaled is refused: {body}"
    );

    stop(&mut server);
    drop(server);
    assert_eq!(
        temporaries(&data),
        Vec::<String>::new(),
        "nothing half-written is left"
    );

    // A restart on the full disk starts, says it is full, serves reads and releases.
    let server = serve(&data);
    let (status, body) = http(&server.http, "GET", "/api/v1/health", "");
    assert_eq!(status, 503, "{body}");
    let (status, body) = http(
        &server.http,
        "GET",
        "/api/v1/events?pattern=game.%3E&from_seq=1&limit=5",
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["events"].as_array().unwrap().len(), 5);
    let (status, body) = http(&server.http, "GET", "/api/v1/resources", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["pools"][1]["holders"][0]["id"], lease, "{body}");
    let (status, body) = http(
        &server.http,
        "POST",
        &format!("/api/v1/leases/{lease}/release"),
        "",
    );
    assert_eq!(status, 200, "{body}");

    // Space returns: health, appends and grants come back without a restart.
    std::fs::remove_file(&filler).unwrap();
    eventually("health 200 once space returns", || {
        let (status, body) = http(&server.http, "GET", "/api/v1/health", "");
        (status == 200).then_some(body)
    });
    let (status, body) = http(
        &server.http,
        "POST",
        "/api/v1/events",
        r#"{"topic": "game.state", "payload": 1}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["seq"].as_u64().unwrap() > published);
    let (status, body) = http(
        &server.http,
        "POST",
        "/api/v1/resources/gpu/acquire",
        r#"{"holder": "trainer"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        &server.http,
        "POST",
        "/api/v1/quotas/claude/permits",
        r#"{"component": "advisor"}"#,
    );
    assert_eq!(status, 200, "{body}");
    drop(server);
    assert_eq!(temporaries(&data), Vec::<String>::new());
}
