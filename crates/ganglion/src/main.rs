//! `ganglion`: the server (`serve`) and the commands people use against it.
//!
//! Results go to stdout (`--output table|json`), diagnostics to stderr, progress bars
//! only on a terminal.

mod bench;
mod commands;
mod log_cmd;
mod serve;
mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// glibc's malloc serialises cross-thread frees (events are allocated by publishers and
// freed by subscribers); mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ganglion",
    version,
    about = "An event bus and resource coordinator for event-driven applications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the client commands connect, and how they print.
#[derive(Debug, Clone, clap::Args)]
struct ClientArgs {
    /// gRPC address of a running `ganglion serve`: host:port, or a URL.
    #[arg(
        long,
        env = "GANGLION_SERVER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// How results are printed.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// A bearer token for the server's `auth.identities` (better from GANGLION_TOKEN or
    /// --token-file than on a command line others can see).
    #[arg(long, env = "GANGLION_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(
        long,
        env = "GANGLION_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token",
        global = true
    )]
    token_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that signed the server's certificate: connects over TLS.
    #[arg(long, env = "GANGLION_TLS_CA", value_name = "PATH", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for mTLS, with --tls-key.
    #[arg(
        long,
        env = "GANGLION_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key",
        global = true
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "GANGLION_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert",
        global = true
    )]
    tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// For people.
    Table,
    /// One JSON document (or one per line for streams), for programs.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the embedded engine behind gRPC and HTTP.
    Serve(serve::ServeArgs),
    /// Publish one event: `ganglion publish game.state.update '{"round": 3}'`.
    Publish {
        topic: String,
        /// The payload, as JSON.
        json: String,
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        source: Option<String>,
        /// A header, `name=value` (repeatable); `idempotency_key=…` dedupes.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print live events matching a pattern until interrupted.
    Tail {
        pattern: String,
        /// Resume a durable subscription of this name (events are acked as printed).
        #[arg(long)]
        durable: Option<String>,
        /// Start from this sequence number instead of new events only.
        #[arg(long)]
        from_seq: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print logged events matching a pattern, from a sequence number or a time.
    Replay {
        pattern: String,
        #[arg(long, conflicts_with = "since")]
        from_seq: Option<u64>,
        /// Milliseconds since the epoch, or an age: 90s, 15m, 2h, 1d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Inspect and redrive dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// List the topics the bus has seen; purge or delete them.
    Topics {
        #[command(subcommand)]
        command: Option<TopicsCommand>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every subscription, connected or not: pattern, members, lag, in flight, dead
    /// letters.
    Subscriptions {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pools with holders and waiters, quotas used and remaining, queues, breakers.
    Resources {
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Measure a running server: W1 (ephemeral throughput), W2 (durable publish and
    /// consume), W3 (latency at a steady rate).
    Bench(bench::BenchArgs),
    /// Identities: mint tokens for `auth.identities`.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Check, print or describe the layered configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check or repair the event log of a stopped server.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Report every problem an open would refuse or mend, changing nothing; exit 1 if
    /// the log would not open.
    Verify(log_cmd::LogArgs),
    /// Cut damaged records (a copy goes to `quarantine/`), record lost sequences as a
    /// gap, and continue numbering above every sequence ever acknowledged.
    Repair {
        #[command(flatten)]
        args: log_cmd::LogArgs,
        /// Confirms that damaged records may be dropped from the log.
        #[arg(long)]
        drop_damaged_tail: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check every layer; report each problem with its file, line and key path; exit 1
    /// if there is one.
    Validate {
        #[command(flatten)]
        layers: serve::ConfigArgs,
    },
    /// Print the merged configuration, each value with where it came from (secrets
    /// redacted).
    Show {
        #[command(flatten)]
        layers: serve::ConfigArgs,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print the JSON Schema of the configuration.
    Schema,
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Mint a token for identity NAME: prints the token (give it to the component, as
    /// GANGLION_TOKEN or a file) and the hash to list under
    /// auth.identities.NAME.tokens. Nothing is stored.
    Token {
        name: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Expire every logged event of the topics PATTERN matches (later events are kept).
    Purge { pattern: String },
    /// Purge the topics PATTERN matches and forget them.
    Delete { pattern: String },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Dead letters of a subscription, oldest first.
    List {
        subscription: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Republish dead letters to their origin topics (these sequences, or all).
    Redrive {
        subscription: String,
        seqs: Vec<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Publish {
            topic,
            json,
            event_type,
            source,
            headers,
            client,
        } => commands::publish(&client, &topic, &json, event_type, source, &headers).await,
        Command::Tail {
            pattern,
            durable,
            from_seq,
            client,
        } => commands::tail(&client, &pattern, durable, from_seq).await,
        Command::Replay {
            pattern,
            from_seq,
            since,
            limit,
            client,
        } => commands::replay(&client, &pattern, from_seq, since.as_deref(), limit).await,
        Command::Dlq { command } => match command {
            DlqCommand::List {
                subscription,
                limit,
                client,
            } => commands::dlq_list(&client, subscription, limit).await,
            DlqCommand::Redrive {
                subscription,
                seqs,
                client,
            } => commands::dlq_redrive(&client, subscription, seqs).await,
        },
        Command::Topics { command, client } => match command {
            None => commands::topics(&client).await,
            Some(TopicsCommand::Purge { pattern }) => {
                commands::purge_topics(&client, &pattern, false).await
            }
            Some(TopicsCommand::Delete { pattern }) => {
                commands::purge_topics(&client, &pattern, true).await
            }
        },
        Command::Subscriptions { client } => commands::subscriptions(&client).await,
        Command::Resources { watch, client } => commands::resources(&client, watch).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Auth { command } => match command {
            AuthCommand::Token { name, output } => commands::auth_token(&name, output),
        },
        Command::Config { command } => match command {
            ConfigCommand::Validate { layers } => commands::config_validate(&layers.loader()),
            ConfigCommand::Show { layers, output } => {
                commands::config_show(&layers.loader(), output)
            }
            ConfigCommand::Schema => commands::config_schema(),
        },
        Command::Log { command } => match command {
            LogCommand::Verify(args) => log_cmd::verify(&args),
            LogCommand::Repair {
                args,
                drop_damaged_tail,
            } => log_cmd::repair(&args, drop_damaged_tail),
        },
    }
}
