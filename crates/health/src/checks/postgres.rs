//! PostgreSQL: `SELECT 1` on a connection of the check's own, plus request-pool gauges.

use crate::{Alarm, Check, CheckFailure, Observation};
use async_trait::async_trait;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use std::error::Error as _;
use std::io;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Socket};

/// Round trip to PostgreSQL on a dedicated connection, never one from the request pool (a busy
/// pool would time the check out and flip readiness: docs/health.md); [`PoolGauges`] exports
/// saturation instead. When the connection ends with an error (server died, restarted or reset
/// it) the check's [`Alarm`] is raised; share it with the pool's connections through
/// [`PostgresCheck::with_alarm`].
///
/// ```
/// use health::checks::postgres::PostgresCheck;
/// let config: tokio_postgres::Config = "postgres://postgres@127.0.0.1/app".parse()?;
/// let postgres_lost = health::Alarm::default(); // raised by the pool's connection tasks too
/// let _check = PostgresCheck::new(config, tokio_postgres::NoTls).with_alarm(postgres_lost);
/// # Ok::<(), tokio_postgres::Error>(())
/// ```
#[derive(Debug)]
pub struct PostgresCheck<T> {
    config: tokio_postgres::Config,
    tls: T,
    client: Mutex<Option<Client>>,
    alarm: Alarm,
}

impl<T> PostgresCheck<T> {
    /// A check connecting with `config` through `tls` (the service's own TLS settings); sets
    /// `application_name` so its session stands out in `pg_stat_activity`.
    pub fn new(mut config: tokio_postgres::Config, tls: T) -> Self {
        config.application_name("health-check");
        Self {
            config,
            tls,
            client: Mutex::new(None),
            alarm: Alarm::default(),
        }
    }

    /// The same check, raising `alarm` (instead of one of its own) when its connection ends.
    #[must_use]
    pub fn with_alarm(mut self, alarm: Alarm) -> Self {
        self.alarm = alarm;
        self
    }
}

/// A tokio-postgres error with its cause: alone it prints as "db error" or "error connecting to
/// server", and the source says why.
///
/// ```
/// # async fn demo() {
/// use tokio_postgres::{NoTls, connect};
/// let error = connect("host=127.0.0.1 port=1", NoTls).await.err().unwrap();
/// assert!(health::checks::postgres::describe(&error).starts_with("error connecting to server: "));
/// # }
/// ```
pub fn describe(error: &tokio_postgres::Error) -> String {
    error
        .source()
        .map_or_else(|| error.to_string(), |source| format!("{error}: {source}"))
}

/// What the verbose readiness report may say: an error class and a short reason, never the
/// server's text (it names roles, databases and hosts). The full text goes to the debug log.
fn failure(step: &str, error: &tokio_postgres::Error) -> CheckFailure {
    tracing::debug!(step, error = %describe(error), "postgres check failed");
    CheckFailure::new(format!("{step}: {}", classify(error)))
}

fn classify(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        let class = match code {
            "28000" | "28P01" => "authentication failed",
            "3D000" => "database does not exist",
            "57P01" | "57P02" | "57P03" => "server shutting down or starting",
            _ => "server error",
        };
        return format!("{class} (SQLSTATE {code})");
    }
    if error.is_closed() {
        return "connection closed".into();
    }
    let Some(io_error) = std::iter::successors(error.source(), |&cause| cause.source())
        .find_map(|cause| cause.downcast_ref::<io::Error>())
    else {
        return "protocol error".into();
    };
    match io_error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        // rustls reports through io::Error; only its text says what failed.
        io::ErrorKind::InvalidData if io_error.to_string().contains("certificate") => {
            "TLS: the server's certificate was not accepted".into()
        }
        kind => format!("network error ({kind:?})"),
    }
}

#[async_trait]
impl<T> Check for PostgresCheck<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn alarm(&self) -> Option<Alarm> {
        Some(self.alarm.clone())
    }

    async fn run(&self) -> Result<Observation, CheckFailure> {
        let mut slot = self.client.lock().await;
        // Taken out for the duration of the run: if the scheduler's timeout cancels us
        // mid-query the connection is dropped, never reused in an unknown state.
        if let Some(client) = slot.take().filter(|client| !client.is_closed()) {
            // An error on a kept connection (the server restarted or reset it since the last
            // run, unseen by the driver) says nothing of the server: a fresh connection decides.
            if let Ok(observation) = select_one(&client).await {
                *slot = Some(client);
                return Ok(observation);
            }
        }
        let (client, connection) = match self.config.connect(self.tls.clone()).await {
            Ok(pair) => pair,
            // Full (53300) means up: other clients holding every slot is pressure, not an outage.
            Err(error) if error.code() == Some(&SqlState::TOO_MANY_CONNECTIONS) => {
                tracing::debug!(error = %describe(&error), "postgres check: the server is full");
                return Ok(Observation::text(
                    "server full (too many clients): up, not reached",
                ));
            }
            Err(error) => return Err(failure("connecting", &error)),
        };
        let alarm = self.alarm.clone();
        tokio::spawn(async move {
            // Ends with an error when the server goes away; the next run reconnects.
            if connection.await.is_err() {
                alarm.raise();
            }
        });
        let observation = select_one(&client)
            .await
            .map_err(|e| failure("SELECT 1", &e))?;
        *slot = Some(client);
        Ok(observation)
    }
}

async fn select_one(client: &Client) -> Result<Observation, tokio_postgres::Error> {
    let started = Instant::now();
    client.simple_query("SELECT 1").await?;
    Ok(Observation::latency(started.elapsed()))
}

/// Request-pool gauges (`db_pool_connections{state=...}`), read at scrape time: free in between.
///
/// ```no_run
/// let pool: deadpool_postgres::Pool = todo!();
/// let registry = prometheus::Registry::new();
/// registry.register(Box::new(health::checks::postgres::PoolGauges::new(pool)?))?;
/// # Ok::<(), prometheus::Error>(())
/// ```
#[derive(Debug)]
pub struct PoolGauges {
    pool: deadpool_postgres::Pool,
    gauges: IntGaugeVec,
}

impl PoolGauges {
    /// Gauges for the request pool; register the result in the registry `/metrics` renders.
    pub fn new(pool: deadpool_postgres::Pool) -> prometheus::Result<Self> {
        let gauges = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Request pool connections by state: max, size (open), available (idle), in_use, waiting (requests queued for one).",
            ),
            &["state"],
        )?;
        Ok(Self { pool, gauges })
    }
}

impl Collector for PoolGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.pool.status();
        let as_gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (state, value) in [
            ("max", status.max_size),
            ("size", status.size),
            ("available", status.available),
            ("in_use", status.size.saturating_sub(status.available)),
            ("waiting", status.waiting),
        ] {
            self.gauges.with_label_values(&[state]).set(as_gauge(value));
        }
        self.gauges.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `max_size` connections to a server no test reaches: none is opened.
    fn pool(max_size: usize) -> deadpool_postgres::Pool {
        let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres".parse().unwrap();
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        deadpool_postgres::Pool::builder(manager)
            .max_size(max_size)
            .build()
            .unwrap()
    }

    #[test]
    fn the_pool_is_reported_by_state() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(PoolGauges::new(pool(5)).unwrap()))
            .unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            "db_pool_connections{state=\"max\"} 5",
            "db_pool_connections{state=\"size\"} 0",
            "db_pool_connections{state=\"waiting\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
