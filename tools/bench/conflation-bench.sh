#!/usr/bin/env bash
# conflation-bench.sh: delivery windows (channel option batch_ms, docs/api.md "Batching and
# conflation") measured with the Instamrkt game (issue 10 part 5).
#
# Two runs of herald-bench's game scenario with the same load, one after the other, each
# on fresh nodes and a fresh Redis (tools/bench/run-cluster-bench.sh does the starting,
# sampling and reporting): USERS users on NODES herald nodes sharing one Redis, every game
# getting UPDATES updates per 3 s (an update per event, the study's unbatched load), first
# without a window, then with every game channel windowed to WINDOW_MS (x SCALE) by
# herald-bench --batch-ms (a PUT before the run). Every update is delivered in both runs
# (herald-bench counts them: lost must be 0); the window changes how they are written.
# Prints, for both and as a ratio: server CPU per user (all nodes' CPU in the steady
# window / its length / users), CPU per delivery, broadcast latency p50/p98 (steady phase),
# deliveries/s and losses.
#
# Sizes (environment): USERS=24000 NODES=2 PROCS=4 GAMES=10 UPDATES=10 WINDOW_MS=3000
#   SCALE=1 (the study's timing: 3 s between broadcasts) STEADY=90 (s) RATE=400 (users/s)
#   OUT=bench/results/conflation-<date>
set -u
cd "$(dirname "$0")/../.." || exit 1
USERS=${USERS:-24000}; NODES=${NODES:-2}; PROCS=${PROCS:-4}; GAMES=${GAMES:-10}
UPDATES=${UPDATES:-10}; WINDOW_MS=${WINDOW_MS:-3000}; SCALE=${SCALE:-1}; STEADY=${STEADY:-90}
RATE=${RATE:-400}
OUT=${OUT:-$PWD/bench/results/conflation-$(date +%Y-%m-%d-%H%M%S)}
BATCH=$(awk -v w="$WINDOW_MS" -v s="$SCALE" 'BEGIN { printf "%d", w * s }')
mkdir -p "$OUT"
export CLUSTER_RUNS=game CLUSTER_OUT=$OUT GAME_USERS=$USERS GAME_NODES=$NODES GAME_PROCS=$PROCS
export GAME_CHANNELS=$GAMES GAME_SCALES=$SCALE GAME_SECONDS=$STEADY GAME_RATE=$RATE
GAME_TAG=-nowindow GAME_ARGS="--game-updates $UPDATES" tools/bench/run-cluster-bench.sh || exit 1
GAME_TAG=-window GAME_ARGS="--game-updates $UPDATES --batch-ms $BATCH" tools/bench/run-cluster-bench.sh || exit 1

python3 - "$OUT" "$USERS" "$SCALE" <<'PY' | tee "$OUT/conflation-summary.txt"
import glob, json, sys
out, users, scale = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def run(tag):
    p = glob.glob(f"{out}/game-{users}-x{scale}-{tag}.json")
    return json.load(open(p[0]))["runs"][0] if p else None

def figures(r):
    s, d, b = r["server"], r["delivery"], r["latency"]["broadcast"]
    cpu = s["cpu_window_s"] / d["window_s"]  # cores
    return {
        "server CPU per user (us/s)": cpu * 1e6 / users,
        "server CPU, all nodes (% of a core)": 100 * cpu,
        "server CPU per delivery (us)": s["cpu_per_delivery_us"],
        "broadcast p50 (ms)": b["percentiles_ms"]["50"],
        "broadcast p98 (ms)": b["percentiles_ms"]["98"],
        "deliveries/s": d["deliveries_per_s"],
        "expected / delivered / lost": f"{d['expected']:,} / {d['delivered']:,} / {d['lost']}",
        "other processes' CPU (% of a core)": r.get("machine", {}).get("other_pct", 0),
    }

a, w = run("nowindow"), run("window")
if not a or not w:
    sys.exit(f"conflation-bench: a run is missing in {out}")
fa, fw = figures(a), figures(w)
p = a["params"]
print(f"game, {users:,} users on {p.get('servers', '?')} nodes, {p['channels']} games, time scale {scale}, "
      f"{p.get('game_updates', '?')} updates per game per {3 * float(scale):g} s; window: batch_ms "
      f"{w['params'].get('batch_ms', '?')} vs none\n")
print(f"{'':38s} {'no window':>16s} {'window':>16s} {'window/none':>12s}")
for k in fa:
    x, y = fa[k], fw[k]
    if isinstance(x, str):
        print(f"{k:38s} {x:>16s} {y:>16s}")
    else:
        print(f"{k:38s} {x:16,.2f} {y:16,.2f} {(y / x if x else 0):12.3f}")
PY
