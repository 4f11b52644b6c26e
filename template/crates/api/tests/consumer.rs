//! The consumer under faults: a database outage delays events and dead-letters none of them;
//! a message that keeps failing for a reason of its own is dead-lettered after its attempts,
//! counted in the message itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const QUEUE: &str = "{{project-name}}.items";
const DLQ: &str = "{{project-name}}.items.dlq";

fn event(kind: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": Uuid::now_v7(),
        "type": kind,
        "item_id": Uuid::now_v7(),
        "occurred_at": "2026-11-26T00:00:00Z",
    }))
    .unwrap()
}

#[test]
fn a_short_database_outage_dead_letters_nothing() {
    let shared = Shared::new("pgblink");
    let postgres = Postgres::start();
    postgres.create_database("events");
    let service = spawn(&env_for(
        &postgres.url("events"),
        &shared.rabbitmq_url(),
        &[],
    ));
    service.wait_for_status("pass", Duration::from_secs(30));

    postgres.stop();
    for _ in 0..40 {
        testkit::amqp::publish(
            &shared.rabbitmq_url(),
            "{{project-name}}.events",
            "item.created",
            &event("item.created"),
        );
    }
    // The outage lasts 6 s from the stop: the events arrive while PostgreSQL is away.
    std::thread::sleep(Duration::from_secs(6));
    postgres.start_again();

    testkit::wait_until(
        "all 40 events processed after PostgreSQL returned",
        Duration::from_secs(60),
        || postgres.psql("events", "SELECT count(*) FROM processed_events") == "40",
    );
    assert_eq!(
        testkit::amqp::queue_depth(&shared.rabbitmq_url(), DLQ),
        0,
        "events were dead-lettered because the database was away:\n{}",
        service.logs()
    );
    assert_eq!(testkit::amqp::queue_depth(&shared.rabbitmq_url(), QUEUE), 0);
}

#[test]
fn a_message_that_keeps_failing_is_dead_lettered_after_its_attempts() {
    let shared = Shared::new("poison");
    let service = spawn(&shared.env());
    service.wait_for_status("pass", Duration::from_secs(30));
    // A well-formed event the database refuses every time: its type does not fit the column.
    let poison = event(&"x".repeat(1000));
    psql_in(
        &shared.name,
        "ALTER TABLE event_counts ADD CONSTRAINT short_type CHECK (length(event_type) < 100)",
    );
    testkit::amqp::publish(
        &shared.rabbitmq_url(),
        "{{project-name}}.events",
        "item.created",
        &poison,
    );
    testkit::wait_until(
        "the poison event in the DLQ",
        Duration::from_secs(30),
        || testkit::amqp::queue_depth(&shared.rabbitmq_url(), DLQ) == 1,
    );
    // The attempts travel with the message (a restart or another replica goes on counting):
    // the dead letter is the copy republished after the second attempt.
    let dead = testkit::amqp::take(&shared.rabbitmq_url(), DLQ).unwrap();
    let attempts = dead
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-attempts").cloned());
    assert_eq!(attempts, Some(lapin::types::AMQPValue::LongUInt(2)));
    let logs = service.logs();
    let failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("consumer: processing failed"))
        .collect();
    assert_eq!(failures.len(), 3, "{logs}");
    assert!(failures[2].contains("\"attempt\":3"), "{}", failures[2]);
    // The consumer goes on with the next one.
    testkit::amqp::publish(
        &shared.rabbitmq_url(),
        "{{project-name}}.events",
        "item.created",
        &event("item.created"),
    );
    testkit::wait_until("the next event processed", Duration::from_secs(20), || {
        psql_in(&shared.name, "SELECT count(*) FROM processed_events") == "1"
    });
}
