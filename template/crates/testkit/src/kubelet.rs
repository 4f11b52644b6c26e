//! A kubelet stand-in: runs one HTTP probe with the fields of a Kubernetes probe and records
//! every result, so a test can ask when the kubelet would have acted.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fields of a Kubernetes `httpGet` probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

impl ProbeSpec {
    /// Reads a probe object of a rendered container (`livenessProbe` etc.), with the
    /// Kubernetes defaults for missing fields.
    pub fn from_manifest(probe: &Value) -> ProbeSpec {
        let seconds = |field: &str, default: u64| {
            Duration::from_secs(probe[field].as_u64().unwrap_or(default))
        };
        let count = |field: &str, default: u64| {
            u32::try_from(probe[field].as_u64().unwrap_or(default)).unwrap()
        };
        ProbeSpec {
            path: probe["httpGet"]["path"]
                .as_str()
                .expect("an httpGet probe")
                .to_owned(),
            initial_delay: seconds("initialDelaySeconds", 0),
            period: seconds("periodSeconds", 10),
            timeout: seconds("timeoutSeconds", 1),
            failure_threshold: count("failureThreshold", 3),
            success_threshold: count("successThreshold", 1),
        }
    }

    /// How long the kubelet lets this probe fail before it acts.
    pub fn failure_budget(&self) -> Duration {
        self.initial_delay + self.period * self.failure_threshold
    }
}

/// One probe result.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub ok: bool,
}

/// A running probe loop (its own thread), stopped on drop.
pub struct ProbeLoop {
    pub spec: ProbeSpec,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

impl ProbeLoop {
    /// Starts probing `127.0.0.1:port` as the kubelet would: wait `initialDelaySeconds`, then
    /// one GET every `periodSeconds`, each bounded by `timeoutSeconds`; 200-399 is success.
    pub fn start(port: u16, spec: ProbeSpec) -> ProbeLoop {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, sp) = (samples.clone(), stop.clone(), spec.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(sp.timeout)
                .build()
                .unwrap();
            std::thread::sleep(sp.initial_delay);
            let mut next = Instant::now();
            while !st.load(Ordering::SeqCst) {
                let at = Instant::now();
                let ok = http
                    .get(format!("http://127.0.0.1:{port}{}", sp.path))
                    .send()
                    .is_ok_and(|r| (200..400).contains(&r.status().as_u16()));
                s.lock().unwrap().push(Sample { at, ok });
                next += sp.period;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        ProbeLoop {
            spec,
            samples,
            stop,
        }
    }

    /// Every result so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// When, after `since`, `threshold` consecutive results equal to `ok` had accrued.
    fn streak(&self, since: Instant, ok: bool, threshold: u32) -> Option<Instant> {
        let mut run = 0;
        for sample in self.samples().into_iter().filter(|s| s.at >= since) {
            run = if sample.ok == ok { run + 1 } else { 0 };
            if run >= threshold {
                return Some(sample.at);
            }
        }
        None
    }

    /// When the kubelet would have declared the probe failed (failureThreshold in a row).
    pub fn failed_at(&self, since: Instant) -> Option<Instant> {
        self.streak(since, false, self.spec.failure_threshold)
    }

    /// When the kubelet would have declared the probe passing (successThreshold in a row).
    pub fn passed_at(&self, since: Instant) -> Option<Instant> {
        self.streak(since, true, self.spec.success_threshold)
    }

    /// The longest run of failures so far.
    pub fn longest_failure_run(&self) -> u32 {
        let (mut run, mut longest) = (0, 0);
        for sample in self.samples() {
            run = if sample.ok { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        longest
    }
}

impl Drop for ProbeLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
