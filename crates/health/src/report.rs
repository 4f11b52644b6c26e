//! Probe answers as `application/health+json` (draft-inadarei-api-health-check).

use crate::snapshot::CheckSlot;
use crate::{Health, LifecycleState::Ready, Status};
use serde::Serialize;
use std::collections::BTreeMap;
use tokio::time::Instant;

/// Media type of every probe body.
pub const HEALTH_JSON: &str = "application/health+json";

/// Options of one probe request: `?verbose` and `?exclude=a,b` (repeatable), parsed from the raw
/// query string without allocating so a probe stays as cheap as a constant handler.
///
/// ```
/// use health::ProbeQuery;
/// let query = ProbeQuery::parse("verbose&exclude=redis");
/// assert!(query.verbose());
/// assert!(query.excludes_name("redis"));
/// assert!(!query.excludes_name("postgres"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeQuery<'a>(&'a str);

impl<'a> ProbeQuery<'a> {
    /// A query string (without the `?`); `verbose` and `exclude` are read from it on demand.
    pub fn parse(raw: &'a str) -> Self {
        Self(raw)
    }

    /// True when the body should list every check.
    pub fn verbose(&self) -> bool {
        self.0.split('&').any(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            key == "verbose" && !matches!(value, "0" | "false")
        })
    }

    /// True when `name` is listed in an `exclude` parameter.
    pub fn excludes_name(&self, name: &str) -> bool {
        self.0
            .split('&')
            .filter_map(|pair| pair.strip_prefix("exclude="))
            .flat_map(|list| list.split(','))
            .any(|excluded| excluded == name)
    }

    pub(crate) fn excludes(&self, slot: &CheckSlot) -> bool {
        !self.0.is_empty() && (self.excludes_name(&slot.name) || self.excludes_name(&slot.key))
    }
}

/// The minimal body for a status: a static byte string, so the common probe allocates nothing.
pub fn minimal_body(status: Status) -> &'static [u8] {
    match status {
        Status::Pass => br#"{"status":"pass"}"#,
        Status::Warn => br#"{"status":"warn"}"#,
        Status::Fail => br#"{"status":"fail"}"#,
    }
}

/// One check's entry; fields in alphabetical order, the order the body has always had.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckEntry<'a> {
    /// Whether a failure of this check fails readiness (an extension field).
    affects_readiness: bool,
    component_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_unit: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    status: Status,
    time: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    status: Status,
    service_id: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    /// By key, sorted: `{"postgres:connectivity": [entry]}`.
    checks: BTreeMap<&'a str, [CheckEntry<'a>; 1]>,
}

impl Health {
    /// Verbose probe body: the checks `query` does not exclude, or only `only` (`/readyz/{check}`).
    pub(crate) fn verbose_body(
        &self,
        status: Status,
        query: &ProbeQuery<'_>,
        only: Option<&str>,
    ) -> Vec<u8> {
        let now = Instant::now();
        let wanted = |slot: &&CheckSlot| match only {
            Some(selector) => slot.is_named(selector),
            None => !query.excludes(slot),
        };
        let mut checks = BTreeMap::new();
        for slot in self.slots().iter().filter(wanted) {
            let state = slot.state.load();
            let output = if slot.is_stale(&state, now) {
                let after = humantime::format_duration(slot.policy.stale_after());
                Some(format!("stale: no result for over {after}"))
            } else {
                state.observation.output.clone()
            };
            let entry = CheckEntry {
                component_id: &slot.name,
                status: slot.status_at(&state, now),
                time: humantime::format_rfc3339_millis(state.time).to_string(),
                observed_value: state.observation.observed_value,
                observed_unit: state.observation.observed_unit,
                output,
                affects_readiness: slot.policy.is_critical(),
            };
            checks.insert(slot.key.as_str(), [entry]);
        }
        let lifecycle = self.lifecycle();
        let body = Body {
            status,
            service_id: self.service_id(),
            version: self.version(),
            output: (lifecycle != Ready).then(|| format!("lifecycle is {}", lifecycle.as_str())),
            checks,
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| minimal_body(status).to_vec())
    }
}
