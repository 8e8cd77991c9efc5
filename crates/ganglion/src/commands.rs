//! The client commands: thin wrappers over [`ganglion_client::Client`].

use std::io::Write as _;
use std::time::SystemTime;

use anyhow::{Context, bail};
use ganglion_client::Client;
use ganglion_core::bus::{AckMode, EventBus, StartPosition, StorageClass, SubscribeOptions};
use ganglion_core::{Event, Pattern, Topic, parse_since};
use ganglion_proto::json::{event_to_json, status_to_json};
use serde_json::{Value, json};

use crate::{ClientArgs, Output};

/// The server's gRPC URL: `host:port` as given gets `http://`.
pub(crate) fn server_url(server: &str) -> anyhow::Result<String> {
    if server.is_empty() {
        bail!("--server is empty: give host:port (127.0.0.1:50051) or a URL");
    }
    Ok(if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    })
}

/// The error for a server that cannot be reached, with what to check.
pub(crate) fn unreachable_server(url: &str, error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot connect to {url}: {error}\n  is `ganglion serve` running there? (--server or GANGLION_SERVER says where)"
    )
}

/// How to connect, from the flags: the URL (`https://` with TLS), the token, the
/// certificates.
pub(crate) fn client_options(args: &ClientArgs) -> anyhow::Result<ganglion_client::ClientOptions> {
    let tls = args.tls_ca.is_some() || args.tls_cert.is_some();
    let url = match server_url(&args.server)? {
        url if tls => url.replacen("http://", "https://", 1),
        url => url,
    };
    let mut options = ganglion_client::ClientOptions::new(url);
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    options.token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(
            String::from_utf8(read(path, "token file")?)
                .context("the token file is not text")?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if tls {
        options.tls = Some(ganglion_client::ClientTls {
            ca_pem: args
                .tls_ca
                .as_deref()
                .map(|p| read(p, "CA file"))
                .transpose()?,
            identity_pem: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => {
                    Some((read(cert, "client certificate")?, read(key, "client key")?))
                }
                _ => None,
            },
            domain: None,
        });
    }
    Ok(options)
}

pub(crate) async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let options = client_options(args)?;
    let url = options.endpoint.clone();
    Client::connect_with(options)
        .await
        .map_err(|e| unreachable_server(&url, e))
}

/// A raw gRPC client of the coordinator service.
pub(crate) async fn coordinator_rpc(
    args: &ClientArgs,
) -> anyhow::Result<ganglion_client::CoordinatorRpc> {
    Ok(connect(args).await?.coordinator())
}

/// `ganglion auth token NAME`.
pub(crate) fn auth_token(name: &str, output: Output) -> anyhow::Result<()> {
    if !ganglion_core::is_valid_name(name) {
        bail!("{name:?} is not an identity name: 1 to 64 letters, digits, '-' or '_'");
    }
    let token = ganglion_config::token::mint_token();
    let hash = ganglion_config::token::token_hash(&token);
    match output {
        Output::Json => line(serde_json::json!({ "identity": name, "token": token, "hash": hash })),
        Output::Table => {
            line(format!(
                "token for {name} (give it to the component as GANGLION_TOKEN or a file; it is shown once and stored nowhere):"
            ))?;
            line(format!("  {token}"))?;
            line(format!("hash to list under auth.identities.{name}.tokens:"))?;
            line(format!("  {hash}"))
        }
    }
}

/// Writes one line to stdout; a closed pipe (`| head`) ends the command quietly.
pub(crate) fn line(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

/// One line per event for people: `#seq topic [type] payload`.
fn event_line(event: &Event) -> String {
    let textual = event.content_type.is_empty()
        || event.content_type.contains("json")
        || event.content_type.starts_with("text/");
    let payload = match std::str::from_utf8(&event.payload) {
        Ok(text) if textual => text.to_owned(),
        _ => format!("<{} bytes {}>", event.payload.len(), event.content_type),
    };
    let seq = if event.seq == 0 {
        "-".to_owned()
    } else {
        format!("#{}", event.seq)
    };
    let kind = if event.event_type.is_empty() {
        String::new()
    } else {
        format!(" [{}]", event.event_type)
    };
    format!("{seq} {}{kind} {payload}", event.topic)
}

pub(crate) async fn publish(
    args: &ClientArgs,
    topic: &str,
    json: &str,
    event_type: Option<String>,
    source: Option<String>,
    headers: &[String],
) -> anyhow::Result<()> {
    let topic = Topic::new(topic).with_context(|| format!("topic {topic:?}"))?;
    let payload: Value =
        serde_json::from_str(json).context("the payload must be JSON (quote it for the shell)")?;
    let mut event = Event::new(topic, serde_json::to_vec(&payload)?)
        .with_content_type("application/json")
        .with_type(event_type.unwrap_or_default())
        .with_source(source.unwrap_or_else(|| "ganglion-cli".to_owned()));
    for header in headers {
        let Some((name, value)) = header.split_once('=') else {
            bail!("--header {header:?}: expected NAME=VALUE");
        };
        event = event.with_header(name, value);
    }
    let client = connect(args).await?;
    let ack = client.publish(event).await?;
    match args.output {
        Output::Json => {
            line(json!({ "seq": ack.seq, "id": ack.id.to_string(), "duplicate": ack.duplicate }))
        }
        Output::Table => line(format!(
            "published seq={} id={}{}",
            ack.seq,
            ack.id,
            if ack.duplicate {
                " (duplicate: already published)"
            } else {
                ""
            }
        )),
    }
}

pub(crate) async fn tail(
    args: &ClientArgs,
    pattern: &str,
    durable: Option<String>,
    from_seq: Option<u64>,
) -> anyhow::Result<()> {
    let pattern = Pattern::new(pattern).with_context(|| format!("pattern {pattern:?}"))?;
    let client = connect(args).await?;
    let options = SubscribeOptions {
        durable,
        start: from_seq.map_or(StartPosition::New, StartPosition::Seq),
        ack_mode: AckMode::Manual,
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe(pattern.clone(), options).await?;
    eprintln!(
        "tailing {pattern} (subscription {}); Ctrl-C stops",
        subscription.name()
    );
    loop {
        let delivery = tokio::select! {
            d = subscription.next() => d,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(delivery) = delivery else {
            bail!(
                "the subscription ended: {}",
                subscription
                    .closed_reason()
                    .unwrap_or_else(|| "closed".to_owned())
            );
        };
        for delivered in delivery.events() {
            match args.output {
                Output::Json => line(event_to_json(&delivered.event))?,
                Output::Table => line(event_line(&delivered.event))?,
            }
        }
        delivery.ack();
    }
}

pub(crate) async fn replay(
    args: &ClientArgs,
    pattern: &str,
    from_seq: Option<u64>,
    since: Option<&str>,
    limit: usize,
) -> anyhow::Result<()> {
    let pattern = Pattern::new(pattern).with_context(|| format!("pattern {pattern:?}"))?;
    let start = match (from_seq, since) {
        (Some(seq), _) => StartPosition::Seq(seq),
        (None, Some(since)) => StartPosition::Time(
            parse_since(since, SystemTime::now()).map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        ),
        (None, None) => StartPosition::All,
    };
    let client = connect(args).await?;
    let events = client.replay(pattern, start, limit).await?;
    match args.output {
        Output::Json => {
            line(json!({ "events": events.iter().map(event_to_json).collect::<Vec<_>>() }))
        }
        Output::Table => {
            for event in &events {
                line(event_line(event))?;
            }
            eprintln!("{} events", events.len());
            Ok(())
        }
    }
}

pub(crate) async fn dlq_list(
    args: &ClientArgs,
    subscription: String,
    limit: usize,
) -> anyhow::Result<()> {
    let client = connect(args).await?;
    let letters = client.dead_letters(subscription.clone(), limit).await?;
    match args.output {
        Output::Json => line(json!({
            "dead_letters": letters.iter().map(|d| json!({
                "seq": d.event.seq,
                "origin_topic": d.origin_topic,
                "origin_seq": d.origin_seq,
                "subscription": d.subscription,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "event": event_to_json(&d.event),
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            line(format!(
                "{:>8}  {:<32} {:>10} {:>8}  last error",
                "seq", "origin topic", "origin seq", "attempts"
            ))?;
            for d in &letters {
                line(format!(
                    "{:>8}  {:<32} {:>10} {:>8}  {}",
                    d.event.seq, d.origin_topic, d.origin_seq, d.attempts, d.last_error
                ))?;
            }
            eprintln!("{} dead letters for {subscription}", letters.len());
            Ok(())
        }
    }
}

pub(crate) async fn dlq_redrive(
    args: &ClientArgs,
    subscription: String,
    seqs: Vec<u64>,
) -> anyhow::Result<()> {
    let client = connect(args).await?;
    let redriven = client.redrive(subscription.clone(), seqs).await?;
    match args.output {
        Output::Json => line(json!({ "redriven": redriven })),
        Output::Table => line(format!("redrove {redriven} dead letters of {subscription}")),
    }
}

pub(crate) async fn topics(args: &ClientArgs) -> anyhow::Result<()> {
    let client = connect(args).await?;
    let topics = client.topics().await?;
    let storage = |s: StorageClass| match s {
        StorageClass::Durable => "durable",
        StorageClass::Ephemeral => "ephemeral",
    };
    match args.output {
        Output::Json => line(json!({
            "topics": topics.iter().map(|t| json!({
                "topic": t.topic.as_str(),
                "storage": storage(t.storage),
                "events": t.events,
                "last_seq": t.last_seq,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            line(format!(
                "{:<40} {:<10} {:>10} {:>10}",
                "topic", "storage", "events", "last seq"
            ))?;
            for t in &topics {
                line(format!(
                    "{:<40} {:<10} {:>10} {:>10}",
                    t.topic.as_str(),
                    storage(t.storage),
                    t.events,
                    t.last_seq
                ))?;
            }
            Ok(())
        }
    }
}

/// A raw gRPC client of the bus service, for the administrative calls the `EventBus`
/// contract does not have.
async fn bus_rpc(args: &ClientArgs) -> anyhow::Result<ganglion_client::Rpc> {
    Ok(connect(args).await?.rpc())
}

/// `ganglion topics purge|delete PATTERN`.
pub(crate) async fn purge_topics(
    args: &ClientArgs,
    pattern: &str,
    delete: bool,
) -> anyhow::Result<()> {
    Pattern::new(pattern).with_context(|| format!("pattern {pattern:?}"))?;
    let mut rpc = bus_rpc(args).await?;
    let pattern = pattern.to_owned();
    let (topics, events) = if delete {
        let r = rpc
            .delete_topics(ganglion_proto::v1::DeleteTopicsRequest { pattern })
            .await
            .map_err(|s| ganglion_proto::convert::error_from_status(&s))?
            .into_inner();
        (r.topics, r.events)
    } else {
        let r = rpc
            .purge_topics(ganglion_proto::v1::PurgeTopicsRequest { pattern })
            .await
            .map_err(|s| ganglion_proto::convert::error_from_status(&s))?
            .into_inner();
        (vec![String::new(); r.topics as usize], r.events)
    };
    let verb = if delete { "deleted" } else { "purged" };
    match args.output {
        Output::Json if delete => line(json!({ "topics": topics, "events": events })),
        Output::Json => line(json!({ "topics": topics.len(), "events": events })),
        Output::Table => line(format!(
            "{verb} {} topic(s), {events} event(s){}",
            topics.len(),
            if delete && !topics.is_empty() {
                format!(": {}", topics.join(", "))
            } else {
                String::new()
            }
        )),
    }
}

/// `ganglion subscriptions`.
pub(crate) async fn subscriptions(args: &ClientArgs) -> anyhow::Result<()> {
    let mut rpc = bus_rpc(args).await?;
    let list = rpc
        .list_subscriptions(ganglion_proto::v1::ListSubscriptionsRequest {})
        .await
        .map_err(|s| ganglion_proto::convert::error_from_status(&s))?
        .into_inner()
        .subscriptions;
    match args.output {
        Output::Json => line(json!({
            "subscriptions": list.iter().map(|s| json!({
                "name": s.name, "pattern": s.pattern, "queue_group": s.queue_group,
                "durable": s.durable, "members": s.members, "lag": s.lag,
                "in_flight": s.in_flight, "ready": s.ready,
                "dead_letter_topic": s.dead_letter_topic, "dead_letters": s.dead_letters,
                "delivered": s.delivered, "redelivered": s.redelivered, "acked": s.acked,
                "nacked": s.nacked, "expired": s.expired,
            })).collect::<Vec<_>>(),
        })),
        Output::Table => {
            line(format!(
                "{:<24} {:<24} {:>7} {:>7} {:>10} {:>9} {:>8}  kind",
                "name", "pattern", "members", "lag", "in flight", "dead", "expired"
            ))?;
            for s in &list {
                let kind = match (s.durable, s.queue_group.is_empty()) {
                    (true, _) if s.members == 0 => "durable (not connected)",
                    (true, _) => "durable",
                    (false, false) => "queue group",
                    (false, true) => "",
                };
                line(format!(
                    "{:<24} {:<24} {:>7} {:>7} {:>10} {:>9} {:>8}  {kind}",
                    s.name, s.pattern, s.members, s.lag, s.in_flight, s.dead_letters, s.expired
                ))?;
            }
            Ok(())
        }
    }
}

pub(crate) async fn resources(args: &ClientArgs, watch: bool) -> anyhow::Result<()> {
    use ganglion_proto::v1::StatusRequest;
    let mut client = coordinator_rpc(args).await?;
    loop {
        let s = client.status(StatusRequest {}).await?.into_inner();
        match args.output {
            Output::Json => line(status_to_json(&s))?,
            Output::Table => {
                if watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    line("\x1b[2J\x1b[H")?;
                }
                resources_table(&s)?;
            }
        }
        if !watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The coordinator's status as tables: pools, quotas, then queues and breakers if any.
fn resources_table(s: &ganglion_proto::v1::StatusResponse) -> anyhow::Result<()> {
    line(format!(
        "{:<20} {:>8} {:>6} {:>8}  holders",
        "pool", "capacity", "free", "waiters"
    ))?;
    for p in &s.pools {
        let holders: Vec<String> = p
            .holders
            .iter()
            .map(|l| {
                let units = l.units.join(",");
                format!("{} [{units}] token {}", l.holder, l.fencing_token)
            })
            .collect();
        line(format!(
            "{:<20} {:>8} {:>6} {:>8}  {}",
            p.name,
            p.capacity,
            p.free,
            p.waiters,
            holders.join("; ")
        ))?;
    }
    line("")?;
    line(format!(
        "{:<20} {:>12} {:>10} {:>9} {:>8}  state",
        "quota", "used/limit", "window", "remaining", "waiters"
    ))?;
    for q in &s.quotas {
        let state = match (q.suspended_for_ms, q.near_limit) {
            (0, false) => "ok".to_owned(),
            (0, true) => "near limit".to_owned(),
            (ms, _) => format!("suspended {} s (upstream limit)", ms.div_ceil(1000)),
        };
        line(format!(
            "{:<20} {:>12} {:>9}s {:>9} {:>8}  {state}",
            q.name,
            format!("{}/{}", q.used, q.limit),
            q.window_ms / 1000,
            q.remaining,
            q.waiters
        ))?;
    }
    if !s.queues.is_empty() {
        line("")?;
        for q in &s.queues {
            line(format!(
                "queue {:<14} quota {:<14} depth {}",
                q.name, q.quota, q.depth
            ))?;
        }
    }
    if !s.breakers.is_empty() {
        line("")?;
        for b in &s.breakers {
            line(format!("breaker {:<12} {}", b.name, b.state))?;
        }
    }
    Ok(())
}

/// `ganglion config validate`: every problem on stderr, one per line; exit 1 if any.
pub(crate) fn config_validate(loader: &ganglion_config::Loader) -> anyhow::Result<()> {
    let loaded = loader
        .load()
        .map_err(|problems| anyhow::anyhow!("{problems}"))?;
    let files: Vec<String> = loaded
        .files()
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let mut out = std::io::stdout().lock();
    if files.is_empty() {
        writeln!(out, "ok: the defaults (no config file found)")?;
    } else {
        writeln!(out, "ok: {}", files.join(", "))?;
    }
    Ok(())
}

/// `ganglion config show`: `key = value  # origin`, secrets redacted.
pub(crate) fn config_show(
    loader: &ganglion_config::Loader,
    output: crate::Output,
) -> anyhow::Result<()> {
    let loaded = loader
        .load()
        .map_err(|problems| anyhow::anyhow!("{problems}"))?;
    let mut out = std::io::stdout().lock();
    let settings = loaded.show();
    match output {
        crate::Output::Json => {
            let rows: Vec<serde_json::Value> = settings
                .into_iter()
                .map(|(key, value, origin)| {
                    serde_json::json!({"key": key, "value": value, "source": origin.to_string()})
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
        crate::Output::Table => {
            let width = settings.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
            for (key, value, origin) in settings {
                writeln!(out, "{key:width$} = {value}  # {origin}")?;
            }
        }
    }
    Ok(())
}

/// `ganglion config schema`.
pub(crate) fn config_schema() -> anyhow::Result<()> {
    let schema = ganglion_config::schema();
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&schema)?
    )?;
    Ok(())
}
