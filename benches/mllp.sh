#!/usr/bin/env bash
# PCD-01 over MLLP (issue 6 target: >= 2,000 Observations/s stored on SQLite): several
# monitor connections, each sending ORU^R01 snapshots of 10 rows (8 Observations) and
# waiting for each ACK, which the server sends once the snapshot is committed.
#
#   benches/mllp.sh sqlite:///tmp/bench/mllp.db
#   benches/mllp.sh postgres://postgres@127.0.0.1:5432/mllp   # an empty database
set -euo pipefail
url=${1:?usage: benches/mllp.sh DATABASE_URL}
port=${PORT:-18086}
mllp_port=${MLLP_PORT:-12575}
seconds=${SECONDS_PER_RUN:-30}
connections=${CONNECTIONS:-16}
cd "$(dirname "$0")/.."
cargo build --release --bins
bin=target/release

"$bin/fhirgate" serve --listen "127.0.0.1:$port" --database-url "$url" --auth off \
    --mllp "127.0.0.1:$mllp_port" --device-create-patients true &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/fhir/metadata" >/dev/null && break; sleep 0.2; done

"$bin/fhirgate-load" --scenario mllp --mllp "127.0.0.1:$mllp_port" --clients "$connections" \
    --seconds "$seconds"
curl -s "http://127.0.0.1:$port/metrics" | grep fhirgate_device
