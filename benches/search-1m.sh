#!/usr/bin/env bash
# Search at one million Observations (issue 3 targets): seeds a database with the load
# generator's repeatable data set (1,000 patients, 10 devices, 5 vital-sign codes, one
# Observation a minute per patient) and measures the three target queries.
#
#   benches/search-1m.sh sqlite:///tmp/bench/m1.db
#   benches/search-1m.sh postgres://postgres@127.0.0.1:5432/m1   # an empty database
#
# Seeding takes 8-10 minutes on 2 cores; an already seeded database is reused
# (SEED=0 skips the check). Results are printed, to be recorded in BENCHMARKS.md.
set -euo pipefail
url=${1:?usage: benches/search-1m.sh DATABASE_URL}
port=${PORT:-18084}
base="http://127.0.0.1:$port/fhir"
seconds=${SECONDS_PER_RUN:-10}
cd "$(dirname "$0")/.."
cargo build --release --bins
bin=target/release

"$bin/fhirgate" serve --listen "127.0.0.1:$port" --database-url "$url" --auth off &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 100); do curl -sf "$base/metadata" >/dev/null && break; sleep 0.2; done

count=$(curl -s "$base/Observation?_summary=count" | sed -n 's/.*"total":\([0-9]*\).*/\1/p')
if [ "${SEED:-1}" = 1 ] && [ "${count:-0}" -lt 1000000 ]; then
    "$bin/fhirgate-load" --base "$base" --seed-observations 1000000 --patients 1000 --clients 4
fi

run() {
    local clients=$1 query=$2
    "$bin/fhirgate-load" --base "$base" --patients 1000 --scenario query \
        --clients "$clients" --seconds "$seconds" --query "$query" | tail -1
}
search='Observation?patient=Patient/bench-p{patient}&code=http://loinc.org|8867-4&date=ge2024-03-01T10:00:00Z&_count=50'
lastn='Observation/$lastn?patient=Patient/bench-p{patient}&category=vital-signs'
for clients in 1 4; do
    echo "== search, $clients client(s)"; run "$clients" "$search"
    echo "== \$lastn, $clients client(s)"; run "$clients" "$lastn"
done
echo "== _summary=count over the 200,013 heart rates"
run 1 'Observation?code=http://loinc.org|8867-4&_summary=count'
echo "== _summary=count over the 80,012 heart rates after 10:00"
run 1 'Observation?code=http://loinc.org|8867-4&date=ge2024-03-01T10:00:00Z&_summary=count'
echo "== _summary=count over all 1,000,000 vital signs"
run 1 'Observation?category=vital-signs&_summary=count'
