//! `shipshape migrate [--check]`: the schema as a release step (the chart's migration Job),
//! instead of a startup phase of every pod.

use crate::db;
use crate::settings::Settings;
use bootstrap::Telemetry;
use bootstrap::schema::Version;
use std::process::ExitCode;

/// Applies the pending migrations (or, with `check`, lists them) within
/// `APP__MIGRATIONS__DEADLINE`: exit 0 when the schema is what this release needs, 1 otherwise.
pub async fn run(settings: &Settings, check: bool) -> ExitCode {
    // The log says why a migration waits (a lock held elsewhere); stdout says what it did.
    let telemetry = match Telemetry::init(&settings.service.name) {
        Ok(telemetry) => telemetry,
        Err(error) => return crate::config_error(error),
    };
    let deadline = settings.migrations.deadline;
    let outcome = tokio::time::timeout(deadline, migrate(settings, check)).await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match outcome {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(error)) => {
            let error = bootstrap::config::redact(&format!("{error:#}"));
            eprintln!("migrate: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            let deadline = humantime::format_duration(deadline);
            eprintln!("migrate: not done within APP__MIGRATIONS__DEADLINE ({deadline})");
            ExitCode::FAILURE
        }
    }
}

/// Applies or lists the migrations, printing each; whether the schema is up to date afterwards.
async fn migrate(settings: &Settings, check: bool) -> anyhow::Result<bool> {
    let schema = db::schema();
    let status = if check {
        schema.status(&settings.database).await?
    } else {
        let print = |version: &Version, took: std::time::Duration| {
            println!("applied {version} ({} ms)", took.as_millis());
        };
        schema
            .migrate(&settings.database, &settings.migrations, print)
            .await?
    };
    for version in &status.pending {
        println!("pending {version}");
    }
    for version in &status.unknown {
        println!("applied by a later release: {version}");
    }
    let up_to_date = !check || status.pending.is_empty();
    if up_to_date {
        println!("schema up to date");
    }
    Ok(up_to_date)
}
