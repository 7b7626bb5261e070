//! Pinning the calling thread to one core.
#![forbid(unsafe_code)]

/// Pins the calling thread to `core`; an error if the core does not exist or
/// the kernel refused.
pub fn pin(core: usize) -> anyhow::Result<()> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|c| c.id == core)
        .ok_or_else(|| anyhow::anyhow!("core {core} does not exist on this machine"))?;
    anyhow::ensure!(
        core_affinity::set_for_current(id),
        "pinning to core {core} failed"
    );
    Ok(())
}

/// How many cores the process may use.
pub fn cores() -> usize {
    core_affinity::get_core_ids().map_or(1, |v| v.len())
}
