//! Run with: `cargo run --release -p ganglion -- serve` in one terminal, then
//! `cargo run -p game-events -- [--server http://127.0.0.1:50051] [--games 4] [--updates 200]`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ganglion_client::Client;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut server = "http://127.0.0.1:50051".to_owned();
    let mut games = 4usize;
    let mut updates = 200u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--server" => server = value,
            "--games" => games = value.parse()?,
            "--updates" => updates = value.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let expected = games as u64 * updates;
    // Three components, three connections, as three processes would have.
    let (producer, strategist, analyst) = (
        Client::connect(server.clone()).await?,
        Client::connect(server.clone()).await?,
        Client::connect(server.clone()).await?,
    );
    let (strategy_ready, strategy_up) = tokio::sync::oneshot::channel();
    let (analytics_ready, analytics_up) = tokio::sync::oneshot::channel();
    let strategy =
        tokio::spawn(
            async move { game_events::strategy(&strategist, expected, strategy_ready).await },
        );
    let analytics =
        tokio::spawn(
            async move { game_events::analytics(&analyst, expected, analytics_ready).await },
        );
    strategy_up.await?;
    analytics_up.await?;

    let started = Instant::now();
    // Bursts of 5 updates per game every 20 ms: 250 updates/s/game.
    let published =
        game_events::produce(&producer, games, updates, 5, Duration::from_millis(20)).await?;
    let report = strategy.await??;
    let counts = analytics.await??;
    eprintln!(
        "producer: {published} updates for {games} games in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "strategy: {} windows, {} decisions for {} updates ({:.1} updates per decision); last rounds {:?}",
        report.windows,
        report.decisions,
        report.updates,
        report.updates as f64 / report.decisions.max(1) as f64,
        report.last_round
    );
    eprintln!("analytics: {counts:?}");
    Ok(())
}
