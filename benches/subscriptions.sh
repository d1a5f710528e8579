#!/usr/bin/env bash
# Subscription notification latency (issue 4 target): 100 active rest-hook subscriptions
# and 1,000 Observation writes per second; write-to-receipt latency p50 <= 100 ms and
# p99 <= 500 ms. The load generator runs the receiver itself (loopback, allowed with
# --outbound-allow 127.0.0.1).
#
#   benches/subscriptions.sh sqlite:///tmp/bench/notify.db
#   benches/subscriptions.sh postgres://postgres@127.0.0.1:5432/notify   # an empty database
set -euo pipefail
url=${1:?usage: benches/subscriptions.sh DATABASE_URL}
port=${PORT:-18085}
base="http://127.0.0.1:$port/fhir"
seconds=${SECONDS_PER_RUN:-30}
rate=${RATE:-1000}
cd "$(dirname "$0")/.."
cargo build --release --bins
bin=target/release

"$bin/fhirgate" serve --listen "127.0.0.1:$port" --database-url "$url" --outbound-allow 127.0.0.1 --auth off &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 100); do curl -sf "$base/metadata" >/dev/null && break; sleep 0.2; done

"$bin/fhirgate-load" --base "$base" --scenario notify --subscriptions 100 --rate "$rate" \
    --seconds "$seconds" --clients "${IN_FLIGHT:-128}"
