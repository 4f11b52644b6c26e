//! The background tasks: one loop per check, and the liveness watchdog.

use crate::snapshot::CheckSlot;
use crate::{Health, Status};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

impl Health {
    /// Starts the liveness watchdog, a task beating on the current runtime: if it stalls, `/livez`
    /// fails after the stall bound. Start it first so `/livez` passes throughout startup.
    pub fn spawn_watchdog(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let mut ticker = interval(health.heartbeat().period());
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {
                        health.heartbeat().beat();
                        health.report_staleness();
                    }
                }
            }
        })
    }

    /// Starts one task per check, running it every `interval` under `timeout` and at once when
    /// its [`Alarm`](crate::Alarm) is raised; the tasks stop when `shutdown` is cancelled.
    pub fn spawn_scheduler(&self, shutdown: CancellationToken) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for index in 0..self.slots().len() {
            let health = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let slot = &health.slots()[index];
                let mut ticker = interval(slot.policy.interval());
                // After a slow run, wait a full interval rather than firing a burst.
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut last_alarm: Option<Instant> = None;
                loop {
                    let alarmed = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = ticker.tick() => false,
                        () = slot.alarm.raised() => true,
                    };
                    let runs = run_until_decided(&health, slot, alarmed, &mut last_alarm);
                    if shutdown.run_until_cancelled(runs).await.is_none() {
                        break;
                    }
                }
            });
        }
        tasks
    }
}

/// One run; after an alarm, re-runs every `recheck_after` while a failure is not yet confirmed.
/// Alarms are answered at least `recheck_after` apart (a dependency dropping connections in a loop
/// cannot make its check loop too) and ignored while failing: recovery keeps the poll's pace.
async fn run_until_decided(
    health: &Health,
    slot: &CheckSlot,
    alarmed: bool,
    last_alarm: &mut Option<Instant>,
) {
    let recheck = slot.policy.recheck_after();
    if alarmed {
        if slot.state.load().status != Status::Pass {
            return;
        }
        if let Some(last) = *last_alarm {
            tokio::time::sleep_until(last + recheck).await;
        }
        *last_alarm = Some(Instant::now());
    }
    loop {
        run_once(health, slot).await;
        let state = slot.state.load();
        let unconfirmed = state.status == Status::Pass && state.consecutive_failures > 0;
        if !alarmed || !unconfirmed {
            return;
        }
        tokio::time::sleep(recheck).await;
    }
}

async fn run_once(health: &Health, slot: &CheckSlot) {
    let started = Instant::now();
    // A panicking check has a bug, but checking goes on: the panic counts as one failed run.
    let run = AssertUnwindSafe(slot.check.run()).catch_unwind();
    let outcome = match timeout(slot.policy.timeout(), run).await {
        Ok(Ok(Ok(observation))) => Ok(observation),
        Ok(Ok(Err(failure))) => Err(failure.0),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            tracing::error!(check = %slot.name, panic = message, "health check panicked: counted as a failed run");
            health.metrics().check_panicked(&slot.name);
            // The message stays in the log: it may say anything, and /readyz?verbose is read
            // by whoever reaches the management port.
            Err("panicked (the log has its message)".to_owned())
        }
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(slot.policy.timeout())
        )),
    };
    health.metrics().check_ran(&slot.name, started.elapsed());
    let next = slot.state.load().after_run(&slot.policy, outcome);
    health.publish(slot, next);
}

#[cfg(test)]
mod tests {
    use crate::{
        Check, CheckFailure, CheckPolicy, CheckPolicyBuilder, Health, LifecycleState, Observation,
        ProbeQuery, Status,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    struct Switch(Arc<AtomicBool>);

    #[async_trait::async_trait]
    impl Check for Switch {
        async fn run(&self) -> Result<Observation, CheckFailure> {
            if self.0.load(Ordering::SeqCst) {
                Ok(Observation::default())
            } else {
                Err(CheckFailure::new("switched off"))
            }
        }
    }

    struct Hangs;

    #[async_trait::async_trait]
    impl Check for Hangs {
        async fn run(&self) -> Result<Observation, CheckFailure> {
            std::future::pending().await
        }
    }

    /// A check with a bug: it panics while the switch is off.
    struct PanicsWhileOff(Arc<AtomicBool>);

    #[async_trait::async_trait]
    impl Check for PanicsWhileOff {
        async fn run(&self) -> Result<Observation, CheckFailure> {
            assert!(self.0.load(Ordering::SeqCst), "a bug in the check");
            Ok(Observation::default())
        }
    }

    /// A health with one check, run every 100 ms with a 100 ms timeout unless `tune` says
    /// otherwise.
    fn one_check(
        name: &str,
        tune: impl FnOnce(CheckPolicyBuilder) -> CheckPolicyBuilder,
        check: impl Check,
    ) -> Health {
        let every = Duration::from_millis(100);
        let policy = tune(CheckPolicy::builder().interval(every).timeout(every));
        Health::builder("t", "0")
            .check(name, policy.build().unwrap(), check)
            .build()
            .unwrap()
    }

    async fn wait_for(health: &Health, want: Status) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while health.readiness(&ProbeQuery::default()) != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_a_critical_check_both_ways() {
        let up = Arc::new(AtomicBool::new(true));
        let health = one_check("db", |policy| policy, Switch(up.clone()));
        health.advance(LifecycleState::Ready);
        let stop = CancellationToken::new();
        let _tasks = health.spawn_scheduler(stop.clone());
        wait_for(&health, Status::Pass).await;
        up.store(false, Ordering::SeqCst);
        wait_for(&health, Status::Fail).await;
        up.store(true, Ordering::SeqCst);
        wait_for(&health, Status::Pass).await;
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_listener_hears_every_change_of_a_non_critical_check() {
        let up = Arc::new(AtomicBool::new(true));
        let health = one_check("cache", |policy| policy.critical(false), Switch(up.clone()));
        let mut listener = health.listen("cache:connectivity").unwrap();
        assert_eq!(listener.status(), Status::Fail, "not checked yet");
        let stop = CancellationToken::new();
        let _tasks = health.spawn_scheduler(stop.clone());
        assert_eq!(listener.until_not_failing().await, Status::Pass);
        up.store(false, Ordering::SeqCst);
        let heard = listener.wait_until(|status| status == Status::Fail).await;
        assert_eq!(heard, Status::Fail);
        // Heard although the check is not critical and the lifecycle never became ready.
        assert_eq!(health.readiness(&ProbeQuery::default()), Status::Fail);
        up.store(true, Ordering::SeqCst);
        assert_eq!(listener.until_not_failing().await, Status::Pass);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_non_critical_check_times_out_into_warn() {
        let health = one_check(
            "remote",
            |policy| policy.timeout(Duration::from_millis(50)).critical(false),
            Hangs,
        );
        health.advance(LifecycleState::Ready);
        let stop = CancellationToken::new();
        let _tasks = health.spawn_scheduler(stop.clone());
        let slot = health.slot("remote").unwrap();
        while !slot.state.load().has_run {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(health.readiness(&ProbeQuery::default()), Status::Warn);
        let output = slot.state.load().observation.output.clone();
        assert_eq!(output.as_deref(), Some("timed out after 50ms"));
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_check_is_one_failed_run_and_recovers() {
        let up = Arc::new(AtomicBool::new(true));
        let health = one_check(
            "db",
            |policy| policy.failure_threshold(1),
            PanicsWhileOff(up.clone()),
        );
        health.advance(LifecycleState::Ready);
        let _watchdog = health.spawn_watchdog(CancellationToken::new());
        let _tasks = health.spawn_scheduler(CancellationToken::new());
        wait_for(&health, Status::Pass).await;
        up.store(false, Ordering::SeqCst);
        wait_for(&health, Status::Fail).await;
        let output = health
            .slot("db")
            .unwrap()
            .state
            .load()
            .observation
            .output
            .clone();
        assert_eq!(
            output.as_deref(),
            Some("panicked (the log has its message)")
        );
        assert!(metric(&health, "health_check_panics_total", "db") >= 1.0);
        // The check's task survived the panic: the next good run passes again.
        up.store(true, Ordering::SeqCst);
        wait_for(&health, Status::Pass).await;
        assert_eq!(health.liveness(), Status::Pass);
    }

    /// A switch that counts its runs.
    struct Counted {
        up: Arc<AtomicBool>,
        runs: Arc<AtomicU32>,
    }

    #[async_trait::async_trait]
    impl Check for Counted {
        async fn run(&self) -> Result<Observation, CheckFailure> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            Switch(self.up.clone()).run().await
        }
    }

    /// The default tuning (every 2 s, failing after 2 failures) on a `Counted` switch.
    fn alarmed_health() -> (Health, Arc<AtomicBool>, Arc<AtomicU32>) {
        let up = Arc::new(AtomicBool::new(true));
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Counted {
            up: up.clone(),
            runs: runs.clone(),
        };
        let health = Health::builder("t", "0")
            .check("db", CheckPolicy::default(), counted)
            .build()
            .unwrap();
        health.advance(LifecycleState::Ready);
        (health, up, runs)
    }

    #[tokio::test(start_paused = true)]
    async fn an_alarm_reports_a_death_after_a_recheck_not_after_polls() {
        let (health, up, _runs) = alarmed_health();
        let _tasks = health.spawn_scheduler(CancellationToken::new());
        wait_for(&health, Status::Pass).await;
        // Mid-way between two polls: only the alarm can explain a quick verdict.
        tokio::time::sleep(Duration::from_millis(500)).await;
        up.store(false, Ordering::SeqCst);
        let raised = tokio::time::Instant::now();
        health.alarm("db").unwrap().raise();
        wait_for(&health, Status::Fail).await;
        let took = raised.elapsed();
        // Two failed runs (the threshold), the second one recheck_after (250 ms) later; the
        // poll path alone would take two intervals (4 s).
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(300),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn alarms_on_a_healthy_dependency_change_nothing_and_are_rate_limited() {
        let (health, _up, runs) = alarmed_health();
        let _tasks = health.spawn_scheduler(CancellationToken::new());
        wait_for(&health, Status::Pass).await;
        let changes = health.slot("db").unwrap().changes.subscribe();
        let before = runs.load(Ordering::SeqCst);
        let began = tokio::time::Instant::now();
        // A connection dropping every 10 ms for a second: each alarm asks for a run.
        for _ in 0..100 {
            health.alarm("db").unwrap().raise();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ran = runs.load(Ordering::SeqCst) - before;
        let allowed = began.elapsed().as_millis() / 250 + 2;
        assert!(ran >= 2, "the alarms ran the check {ran} times");
        assert!(
            u128::from(ran) <= allowed,
            "{ran} runs, at most {allowed} allowed"
        );
        assert_eq!(health.readiness(&ProbeQuery::default()), Status::Pass);
        assert!(
            !changes.has_changed().unwrap(),
            "the check's status changed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn alarms_while_failing_leave_recovery_to_the_poll() {
        let (health, up, runs) = alarmed_health();
        let _tasks = health.spawn_scheduler(CancellationToken::new());
        wait_for(&health, Status::Pass).await;
        up.store(false, Ordering::SeqCst);
        health.alarm("db").unwrap().raise();
        wait_for(&health, Status::Fail).await;
        let before = runs.load(Ordering::SeqCst);
        // Well inside the 2 s interval: only an alarm could run the check.
        for _ in 0..10 {
            health.alarm("db").unwrap().raise();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            before,
            "an alarm ran a failing check"
        );
    }

    #[tokio::test]
    async fn liveness_fails_only_when_the_watchdog_stops_beating() {
        let health = Health::builder("t", "0")
            .liveness_stall_after(Duration::from_millis(300))
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let watchdog = health.spawn_watchdog(stop.clone());
        // Beating: alive well past the stall bound.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(health.liveness(), Status::Pass);
        // A stalled runtime is what a stopped watchdog looks like.
        stop.cancel();
        watchdog.await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(health.liveness(), Status::Fail);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_scheduler_makes_results_stale() {
        let up = Arc::new(AtomicBool::new(true));
        let health = one_check("db", |policy| policy, Switch(up));
        health.advance(LifecycleState::Ready);
        let stop = CancellationToken::new();
        let _watchdog = health.spawn_watchdog(CancellationToken::new());
        let _tasks = health.spawn_scheduler(stop.clone());
        wait_for(&health, Status::Pass).await;
        assert_eq!(status_gauge(&health, "db"), 1.0);
        let listener = health.listen("db").unwrap();
        stop.cancel();
        // Nobody refreshes the result any more: after 3 intervals it no longer counts, and the
        // gauge says so as well as readiness.
        wait_for(&health, Status::Fail).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while status_gauge(&health, "db") != 0.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gauge still says pass"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Code following the check hears it too.
        assert_eq!(listener.status(), Status::Fail);
        // Only a restart brings a lost scheduler task back: liveness says so.
        assert_eq!(health.liveness(), Status::Fail);
        // A fresh result restores it.
        let _again = health.spawn_scheduler(CancellationToken::new());
        wait_for(&health, Status::Pass).await;
        assert_eq!(health.liveness(), Status::Pass);
        while status_gauge(&health, "db") != 1.0 {
            assert!(tokio::time::Instant::now() < deadline + Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of `name`'s series for `check` (a gauge's or a counter's).
    fn metric(health: &Health, name: &str, check: &str) -> f64 {
        health
            .registry()
            .gather()
            .iter()
            .find(|family| family.name() == name)
            .and_then(|family| {
                family.get_metric().iter().find(|m| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "check" && l.value() == check)
                })
            })
            .map(|metric| metric.get_gauge().get_value() + metric.get_counter().get_value())
            .unwrap_or(f64::NAN)
    }

    fn status_gauge(health: &Health, check: &str) -> f64 {
        metric(health, "health_check_status", check)
    }
}
