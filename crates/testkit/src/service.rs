//! Spawns the real `shipshape` binary with env overrides and talks to its two ports.

use crate::net::{free_port, wait_until};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running service process. Killed on drop.
pub struct Service {
    child: Mutex<Child>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    /// The API port.
    pub api_port: u16,
    /// The management port.
    pub management_port: u16,
    http: reqwest::blocking::Client,
}

/// Settings every spawned service gets unless the test overrides them: loopback only, short
/// check intervals so fault tests run in seconds, and a short drain.
const BASE_ENV: &[(&str, &str)] = &[
    ("APP__SERVER__HOST", "127.0.0.1"),
    ("APP__SERVER__WORKERS", "2"),
    ("APP__HEALTH__POSTGRES__INTERVAL", "500ms"),
    ("APP__HEALTH__POSTGRES__TIMEOUT", "400ms"),
    // @rabbitmq-begin
    ("APP__HEALTH__RABBITMQ__INTERVAL", "500ms"),
    ("APP__HEALTH__RABBITMQ__TIMEOUT", "400ms"),
    ("APP__RABBITMQ__RECONNECT_MAX_BACKOFF", "1s"),
    // @rabbitmq-end
    ("APP__SHUTDOWN__DRAIN_DELAY", "1s"),
    ("APP__SHUTDOWN__TIMEOUT", "5s"),
    ("APP__STARTUP__DEADLINE", "30s"),
    ("RUST_LOG", "info"),
];

impl Service {
    /// Spawns `binary` with `env` on top of the test defaults and fresh ports.
    pub fn spawn(binary: &Path, env: &[(&str, &str)]) -> Service {
        Service::spawn_on(binary, env, free_port(), free_port())
    }

    /// Like [`Service::spawn`], on ports chosen by the caller (a load balancer slot).
    pub fn spawn_on(
        binary: &Path,
        env: &[(&str, &str)],
        api_port: u16,
        management_port: u16,
    ) -> Service {
        Service::launch(binary, BASE_ENV, env, api_port, management_port, None)
    }

    /// Like [`Service::spawn`], with soft and hard `RLIMIT_NOFILE` of `files` (through
    /// util-linux `prlimit`, which then execs the binary: the pid stays the service's).
    pub fn spawn_with_file_limit(binary: &Path, env: &[(&str, &str)], files: u64) -> Service {
        Service::launch(binary, BASE_ENV, env, free_port(), free_port(), Some(files))
    }

    /// Spawns `binary` with the service's own default tuning (loopback only), for measurements
    /// that must reflect what users get.
    pub fn spawn_untuned(binary: &Path, env: &[(&str, &str)]) -> Service {
        let base = [("APP__SERVER__HOST", "127.0.0.1")];
        Service::launch(binary, &base, env, free_port(), free_port(), None)
    }

    fn launch(
        binary: &Path,
        base: &[(&str, &str)],
        env: &[(&str, &str)],
        api_port: u16,
        management_port: u16,
        file_limit: Option<u64>,
    ) -> Service {
        let log_dir = tempfile::Builder::new()
            .prefix("testkit-svc-")
            .tempdir()
            .unwrap();
        let log = log_dir.path().join("service.log");
        let mut command = match file_limit {
            None => Command::new(binary),
            Some(files) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={files}:{files}"))
                    .arg("--")
                    .arg(binary);
                prlimit
            }
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APP__SERVER__PORT", api_port.to_string())
            .env("APP__MANAGEMENT__PORT", management_port.to_string())
            .env("APP_CONFIG_DIR", log_dir.path().join("no-config"));
        for (key, value) in base.iter().chain(env) {
            command.env(key, value);
        }
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Service {
            child: Mutex::new(child),
            log,
            _log_dir: log_dir,
            api_port,
            management_port,
            http,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Resident memory of the process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time (user and system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and stime are the 12th
        // and 13th, in clock ticks (100 per second on Linux).
        let ticks: u64 = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
            .into_iter()
            .flatten()
            .filter_map(|field| field.parse::<u64>().ok())
            .sum();
        Duration::from_millis(ticks * 10)
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client with no proxy and a 5 s timeout, for requests the helpers below do not cover.
    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    /// `http://127.0.0.1:<api port><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// GET on the management port: (status, content type, body). Status 0 when nothing answered.
    pub fn probe(&self, path: &str) -> (u16, String, String) {
        self.get(self.management_port, path)
    }

    /// The value of the unlabelled metric `name` in `/metrics`; panics when it is absent.
    pub fn metric(&self, name: &str) -> f64 {
        let exposition = self.probe("/metrics").2;
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{exposition}"))
    }

    /// GET on the API port.
    pub fn api(&self, path: &str) -> (u16, String, String) {
        self.get(self.api_port, path)
    }

    fn get(&self, port: u16, path: &str) -> (u16, String, String) {
        match self
            .http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
        {
            Ok(response) => {
                let status = response.status().as_u16();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                (status, content_type, response.text().unwrap_or_default())
            }
            Err(_) => (0, String::new(), String::new()),
        }
    }

    /// Waits until `path` on the management port answers `status`; returns how long it took.
    pub fn wait_for(&self, path: &str, status: u16, deadline: Duration) -> Duration {
        let began = Instant::now();
        loop {
            if self.probe(path).0 == status {
                return began.elapsed();
            }
            if let Some(exit) = self.try_exit() {
                panic!(
                    "service exited ({exit}) while waiting for {path} -> {status}\n{}",
                    self.logs()
                );
            }
            assert!(
                began.elapsed() < deadline,
                "{path} never answered {status} within {deadline:?}; last: {:?}\n{}",
                self.probe(&format!("{path}?verbose")),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the readiness status in the `?verbose` body is `status` (`pass`, `warn`, `fail`).
    pub fn wait_for_status(&self, status: &str, deadline: Duration) -> Duration {
        let began = Instant::now();
        let needle = format!("{{\"status\":\"{status}\"");
        loop {
            let (_, _, body) = self.probe("/readyz");
            if body.starts_with(&needle) {
                return began.elapsed();
            }
            if let Some(exit) = self.try_exit() {
                panic!(
                    "service exited ({exit}) while waiting for readiness {status}\n{}",
                    self.logs()
                );
            }
            assert!(
                began.elapsed() < deadline,
                "readiness never became {status} within {deadline:?}; last: {:?}\n{}",
                self.probe("/readyz?verbose"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        let pid = self.child.lock().unwrap().id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            signal,
        )
        .unwrap();
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().unwrap()
    }

    /// Waits for the process to end; panics after `deadline`.
    pub fn wait_exit(&self, deadline: Duration) -> (ExitStatus, Duration) {
        let began = Instant::now();
        let mut status = None;
        wait_until("the service to exit", deadline, || {
            status = self.try_exit();
            status.is_some()
        });
        (status.unwrap(), began.elapsed())
    }

    /// Polls `/livez` every 100 ms in the background until the watch is dropped.
    pub fn watch_liveness(&self) -> LivenessWatch {
        self.watch_probe("/livez")
    }

    /// Polls `path` on the management port every 100 ms, a new connection each time (as the
    /// kubelet does), counting answers other than 200 within 1 s.
    pub fn watch_probe(&self, path: &'static str) -> LivenessWatch {
        LivenessWatch::start(self.management_port, path)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- service log ----\n{}", self.logs());
        }
    }
}

/// Counts probe answers other than 200, polled every 100 ms from a thread of its own.
pub struct LivenessWatch {
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LivenessWatch {
    fn start(port: u16, path: &'static str) -> LivenessWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, p, f) = (stop.clone(), polls.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(1))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            while !s.load(Ordering::SeqCst) {
                let outcome = http.get(format!("http://127.0.0.1:{port}{path}")).send();
                p.fetch_add(1, Ordering::SeqCst);
                match outcome {
                    Ok(response) if response.status().as_u16() == 200 => {}
                    Ok(response) => f
                        .lock()
                        .unwrap()
                        .push(format!("status {}", response.status())),
                    Err(error) => f.lock().unwrap().push(format!("error {error}")),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        LivenessWatch {
            stop,
            polls,
            failures,
            thread: Some(thread),
        }
    }

    /// Polls so far.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// Stops polling; returns (polls, failures).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (
            self.polls.load(Ordering::SeqCst),
            self.failures.lock().unwrap().clone(),
        )
    }
}

impl Drop for LivenessWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
