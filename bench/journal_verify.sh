#!/usr/bin/env bash
# Journal verification speed, one core: entries per second of a full verification (canonical
# JSON, entry hash, chain link, checkpoint signatures) vs plain SHA-256 over the same bytes.
# Usage: bench/journal_verify.sh [N]   (default 1,000,000 entries)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p azotte-crypto --example verify_bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
taskset -c 0 target/release/examples/verify_bench "${1:-1000000}"
