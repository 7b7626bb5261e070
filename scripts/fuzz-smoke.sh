#!/usr/bin/env bash
# Fuzz smoke: every cargo-fuzz target in fuzz/ for a short while (default
# 30 s each, FUZZ_SECONDS to change), from the committed seeds in
# fuzz/seeds/<target> (new inputs go to fuzz/corpus/<target>, not
# committed). A crash fails the run; its input is in fuzz/artifacts/.
# The long campaign is not this script's job.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly' || ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: no nightly toolchain or cargo-fuzz (scripts/setup.sh installs them): skipped"
  exit 0
fi
# The XDP program (built by a dependency's build script) is linked by
# bpf-linker, which is built against the stable toolchain's LLVM.
LD_LIBRARY_PATH="$(rustc +stable --print sysroot)/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
secs=${FUZZ_SECONDS:-30}
cargo +nightly fuzz build
for t in $(cargo +nightly fuzz list); do
  echo "fuzz-smoke: $t for ${secs}s"
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 2>&1 | grep -E 'stat::|ERROR|panicked|SUMMARY' || true
  # The pipe hides the exit status; a crash leaves an artifact.
  if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/oom-*" >/dev/null; then
    echo "fuzz-smoke: $t found a crash: $(ls artifacts/$t)"
    exit 1
  fi
done
