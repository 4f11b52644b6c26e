//! The three-valued status of the health+json draft.

use serde::Serialize;

/// `pass`, `warn` or `fail`, as in draft-inadarei-api-health-check; ordered by severity so the
/// status of a set of checks is the maximum.
///
/// ```
/// use health::Status;
/// assert!(Status::Fail > Status::Warn && Status::Warn > Status::Pass);
/// assert_eq!(Status::Warn.as_str(), "warn");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Pass,
    /// Degraded but serving (a non-critical dependency is failing).
    Warn,
    /// Not fit to take traffic.
    Fail,
}

impl Status {
    /// The wire form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// `Pass` when `ok`, else `Fail`.
    pub(crate) const fn pass_if(ok: bool) -> Self {
        if ok { Status::Pass } else { Status::Fail }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
