//! The items API on real PostgreSQL: status codes, media types, idempotency and pagination.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::example::post;
use common::*;
use reqwest::blocking::Response;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const PROBLEM: &str = "application/problem+json";

fn ready(shared: &Shared, extra: &[(&str, &str)]) -> Service {
    let service = spawn(&shared.env_with(&shared.database_url(), extra));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    service
}

fn media(response: &Response) -> String {
    response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Asserts a problem response: status, media type, and the RFC 9457 members.
fn assert_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(media(&response), PROBLEM);
    let body: Value = response.json().unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].is_string() && body["type"].is_string(),
        "{body}"
    );
    body
}

#[test]
fn crud_and_every_error_case() {
    let shared = Shared::new("crud");
    let service = ready(&shared, &[("APP__SERVER__BODY_LIMIT", "1024")]);
    let http = service.http();

    let created = post(&service, &json!({"name": "first", "note": "hello"}), None);
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(media(&created), "application/json");
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    assert!(created.headers().contains_key("x-request-id"));
    let item: Value = created.json().unwrap();
    assert_eq!(
        location,
        format!("/v1/items/{}", item["id"].as_str().unwrap())
    );
    assert_eq!(
        (item["name"].as_str(), item["note"].as_str()),
        (Some("first"), Some("hello"))
    );
    assert!(item["created_at"].is_string());

    let fetched = http.get(service.api_url(&location)).send().unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.json::<Value>().unwrap(), item);

    let page: Value = http
        .get(service.api_url("/v1/items"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["items"], json!([item]));
    assert_eq!(page["next_cursor"], Value::Null);

    let deleted = http.delete(service.api_url(&location)).send().unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    assert_problem(http.get(service.api_url(&location)).send().unwrap(), 404);
    assert_problem(http.delete(service.api_url(&location)).send().unwrap(), 404);

    // Malformed JSON 400, wrong shape or rule 422, wrong media type 415, too large 413.
    let broken = http
        .post(service.api_url("/v1/items"))
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .unwrap();
    assert_problem(broken, 400);
    assert_problem(post(&service, &json!({"name": ""}), None), 422);
    assert_problem(post(&service, &json!({"name": "x".repeat(201)}), None), 422);
    assert_problem(post(&service, &json!({"note": "no name"}), None), 422);
    assert_problem(post(&service, &json!({"name": 5}), None), 422);
    let text = http
        .post(service.api_url("/v1/items"))
        .header("content-type", "text/plain")
        .body("{\"name\":\"x\"}")
        .send()
        .unwrap();
    assert_problem(text, 415);
    let huge = post(
        &service,
        &json!({"name": "x", "note": "y".repeat(2000)}),
        None,
    );
    assert_problem(huge, 413);

    // Bad ids and queries 400, unknown paths 404, wrong methods 405: all problems.
    for path in [
        "/v1/items/not-a-uuid",
        "/v1/items?limit=abc",
        "/v1/items?limit=0",
        "/v1/items?cursor=zzz",
    ] {
        let response = http.get(service.api_url(path)).send().unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert_problem(response, 400);
    }
    assert_problem(
        http.get(service.api_url("/nothing/here")).send().unwrap(),
        404,
    );
    assert_problem(http.put(service.api_url("/v1/items")).send().unwrap(), 405);
}

#[test]
fn unexpected_failures_are_500_without_internals_and_an_unreachable_database_is_503() {
    let postgres = Postgres::start();
    postgres.create_database("app");
    let proxy = FaultProxy::start(postgres.port());
    let shared = Shared::new("errors");
    let url = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port());
    let service = spawn(&shared.env_with(
        &url,
        &[
            ("APP__DATABASE__POOL_WAIT_TIMEOUT", "500ms"),
            ("APP__DATABASE__QUERY_TIMEOUT", "1s"),
        ],
    ));
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    assert_eq!(
        post(&service, &json!({"name": "ok"}), None)
            .status()
            .as_u16(),
        201
    );

    // A broken schema behind the service's back: a 500 that leaks nothing.
    postgres.psql("app", "ALTER TABLE items RENAME TO items_gone");
    let body = assert_problem(
        service
            .http()
            .get(service.api_url("/v1/items"))
            .send()
            .unwrap(),
        500,
    );
    assert_eq!(body["detail"], "an unexpected error occurred");
    assert!(!body.to_string().contains("items"), "{body}");
    postgres.psql("app", "ALTER TABLE items_gone RENAME TO items");

    // The database stops answering: a quick 503 with Retry-After, never a hang.
    proxy.set(Fault::BlackHole);
    let began = std::time::Instant::now();
    let response = service
        .http()
        .get(service.api_url("/v1/items?limit=1"))
        .send()
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "took {:?}",
        began.elapsed()
    );
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("1".to_owned())
    );
    assert_problem(response, 503);
    // And it recovers by itself once the database answers again.
    proxy.set(Fault::Pass);
    testkit::wait_until("requests succeeding again", Duration::from_secs(15), || {
        service
            .http()
            .get(service.api_url("/v1/items?limit=1"))
            .send()
            .is_ok_and(|r| r.status().as_u16() == 200)
    });
}

#[test]
fn twenty_parallel_posts_with_one_key_create_one_item() {
    let shared = Shared::new("idem");
    let service = ready(&shared, &[]);
    let body = json!({"name": "once"});
    let responses: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    let response = post(&service, &body, Some("key-1"));
                    (
                        response.status().as_u16(),
                        response.json::<Value>().unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: HashSet<String> = responses
        .iter()
        .map(|(_, item)| item["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        responses.iter().all(|(status, _)| *status == 201),
        "{responses:?}"
    );
    assert_eq!(ids.len(), 1, "every retry must get the first item: {ids:?}");
    let db = &shared.name;
    assert_eq!(psql_in(db, "SELECT count(*) FROM items"), "1");
    // @rabbitmq-begin
    assert_eq!(
        psql_in(
            db,
            "SELECT count(*) FROM outbox WHERE routing_key = 'item.created'"
        ),
        "1"
    );
    // @rabbitmq-end
    // Same key, another body: refused.
    assert_problem(
        post(&service, &json!({"name": "other"}), Some("key-1")),
        422,
    );
}

/// The id of an item answered 201.
fn created_id(response: Response) -> String {
    assert_eq!(response.status().as_u16(), 201);
    response.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every page from the first to the last, `limit` items at most each: the ids in the order
/// returned, and each page's size in bytes.
fn walk(service: &Service, limit: usize) -> (Vec<String>, Vec<usize>) {
    let (mut seen, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/items?limit={limit}&cursor={c}"),
            None => format!("/v1/items?limit={limit}"),
        };
        let body = service
            .http()
            .get(service.api_url(&path))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        sizes.push(body.len());
        let page: Value = serde_json::from_slice(&body).unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (seen, sizes),
        }
        assert!(sizes.len() < 100, "pagination does not end");
    }
}

#[test]
fn pages_of_large_items_are_bounded_in_bytes_and_still_return_every_item() {
    let shared = Shared::new("bigpages");
    let service = ready(&shared, &[]);
    // Plain text, and control characters that JSON writes as six bytes each (\u0001).
    let (plain, escaped) = ("n".repeat(60_000), "\u{1}".repeat(10_000));
    let created: Vec<String> = (0..30)
        .map(|i| {
            let note = if i % 2 == 0 { &plain } else { &escaped };
            let response = post(
                &service,
                &json!({"name": format!("big {i}"), "note": note}),
                None,
            );
            created_id(response)
        })
        .collect();
    // 30 items of 60 KB fit the row limit of one page, not its byte budget.
    let (seen, sizes) = walk(&service, 100);
    assert_eq!(seen, created, "each item exactly once, in creation order");
    assert!(
        sizes.iter().all(|size| *size < 320 * 1024),
        "page sizes in bytes: {sizes:?}"
    );
}

#[test]
fn two_hundred_fifty_items_paged_by_seven_come_back_once_in_order() {
    let shared = Shared::new("paging");
    let service = ready(&shared, &[]);
    let mut created = Vec::new();
    for i in 0..250 {
        let response = post(&service, &json!({"name": format!("item {i}")}), None);
        assert_eq!(response.status().as_u16(), 201);
        created.push(
            response.json::<Value>().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (seen, _) = walk(&service, 7);
    assert_eq!(seen, created, "each item exactly once, in creation order");
    let capped: Value = service
        .http()
        .get(service.api_url("/v1/items?limit=1000"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        capped["items"].as_array().unwrap().len(),
        100,
        "limit is capped at 100"
    );
}

/// What keyset pagination promises while other clients insert (docs/api.md): every item
/// committed before the walk began comes back exactly once, in order, and no item twice. An
/// item committed during the walk may be missed: its id is taken before its commit.
#[test]
fn a_page_walk_during_inserts_returns_every_earlier_item_once() {
    let shared = Shared::new("paging-live");
    let service = ready(&shared, &[]);
    let earlier: Vec<String> = (0..60)
        .map(|i| {
            let response = post(&service, &json!({"name": format!("earlier {i}")}), None);
            created_id(response)
        })
        .collect();
    let walking = std::sync::atomic::AtomicBool::new(true);
    let seen = std::thread::scope(|scope| {
        for writer in 0..4 {
            let (service, walking) = (&service, &walking);
            scope.spawn(move || {
                while walking.load(std::sync::atomic::Ordering::Relaxed) {
                    let response =
                        post(service, &json!({"name": format!("during {writer}")}), None);
                    assert_eq!(response.status().as_u16(), 201);
                }
            });
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let path = match &cursor {
                Some(c) => format!("/v1/items?limit=5&cursor={c}"),
                None => "/v1/items?limit=5".to_owned(),
            };
            let page: Value = service
                .http()
                .get(service.api_url(&path))
                .send()
                .unwrap()
                .json()
                .unwrap();
            seen.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].as_str().unwrap().to_owned()),
            );
            // Stop the writers once the earlier items are behind: the rest is a bounded tail.
            if seen.len() >= earlier.len() {
                walking.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        walking.store(false, std::sync::atomic::Ordering::Relaxed);
        seen
    });
    let unique: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an item came back twice");
    assert_eq!(
        &seen[..earlier.len()],
        &earlier[..],
        "the earlier items, once each, in order"
    );
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "ids in ascending order"
    );
}

#[test]
fn a_column_that_changed_under_the_replica_is_a_500_not_a_dropped_connection() {
    let shared = Shared::new("coltype");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    // A rolling migration changed a column's type under this (older) replica.
    let id = psql_in(
        &shared.name,
        "INSERT INTO items (id, name) VALUES (gen_random_uuid(), 'old') RETURNING id",
    );
    psql_in(
        &shared.name,
        "ALTER TABLE items ALTER COLUMN note TYPE integer USING NULL",
    );
    for path in [format!("/v1/items/{id}"), "/v1/items?limit=5".to_owned()] {
        let response = service
            .http()
            .get(service.api_url(&path))
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: no answer ({e})\n{}", service.logs()));
        assert_eq!(response.status().as_u16(), 500, "GET {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    assert_eq!(service.probe("/livez").0, 200);
    assert_eq!(service.api("/openapi.json").0, 200);
    assert!(service.try_exit().is_none());
}

#[test]
fn bookkeeping_rows_are_pruned_after_their_retention() {
    let shared = Shared::new("retention");
    let db = shared.name.clone();
    let service = ready(
        &shared,
        &[
            ("APP__RETENTION__IDEMPOTENCY_KEYS", "1s"),
            ("APP__RETENTION__PROCESSED_EVENTS", "1s"), // @rabbitmq
            ("APP__OUTBOX__RETENTION", "1s"),           // @rabbitmq
            ("APP__RETENTION__PRUNE_EVERY", "500ms"),
        ],
    );
    assert_eq!(
        post(&service, &json!({"name": "first"}), Some("k-1"))
            .status()
            .as_u16(),
        201
    );
    // Scoped by method and route.
    assert_eq!(
        psql_in(&db, "SELECT scope FROM idempotency_keys WHERE key = 'k-1'"),
        "POST /v1/items"
    );
    // @rabbitmq-begin
    testkit::wait_until("the event processed", Duration::from_secs(20), || {
        psql_in(&db, "SELECT count(*) FROM processed_events") == "1"
    });
    // The sent outbox row too: its table reaches housekeeping from the broker's wiring.
    let remaining = "SELECT (SELECT count(*) FROM idempotency_keys) \
                     + (SELECT count(*) FROM processed_events) + (SELECT count(*) FROM outbox)";
    // @rabbitmq-else
    // let remaining = "SELECT count(*) FROM idempotency_keys";
    // @rabbitmq-end
    testkit::wait_until(
        "the bookkeeping rows pruned",
        Duration::from_secs(20),
        || psql_in(&db, remaining) == "0",
    );
    // The key is free again: another body is a new item, not a 422.
    assert_eq!(
        post(&service, &json!({"name": "second"}), Some("k-1"))
            .status()
            .as_u16(),
        201
    );
}

#[test]
fn client_mistakes_are_4xx_never_500() {
    let shared = Shared::new("mistakes");
    let service = ready(&shared, &[]);
    // NUL cannot be stored in PostgreSQL text: refused before it gets there.
    assert_problem(post(&service, &json!({"name": "a\u{0000}"}), None), 422);
    assert_problem(
        post(&service, &json!({"name": "ok", "note": "b\u{0000}"}), None),
        422,
    );
    // An item is an object, not the same values in an array.
    assert_problem(post(&service, &json!(["an array", null]), None), 422);
    // A name must be visible: whitespace, zero-width spaces and byte-order marks are not.
    for invisible in [
        " \t\n ",
        "\u{200B}\u{200B}",
        "\u{FEFF}",
        "\u{200D}\u{2060}\u{00AD}",
    ] {
        assert_problem(post(&service, &json!({ "name": invisible }), None), 422);
    }
    // Kilobytes of client input are never reflected whole: an unknown field's name, a body
    // of the wrong type.
    let long = "x".repeat(60_000);
    for body in [json!({ long.clone(): 1, "name": "a" }), json!(long)] {
        let problem = assert_problem(post(&service, &body, None), 422);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.len() < 300, "{} bytes reflected", detail.len());
    }
    // Nor written into one log line: a 60 KB path is a 404 with its path clipped.
    let response = service
        .http()
        .get(service.api_url(&format!("/{long}")))
        .send()
        .unwrap();
    assert_problem(response, 404);
    // Idempotency-Key: once, visible ASCII.
    let twice = service
        .http()
        .post(service.api_url("/v1/items"))
        .header("Idempotency-Key", "k1")
        .header("Idempotency-Key", "k2")
        .json(&json!({"name": "twice"}))
        .send()
        .unwrap();
    assert_problem(twice, 400);
    assert_problem(post(&service, &json!({"name": "tab"}), Some("a\tb")), 400);
    // Reflected input is clipped.
    let cursor = "z".repeat(8_000);
    let response = service
        .http()
        .get(service.api_url(&format!("/v1/items?cursor={cursor}")))
        .send()
        .unwrap();
    let problem = assert_problem(response, 400);
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.len() < 200, "{} bytes reflected", detail.len());
    assert_eq!(
        psql_in(&shared.name, "SELECT count(*) FROM items"),
        "0",
        "a refused request stored something"
    );
    let logs = service.logs();
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4_096, "a log line of {longest} bytes");
}
