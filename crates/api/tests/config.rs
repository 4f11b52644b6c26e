//! Configuration errors stop the process with exit code 2 and one line naming the variable,
//! before any port is bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

fn refused(env: &[(&str, &str)]) -> String {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let service = spawn(&env);
    let (status, _) = service.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{}", service.logs());
    // Nothing was bound: the management port never answered.
    assert_eq!(service.probe("/livez").0, 0);
    let logs = service.logs();
    assert_eq!(logs.lines().count(), 1, "expected one line, got:\n{logs}");
    logs
}

#[test]
fn a_bad_port_names_the_variable() {
    let line = refused(&[("APP__SERVER__PORT", "eighty")]);
    assert_eq!(
        line.trim(),
        r#"configuration error: APP__SERVER__PORT="eighty" is invalid: expected a TCP port (1-65535)"#
    );
}

#[test]
fn a_bad_duration_names_the_variable() {
    let line = refused(&[("APP__SHUTDOWN__TIMEOUT", "20 parsecs")]);
    assert!(
        line.contains(r#"APP__SHUTDOWN__TIMEOUT="20 parsecs" is invalid: expected a duration"#),
        "{line}"
    );
}

#[test]
fn a_bad_proxy_network_names_the_variable() {
    let line = refused(&[("APP__SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 10.0.0.0/33")]);
    assert!(
        line.contains(r#"APP__SERVER__TRUSTED_PROXIES="10.0.0.0/8, 10.0.0.0/33" is invalid"#),
        "{line}"
    );
}

#[test]
fn a_bad_url_names_the_variable_without_its_password() {
    let line = refused(&[("APP__DATABASE__URL", "mysql://app:s3cr3t-pw@db/app")]);
    assert!(line.contains("APP__DATABASE__URL="), "{line}");
    assert!(
        line.contains("expected a URL starting with postgres://"),
        "{line}"
    );
    assert!(!line.contains("s3cr3t-pw"), "{line}");
}

#[test]
fn an_unknown_app_env_names_the_variable() {
    let line = refused(&[("APP_ENV", "staging")]);
    assert!(line.contains(r#"APP_ENV="staging" is invalid"#), "{line}");
}

#[test]
fn passwords_never_reach_the_logs() {
    let shared = Shared::new("secrets");
    // @rabbitmq-begin
    // A (trust-ignored) password in the database URL, and guest's in the broker URL.
    // @rabbitmq-else
    // // A (trust-ignored) password in the database URL.
    // @rabbitmq-end
    let env = shared.env_with(
        &format!(
            "postgres://postgres:pg-s3cr3t@127.0.0.1:5432/{}",
            shared.name
        ),
        &[("RUST_LOG", "debug")],
    );
    let service = spawn(&env);
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.wait_for_status("pass", Duration::from_secs(10));
    service.signal(Signal::SIGTERM);
    service.wait_exit(Duration::from_secs(15));
    let logs = service.logs();
    // @rabbitmq-begin
    assert!(
        logs.contains("amqp://guest:***@127.0.0.1:5672"),
        "the broker URL should be logged redacted"
    );
    // @rabbitmq-end
    // @rabbitmq-begin
    let secrets = ["pg-s3cr3t", "guest:guest"];
    // @rabbitmq-else
    // let secrets = ["pg-s3cr3t"];
    // @rabbitmq-end
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[test]
fn a_misspelt_variable_stops_the_process_naming_it() {
    let line = refused(&[("APP__HEALTH__POSTGRES__INTERVALL", "5s")]);
    assert!(
        line.contains(
            r#"APP__HEALTH__POSTGRES__INTERVALL="5s" is invalid: expected a known setting"#
        ),
        "{line}"
    );
}
