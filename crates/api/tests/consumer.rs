//! The consumer under faults: a database outage delays events and dead-letters none of them;
//! a message that keeps failing for a reason of its own is dead-lettered after its attempts,
//! counted in the message itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const QUEUE: &str = "shipshape.items";
const DLQ: &str = "shipshape.items.dlq";

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
    let service = spawn(&shared.env_with(&postgres.url("events"), &[]));
    service.wait_for_status("pass", Duration::from_secs(30));

    postgres.stop();
    for _ in 0..40 {
        testkit::amqp::publish(
            &shared.rabbitmq_url(),
            "shipshape.events",
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
fn a_database_read_only_for_a_few_seconds_dead_letters_nothing() {
    // What a failover looks like to a client: for a few seconds every write is refused with
    // SQLSTATE 25006 (read-only transaction) while the server stays up.
    let shared = Shared::new("readonly");
    let postgres = Postgres::start();
    postgres.create_database("events");
    let service = spawn(&shared.env_with(&postgres.url("events"), &[]));
    service.wait_for_status("pass", Duration::from_secs(30));

    let read_only = |on: &str| {
        postgres.psql(
            "events",
            &format!("ALTER SYSTEM SET default_transaction_read_only = {on}"),
        );
        postgres.psql("events", "SELECT pg_reload_conf()");
    };
    read_only("on");
    for _ in 0..20 {
        testkit::amqp::publish(
            &shared.rabbitmq_url(),
            "shipshape.events",
            "item.created",
            &event("item.created"),
        );
    }
    // The read-only spell lasts 5 s: the events arrive during it.
    std::thread::sleep(Duration::from_secs(5));
    read_only("off");

    let dead = || testkit::amqp::queue_depth(&shared.rabbitmq_url(), DLQ);
    let processed = || {
        postgres
            .psql("events", "SELECT count(*) FROM processed_events")
            .parse::<u32>()
            .unwrap()
    };
    testkit::wait_until(
        "all 20 events processed or dead-lettered",
        Duration::from_secs(60),
        || processed() + dead() == 20,
    );
    assert_eq!(
        dead(),
        0,
        "events were dead-lettered because the database was read-only:\n{}",
        service.logs()
    );
}

#[test]
fn an_event_too_slow_for_the_query_timeout_is_dead_lettered_not_held_forever() {
    // A database that is up (its check passes) but one event whose work never fits the query
    // timeout: that is the event's fault, not an outage to wait out.
    let shared = Shared::new("slowevent");
    let service = spawn(&shared.env_with(
        &shared.database_url(),
        &[("APP__DATABASE__QUERY_TIMEOUT", "1s")],
    ));
    service.wait_for_status("pass", Duration::from_secs(30));
    psql_in(
        &shared.name,
        "CREATE FUNCTION slow_event() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.event_type = 'item.slow' THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER slow_event BEFORE INSERT OR UPDATE ON event_counts \
         FOR EACH ROW EXECUTE FUNCTION slow_event()",
    );
    for kind in ["item.slow", "item.created"] {
        testkit::amqp::publish(
            &shared.rabbitmq_url(),
            "shipshape.events",
            "item.created",
            &event(kind),
        );
    }
    testkit::wait_until(
        "the slow event dead-lettered and the next one processed",
        Duration::from_secs(90),
        || {
            testkit::amqp::queue_depth(&shared.rabbitmq_url(), DLQ) == 1
                && psql_in(&shared.name, "SELECT count(*) FROM processed_events") == "1"
        },
    );
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
        "shipshape.events",
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
    // Each retry waits longer than the one before (1 s, then 4 s), so a failure a retry can
    // fix has time to pass instead of using up the attempts in milliseconds.
    let at = |line: &str| {
        let entry: Value = serde_json::from_str(line).unwrap();
        chrono::DateTime::parse_from_rfc3339(entry["timestamp"].as_str().unwrap()).unwrap()
    };
    let waits: Vec<i64> = failures
        .windows(2)
        .map(|pair| (at(pair[1]) - at(pair[0])).num_milliseconds())
        .collect();
    assert!(
        waits[0] >= 1000 && waits[1] >= 4000,
        "waits between attempts (ms): {waits:?}"
    );
    // The consumer goes on with the next one.
    testkit::amqp::publish(
        &shared.rabbitmq_url(),
        "shipshape.events",
        "item.created",
        &event("item.created"),
    );
    testkit::wait_until("the next event processed", Duration::from_secs(20), || {
        psql_in(&shared.name, "SELECT count(*) FROM processed_events") == "1"
    });
}

#[test]
fn events_reach_the_consumer_once_and_poison_goes_to_the_dead_letter_queue() {
    let shared = Shared::new("events");
    let service = spawn(&shared.env_with(&shared.database_url(), &[("RUST_LOG", "info")]));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = service
        .http()
        .post(service.api_url(example::PATH))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&example::body("traced"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let id = response.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        service
            .http()
            .delete(service.api_url(&example::one(&id)))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    let db = shared.name.clone();
    testkit::wait_until("both events consumed", Duration::from_secs(20), || {
        psql_in(
            &db,
            "SELECT coalesce(string_agg(event_type || '=' || count, ',' ORDER BY event_type), '') FROM event_counts",
        ) == format!("{}=1,{}=1", example::CREATED, example::DELETED)
    });
    // The consumer's span continued the HTTP request's trace through the broker.
    let consumed = service
        .logs()
        .lines()
        .find(|l| l.contains("event consumed") && l.contains(example::CREATED))
        .unwrap()
        .to_owned();
    assert!(
        consumed.contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "{consumed}"
    );

    // A message that is not an event: dead-lettered, and the consumer keeps going.
    publish_raw(&shared, example::CREATED, b"not json at all");
    testkit::wait_until(
        "the poison message in the DLQ",
        Duration::from_secs(20),
        || queue_depth(&shared, "shipshape.items.dlq") == 1,
    );
    assert_eq!(
        example::post(&service, &example::body("after poison"), None)
            .status()
            .as_u16(),
        201
    );
    testkit::wait_until("the next event consumed", Duration::from_secs(20), || {
        psql_in(
            &db,
            &format!(
                "SELECT count FROM event_counts WHERE event_type = '{}'",
                example::CREATED
            ),
        ) == "2"
    });
    // Redelivery is harmless: replaying a processed event changes nothing.
    let event = psql_in(
        &db,
        &format!(
            "SELECT payload::text FROM outbox WHERE routing_key = '{}' ORDER BY seq LIMIT 1",
            example::CREATED
        ),
    );
    publish_raw(&shared, example::CREATED, event.as_bytes());
    std::thread::sleep(Duration::from_millis(500));
    testkit::wait_until(
        "the duplicate acknowledged",
        Duration::from_secs(20),
        || queue_depth(&shared, "shipshape.items") == 0,
    );
    assert_eq!(
        psql_in(
            &db,
            &format!(
                "SELECT count FROM event_counts WHERE event_type = '{}'",
                example::CREATED
            )
        ),
        "2"
    );
}

#[test]
fn a_backlog_with_redeliveries_is_committed_once_per_event() {
    let shared = Shared::new("backlog");
    // The first run declares the queue; each backlog builds while no service consumes it.
    let first = spawn(&shared.env());
    first.wait_for_status("pass", Duration::from_secs(30));
    drop(first);
    // One consumer: a copy lands in the same batch as its original. Four: the broker hands
    // adjacent messages to different consumers, so the copies are recorded concurrently.
    for (round, consumers) in [(1, "1"), (2, "4")] {
        let events: Vec<Vec<u8>> = (0..200).map(|_| event("item.created")).collect();
        // Every fourth event twice in a row, as a relay that crashed between confirm and
        // commit sends it.
        for (n, body) in events.iter().enumerate() {
            let copies = if n % 4 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                testkit::amqp::publish(
                    &shared.rabbitmq_url(),
                    "shipshape.events",
                    "item.created",
                    body,
                );
            }
        }
        assert_eq!(queue_depth(&shared, QUEUE), 250);

        let service = spawn(&shared.env_with(
            &shared.database_url(),
            &[("APP__RABBITMQ__CONSUMERS", consumers)],
        ));
        let total = (200 * round).to_string();
        testkit::wait_until("the backlog consumed", Duration::from_secs(60), || {
            queue_depth(&shared, QUEUE) == 0
                && psql_in(&shared.name, "SELECT count(*) FROM processed_events") == total
        });
        assert_eq!(
            psql_in(
                &shared.name,
                "SELECT count FROM event_counts WHERE event_type = 'item.created'"
            ),
            total,
            "each event counted once with {consumers} consumer(s):\n{}",
            service.logs()
        );
        assert_eq!(queue_depth(&shared, DLQ), 0, "{}", service.logs());
    }
}

fn publish_raw(shared: &Shared, routing_key: &str, body: &[u8]) {
    testkit::amqp::publish(
        &shared.rabbitmq_url(),
        "shipshape.events",
        routing_key,
        body,
    );
}

fn queue_depth(shared: &Shared, queue: &str) -> u32 {
    testkit::amqp::queue_depth(&shared.rabbitmq_url(), queue)
}
