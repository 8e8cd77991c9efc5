//! The example's three components against a real server on ephemeral ports.

use std::time::Duration;

use ganglion_bus::{Bus, BusOptions};
use ganglion_client::Client;
use ganglion_server::ServerOptions;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategy_coalesces_per_game_and_analytics_counts_everything() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::open(BusOptions::new(dir.path())).unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ganglion_server::serve(
        std::sync::Arc::new(bus),
        grpc,
        http,
        ServerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let (games, updates) = (3usize, 60u64);
    let expected = games as u64 * updates;
    let strategist = Client::connect(url.clone()).await.unwrap();
    let analyst = Client::connect(url.clone()).await.unwrap();
    let producer = Client::connect(url).await.unwrap();
    let (sr, su) = tokio::sync::oneshot::channel();
    let (ar, au) = tokio::sync::oneshot::channel();
    let strategy =
        tokio::spawn(async move { game_events::strategy(&strategist, expected, sr).await });
    let analytics =
        tokio::spawn(async move { game_events::analytics(&analyst, expected, ar).await });
    su.await.unwrap();
    au.await.unwrap();

    // Everything in one burst: it lands in one or two 100 ms windows.
    let published = game_events::produce(&producer, games, updates, updates, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(published, expected);

    const WITHIN: Duration = Duration::from_secs(10);
    let report = tokio::time::timeout(WITHIN, strategy)
        .await
        .expect("strategy finished")
        .unwrap()
        .unwrap();
    let counts = tokio::time::timeout(WITHIN, analytics)
        .await
        .expect("analytics finished")
        .unwrap()
        .unwrap();

    // Keep-last per game: a handful of decisions stand for all 180 updates, and each
    // game's last decision saw its last round.
    assert_eq!(report.updates, expected);
    assert!(report.decisions <= report.windows * games as u64);
    assert!(report.decisions < expected / 10, "{report:?}");
    for game in 0..games {
        assert_eq!(report.last_round[&format!("g{game}")], 6, "{report:?}");
    }
    // Analytics saw every event: 6 rounds of 10 per game.
    assert_eq!(counts["RoundCompleted"], 6 * games as u64);
    assert_eq!(counts["JokerPurchased"], 6 * games as u64);
    assert_eq!(counts["HandPlayed"], 48 * games as u64);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
