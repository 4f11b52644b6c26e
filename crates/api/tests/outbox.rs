//! A broker outage loses no event: kill -9 of RabbitMQ while 200 items are being created.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn a_broker_killed_mid_load_loses_no_event() {
    let shared = Shared::new("outage");
    let rabbit = RabbitMq::start();
    let service = spawn(&env_for(&shared.database_url(), &rabbit.url(), &[]));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service.wait_for_status("pass", Duration::from_secs(15));
    let db = shared.name.clone();

    let done = AtomicUsize::new(0);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (service, done) = (&service, &done);
                scope.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let response =
                                example::post(service, &example::body(&format!("w{w} i{i}")), None);
                            done.fetch_add(1, Ordering::SeqCst);
                            // Spread the 200 writes over the outage.
                            std::thread::sleep(Duration::from_millis(40));
                            response.status().as_u16()
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        testkit::wait_until(
            "some writes before the kill",
            Duration::from_secs(30),
            || done.load(Ordering::SeqCst) >= 30,
        );
        rabbit.kill9();
        // Non-critical broker: degraded, still serving.
        service.wait_for_status("warn", DETECTION);
        assert_eq!(service.probe("/readyz/rabbitmq").0, 503);
        rabbit.start_again();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(statuses.len(), 200);
    assert!(
        statuses.iter().all(|s| *s == 201),
        "the API must keep answering 2xx: {statuses:?}"
    );

    service.wait_for_status("pass", Duration::from_secs(30));
    testkit::wait_until("all 200 events consumed", Duration::from_secs(60), || {
        psql_in(
            &db,
            &format!(
                "SELECT count(*) FROM processed_events p JOIN outbox o ON o.event_id = p.event_id \
                 WHERE o.routing_key = '{}'",
                example::CREATED
            ),
        ) == "200"
    });
    assert_eq!(
        psql_in(&db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL"),
        "0"
    );
    // Duplicates are allowed by at-least-once delivery, and harmless: counted once.
    assert_eq!(
        psql_in(
            &db,
            &format!(
                "SELECT count FROM event_counts WHERE event_type = '{}'",
                example::CREATED
            )
        ),
        "200"
    );
    let logs = service.logs();
    assert!(
        logs.contains("broker connection lost, reconnecting"),
        "the supervisor should have seen the outage"
    );
    assert!(
        logs.matches("broker connected, topology declared").count() >= 2,
        "and reconnected"
    );
}

#[test]
fn a_stuck_relay_shows_as_lag_and_leaves_the_request_pool_alone() {
    let shared = Shared::new("stuckrelay");
    let rabbit = RabbitMq::start();
    let service = spawn(&env_for(
        &shared.database_url(),
        &rabbit.url(),
        &[
            ("APP__OUTBOX__LAG_WARN_AFTER", "2s"),
            ("APP__OUTBOX__PUBLISH_TIMEOUT", "3s"),
            ("APP__DATABASE__REQUEST_CONNECTIONS", "1"),
        ],
    ));
    service.wait_for_status("pass", Duration::from_secs(30));
    // A frozen broker: the relay's publish gets no confirm.
    rabbit.pause();
    let post = |name: &str| {
        example::post(&service, &example::body(name), None)
            .status()
            .as_u16()
    };
    assert_eq!(post("while the broker is frozen"), 201);
    // The lag is measured from the table, not from what the stuck relay last reported.
    testkit::wait_until("the outbox check to fail", Duration::from_secs(20), || {
        service.probe("/readyz/outbox").0 == 503
    });
    let metrics = service.probe("/metrics").2;
    assert!(
        metrics.lines().any(|l| l == "outbox_pending_events 1"),
        "{metrics}"
    );
    // The relay holds its own connection, not the request pool's only one.
    assert_eq!(post("the request pool is free"), 201);
    rabbit.resume();
    testkit::wait_until("both events consumed", Duration::from_secs(60), || {
        psql_in(&shared.name, "SELECT count(*) FROM processed_events") == "2"
    });
    service.wait_for_status("pass", Duration::from_secs(30));
}

#[test]
fn the_lag_check_reads_a_bounded_part_of_a_long_backlog() {
    let shared = Shared::new("longbacklog");
    let rabbit = RabbitMq::start();
    let service = spawn(&env_for(&shared.database_url(), &rabbit.url(), &[]));
    service.wait_for_status("pass", Duration::from_secs(30));
    // A long broker outage: 200 000 events pile up. The broker is gone, not frozen, so the
    // relay waits for a connection and claims nothing: the reads counted below are the lag
    // check's (a relay retrying claims against a frozen broker read the outbox too).
    rabbit.kill9();
    psql_in(
        &shared.name,
        "INSERT INTO outbox (event_id, routing_key, payload) \
         SELECT gen_random_uuid(), 'item.created', '{}' FROM generate_series(1, 200000)",
    );
    psql_in(&shared.name, "VACUUM ANALYZE outbox");
    testkit::wait_until(
        "the lag gauge to see the backlog",
        Duration::from_secs(20),
        || service.metric("outbox_pending_events") >= 200_000.0,
    );
    // Rows of the outbox read (heap and index), and runs of the lag check, over a few runs.
    let read = || -> f64 {
        psql_in(
            &shared.name,
            "SELECT COALESCE(sum(idx_tup_read), 0) + (SELECT COALESCE(seq_tup_read, 0) \
             FROM pg_stat_user_tables WHERE relname = 'outbox') \
             FROM pg_stat_user_indexes WHERE relname = 'outbox'",
        )
        .parse()
        .unwrap()
    };
    let runs = || service.metric(r#"health_check_duration_seconds_count{check="outbox"}"#);
    // PostgreSQL reports a backend's reads when it goes idle, up to 10 s late: let what came
    // before the window (the insert, the relay's last claims) arrive first. The lag check itself
    // runs every 2 s, so its own reads arrive within about a second of each run.
    std::thread::sleep(Duration::from_secs(11));
    let (read_before, runs_before) = (read(), runs());
    testkit::wait_until("ten runs of the lag check", Duration::from_secs(60), || {
        runs() >= runs_before + 10.0
    });
    let runs_after = runs();
    std::thread::sleep(Duration::from_secs(3));
    let per_run = (read() - read_before) / (runs_after - runs_before);
    assert!(
        per_run < 30_000.0,
        "the lag check read {per_run:.0} outbox rows per run of a 200 000-row backlog"
    );
    assert!(service.metric("outbox_oldest_pending_seconds") > 0.0);
}
