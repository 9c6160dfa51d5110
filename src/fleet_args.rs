//! `colloquy serve`'s fleet flags (leases, journal retries, drain, the
//! PostgreSQL password variable) and the journal location check shared by
//! every command (an unknown scheme exits 2 before anything starts).

use colloquy::journal::{JournalError, JournalLocation};
use colloquy::transport::websocket::fleet::FleetConfig;
use std::path::Path;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// A session's lease lasts this long after its last heartbeat (s): a
    /// crashed instance's sessions can be resumed elsewhere after it.
    #[arg(long, default_value_t = 10.0)]
    pub lease_secs: f64,
    /// On SIGTERM, close connections (1012, the page resumes elsewhere) and
    /// finish journal writes within this long (s).
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
    /// Retry a failed journal write this long before reporting the turn lost (s).
    #[arg(long, default_value_t = 60.0)]
    pub journal_retry_secs: f64,
    /// Name of the environment variable holding the PostgreSQL password
    /// (default: PGPASSWORD). Never put a password in the URL.
    #[arg(long, env = "COLLOQUY_JOURNAL_PASSWORD_ENV")]
    pub journal_password_env: Option<String>,
    /// This instance's name in lease rows and telemetry (default: host-pid-random).
    #[arg(long, env = "COLLOQUY_INSTANCE")]
    pub instance_id: Option<String>,
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        anyhow::bail!("{flag} {v} is not a number of seconds in (0, 86400]");
    }
    Ok(Duration::from_secs_f64(v))
}

impl FleetArgs {
    /// The fleet settings these flags give.
    pub fn config(&self) -> anyhow::Result<FleetConfig> {
        let mut c = FleetConfig {
            lease_ttl: secs(self.lease_secs, "--lease-secs")?,
            drain: secs(self.drain_secs, "--drain-secs")?,
            password_env: self.journal_password_env.clone(),
            ..FleetConfig::default()
        };
        c.retry.give_up_after = secs(self.journal_retry_secs, "--journal-retry-secs")?;
        if let Some(id) = &self.instance_id {
            c.instance_id = id.clone();
        }
        Ok(c)
    }
}

/// Checks a journal location's scheme (exit 2 on an unknown one).
pub fn check_location(path: &Path) -> Result<JournalLocation, JournalError> {
    JournalLocation::parse_path(path)
}

/// Whether `e` is bad input about the journal's location (exit 2).
pub fn is_bad_location(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        e.downcast_ref::<JournalError>(),
        Some(JournalError::Location { .. })
    )
}
