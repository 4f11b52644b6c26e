//! The API's request path against its floor (`crates/bench/src/bin/floor.rs`): the same SQL on a
//! pool of the same size, the same worker count, with and without the template's middleware
//! (tracing, metrics, request id, body deadline, problem mapping).

use crate::{CONNECTIONS, RUN, Reference};
use std::path::Path;
use std::time::Duration;
use testkit::Service;
use testkit::load::{LoadReport, wrk, wrk_scripted};

/// API workers of both servers: the chart's default (`app.server.workers`).
pub const WORKERS: &str = "2";
/// The floor's pool: the service's request share of its default connection total (16: 12 for
/// requests, 3 for background work, 1 for the check).
pub const POOL_SIZE: &str = "12";

/// Floor and service take turns this many times: one 10 s run of either swings by more than
/// the goals on a shared 2-core machine (p99 of one binary ranged 5-16 ms), so a ratio is the
/// median of the rounds' ratios and every round's is printed. Five, not three: with three, one
/// disturbed round in two decided a median (a round's p99 ratio ranged 0.6-1.9 in one run).
pub const ROUNDS: usize = 5;

/// The write route's name in the report and the guard.
pub const WRITE_ROUTE: &str = "POST /v1/items";

/// The read at the level the chart deploys (`app.logLevel: info`), where each request writes an
/// access line and builds its root span; everything else here runs at `warn`, like the floor,
/// which logs nothing.
pub const LOGGED_ROUTE: &str = "GET /v1/items/{id} at RUST_LOG=info";

/// What a route is held to against the floor: at least `throughput` times its requests per
/// second and at most `p99` times its p99.
#[derive(Debug, Clone, Copy)]
pub struct Goals {
    pub throughput: f64,
    pub p99: f64,
}

/// The issue's goals for the middleware (tracing, metrics, request id, problem mapping).
pub const GOALS: Goals = Goals {
    throughput: 0.85,
    p99: 1.3,
};

/// A POST of a fresh item per request (every write load of `make bench`).
pub const WRITE: &str = r#"
wrk.method = "POST"
wrk.body = '{"name":"bench"}'
wrk.headers["Content-Type"] = "application/json"
"#;

/// One route measured on shipshape and on the floor handler, round after round.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub route: &'static str,
    /// None for the logged read: its ratio is what logging and tracing a request cost, and the
    /// floor has neither to compare with.
    pub goals: Option<Goals>,
    /// One per round, in order.
    pub rounds: Vec<Round>,
}

/// The route on both servers in one round, the floor first.
#[derive(Debug, Clone)]
pub struct Round {
    pub ours: LoadReport,
    pub floor: LoadReport,
}

impl Round {
    pub fn throughput(&self) -> f64 {
        self.ours.requests_per_second / self.floor.requests_per_second.max(1e-9)
    }

    pub fn p99(&self) -> f64 {
        crate::ratio(self.ours.p99, self.floor.p99)
    }
}

impl Comparison {
    /// `ours`, one run per round, each against the floor's run of route `floor_route` in the
    /// same round.
    fn against_floor(
        route: &'static str,
        goals: Option<Goals>,
        ours: impl IntoIterator<Item = LoadReport>,
        floor_rounds: &[Vec<LoadReport>],
        floor_route: usize,
    ) -> Self {
        let rounds = ours
            .into_iter()
            .zip(floor_rounds)
            .map(|(ours, floor)| Round {
                ours,
                floor: floor[floor_route].clone(),
            })
            .collect();
        Self {
            route,
            goals,
            rounds,
        }
    }

    /// Median of the rounds' throughput ratios.
    pub fn throughput(&self) -> f64 {
        median(self.rounds.iter().map(Round::throughput))
    }

    /// Median of the rounds' p99 ratios.
    pub fn p99(&self) -> f64 {
        median(self.rounds.iter().map(Round::p99))
    }

    /// The round whose throughput ratio is the median: its figures stand for the route.
    pub fn median_round(&self) -> Option<&Round> {
        let mut rounds: Vec<&Round> = self.rounds.iter().collect();
        rounds.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        rounds.get(rounds.len() / 2).copied()
    }
}

/// The middle value (the upper one of an even count); 0 for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Inserts 100 items (the schema is there: an earlier run of the service migrated it) and
/// returns the id of one.
pub fn seed(database: &str) -> anyhow::Result<String> {
    let ids = testkit::postgres::psql(
        5432,
        database,
        "INSERT INTO items (id, name) SELECT gen_random_uuid(), 'seed ' || n \
         FROM generate_series(1, 100) n RETURNING id",
    );
    let id = ids.lines().last().unwrap_or_default().to_owned();
    anyhow::ensure!(!id.is_empty(), "seeding items failed");
    Ok(id)
}

/// The three routes on the floor first, then on shipshape (which runs its background work as
/// it always does), then the read on shipshape at `RUST_LOG=info`, [`ROUNDS`] times: the table
/// grows under the later ones, never to their advantage.
pub fn measure(
    release: &Path,
    service_binary: &Path,
    database: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Comparison>> {
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let id = seed(database)?;
    let routes: [(&'static str, String, Option<&str>); 3] = [
        ("GET /v1/items/{id}", format!("/v1/items/{id}"), None),
        ("GET /v1/items?limit=20", "/v1/items?limit=20".into(), None),
        (WRITE_ROUTE, "/v1/items".into(), Some(WRITE)),
    ];
    // Warm the pool and the statement caches before measuring a server.
    let warm = |base: &str| {
        let _ = wrk(
            &format!("{base}/v1/items?limit=20"),
            CONNECTIONS,
            Duration::from_secs(1),
        );
    };
    let run = |base: &str| -> Vec<LoadReport> {
        warm(base);
        routes
            .iter()
            .map(|(_, path, script)| {
                wrk_scripted(&format!("{base}{path}"), CONNECTIONS, RUN, *script)
            })
            .collect()
    };

    let mut floor_rounds = Vec::with_capacity(ROUNDS);
    let mut our_rounds = Vec::with_capacity(ROUNDS);
    let mut away_rounds = Vec::with_capacity(ROUNDS);
    let mut logged_rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        settle(database);
        let port = testkit::free_port();
        let floor_server = Reference::start(
            &release.join("bench-floor"),
            port,
            &[
                ("DATABASE_URL", database_url.as_str()),
                ("WORKERS", WORKERS),
                ("POOL_SIZE", POOL_SIZE),
            ],
        )?;
        floor_rounds.push(run(&format!("http://127.0.0.1:{port}")));
        drop(floor_server);
        // The floor's events are not the service's to publish while it is measured.
        mark_outbox_sent(database);
        settle(database);

        let service = Service::spawn_untuned(service_binary, env);
        service.wait_for("/readyz", 200, Duration::from_secs(30));
        our_rounds.push(run(&service.api_url("")));
        drop(service);

        let mut logged_env = env.to_vec();
        logged_env.push(("RUST_LOG", "info"));
        settle(database);
        let service = Service::spawn_untuned(service_binary, &logged_env);
        service.wait_for("/readyz", 200, Duration::from_secs(30));
        warm(&service.api_url(""));
        logged_rounds.push(wrk(&service.api_url(&routes[0].1), CONNECTIONS, RUN));
        drop(service);
        // The same writes with the broker away: the relay and the consumers idle, so what is
        // left is the request path alone (the floor publishes nothing either).
        mark_outbox_sent(database);
        settle(database);
        let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", testkit::free_port());
        let mut env = env.to_vec();
        env.push(("APP__RABBITMQ__URL", nowhere.as_str()));
        let service = Service::spawn_untuned(service_binary, &env);
        service.wait_for("/readyz", 200, Duration::from_secs(30));
        away_rounds.push(wrk_scripted(
            &service.api_url("/v1/items"),
            CONNECTIONS,
            RUN,
            Some(WRITE),
        ));
        drop(service);
    }
    let comparisons = routes.iter().enumerate().map(|(index, (route, _, _))| {
        let ours = our_rounds.iter().map(|round| round[index].clone());
        Comparison::against_floor(route, Some(GOALS), ours, &floor_rounds, index)
    });
    let logged = Comparison::against_floor(LOGGED_ROUTE, None, logged_rounds, &floor_rounds, 0);
    let idle_pipeline = Comparison::against_floor(
        "POST /v1/items, broker away (relay and consumers idle)",
        Some(GOALS),
        away_rounds,
        &floor_rounds,
        routes.len() - 1,
    );
    Ok(comparisons.chain([idle_pipeline, logged]).collect())
}

/// Leaves the database as quiet for each server as for the one before: the previous server's
/// writes vacuumed (a PostgreSQL for tests may run without autovacuum, as the one `make bench`
/// was measured on does) and flushed by a checkpoint of our own (of the whole cluster, bounded
/// by its shared buffers). Without it, PostgreSQL's own checkpoint (timed, or forced by the
/// write runs' WAL) spread its writes over minutes and took CPU from whichever servers ran
/// then: one round began the service's reads under it, at 0.84x and 0.72x the floor's
/// throughput and 1.65x its p99.
pub fn settle(database: &str) {
    testkit::postgres::psql(5432, database, "VACUUM ANALYZE");
    testkit::postgres::psql(5432, database, "CHECKPOINT");
}

/// Marks every queued event sent, so the next server starts with an empty outbox.
fn mark_outbox_sent(database: &str) {
    testkit::postgres::psql(
        5432,
        database,
        "UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(requests_per_second: f64, p99_ms: u64) -> LoadReport {
        LoadReport {
            requests: 0,
            requests_per_second,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
            non_2xx: 0,
            socket_errors: 0,
            raw: String::new(),
        }
    }

    #[test]
    fn each_round_is_held_to_the_floor_s_run_of_the_same_route_and_the_ratio_is_their_median() {
        // Three rounds of the floor's two routes: the second route is the one compared.
        let floor_rounds = vec![
            vec![load(1.0, 1), load(100.0, 10)],
            vec![load(1.0, 1), load(200.0, 10)],
            vec![load(1.0, 1), load(100.0, 20)],
        ];
        let ours = [load(90.0, 12), load(100.0, 30), load(95.0, 20)];
        let route = Comparison::against_floor("r", Some(GOALS), ours, &floor_rounds, 1);
        let throughputs: Vec<f64> = route.rounds.iter().map(Round::throughput).collect();
        assert_eq!(throughputs, [0.9, 0.5, 0.95]);
        assert_eq!(route.throughput(), 0.9);
        // p99 ratios 1.2, 3.0, 1.0: a disturbed round does not decide the median.
        assert!((route.p99() - 1.2).abs() < 1e-9, "{}", route.p99());
        let median = route.median_round().unwrap();
        assert_eq!(median.ours.requests_per_second, 90.0);
    }
}
