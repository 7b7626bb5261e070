//! Ctrl-C and SIGTERM: the first sets a flag that every measurement loop and
//! every step of a scenario checks, so the scenario returns an error and the
//! guards (`weir down`, topology teardown) run on the way out. A second
//! Ctrl-C exits at once.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the SIGINT/SIGTERM handlers (idempotent).
pub fn install() -> std::io::Result<()> {
    let f = flag().clone();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the flag is set terminates the process.
        signal_hook::flag::register_conditional_shutdown(sig, 130, f.clone())?;
        signal_hook::flag::register(sig, f.clone())?;
    }
    Ok(())
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// An error if a stop was asked for (call between steps).
pub fn check() -> anyhow::Result<()> {
    anyhow::ensure!(!requested(), "interrupted");
    Ok(())
}
