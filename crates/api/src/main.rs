//! The `shipshape` binary: loads settings, then hands over to [`app::run`].

mod app;
mod auth;
mod db;
mod domain;
mod housekeeping;
mod messaging; // @rabbitmq
mod openapi;
mod problem;
mod routes;
mod settings;

use std::process::ExitCode;

/// A bad setting (or telemetry that cannot start): one line on stderr, exit 2.
fn config_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("configuration error: {error}");
    ExitCode::from(bootstrap::EXIT_CONFIG as u8)
}

/// What the process was asked to do.
enum Command {
    Serve,
    Migrate { check: bool },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => Command::Serve,
        ["migrate"] => Command::Migrate { check: false },
        ["migrate", "--check"] => Command::Migrate { check: true },
        _ => {
            eprintln!("usage: shipshape [migrate [--check]]");
            return ExitCode::from(bootstrap::EXIT_CONFIG as u8);
        }
    };
    // Before any runtime or socket: a bad setting exits 2 with one line naming the variable.
    let settings = match settings::Settings::load(&bootstrap::config::Sources::from_env()) {
        Ok(settings) => settings,
        Err(error) => return config_error(error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("shipshape-main")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match command {
            Command::Serve => app::run(settings).await,
            Command::Migrate { check } => app::migrate::run(&settings, check).await,
        }
    });
    // Shutdown kept its deadline: the drop must not wait on a blocking task (a trace flush).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}
