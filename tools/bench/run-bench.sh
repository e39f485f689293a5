#!/usr/bin/env bash
# make bench: herald vs Nchan vs the raw-socket floor, side by side, on loopback.
#
# Starts each server on 127.0.0.1 (fresh for every memory measurement), runs the
# same herald-bench scenarios against each, writes bench/results/<date>/ (tables,
# JSON, CSV, PNG plots) and prints the issue-3 ratios (summary.txt).
# Default run: about 30 minutes. Sizes come from the environment:
#
#   BENCH_TARGETS="herald nchan floor"   which servers to measure
#   IDLE_CONNS=19000 IDLE_HOLD=10        idle: connections held, seconds held (ws and sse)
#   FANOUT_CONNS=5000 FANOUT_MESSAGES=50 FANOUT_RATE=5 PAYLOAD=100
#   FANOUT_VARIANTS=1                    fanout ws again with 2 and 4 bench processes, pinned
#                                        (bench on CPU 0, server on CPU 1) and with 2 server workers
#   BURST_CONNS=2000 BURST_MESSAGES=200 BURST_SIZE=20 BURST_RATE=400
#   THRU_CONNS=5000 THRU_MESSAGES=500    flat-out fan-out (herald: 1 vs 2 workers)
#   THRU_REPS=3                          repetitions of each flat-out run (the summary takes medians)
#   STORM_CONNS=10000                    connection storm (no rate limit)
#   STORM_RATES="2000 4000 8000 12000 16000 20000 24000 28000 36000 44000 52000 60000"  sweep,
#   STORM_SWEEP_CONNS=10000 STORM_P99_MS=50 STORM_REPS=3         STORM_SWEEP_CONNS each, STORM_REPS
#                                        times; "handshakes/s at equal p99" = the highest rate whose
#                                        median p99 <= bound
#   PIN=1                                pinned variants (needs taskset and 2 CPUs): BENCH_CPU=0 SERVER_CPU=1
#   PROFILE=1                            perf profiles (separate reruns, perf record -g on the server) of
#                                        the storm, the fan-out and the 2-worker flat-out run -> perf/
#   PUB_SECONDS=5 PUB_PUBLISHERS=4       publish throughput
#   GAME_USERS=2000 GAME_RATE=100 GAME_SCALE=0.1 GAME_SECONDS=20 GAME_SERIES="500 1000"
#   PVP_CLIENTS=10,100,1000 PVP_INTERVALS=10,30 PVP_PUBLISHES=3 PVP_SCALE=0.1
#   HERALD_PORT=18080 NCHAN_PORT=19200 FLOOR_PORT=19300  BUILD=build
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${BUILD:-build}
BENCH=$ROOT/$BUILD/herald-bench
FLOOR=$ROOT/$BUILD/herald-floor
HERALD=$ROOT/$BUILD/herald
TARGETS=${BENCH_TARGETS:-herald nchan floor}
IDLE_CONNS=${IDLE_CONNS:-19000}; IDLE_HOLD=${IDLE_HOLD:-10}
FANOUT_CONNS=${FANOUT_CONNS:-5000}; FANOUT_MESSAGES=${FANOUT_MESSAGES:-50}; FANOUT_RATE=${FANOUT_RATE:-5}
PAYLOAD=${PAYLOAD:-100}
BURST_CONNS=${BURST_CONNS:-2000}; BURST_MESSAGES=${BURST_MESSAGES:-200}; BURST_SIZE=${BURST_SIZE:-20}
BURST_RATE=${BURST_RATE:-400}
THRU_CONNS=${THRU_CONNS:-5000}; THRU_MESSAGES=${THRU_MESSAGES:-500}; THRU_REPS=${THRU_REPS:-3}
STORM_CONNS=${STORM_CONNS:-10000}
STORM_RATES=${STORM_RATES:-2000 4000 8000 12000 16000 20000 24000 28000 36000 44000 52000 60000}
STORM_SWEEP_CONNS=${STORM_SWEEP_CONNS:-10000}; STORM_P99_MS=${STORM_P99_MS:-50}; STORM_REPS=${STORM_REPS:-3}
FANOUT_VARIANTS=${FANOUT_VARIANTS:-1}
PIN=${PIN:-1}; BENCH_CPU=${BENCH_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
PROFILE=${PROFILE:-1}
PUB_SECONDS=${PUB_SECONDS:-5}; PUB_PUBLISHERS=${PUB_PUBLISHERS:-4}
GAME_USERS=${GAME_USERS:-2000}; GAME_RATE=${GAME_RATE:-100}; GAME_SCALE=${GAME_SCALE:-0.1}
GAME_SECONDS=${GAME_SECONDS:-20}; GAME_SERIES=${GAME_SERIES:-500 1000}
PVP_CLIENTS=${PVP_CLIENTS:-10,100,1000}; PVP_INTERVALS=${PVP_INTERVALS:-10,30}
PVP_PUBLISHES=${PVP_PUBLISHES:-3}; PVP_SCALE=${PVP_SCALE:-0.1}
HERALD_PORT=${HERALD_PORT:-18080}; NCHAN_PORT=${NCHAN_PORT:-19200}; FLOOR_PORT=${FLOOR_PORT:-19300}

for b in "$BENCH" "$FLOOR"; do
	[ -x "$b" ] || { echo "run-bench: $b missing: run 'make bench-bins' first" >&2; exit 1; }
done
OUT=$ROOT/bench/results/$(date +%Y-%m-%d-%H%M%S)
mkdir -p "$OUT/plots"
TMP=$(mktemp -d /tmp/herald-bench.XXXXXX)
# Private copies of the binaries: a rebuild in the tree during the run must
# not swap the server (or the bench) under a running scenario or a profile.
for b in HERALD BENCH FLOOR; do
	if [ -x "${!b}" ]; then
		cp "${!b}" "$TMP/$(basename "${!b}")"
		printf -v "$b" '%s' "$TMP/$(basename "${!b}")"
	fi
done
LOG=$OUT/bench.log
SERVER_PID=""      # process started by us (herald, floor, nginx master)
SAMPLE_PIDS=()     # --server-pid arguments
SERVER_ADDR=""

log() { echo "run-bench: $*" | tee -a "$LOG" >&2; }

stop_server() {
	if [ -n "$SERVER_PID" ]; then
		kill -TERM "$SERVER_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SERVER_PID" 2>/dev/null
		wait "$SERVER_PID" 2>/dev/null
	fi
	SERVER_PID=""
	SAMPLE_PIDS=()
}
cleanup() { stop_server; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# Pinning: the server (every thread) on SERVER_CPU, the bench on BENCH_CPU.
BENCH_PREFIX=()
server_pids_all() {
	[ -n "$SERVER_PID" ] || return 0
	echo "$SERVER_PID"
	pgrep -P "$SERVER_PID" 2>/dev/null
}
pin_on() {
	local p
	for p in $(server_pids_all); do taskset -a -p -c "$SERVER_CPU" "$p" >/dev/null 2>&1; done
	BENCH_PREFIX=(taskset -c "$BENCH_CPU")
}
pin_off() {
	local p
	for p in $(server_pids_all); do taskset -a -p -c 0-$(($(nproc) - 1)) "$p" >/dev/null 2>&1; done
	BENCH_PREFIX=()
}
can_pin() { [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; }

# start_server TARGET [workers (herald threads / nginx worker processes)]
START_ARGS=()
start_server() {
	stop_server
	START_ARGS=("$@")
	case $1 in
	herald)
		"$HERALD" --listen "127.0.0.1:$HERALD_PORT" --workers "${2:-1}" >>"$OUT/herald.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$HERALD_PORT" || { SERVER_PID=""; return 1; }
		SAMPLE_PIDS=(--server-pid "$SERVER_PID")
		SERVER_ADDR=127.0.0.1:$HERALD_PORT ;;
	nchan)
		mkdir -p "$TMP/nchan"
		sed -e "s/127\.0\.0\.1:9200/127.0.0.1:$NCHAN_PORT/" -e "s/^worker_processes 1;/worker_processes ${2:-1};/" \
			"$ROOT/tools/bench/nchan.conf" >"$TMP/nchan/nginx.conf"
		nginx -p "$TMP/nchan" -c "$TMP/nchan/nginx.conf" -g 'daemon off;' >>"$OUT/nchan.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$NCHAN_PORT" || { SERVER_PID=""; return 1; }
		local w
		for _ in $(seq 20); do
			[ "$(pgrep -P "$SERVER_PID" | wc -l)" -ge "${2:-1}" ] && break
			sleep 0.1
		done
		SAMPLE_PIDS=()
		for w in $(pgrep -P "$SERVER_PID"); do SAMPLE_PIDS+=(--server-pid "$w"); done
		[ ${#SAMPLE_PIDS[@]} -gt 0 ] || SAMPLE_PIDS=(--server-pid "$SERVER_PID")
		SERVER_ADDR=127.0.0.1:$NCHAN_PORT ;;
	floor)
		"$FLOOR" --listen "127.0.0.1:$FLOOR_PORT" >>"$OUT/floor.log" 2>&1 &
		SERVER_PID=$!
		wait_port "$FLOOR_PORT" || { SERVER_PID=""; return 1; }
		SAMPLE_PIDS=(--server-pid "$SERVER_PID")
		SERVER_ADDR=127.0.0.1:$FLOOR_PORT ;;
	esac
}

# bench TARGET NAME SCENARIO [options...]: one herald-bench run, all outputs kept
# (NOPLOT=1: no PNGs; BENCH_PREFIX: e.g. taskset for the pinned runs).
bench() {
	local t=$1 name=$2 sc=$3 plot=(--plot "$OUT/plots")
	shift 3
	[ "${NOPLOT:-0}" = 1 ] && plot=()
	log "$t: $name${BENCH_PREFIX[*]:+ (${BENCH_PREFIX[*]}, server on CPU $SERVER_CPU)}"
	echo "\$ ${BENCH_PREFIX[*]:+${BENCH_PREFIX[*]} }herald-bench $sc --target $t --server $SERVER_ADDR $*" >>"$OUT/$t-$name.txt"
	"${BENCH_PREFIX[@]}" "$BENCH" "$sc" --target "$t" --server "$SERVER_ADDR" "${SAMPLE_PIDS[@]}" --label "$t-$name" \
		--json "$OUT/$t-$name.json" --csv "$OUT/$t-$name.csv" "${plot[@]}" --quiet "$@" \
		2>>"$LOG" | tee -a "$OUT/$t-$name.txt"
	check_server "$t" "$name"
}

# A server that died mid-run: its log tail and exit status go to the run's
# table and to crashes.txt; it is restarted for the next scenario.
check_server() {
	local t=$1 name=$2
	if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
		wait "$SERVER_PID" 2>/dev/null
		local rc=$?
		log "$t: the server EXITED during '$name' (status $rc$([ $rc -gt 128 ] && echo ", signal $((rc - 128))")): figures of this run are void; restarting it"
		echo "SERVER EXITED during this run (status $rc)" >>"$OUT/$t-$name.txt"
		{
			echo "== $(date -Is) $t exited during '$name' (status $rc), started as: ${START_ARGS[*]}"
			tail -n 50 "$OUT/$t.log" 2>/dev/null
		} >>"$OUT/crashes.txt"
		SERVER_PID=""
		start_server "${START_ARGS[@]}" || log "$t: restart failed"
	fi
}

# profile TARGET NAME SCENARIO [options...]: a separate run of the scenario
# under perf record -g on the server (profiles disturb timings: these runs'
# figures are not used); the reports go to perf/TARGET-NAME.*.txt.
profile() {
	local t=$1 name=$2 sc=$3 pids
	shift 3
	[ "$PROFILE" = 1 ] && command -v perf >/dev/null || return 0
	pids=$(server_pids_all | paste -sd, -)
	log "$t: perf profile of $name (pids $pids)"
	mkdir -p "$OUT/perf"
	"$ROOT/tools/bench/profile.sh" "$OUT/perf/$t-$name" "$pids" -- \
		"${BENCH_PREFIX[@]}" "$BENCH" "$sc" --target "$t" --server "$SERVER_ADDR" "${SAMPLE_PIDS[@]}" \
		--label "$t-$name-perf" --quiet "$@" >"$OUT/perf/$t-$name.bench.txt" 2>>"$LOG"
	check_server "$t" "$name (perf)"
}

# thru TARGET NAME [options...]: THRU_REPS flat-out runs NAME, NAME-r2, ...
thru() {
	local t=$1 name=$2 i n
	shift 2
	for i in $(seq "$THRU_REPS"); do
		n=$name
		[ "$i" -gt 1 ] && n=$name-r$i
		NOPLOT=$([ "$i" -gt 1 ] && echo 1 || echo 0) bench "$t" "$n" fanout --transport ws --conns "$THRU_CONNS" \
			--messages "$THRU_MESSAGES" --rate 0 --publishers 4 --payload "$PAYLOAD" "$@"
	done
}

fanout_ws() { # fanout_ws TARGET NAME [options...]
	local t=$1 name=$2
	shift 2
	bench "$t" "$name" fanout --transport ws --conns "$FANOUT_CONNS" --messages "$FANOUT_MESSAGES" \
		--rate "$FANOUT_RATE" --payload "$PAYLOAD" "$@"
}

run_target() {
	local t=$1 tr r
	for tr in ws sse; do
		[ "$t" = floor ] && [ "$tr" = sse ] && continue
		start_server "$t" || return 1
		bench "$t" "idle-$tr" idle --transport "$tr" --conns "$IDLE_CONNS" --hold "$IDLE_HOLD" --connect-rate 4000
	done
	start_server "$t" || return 1
	for tr in ws sse; do
		[ "$t" = floor ] && [ "$tr" = sse ] && continue
		bench "$t" "fanout-$tr" fanout --transport "$tr" --conns "$FANOUT_CONNS" --messages "$FANOUT_MESSAGES" \
			--rate "$FANOUT_RATE" --payload "$PAYLOAD"
	done
	if [ "$FANOUT_VARIANTS" = 1 ]; then
		# the same fan-out with more bench processes, and pinned apart
		fanout_ws "$t" fanout-ws-p2 --procs 2
		fanout_ws "$t" fanout-ws-p4 --procs 4
		if can_pin; then
			pin_on
			fanout_ws "$t" fanout-ws-pin --procs 1
			pin_off
		fi
	fi
	bench "$t" burst fanout --transport ws --conns "$BURST_CONNS" --messages "$BURST_MESSAGES" \
		--burst "$BURST_SIZE" --rate "$BURST_RATE" --payload "$PAYLOAD"
	thru "$t" throughput
	if can_pin; then
		pin_on
		thru "$t" throughput-pin
		pin_off
	fi
	bench "$t" connect connect --transport ws --conns "$STORM_CONNS" --connect-rate 0 --procs 2
	local i
	for i in $(seq "$STORM_REPS"); do # rounds over the rates, so a passing disturbance hits one round
		for r in $STORM_RATES; do
			NOPLOT=1 bench "$t" "storm-$r$([ "$i" -gt 1 ] && echo "-r$i")" connect --transport ws \
				--conns "$STORM_SWEEP_CONNS" --connect-rate "$r" --procs 2
		done
	done
	bench "$t" publish publish --publishers "$PUB_PUBLISHERS" --duration "$PUB_SECONDS" --payload "$PAYLOAD"
	if [ "$t" != floor ]; then
		local n series=()
		for n in $GAME_SERIES; do
			bench "$t" "game-$n" game --conns "$n" --connect-rate "$GAME_RATE" --time-scale "$GAME_SCALE" \
				--duration "$GAME_SECONDS"
			series+=("$OUT/$t-game-$n.json")
		done
		bench "$t" game game --conns "$GAME_USERS" --connect-rate "$GAME_RATE" --time-scale "$GAME_SCALE" \
			--duration "$GAME_SECONDS"
		series+=("$OUT/$t-game.json")
		"$BENCH" meters "${series[@]}" --json "$OUT/$t-meters.json" | tee "$OUT/$t-meters.txt"
		bench "$t" pvp pull-vs-push --pvp-clients "$PVP_CLIENTS" --pvp-intervals "$PVP_INTERVALS" \
			--pvp-publishes "$PVP_PUBLISHES" --time-scale "$PVP_SCALE"
	fi
	# profiles of the scenarios whose targets are at stake (separate runs)
	profile "$t" storm connect --transport ws --conns "$STORM_CONNS" --connect-rate 0 --procs 2
	profile "$t" fanout-ws fanout --transport ws --conns "$FANOUT_CONNS" --messages "$FANOUT_MESSAGES" \
		--rate "$FANOUT_RATE" --payload "$PAYLOAD"
	profile "$t" throughput fanout --transport ws --conns "$THRU_CONNS" --messages "$THRU_MESSAGES" --rate 0 \
		--publishers 4 --payload "$PAYLOAD"
	if [ "$t" != floor ]; then
		# both cores for the server: 2 worker threads (herald) / 2 worker processes (nginx)
		start_server "$t" 2 || return 1
		[ "$FANOUT_VARIANTS" = 1 ] && fanout_ws "$t" fanout-ws-2w
		thru "$t" throughput-2w
		if can_pin; then
			pin_on
			thru "$t" throughput-2w-pin
			pin_off
		fi
		profile "$t" throughput-2w fanout --transport ws --conns "$THRU_CONNS" --messages "$THRU_MESSAGES" \
			--rate 0 --publishers 4 --payload "$PAYLOAD"
	fi
	stop_server
}

log "results in $OUT"
{
	echo "date: $(date -Is)"
	echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
	echo "git: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src 2>/dev/null || echo " + uncommitted changes in src/: $(git diff --stat HEAD -- src | tail -n 1)")"
	echo "herald binary: $(stat -c '%y' "$ROOT/$BUILD/herald" 2>/dev/null), sha256 $(sha256sum "$HERALD" 2>/dev/null | cut -c1-16)"
	echo "nginx: $(nginx -v 2>&1)"
	echo "perf: $(perf --version 2>/dev/null || echo none)"
	echo "kernel settings: $(sysctl -n net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.ip_local_port_range \
		net.ipv4.tcp_tw_reuse net.ipv4.tcp_congestion_control 2>/dev/null | paste -sd' ' -)" \
		"(somaxconn, syn backlog, port range, tw_reuse, congestion control)"
} >"$OUT/env.txt"
for t in $TARGETS; do
	case $t in
	herald)
		if [ ! -x "$HERALD" ]; then
			log "herald: $HERALD is missing: skipping herald (build it, then rerun)"
			continue
		fi
		if ! start_server herald; then
			log "herald: failed to start on 127.0.0.1:$HERALD_PORT (see $OUT/herald.log): skipping herald"
			continue
		fi ;;
	nchan)
		if [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || ! command -v nginx >/dev/null; then
			log "nchan: nginx-light / libnginx-mod-nchan not installed (scripts/install-deps.sh --bench): skipping"
			continue
		fi ;;
	esac
	run_target "$t" || log "$t: a server failed to start: its remaining scenarios were skipped"
done
python3 "$ROOT/tools/bench/summarize.py" "$OUT" | tee "$OUT/summary.txt"
log "done: $OUT"
