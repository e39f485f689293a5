#!/usr/bin/env bash
# ab-fanout.sh BASE NEW [REPS]: the fan-out benchmark against two herald binaries,
# interleaved (BASE, NEW, BASE, NEW...) so that a machine shared with other work slows
# both alike, and the medians side by side with their ratio.
#
#   BASE, NEW   herald binaries (e.g. main's build/herald copied aside, and this tree's)
#   REPS        repetitions of each (default 5)
#
# Each repetition starts a fresh server (--workers 1) and runs, with herald-bench:
#   thru   flat-out fan-out: 2,000 WebSocket subscribers, 300 messages of 100 B, 4 publishers
#   paced  fan-out at 5 messages/s: 5,000 subscribers, 50 messages (broadcast latency)
# The paced run comes first: the server's own delivery latency after it (/stats since
# start: that run's 250,000 deliveries) is printed next to herald-bench's broadcast latency
# of the same run (NEW only: BASE does not measure it).
# Environment: BENCH (default build/herald-bench), PORT (18891), OUT (a new temp dir).
set -u
BASE=$1
NEW=$2
REPS=${3:-5}
cd "$(dirname "$0")/../.."
BENCH=${BENCH:-$PWD/build/herald-bench}
PORT=${PORT:-18891}
OUT=${OUT:-$(mktemp -d /tmp/ab-fanout.XXXXXX)}
mkdir -p "$OUT"
echo "ab-fanout: results in $OUT"
for rep in $(seq 1 "$REPS"); do
	for v in base new; do
		bin=$BASE
		[ $v = new ] && bin=$NEW
		"$bin" --listen 127.0.0.1:$PORT --workers 1 >"$OUT/$v-$rep.log" 2>&1 &
		pid=$!
		for _ in $(seq 50); do curl -sf 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
		"$BENCH" fanout --target herald --server 127.0.0.1:$PORT --server-pid $pid --transport ws \
			--conns 5000 --channels 1 --messages 50 --rate 5 --payload 100 --quiet \
			--json "$OUT/paced-$v-$rep.json" >"$OUT/paced-$v-$rep.txt" 2>&1
		curl -s 127.0.0.1:$PORT/stats >"$OUT/stats-$v-$rep.json" # the paced run's deliveries only
		"$BENCH" fanout --target herald --server 127.0.0.1:$PORT --server-pid $pid --transport ws \
			--conns 2000 --channels 1 --messages 300 --rate 0 --publishers 4 --payload 100 --quiet \
			--json "$OUT/thru-$v-$rep.json" >"$OUT/thru-$v-$rep.txt" 2>&1
		kill $pid
		wait $pid
	done
done
/usr/bin/python3 - "$OUT" "$REPS" <<'PY'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
def run(kind, v, rep):
    return json.load(open(f"{out}/{kind}-{v}-{rep}.json"))["runs"][0]
def med(kind, v, f):
    return statistics.median(f(run(kind, v, r)) for r in range(1, reps + 1))
rows = [
    ("thru: deliveries/s", "thru", lambda r: r["delivery"]["deliveries_per_s"]),
    ("thru: server CPU per delivery (us)", "thru", lambda r: r["server"]["cpu_per_delivery_us"]),
    ("thru: broadcast p99 (ms)", "thru", lambda r: r["latency"]["broadcast"]["percentiles_ms"]["99"]),
    ("paced: server CPU per delivery (us)", "paced", lambda r: r["server"]["cpu_per_delivery_us"]),
    ("paced: broadcast p50 (ms)", "paced", lambda r: r["latency"]["broadcast"]["percentiles_ms"]["50"]),
    ("paced: broadcast p99 (ms)", "paced", lambda r: r["latency"]["broadcast"]["percentiles_ms"]["99"]),
    ("other processes' CPU (% of a core)", "thru", lambda r: r["machine"]["other_pct"]),
]
print(f"medians of {reps} runs each       base        new   new/base")
for name, kind, f in rows:
    b, n = med(kind, "base", f), med(kind, "new", f)
    print(f"{name:36} {b:10.2f} {n:10.2f} {n / b if b else 0:10.3f}")
for rep in range(1, reps + 1):
    for v in ("base", "new"):
        t = run("thru", v, rep)
        print(f"  rep {rep} {v:4}: {t['delivery']['deliveries_per_s']:9.0f} deliveries/s, "
              f"{t['server']['cpu_per_delivery_us']:.3f} us CPU/delivery, other processes "
              f"{t['machine']['other_pct']:.0f} %")
print("The paced run of NEW: herald-bench's broadcast latency (publish sent -> frame received)")
print("and the server's delivery latency (arrival on the node -> written to the socket), ms:")
for rep in range(1, reps + 1):
    s = json.load(open(f"{out}/stats-new-{rep}.json")).get("delivery_latency_ms", {}).get("since_start")
    if not s:
        continue
    b = run("paced", "new", rep)["latency"]["broadcast"]
    p = b["percentiles_ms"]
    print(f"  rep {rep}: bench  p50 {p['50']:.3f} p90 {p['90']:.3f} p99 {p['99']:.3f} "
          f"max {b['max_ms']:.3f} ({b['count']} deliveries)")
    print(f"         server p50 {s['p50']:.3f} p90 {s['p90']:.3f} p99 {s['p99']:.3f} "
          f"p999 {s['p999']:.3f} max {s['max']:.3f} ({s['count']} deliveries)")
PY
