//! The chart as `helm template` rendered it (`make probe-contract` / `make e2e` write the JSON
//! and pass its path in `CHART_JSON`).

use serde_json::Value;
use std::time::Duration;
use testkit::kubelet::ProbeSpec;

/// The settings of the rendered Deployment and ConfigMap that tests act on.
pub struct Chart {
    pub startup: ProbeSpec,
    pub liveness: ProbeSpec,
    pub readiness: ProbeSpec,
    pub grace: Duration,
    pub max_surge: u64,
    pub max_unavailable: u64,
    pub min_ready: Duration,
    pub replicas: usize,
    /// The ConfigMap's `APP__*` variables, ports left out (tests pick their own).
    pub env: Vec<(String, String)>,
}

impl Chart {
    pub fn rendered() -> Chart {
        let path = std::env::var("CHART_JSON").expect("CHART_JSON: run through make");
        let documents: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let find = |kind: &str| {
            documents
                .iter()
                .find(|d| d["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind}"))
                .clone()
        };
        let deployment = find("Deployment");
        let spec = &deployment["spec"];
        let pod = &spec["template"]["spec"];
        let container = &pod["containers"][0];
        let env = find("ConfigMap")["data"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(key, _)| key.starts_with("APP__") && !key.ends_with("__PORT"))
            .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_owned()))
            .collect();
        let rolling = &spec["strategy"]["rollingUpdate"];
        Chart {
            startup: ProbeSpec::from_manifest(&container["startupProbe"]),
            liveness: ProbeSpec::from_manifest(&container["livenessProbe"]),
            readiness: ProbeSpec::from_manifest(&container["readinessProbe"]),
            grace: Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap()),
            max_surge: rolling["maxSurge"].as_u64().expect("an integer maxSurge"),
            max_unavailable: rolling["maxUnavailable"]
                .as_u64()
                .expect("an integer maxUnavailable"),
            min_ready: Duration::from_secs(spec["minReadySeconds"].as_u64().unwrap_or(0)),
            replicas: usize::try_from(spec["replicas"].as_u64().unwrap_or(1)).unwrap(),
            env,
        }
    }

    /// A duration setting of the ConfigMap (`"5s"`).
    pub fn seconds(&self, key: &str) -> Duration {
        Duration::from_secs(self.value(key).trim_end_matches('s').parse().unwrap())
    }

    pub fn value(&self, key: &str) -> &str {
        &self
            .env
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{key} not rendered"))
            .1
    }
}
