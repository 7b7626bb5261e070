//! The snapshot decoder: arbitrary bytes as the node's `snapshot.json` (what
//! the dataplane reads from the agent: `serde_json` into `SnapshotSpec`,
//! then `Snapshot::build`, its validation). No panic; a spec that builds is
//! then used by the pass on a few fixed frames on each of its first ports,
//! so whatever the validation lets through must be safe to forward with.
#![no_main]

libfuzzer_sys::fuzz_target!(init: weir_fuzz::init(), |data: &[u8]| weir_fuzz::run_snapshot(data));
