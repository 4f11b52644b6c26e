//! The API's request path against its floor (`crates/bench/src/bin/floor.rs`): the same SQL on a
//! pool of the same size, the same worker count, with and without the template's middleware
//! (tracing, metrics, request id, body deadline, problem mapping).

use crate::{CONNECTIONS, RUN, Reference};
use std::path::Path;
use std::time::Duration;
use testkit::Service;
use testkit::load::{LoadReport, wrk, wrk_scripted};

/// API workers and pool size of both servers.
pub const WORKERS: &str = "2";
pub const POOL_SIZE: &str = "16";

/// A POST of a fresh item per request (every write load of `make bench`).
pub const WRITE: &str = r#"
wrk.method = "POST"
wrk.body = '{"name":"bench"}'
wrk.headers["Content-Type"] = "application/json"
"#;

/// One route measured on shipshape and on the floor handler.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub route: &'static str,
    pub ours: LoadReport,
    pub floor: LoadReport,
}

impl Comparison {
    pub fn throughput(&self) -> f64 {
        self.ours.requests_per_second / self.floor.requests_per_second.max(1e-9)
    }

    pub fn p99(&self) -> f64 {
        crate::ratio(self.ours.p99, self.floor.p99)
    }
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
/// it always does): the table grows under the second, never to its advantage.
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
        ("POST /v1/items", "/v1/items".into(), Some(WRITE)),
    ];
    let run = |base: &str| -> Vec<LoadReport> {
        // Warm the pool and the statement caches first.
        let _ = wrk(
            &format!("{base}/v1/items?limit=20"),
            CONNECTIONS,
            Duration::from_secs(1),
        );
        routes
            .iter()
            .map(|(_, path, script)| {
                wrk_scripted(&format!("{base}{path}"), CONNECTIONS, RUN, *script)
            })
            .collect()
    };

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
    let floor = run(&format!("http://127.0.0.1:{port}"));
    drop(floor_server);
    // @rabbitmq-begin
    // The floor's events are not the service's to publish while it is measured.
    testkit::postgres::psql(
        5432,
        database,
        "UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL",
    );
    // @rabbitmq-end

    let service = Service::spawn_untuned(service_binary, env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let ours = run(&service.api_url(""));
    drop(service);
    let comparisons: Vec<Comparison> = routes
        .into_iter()
        .zip(ours.into_iter().zip(floor.iter().cloned()))
        .map(|((route, _, _), (ours, floor))| Comparison { route, ours, floor })
        .collect();
    // @rabbitmq-begin
    // The same writes with the broker away: the relay and the consumers idle, so what is left
    // is the request path alone (the floor publishes nothing either).
    testkit::postgres::psql(
        5432,
        database,
        "UPDATE outbox SET sent_at = now() WHERE sent_at IS NULL",
    );
    let nowhere = format!("amqp://guest:guest@127.0.0.1:{}/%2f", testkit::free_port());
    let mut env = env.to_vec();
    env.push(("APP__RABBITMQ__URL", nowhere.as_str()));
    let service = Service::spawn_untuned(service_binary, &env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let ours = wrk_scripted(&service.api_url("/v1/items"), CONNECTIONS, RUN, Some(WRITE));
    drop(service);
    let idle_pipeline = floor.last().map(|floor| Comparison {
        route: "POST /v1/items, broker away (relay and consumers idle)",
        ours,
        floor: floor.clone(),
    });
    // @rabbitmq-else
    // let idle_pipeline: Option<Comparison> = None;
    // @rabbitmq-end
    Ok(comparisons.into_iter().chain(idle_pipeline).collect())
}
