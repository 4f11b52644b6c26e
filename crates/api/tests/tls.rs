// @rabbitmq-begin
//! TLS to PostgreSQL and RabbitMQ against throwaway servers that take nothing else: a
//! PostgreSQL whose `pg_hba.conf` rejects plain TCP, a RabbitMQ TLS listener, and a private CA
//! made for the test. The service is ready with the right CA and not with a foreign one.
// @rabbitmq-else
// //! TLS to PostgreSQL against a throwaway server that takes nothing else (its `pg_hba.conf`
// //! rejects plain TCP) and a private CA made for the test. The service is ready with the right
// //! CA and not with a foreign one.
// @rabbitmq-end

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;
use testkit::Authority;

const READY: Duration = Duration::from_secs(30);

/// A service that must never become ready: it gives up at its startup deadline (exit 1) and
/// its log says why, mentioning `reason`.
fn assert_refused(env: Vec<(String, String)>, reason: &str) {
    let mut env = env;
    env.push(("APP__STARTUP__DEADLINE".into(), "4s".into()));
    let service = spawn(&env);
    let (status, _) = service.wait_exit(READY);
    assert_eq!(status.code(), Some(1), "{}", service.logs());
    let logs = service.logs();
    assert!(
        !logs.contains("\"status\":\"pass\"") && logs.contains(reason),
        "expected a refusal mentioning {reason:?}:\n{logs}"
    );
}

fn ca(authority: &Authority) -> String {
    authority.certificate().to_str().unwrap().to_owned()
}

struct TlsServers {
    authority: Authority,
    postgres: Postgres,
    rabbit: RabbitMq, // @rabbitmq
}

impl TlsServers {
    fn start() -> TlsServers {
        let authority = Authority::new("shipshape-test-ca");
        let postgres = Postgres::start_tls_only(&authority);
        postgres.create_database("app");
        TlsServers {
            rabbit: RabbitMq::start_with_tls(&authority), // @rabbitmq
            authority,
            postgres,
        }
    }

    /// Env for a service on these servers: the database at `sslmode`, with `extra` on top.
    // The broker is reached over plain TCP. // @rabbitmq
    fn env(&self, sslmode: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "APP__DATABASE__URL".to_owned(),
                format!("{}?sslmode={sslmode}", self.postgres.url("app")),
            ),
            ("APP__RABBITMQ__URL".to_owned(), self.rabbit.url()), // @rabbitmq
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }
}

/// The startup warning of a PostgreSQL connection whose server is not verified.
const UNVERIFIED: &str = "PostgreSQL server not verified";

#[test]
fn verified_tls_makes_the_service_ready_and_serving() {
    let servers = TlsServers::start();
    let ca = ca(&servers.authority);
    // @rabbitmq-begin
    let mut env = servers.env("verify-full", &[("APP__DATABASE__CA_FILE", &ca)]);
    // The broker over TLS too, verified against the same authority.
    env.push(("APP__RABBITMQ__URL".into(), servers.rabbit.tls_url()));
    env.push(("APP__RABBITMQ__CA_FILE".into(), ca.clone()));
    // @rabbitmq-else
    // let env = servers.env("verify-full", &[("APP__DATABASE__CA_FILE", &ca)]);
    // @rabbitmq-end
    let service = spawn(&env);
    service.wait_for("/readyz", 200, READY);
    service.wait_for_status("pass", READY);
    let created = example::post(&service, &example::body("over tls"), None);
    assert_eq!(created.status().as_u16(), 201, "{:?}", created.text());
    assert!(!service.logs().contains(UNVERIFIED), "{}", service.logs());
}

#[test]
fn a_foreign_ca_or_plain_tcp_never_becomes_ready() {
    let servers = TlsServers::start();
    let foreign = Authority::new("somebody-else");

    assert_refused(
        servers.env("verify-full", &[("APP__DATABASE__CA_FILE", &ca(&foreign))]),
        "invalid peer certificate",
    );
    // pg_hba.conf rejects plain TCP.
    assert_refused(servers.env("disable", &[]), "no encryption");

    // @rabbitmq-begin
    // RabbitMQ is not critical: the service is ready, the check says why the broker is out.
    let mut env = servers.env(
        "verify-full",
        &[
            ("APP__DATABASE__CA_FILE", &ca(&servers.authority)),
            ("APP__RABBITMQ__CA_FILE", &ca(&foreign)),
        ],
    );
    env.push(("APP__RABBITMQ__URL".into(), servers.rabbit.tls_url()));
    let broker_foreign = spawn(&env);
    broker_foreign.wait_for("/readyz", 200, READY);
    broker_foreign.wait_for_status("warn", READY);
    let body = json(&broker_foreign.probe("/readyz?verbose").2);
    let check = &body["checks"]["rabbitmq:connectivity"][0];
    assert_eq!(check["status"], "fail", "{body}");
    assert_eq!(check["affectsReadiness"], false, "{body}");
    testkit::wait_until("the broker's TLS refusal in the log", READY, || {
        broker_foreign.logs().contains("invalid peer certificate")
    });
    // @rabbitmq-end
}

#[test]
fn sslmode_require_encrypts_without_a_ca_file() {
    let servers = TlsServers::start();
    let service = spawn(&servers.env("require", &[]));
    service.wait_for("/readyz", 200, READY);
    // Encrypted but unverified: said once, at startup, in a WARN line.
    let logs = service.logs();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(UNVERIFIED)).collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0].contains("\"level\":\"WARN\""),
        "{}",
        warnings[0]
    );
    // verify-full without a CA file trusts only the system roots, which never signed the
    // test CA.
    assert_refused(servers.env("verify-full", &[]), "invalid peer certificate");
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let shared = Shared::new("tlsname");
    let authority = Authority::new("shipshape-test-ca");
    // Signed by the trusted CA, but for another host than the one dialled (127.0.0.1).
    let postgres = Postgres::start_tls_only_named(&authority, "DNS:elsewhere.test");
    postgres.create_database("app");
    let url = |mode: &str| format!("{}?sslmode={mode}", postgres.url("app"));
    let ca = ca(&authority);
    let with_ca = [("APP__DATABASE__CA_FILE", ca.as_str())];
    let chain_only = spawn(&shared.env_with(&url("verify-ca"), &with_ca));
    chain_only.wait_for("/readyz", 200, READY);
    for mode in ["verify-full", "prefer"] {
        // With a CA file, prefer verifies fully too (and cannot fall back to plain TCP).
        assert_refused(shared.env_with(&url(mode), &with_ca), "not valid for name");
    }
}
