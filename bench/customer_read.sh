#!/usr/bin/env bash
# Customer read cost of the PII vault (issue 6): customers read through the service (customer key
# opened through the tenant key, personal fields decrypted) against the same fields read from a
# plain table without encryption, same run, same SQLite database.
# Usage: bench/customer_read.sh [N] [ROUNDS]   (default 2,000 customers, 5 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p azotte --example customer_read_bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
target/release/examples/customer_read_bench "${1:-2000}" "${2:-5}"
