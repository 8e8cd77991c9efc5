//! The layer order, validation with file and line, secrets, and hot reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ganglion_config::{ConfigHandle, Loader, Origin};

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn later_layers_win_and_every_value_knows_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = write(
        d,
        "ganglion.yaml",
        "bus:\n  batch_window_ms: 200\n  dedupe_window_ms: 1000\nlimits:\n  max_sse_clients: 10\n  max_replay_events: 5\n",
    );
    let env = write(
        d,
        "environments/staging.yaml",
        "bus:\n  batch_window_ms: 300\nlimits:\n  max_sse_clients: 20\n",
    );
    let component = write(
        d,
        "components/trainer.yaml",
        "limits:\n  max_sse_clients: 30\nfeatures:\n  quick:\n    enabled: false\n    set:\n      limits:\n        max_replay_events: 7\n        max_sse_clients: 40\n",
    );
    let loader = Loader::new(d)
        .with_env_vars(vars(&[
            ("GANGLION_ENV", "staging"),
            ("GANGLION_COMPONENT", "trainer"),
            ("GANGLION__BUS__DEDUPE_WINDOW_MS", "2000"),
            ("GANGLION__FEATURES__QUICK__ENABLED", "true"),
            ("GANGLION__LIMITS__MAX_SSE_CLIENTS", "50"),
            ("UNRELATED", "x"),
        ]))
        .flag("limits.max_sse_clients", "60", "--max-sse-clients");
    let loaded = loader.load().unwrap();
    let c = loaded.config();
    // defaults → base → environment → component → feature → env var → flag
    assert_eq!(c.bus.batch_window_ms, 300);
    assert_eq!(*loaded.origin("bus.batch_window_ms"), Origin::file(&env, 2));
    assert_eq!(c.bus.dedupe_window_ms, 2000);
    assert_eq!(
        *loaded.origin("bus.dedupe_window_ms"),
        Origin::Env("GANGLION__BUS__DEDUPE_WINDOW_MS".into())
    );
    // The feature was switched on by an environment variable; its `set` lies under the
    // variables and flags but over the component.
    assert!(c.feature("quick"));
    assert_eq!(c.limits.max_replay_events, 7);
    assert_eq!(
        *loaded.origin("limits.max_replay_events"),
        Origin::file(&component, 8)
    );
    assert_eq!(c.limits.max_sse_clients, 60);
    assert_eq!(
        *loaded.origin("limits.max_sse_clients"),
        Origin::Flag("--max-sse-clients".into())
    );
    assert_eq!(c.server.grpc_addr, "127.0.0.1:50051");
    assert_eq!(*loaded.origin("server.grpc_addr"), Origin::Default);
    assert_eq!(loaded.files(), [base, env, component]);

    // Without the variables: the environment and component layers are not read.
    let plain = Loader::new(d).load().unwrap();
    assert_eq!(plain.config().bus.batch_window_ms, 200);
    assert_eq!(plain.config().limits.max_sse_clients, 10);
    assert!(!plain.config().feature("quick"));
}

#[test]
fn validation_reports_every_problem_with_file_line_and_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "ganglion.yaml",
        "server:\n  grpc_threads: 100000\nbus:\n  batch_windw_ms: 50\n  max_event_bytes: 0\nlimits:\n  max_sse_clients: lots\ntelemetry:\n  log_format: xml\ncoordinator:\n  quotas:\n    claude:\n      shares: { a: 1 }\n",
    );
    let problems = Loader::new(dir.path()).load().unwrap_err();
    let lines: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
    let f = base.display();
    let expect = [
        format!("{f}:2: server.grpc_threads: must be at most 1024, found 100000"),
        format!("{f}:4: bus.batch_windw_ms: unknown key (did you mean `batch_window_ms`?)"),
        format!("{f}:5: bus.max_event_bytes: must be at least 1, found 0"),
        format!("{f}:7: limits.max_sse_clients: expected integer, found the string \"lots\""),
        format!("{f}:9: telemetry.log_format: expected"),
        format!("{f}:12: coordinator.quotas.claude: is missing the required key `rule`"),
    ];
    for e in &expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e.as_str())),
            "missing {e:?} in {lines:#?}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");

    // YAML that does not parse names its line too.
    write(
        dir.path(),
        "ganglion.yaml",
        "bus:\n  batch_window_ms: 1\n  x: [\n",
    );
    let problems = Loader::new(dir.path()).load().unwrap_err();
    assert!(
        problems.0[0].to_string().contains("not valid YAML"),
        "{problems}"
    );
    assert!(matches!(problems.0[0].origin, Origin::File { line, .. } if line >= 3));

    // An environment variable of the wrong type names the variable.
    write(dir.path(), "ganglion.yaml", "");
    let problems = Loader::new(dir.path())
        .with_env_vars(vars(&[("GANGLION__BUS__BATCH_WINDOW_MS", "soon")]))
        .load()
        .unwrap_err();
    assert_eq!(
        problems.0[0].to_string(),
        "env GANGLION__BUS__BATCH_WINDOW_MS: bus.batch_window_ms: expected integer, found the string \"soon\""
    );
}

#[test]
fn checks_beyond_the_schema_name_the_line_of_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "ganglion.yaml",
        "coordinator:\n  quotas:\n    claude:\n      rule: lots per hour\n",
    );
    let problems = Loader::new(dir.path())
        .validate_with(|c| {
            c.coordinator
                .quotas
                .iter()
                .filter(|(_, q)| !q.rule.starts_with(|ch: char| ch.is_ascii_digit()))
                .map(|(name, _)| {
                    (
                        format!("coordinator.quotas.{name}.rule"),
                        "is not `<count> per <duration>`".to_owned(),
                    )
                })
                .collect()
        })
        .load()
        .unwrap_err();
    assert_eq!(
        problems.0[0].to_string(),
        format!(
            "{}:4: coordinator.quotas.claude.rule: is not `<count> per <duration>`",
            base.display()
        )
    );
}

#[test]
fn secrets_come_only_from_the_environment_or_a_file_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "ganglion.yaml",
        "telemetry:\n  otlp_token: hunter2\n",
    );
    let problems = Loader::new(dir.path()).load().unwrap_err();
    assert_eq!(problems.0.len(), 1, "{problems}");
    assert!(
        problems.0[0].to_string().starts_with(&format!(
            "{}:2: telemetry.otlp_token: is a secret",
            base.display()
        )),
        "{problems}"
    );
    assert!(!problems.to_string().contains("hunter2"));

    write(dir.path(), "ganglion.yaml", "");
    let loaded = Loader::new(dir.path())
        .with_env_vars(vars(&[("GANGLION__TELEMETRY__OTLP_TOKEN", "hunter2")]))
        .load()
        .unwrap();
    let token = loaded.config().telemetry.otlp_token.as_ref().unwrap();
    assert_eq!(token.expose(), "hunter2");
    let shown = format!("{:?} {:?}", loaded.show(), loaded.config());
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"));

    let secret = write(dir.path(), "secrets/token", "from-a-file\n");
    write(
        dir.path(),
        "ganglion.yaml",
        &format!("telemetry:\n  otlp_token_file: {}\n", secret.display()),
    );
    let loaded = Loader::new(dir.path()).load().unwrap();
    let token = loaded.config().telemetry.otlp_token.as_ref().unwrap();
    assert_eq!(token.expose(), "from-a-file");
    assert!(!format!("{:?}", loaded.show()).contains("from-a-file"));
}

#[tokio::test]
async fn a_valid_reload_notifies_watchers_and_an_invalid_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ganglion.yaml",
        "bus:\n  batch_window_ms: 100\nserver:\n  grpc_addr: 127.0.0.1:1\n",
    );
    let handle = ConfigHandle::load(Loader::new(dir.path())).unwrap();
    let mut window = handle.watch("bus.batch_window_ms");
    let limits = handle.watch("limits");

    write(
        dir.path(),
        "ganglion.yaml",
        "bus:\n  batch_window_ms: 25\nserver:\n  grpc_addr: 127.0.0.1:2\n",
    );
    let reloaded = handle.reload().unwrap();
    assert_eq!(
        reloaded.changed,
        ["bus.batch_window_ms", "server.grpc_addr"]
    );
    assert_eq!(reloaded.restart_required, ["server.grpc_addr"]);
    assert!(window.has_changed().unwrap());
    assert_eq!(window.borrow_and_update().bus.batch_window_ms, 25);
    assert!(!limits.has_changed().unwrap(), "limits did not change");
    assert_eq!(handle.get().bus.batch_window_ms, 25);

    // Invalid: refused, the old config stays, nobody is told.
    write(dir.path(), "ganglion.yaml", "bus:\n  batch_window_ms: 0\n");
    let problems = handle.reload().unwrap_err();
    assert!(
        problems.to_string().contains("bus.batch_window_ms"),
        "{problems}"
    );
    assert_eq!(handle.get().bus.batch_window_ms, 25);
    assert!(!window.has_changed().unwrap());
}

/// Changes `bus.batch_window_ms` from 100 to 40 in the file of a watched config (with
/// `debounce`), while `meanwhile` runs, and waits for the watcher to apply it.
async fn change_picked_up(debounce: Duration, meanwhile: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ganglion.yaml",
        "bus:\n  batch_window_ms: 100\n",
    );
    let handle = ConfigHandle::load(Loader::new(dir.path())).unwrap();
    let mut window = handle.watch("bus.batch_window_ms");
    let _watcher = handle.watch_files(debounce).unwrap();
    meanwhile(dir.path());
    write(dir.path(), "ganglion.yaml", "bus:\n  batch_window_ms: 40\n");
    tokio::time::timeout(Duration::from_secs(10), window.changed())
        .await
        .expect("the watcher reloads within 10 s")
        .unwrap();
    assert_eq!(window.borrow().bus.batch_window_ms, 40);
}

#[tokio::test]
async fn file_changes_are_picked_up_by_the_watcher() {
    change_picked_up(Duration::from_millis(20), |_| {}).await;
}

/// A directory written all the time beside the config (a data directory) must not hold
/// a reload back: before, its writes kept restarting the debounce and a change was never
/// applied while the server was busy.
#[tokio::test]
async fn writes_to_other_files_do_not_delay_a_reload() {
    let mut writer = None;
    change_picked_up(Duration::from_millis(200), |dir| {
        let busy = dir.join("data");
        std::fs::create_dir(&busy).unwrap();
        writer = Some(tokio::spawn(async move {
            for n in 0u64.. {
                std::fs::write(busy.join("segment"), n.to_le_bytes()).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    })
    .await;
    writer.unwrap().abort();
}

#[test]
fn the_committed_example_tree_states_every_default_and_every_layer_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    // ganglion.yaml alone is exactly the defaults, and names every one of them.
    let loaded = Loader::new(&root).load().unwrap();
    assert_eq!(**loaded.config(), ganglion_config::Config::default());
    let unstated: Vec<String> = loaded
        .show()
        .into_iter()
        .filter(|(_, _, origin)| *origin == Origin::Default)
        .map(|(path, _, _)| path)
        .collect();
    assert!(
        unstated.is_empty(),
        "defaults missing from config/ganglion.yaml: {unstated:?}"
    );
    for env in ["development", "staging", "production"] {
        for component in [None, Some("trainer"), Some("advisor")] {
            Loader::new(&root)
                .environment(Some(env.to_owned()))
                .component(component.map(str::to_owned))
                .load()
                .unwrap_or_else(|p| panic!("{env} {component:?}: {p}"));
        }
    }
}

#[test]
fn a_layer_asked_for_by_name_must_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let problems = Loader::new(&root)
        .environment(Some("prodution".into()))
        .load()
        .unwrap_err()
        .to_string();
    assert!(problems.contains("prodution"), "{problems}");
    assert!(
        problems.contains("development, production, staging"),
        "{problems}"
    );
    let problems = Loader::new(&root)
        .component(Some("nobody".into()))
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        problems.contains("components/nobody.yaml does not exist"),
        "{problems}"
    );
}

#[test]
fn the_schema_describes_every_field() {
    let schema = ganglion_config::schema();
    let text = schema.to_string();
    assert!(text.contains("\"additionalProperties\":false"));
    assert!(text.contains("x-secret"));
    // Every property has a description (from its doc comment).
    fn walk(v: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, p) in props {
                if p.get("description").is_none() {
                    missing.push(format!("{path}.{k}"));
                }
            }
        }
        if let Some(defs) = v.get("$defs").and_then(|d| d.as_object()) {
            for (k, d) in defs {
                walk(d, k, missing);
            }
        }
    }
    let mut missing = Vec::new();
    walk(schema, "Config", &mut missing);
    assert!(missing.is_empty(), "{missing:?}");
}
