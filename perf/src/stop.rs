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

/// Installs the SIGINT/SIGTERM handling: a thread that waits for them.
pub fn install() -> std::io::Result<()> {
    let f = flag().clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::Builder::new().name("weir-perf-signals".into()).spawn(move || {
        for sig in signals.forever() {
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("weir-perf: second signal, exiting without cleanup");
                std::process::exit(128 + sig);
            }
            eprintln!("weir-perf: stopping after the current step, then cleaning up (again to exit at once)");
        }
    })?;
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
