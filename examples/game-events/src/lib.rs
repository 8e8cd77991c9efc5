//! The seeds' game, in three components that know nothing of each other but topics:
//!
//! - **producer**: a game server publishing a `GameStateUpdate` (protobuf) for every
//!   action of several games, on `game.<id>.state`, with a `game_id` header;
//! - **strategy**: wants only the latest state of each game, at most every 100 ms: a
//!   subscription with a 100 ms window and `keep_last` per `game_id`, so a burst of
//!   updates costs it one decision per game;
//! - **analytics**: counts every event by type on a durable subscription (it resumes
//!   after a restart without missing any).
//!
//! Each takes any [`EventBus`]: the same code runs against the embedded bus or a server.

use std::collections::BTreeMap;
use std::time::Duration;

use ganglion_core::bus::{Aggregation, BatchOptions, EventBus, GroupKey, SubscribeOptions};
use ganglion_core::{BusError, Event, Pattern, Topic};
use ganglion_proto::examples::{
    GameStateUpdate, HandPlayed, JokerPurchased, RoundCompleted, game_state_update::Change,
};
use prost::Message as _;

pub const CONTENT_TYPE: &str = "application/x-protobuf; proto=ganglion.examples.v1.GameStateUpdate";

/// The `i`-th update of game `game`: a hand, sometimes a joker bought, every tenth a
/// round completed.
pub fn update(game: usize, i: u64) -> GameStateUpdate {
    let round = (i / 10) as u32 + 1;
    let change = match i % 10 {
        9 => Change::RoundCompleted(RoundCompleted {
            score: 300 * u64::from(round),
            target: 300,
            won: true,
            money: 4 + round,
        }),
        3 => Change::JokerPurchased(JokerPurchased {
            joker: "Gros Michel".into(),
            cost: 5,
            money_left: 2,
        }),
        _ => Change::HandPlayed(HandPlayed {
            hand: "flush".into(),
            cards: vec![
                "AH".into(),
                "KH".into(),
                "9H".into(),
                "5H".into(),
                "2H".into(),
            ],
            chips: 35,
            mult: 4,
            score: 140,
        }),
    };
    GameStateUpdate {
        timestamp_ms: 0,
        game_id: format!("g{game}"),
        round,
        ante: round.div_ceil(3),
        change: Some(change),
    }
}

fn type_name(update: &GameStateUpdate) -> &'static str {
    match update.change {
        Some(Change::JokerPurchased(_)) => "JokerPurchased",
        Some(Change::HandPlayed(_)) => "HandPlayed",
        Some(Change::RoundCompleted(_)) => "RoundCompleted",
        None => "GameStateUpdate",
    }
}

/// Publishes `per_game` updates for each of `games` games, `burst` at a time with a
/// pause between bursts; returns how many were published.
pub async fn produce(
    bus: &impl EventBus,
    games: usize,
    per_game: u64,
    burst: u64,
    pause: Duration,
) -> Result<u64, BusError> {
    let mut published = 0;
    let mut i = 0;
    while i < per_game {
        let mut batch = Vec::new();
        for step in i..(i + burst).min(per_game) {
            for game in 0..games {
                let update = update(game, step);
                let topic = Topic::new(&format!("game.g{game}.state"))
                    .map_err(|e| BusError::invalid("topic", e))?;
                batch.push(
                    Event::new(topic, update.encode_to_vec())
                        .with_type(type_name(&update))
                        .with_source("game-server")
                        .with_content_type(CONTENT_TYPE)
                        .with_header("game_id", update.game_id.clone()),
                );
            }
        }
        published += bus.publish_batch(batch).await?.len() as u64;
        i += burst;
        tokio::time::sleep(pause).await;
    }
    Ok(published)
}

/// What the strategy component saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StrategyReport {
    /// Windows delivered.
    pub windows: u64,
    /// Decisions taken: one per game per window.
    pub decisions: u64,
    /// Updates those decisions stood for (coalesced).
    pub updates: u64,
    /// The last round seen per game.
    pub last_round: BTreeMap<String, u32>,
}

/// Subscription options of the strategy component: 100 ms windows, newest per game.
pub fn strategy_options() -> SubscribeOptions {
    SubscribeOptions {
        batch: Some(BatchOptions {
            window: Some(Duration::from_millis(100)),
            key: GroupKey::Header("game_id".into()),
            aggregation: Aggregation::KeepLast,
            ..BatchOptions::default()
        }),
        ..SubscribeOptions::default()
    }
}

/// Runs the strategy component until it has accounted for `expected` updates.
pub async fn strategy(
    bus: &impl EventBus,
    expected: u64,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<StrategyReport, BusError> {
    let mut sub = bus
        .subscribe(
            Pattern::new("game.*.state").map_err(|e| BusError::invalid("pattern", e))?,
            strategy_options(),
        )
        .await?;
    let _ = ready.send(());
    let mut report = StrategyReport::default();
    while report.updates < expected {
        let Some(window) = sub.next().await else {
            return Err(BusError::Unavailable(
                sub.closed_reason().unwrap_or_default(),
            ));
        };
        report.windows += 1;
        for delivered in window.events() {
            let state = GameStateUpdate::decode(delivered.event.payload.clone())
                .map_err(|e| BusError::invalid("payload", e))?;
            report.decisions += 1;
            report.updates += delivered.coalesced;
            report.last_round.insert(state.game_id, state.round);
        }
        window.ack();
    }
    Ok(report)
}

/// Runs the analytics component until it has counted `expected` events.
pub async fn analytics(
    bus: &impl EventBus,
    expected: u64,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<BTreeMap<String, u64>, BusError> {
    let options = SubscribeOptions {
        durable: Some("analytics".into()),
        ..SubscribeOptions::default()
    };
    let mut sub = bus
        .subscribe(
            Pattern::new("game.>").map_err(|e| BusError::invalid("pattern", e))?,
            options,
        )
        .await?;
    let _ = ready.send(());
    let mut counts = BTreeMap::new();
    let mut total = 0;
    while total < expected {
        let Some(delivery) = sub.next().await else {
            return Err(BusError::Unavailable(
                sub.closed_reason().unwrap_or_default(),
            ));
        };
        for delivered in delivery.events() {
            *counts
                .entry(delivered.event.event_type.clone())
                .or_insert(0) += 1;
            total += 1;
        }
        delivery.ack();
    }
    Ok(counts)
}
