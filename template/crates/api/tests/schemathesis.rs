//! Schema-driven fuzzing of every operation in `/openapi.json` with schemathesis.
//!
//! Ignored by a plain `cargo test` (it needs the tool); `make fuzz` (part of `make test`)
//! installs schemathesis into `.venv/` and runs this test with `SCHEMATHESIS` pointing at it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
#[ignore = "needs schemathesis: run through `make fuzz`"]
fn every_operation_survives_schema_driven_fuzzing() {
    let st = std::env::var("SCHEMATHESIS").expect("SCHEMATHESIS must point at the st binary");
    let shared = Shared::new("fuzz");
    let service = spawn(&shared.env());
    service.wait_for("/readyz", 200, Duration::from_secs(30));
    let output = Command::new(st)
        .args([
            "run",
            &service.api_url("/openapi.json"),
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "50",
            "--generation-deterministic",
            // Strings with control characters and NUL, which PostgreSQL text cannot hold: the
            // class of input that once reached the database and came back as a 500.
            "--generation-allow-x00",
            "true",
            "--generation-codec",
            "utf-8",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("Selected: 4/4"),
        "every operation must be exercised:\n{report}"
    );
    assert!(
        service.try_exit().is_none(),
        "the service died under fuzzing"
    );
}
