//! The RabbitMQ connection supervisor: one connection per process, published to its followers
//! (`None` while down) and reconnected with backoff; lapin's own recovery stays off (why:
//! docs/architecture.md).

use crate::Backoff;
use crate::config::SecretUrl;
use anyhow::Context;
use futures_util::future::BoxFuture;
use health::Alarm;
use health::checks::rabbitmq::BrokerLink;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Declares exchanges, queues and bindings on a fresh connection.
pub type Topology =
    Arc<dyn Fn(Arc<Connection>) -> BoxFuture<'static, Result<(), lapin::Error>> + Send + Sync>;

/// Where and how to connect to the broker.
#[derive(Debug, Clone)]
pub struct BrokerConnection {
    /// `amqp://`, or `amqps://` for TLS.
    pub url: SecretUrl,
    /// PEM bundle added to the system roots (`amqps://` only).
    pub ca_file: Option<std::path::PathBuf>,
    /// Longest pause between two reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// Bound on one attempt, handshake and topology included.
    pub connect_timeout: Duration,
}

/// Handle to a running supervisor.
#[derive(Debug)]
pub struct BrokerSupervisor {
    link: BrokerLink,
    alarm: Alarm,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl BrokerSupervisor {
    /// Starts supervising; `topology` runs on every new connection before it is published. Fails
    /// only when the TLS settings cannot be used (an unreadable `CA_FILE`).
    pub fn spawn(
        settings: &BrokerConnection,
        name: String,
        topology: Topology,
    ) -> anyhow::Result<Self> {
        let tls = tls(settings)?;
        let (publish, link) = watch::channel(None);
        let stop = CancellationToken::new();
        let alarm = Alarm::default();
        let task = tokio::spawn(supervise(
            settings.clone(),
            tls,
            name,
            topology,
            publish,
            alarm.clone(),
            stop.clone(),
        ));
        Ok(Self {
            link,
            alarm,
            task,
            stop,
        })
    }

    /// Follows the current connection (`None` while reconnecting).
    pub fn link(&self) -> BrokerLink {
        self.link.clone()
    }

    /// Raised when the connection drops or the broker (un)blocks it (a resource alarm); give it to
    /// `RabbitMqCheck::with_alarm` so the check runs at once instead of at its next poll.
    pub fn alarm(&self) -> Alarm {
        self.alarm.clone()
    }

    /// Waits until a connection with its topology is up; forever once the supervisor is gone.
    pub async fn connected(&self) {
        let never = CancellationToken::new();
        next_connection(&mut self.link(), &never).await;
    }

    /// Stops reconnecting and closes the connection (200, "shutdown").
    pub async fn close(self) {
        self.stop.cancel();
        let current = self.link.borrow().clone();
        if let Some(connection) = current
            && let Err(error) = connection.close(200, "shutdown".into()).await
        {
            tracing::debug!(%error, "closing the broker connection");
        }
        let _ = self.task.await;
    }
}

async fn supervise(
    settings: BrokerConnection,
    tls: OwnedTLSConfig,
    name: String,
    topology: Topology,
    publish: watch::Sender<Option<Arc<Connection>>>,
    alarm: Alarm,
    stop: CancellationToken,
) {
    let url = &settings.url;
    let mut backoff = Backoff::new(Duration::from_millis(200), settings.reconnect_max_backoff);
    loop {
        let connection = tokio::select! {
            _ = stop.cancelled() => return,
            result = connect(&settings, &tls, &name, &topology) => result,
        };
        match connection {
            Ok(connection) => {
                tracing::info!(broker = %url, attempts = backoff.attempts() + 1, "broker connected, topology declared");
                backoff.reset();
                publish.send_replace(Some(connection.clone()));
                if !until_lost(&connection, &stop, &alarm).await {
                    return;
                }
                publish.send_replace(None);
                alarm.raise();
                tracing::warn!(broker = %url, "broker connection lost, reconnecting");
            }
            Err(error) => {
                tracing::warn!(broker = %url, attempt = backoff.attempts() + 1, %error, "broker connection failed");
            }
        }
        let pause = tokio::time::sleep(backoff.next_delay());
        if stop.run_until_cancelled(pause).await.is_none() {
            return;
        }
    }
}

/// The connection `link` holds now, or the next one published: `None` when `stop` comes first.
/// Reads with `borrow_and_update`: a receiver that never marks what it read sees "changed" at
/// once, forever, and spins a core while the broker is away.
///
/// ```
/// # async fn example(supervisor: bootstrap::broker::BrokerSupervisor) {
/// let stop = tokio_util::sync::CancellationToken::new();
/// let mut link = supervisor.link();
/// while let Some(connection) = bootstrap::broker::next_connection(&mut link, &stop).await {
///     // ... use `connection` until it fails, then wait for the next one.
/// }
/// # }
/// ```
pub async fn next_connection(
    link: &mut BrokerLink,
    stop: &CancellationToken,
) -> Option<Arc<Connection>> {
    loop {
        if let Some(connection) = link.borrow_and_update().clone() {
            return Some(connection);
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            changed = link.changed() => {
                if changed.is_err() {
                    // The supervisor is gone: no connection will come.
                    stop.cancelled().await;
                    return None;
                }
            }
        }
    }
}

/// One attempt, handshake and topology included, bounded by the connect timeout: a black-holed
/// broker accepts TCP and never answers the handshake. The error is redacted.
async fn connect(
    settings: &BrokerConnection,
    tls: &OwnedTLSConfig,
    name: &str,
    topology: &Topology,
) -> Result<Arc<Connection>, String> {
    let attempt = async {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Arc::new(
            Connection::connect_with_config(
                settings.url.expose(),
                properties,
                tls.clone(),
                lapin::runtime::default_runtime()?,
            )
            .await?,
        );
        topology(connection.clone()).await?;
        Ok::<_, lapin::Error>(connection)
    };
    let limit = settings.connect_timeout;
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(limit)))?
        .map_err(|e| crate::config::redact(&e.to_string()))
}

/// Waits until `connection` is lost (`true`) or `stop` is cancelled (`false`), raising `alarm`
/// when the broker (un)blocks it. Polling the status is cheap and catches every way a link ends.
async fn until_lost(connection: &Connection, stop: &CancellationToken, alarm: &Alarm) -> bool {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut blocked = connection.status().blocked();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tick.tick() => {}
        }
        let status = connection.status();
        if !status.connected() {
            return true;
        }
        if status.blocked() != blocked {
            blocked = !blocked;
            alarm.raise();
        }
    }
}

/// lapin's TLS settings: for `amqps://` the chain and host name are always verified, against the
/// system roots plus `APP__RABBITMQ__CA_FILE` (lapin adds a bundle to the roots).
fn tls(settings: &BrokerConnection) -> anyhow::Result<OwnedTLSConfig> {
    let mut tls = OwnedTLSConfig::default();
    if let Some(path) = &settings.ca_file {
        // Parsed first, so a bad file is named here and not as a handshake failure.
        crate::tls::read_ca_file(path).context("APP__RABBITMQ__CA_FILE")?;
        let bundle = std::fs::read_to_string(path);
        tls.cert_chain = Some(bundle.with_context(|| format!("reading {}", path.display()))?);
    }
    Ok(tls)
}
