//! The real binary: `serve` on ephemeral ports, the client commands against it, and a
//! graceful stop on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn serve_publish_replay_topics_dlq_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    assert!(!server.http.is_empty());

    let (ok, out, err) = ganglion(
        &server,
        &[
            "publish",
            "game.state.update",
            r#"{"round": 3}"#,
            "--type",
            "GameStateUpdate",
            "--header",
            "idempotency_key=once",
            "--output",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let ack = json(&out);
    assert_eq!(ack["duplicate"], false);
    let seq = ack["seq"].as_u64().unwrap();
    let (ok, out, _) = ganglion(
        &server,
        &[
            "publish",
            "game.state.update",
            r#"{"round": 3}"#,
            "--header",
            "idempotency_key=once",
        ],
    );
    assert!(
        ok && out.contains(&format!("seq={seq}")) && out.contains("duplicate"),
        "{out}"
    );

    let (ok, out, err) = ganglion(
        &server,
        &["replay", "game.>", "--from-seq", "1", "--output", "json"],
    );
    assert!(ok, "{err}");
    let events = json(&out)["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"], serde_json::json!({"round": 3}));
    assert_eq!(events[0]["type"], "GameStateUpdate");
    let (ok, out, _) = ganglion(&server, &["replay", "game.*.update", "--since", "1h"]);
    assert!(
        ok && out.contains(r#"game.state.update [GameStateUpdate] {"round":3}"#),
        "{out}"
    );

    let (ok, out, _) = ganglion(&server, &["topics", "--output", "json"]);
    assert!(ok);
    assert_eq!(json(&out)["topics"][0]["topic"], "game.state.update");
    let (ok, out, _) = ganglion(&server, &["dlq", "list", "nobody", "--output", "json"]);
    assert!(ok);
    assert_eq!(json(&out)["dead_letters"], serde_json::json!([]));

    // The coordinator configured in the YAML file.
    let (ok, out, err) = ganglion(&server, &["resources", "--output", "json"]);
    assert!(ok, "{err}");
    let resources = json(&out);
    // `bench` is there by default, for `ganglion bench`.
    assert_eq!(resources["pools"][0]["name"], "bench", "{out}");
    assert_eq!(resources["pools"][1]["name"], "gpu", "{out}");
    assert_eq!(resources["pools"][2]["free"], 20);
    assert_eq!(resources["quotas"][0]["limit"], 100);
    // One rendering of the status: the CLI prints what the HTTP API answers.
    assert_eq!(
        resources,
        json(&http_get(&server.http, "/api/v1/resources")),
        "the CLI's JSON and the API's differ"
    );
    let (ok, out, _) = ganglion(&server, &["resources"]);
    assert!(
        ok && out.contains("claude") && out.contains("0/100"),
        "{out}"
    );

    // Bad input: a clear error naming what was wrong, and a failing exit status.
    let (ok, _, err) = ganglion(&server, &["publish", "game..x", "{}"]);
    assert!(!ok && err.contains("game..x"), "{err}");
    let (ok, _, err) = ganglion(&server, &["publish", "game.x", "{not json"]);
    assert!(!ok && err.contains("JSON"), "{err}");
    let (ok, _, err) = ganglion(&server, &["replay", ">", "--since", "yesterday"]);
    assert!(!ok && err.contains("--since"), "{err}");

    // SIGTERM: a graceful stop, exit status 0.
    let mut server = server;
    stop(&mut server);
    let log: Vec<String> = server.log.iter().collect();
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("stopped cleanly")), "{log:?}");

    // The data survived: a new server replays it.
    let server = serve(dir.path());
    let (ok, out, _) = ganglion(&server, &["replay", ">", "--output", "json"]);
    assert!(ok);
    assert_eq!(json(&out)["events"].as_array().unwrap().len(), 1);
}

#[test]
fn changed_batch_window_quota_and_breaker_apply_to_the_running_server_and_a_bad_change_is_refused()
{
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = serve(&data_dir);
    let config = data_dir.with_extension("yaml");
    let wait_for = |what: &str, matches: &dyn Fn(&str) -> bool| loop {
        let line = served
            .log
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{what} within 30 s"));
        if matches(&line) {
            return line;
        }
    };
    // The start-up configuration is JSON-logged (stderr is not a terminal).
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{original}bus:\n  batch_window_ms: 30\n")).unwrap();
    let line = wait_for("the new batch window", &|l| {
        l.contains("default batch window set")
    });
    assert!(
        line.starts_with('{') && line.contains("\"window_ms\":30"),
        "{line}"
    );

    // A quota's rule and a breaker's threshold change live too.
    let changed = original
        .replace("100 per 1h", "50 per 1h")
        .replace("claude-api: {}", "claude-api: { failure_threshold: 2 }");
    assert_ne!(changed, original);
    std::fs::write(&config, &changed).unwrap();
    wait_for("the new quota rule", &|l| l.contains("quota changed"));
    wait_for("the new breaker threshold", &|l| {
        l.contains("circuit breaker changed")
    });
    let resources = json(&http_get(&served.http, "/api/v1/resources"));
    let claude = resources["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "claude")
        .unwrap_or_else(|| panic!("{resources}"));
    assert_eq!(claude["limit"], 50, "{claude}");

    // An invalid change is refused with its file and line; the server keeps running.
    std::fs::write(&config, format!("{original}bus:\n  batch_window_ms: 0\n")).unwrap();
    let line = wait_for("the refusal", &|l| l.contains("reload refused"));
    assert!(
        line.contains("bus.batch_window_ms: must be at least 1"),
        "{line}"
    );
    assert!(line.contains(&format!("{}:", config.display())), "{line}");
    let (ok, out, _) = ganglion(&served, &["topics", "--output", "json"]);
    assert!(ok, "the server still answers: {out}");
}

#[test]
fn config_validate_names_file_line_and_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ganglion.yaml");
    std::fs::write(
        &file,
        "bus:\n  batch_windw_ms: 5\nlimits:\n  max_sse_clients: 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "validate", "--config"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert!(
        stderr.contains(&format!(
            "{f}:2: bus.batch_windw_ms: unknown key (did you mean `batch_window_ms`?)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{f}:4: limits.max_sse_clients: must be at least 1"
        )),
        "{stderr}"
    );

    std::fs::write(&file, "bus:\n  batch_window_ms: 5\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "validate", "--config"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `promtool` with `args`, feeding `stdin`; `None` when promtool is not installed
/// (then the test skips, except under `CI=true`).
fn promtool(args: &[&str], stdin: &str) -> Option<(bool, String)> {
    use std::io::Write as _;
    let child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is required under CI=true (Debian package `prometheus`): {e}"
            );
            eprintln!("skipping: promtool not found ({e}); install Debian's `prometheus` package");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// The scrape declares exactly the families of `ganglion_telemetry::metrics::ALL`, each
/// with its kind, and every sample carries exactly its family's labels.
fn assert_matches_the_catalogue(scrape: &str) {
    use ganglion_telemetry::metrics::{ALL, Kind, family};
    let mut declared = std::collections::BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let f = family(name).unwrap_or_else(|| panic!("{name} is not in the catalogue"));
            assert_eq!(f.kind.as_str(), kind, "{name}");
            declared.insert(name);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.split([' ', '{']).next().unwrap();
        let f = family(series)
            .or_else(|| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| family(series.strip_suffix(s)?))
                    .filter(|f| f.kind == Kind::Histogram)
            })
            .unwrap_or_else(|| panic!("sample {line:?} of no family in the catalogue"));
        let labels: Vec<&str> = line
            .split_once('{')
            .map(|(_, rest)| rest.split_once('}').unwrap().0)
            .into_iter()
            .flat_map(|l| l.split(','))
            .filter_map(|pair| pair.split_once('=').map(|(name, _)| name))
            .filter(|name| *name != "le")
            .collect();
        assert_eq!(labels, f.labels, "{line}");
    }
    let undeclared: Vec<&str> = ALL
        .iter()
        .map(|f| f.name)
        .filter(|name| !declared.contains(name))
        .collect();
    assert!(
        undeclared.is_empty(),
        "in the catalogue, not in the scrape: {undeclared:?}"
    );
}

#[test]
fn the_scrape_and_the_alert_rules_pass_promtool_and_deploy_uses_only_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("data"));
    // A subscription (an SSE stream) is open, so per-subscription series exist.
    let _stream = open_stream(&served.http, "/api/v1/stream?pattern=game.%3E");
    let (ok, _, err) = ganglion(&served, &["publish", "game.state.update", "{}"]);
    assert!(ok, "{err}");
    let scrape = http_get(&served.http, "/metrics");
    assert!(
        scrape.contains("ganglion_bus_delivered_events_total{subscription=\"sub-"),
        "{scrape}"
    );

    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let rules = deploy.join("prometheus/alerts.yaml");
    let dashboard = std::fs::read_to_string(deploy.join("grafana/ganglion.json")).unwrap();
    let dashboard_json = json(&dashboard);
    assert_eq!(dashboard_json["uid"], "ganglion");

    // Every ganglion_/process_ series the rules and the dashboard query is exported.
    let exported: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_matches_the_catalogue(&scrape);
    let text = format!("{}{dashboard}", std::fs::read_to_string(&rules).unwrap());
    let mut referenced = std::collections::BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("ganglion_") || word.starts_with("process_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s).filter(|b| exported.contains(b)))
                .unwrap_or(word);
            referenced.insert(base.to_owned());
        }
    }
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    assert!(referenced.len() >= 15, "{referenced:?}");

    let Some((ok, out)) = promtool(&["check", "metrics"], &scrape) else {
        return;
    };
    assert!(ok, "promtool check metrics: {out}\n{scrape}");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], "").unwrap();
    assert!(ok, "promtool check rules: {out}");
    assert!(out.contains("6 rules found"), "{out}");
}

#[test]
fn the_server_exports_its_publish_span_over_otlp_in_the_publishers_trace() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut receiver = runtime
        .block_on(ganglion_telemetry::testing::OtlpReceiver::start())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_with_env(
        &dir.path().join("data"),
        &[
            ("GANGLION__TELEMETRY__OTLP_ENDPOINT", receiver.endpoint()),
            ("GANGLION__TELEMETRY__OTLP_TOKEN", "t0ken"),
            ("GANGLION__TELEMETRY__SERVICE_NAME", "ganglion-e2e"),
        ],
    );
    // The publisher's own span, as another component would send it.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let (ok, _, err) = ganglion(
        &server,
        &[
            "publish",
            "orders.placed",
            "{}",
            "--header",
            &format!("traceparent=00-{trace_id}-{parent}-01"),
        ],
    );
    assert!(ok, "{err}");
    // Spans still buffered are exported before the server exits.
    stop(&mut server);
    let spans = runtime
        .block_on(receiver.wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|s| s.name == "publish")
        }))
        .expect("the publish span reached the collector");
    let publish = spans.iter().find(|s| s.name == "publish").unwrap();
    assert_eq!(publish.trace_id, trace_id, "{publish:#?}");
    assert_eq!(publish.parent_span_id, parent);
    assert_eq!(publish.service_name, "ganglion-e2e");
    assert_eq!(publish.authorization.as_deref(), Some("Bearer t0ken"));
    assert_eq!(
        publish.attributes["messaging.destination.name"],
        "orders.placed"
    );
}

#[test]
fn a_damaged_log_stops_serve_and_log_verify_and_repair_mend_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = serve(&data);
    for round in 1..=5 {
        let (ok, _, err) = ganglion(
            &server,
            &["publish", "game.round", &format!("{{\"round\": {round}}}")],
        );
        assert!(ok, "{err}");
    }
    stop(&mut server);
    drop(server);
    let segment = data.join("log").join("00000000000000000001.log");
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let data_arg = data.to_str().unwrap();

    // `serve` refuses, says what is missing and how to look and mend.
    let config = data.with_extension("yaml");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .args(["--data-dir", data_arg])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("1 acknowledged records are missing"), "{err}");
    assert!(err.contains("ganglion log verify --data-dir"), "{err}");

    let (ok, out, err) = offline(&["log", "verify", "--data-dir", data_arg, "--output", "json"]);
    assert!(!ok, "verify fails when the log would not open: {err}");
    let report = json(&out);
    assert_eq!(report["opens"], false);
    assert_eq!(report["findings"][0]["refuses_open"], true);
    assert!(
        report["findings"][0]["repair"]
            .as_str()
            .unwrap()
            .contains("continue numbering at 6")
    );

    let (ok, _, err) = offline(&["log", "repair", "--data-dir", data_arg]);
    assert!(!ok && err.contains("--drop-damaged-tail"), "{err}");
    let (ok, out, err) = offline(&[
        "log",
        "repair",
        "--drop-damaged-tail",
        "--data-dir",
        data_arg,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("repaired"), "{out}");
    assert!(
        data.join("log/quarantine")
            .read_dir()
            .unwrap()
            .next()
            .is_some()
    );
    let (ok, _, err) = offline(&["log", "verify", "--data-dir", data_arg]);
    assert!(ok, "{err}");

    let server = serve(&data);
    let (ok, out, err) = ganglion(
        &server,
        &[
            "publish",
            "game.round",
            "{\"round\": 6}",
            "--output",
            "json",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(json(&out)["seq"], 6, "the lost number 5 is not given again");
}

#[test]
fn topics_purge_delete_subscriptions_and_a_server_given_as_host_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let host_port = server.grpc.trim_start_matches("http://").to_owned();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--server", &host_port])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for round in 0..3 {
        let (ok, _, err) = run(&["publish", "game.round", &format!("{{\"round\": {round}}}")]);
        assert!(ok, "{err}");
    }
    let (ok, out, err) = run(&["subscriptions", "--output", "json"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["subscriptions"], serde_json::json!([]));
    let (ok, out, err) = run(&["topics", "purge", "game.>"]);
    assert!(ok, "{err}");
    assert!(out.contains("purged 1 topic(s), 3 event(s)"), "{out}");
    let (ok, out, _) = run(&["replay", "game.>", "--output", "json"]);
    assert!(ok);
    assert_eq!(json(&out)["events"], serde_json::json!([]));
    let (ok, out, err) = run(&["topics", "delete", "game.>", "--output", "json"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["topics"], serde_json::json!(["game.round"]));

    // Nobody listening: the error says so, and what to check.
    let out = Command::new(BIN)
        .args(["topics", "--server", "127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is `ganglion serve` running there?"), "{err}");

    // A layer asked for by name must exist.
    let (ok, _, err) = offline(&["config", "validate", "--env", "prodution"]);
    assert!(!ok && err.contains("\"prodution\" has no layer"), "{err}");
}
