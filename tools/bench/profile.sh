#!/usr/bin/env bash
# profile.sh OUT PIDS -- COMMAND...: perf profile of server processes while COMMAND runs.
#
#   OUT     output prefix (e.g. bench/results/<date>/perf/herald-storm)
#   PIDS    comma list of the server's pids (all their threads are recorded)
#
# Runs `perf record -g -p PIDS` for as long as COMMAND runs, then writes:
#   OUT.dso.txt    share of samples per binary: [kernel.kallsyms] vs herald vs libc ...
#   OUT.sym.txt    perf report --no-children --sort symbol (flat, top 80)
#   OUT.tree.txt   the same with call graphs (caller chains of the top symbols)
#   OUT.class.txt  samples by class: kernel TCP/IP, kernel other, server code, libs
# The raw perf.data is deleted (it is large). Needs perf (linux-perf).
set -u
OUT=$1
PIDS=$2
shift 2
[ "${1:-}" = "--" ] && shift
command -v perf >/dev/null || { echo "profile.sh: perf not installed" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
DATA=$(mktemp /tmp/herald-perf.XXXXXX)
perf record -q -g -p "$PIDS" -o "$DATA" >/dev/null 2>"$OUT.perf.err" &
PERF=$!
sleep 0.3
"$@"
RC=$?
kill -INT "$PERF" 2>/dev/null
wait "$PERF" 2>/dev/null
perf report -i "$DATA" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' >"$OUT.dso.txt"
perf report -i "$DATA" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' |
	head -n 80 >"$OUT.sym.txt"
perf report -i "$DATA" --no-children --sort symbol --stdio -g caller,0.5,callee,function,percent \
	--percent-limit 2 2>/dev/null | grep -v '^$' | head -n 400 | cut -c1-160 >"$OUT.tree.txt"
perf script -i "$DATA" -F comm,tid,ip,sym,dso 2>/dev/null | python3 -c '
import re, sys
# Each sample is classed by its whole stack: kernel samples under a network
# function (TCP/IP, sockets, accept, loopback device, softirq receive) are
# "kernel: network", under epoll "kernel: epoll", under the scheduler/futex
# "kernel: scheduler", otherwise "kernel: other"; user samples by binary.
NET = re.compile(r"^(tcp_|__tcp|inet|__inet|sock_|__sock|sk_|__sk|skb|__skb|ip_|__ip|ipv4|net_|__net|netif|napi|__napi|process_backlog|loopback|__dev_queue|dev_|__sys_accept|__sys_connect|__sys_shutdown|do_accept|syn|reqsk|bbr|__x64_sys_(accept|recv|send|shutdown))")
EP = re.compile(r"^(ep_|do_epoll|__x64_sys_epoll|__do_sys_epoll)")
SCHED = re.compile(r"^(schedule|__schedule|futex|__futex|try_to_wake_up|finish_task_switch)")
tot, n, frames = {}, 0, []
def flush():
    global n, frames
    if not frames:
        return
    n += 1
    leaf_sym, leaf_dso = frames[0]
    if leaf_dso.startswith("[kernel"):
        ks = [s for s, d in frames if d.startswith("[kernel")]
        c = "kernel: network (TCP/IP, sockets, accept, loopback, wake-ups of the reader)" if any(NET.match(s) for s in ks) else \
            "kernel: epoll" if any(EP.match(s) for s in ks) else \
            "kernel: scheduler / futex" if any(SCHED.match(s) for s in ks) else "kernel: other (syscall entry, memory, timers)"
    elif ".so" in leaf_dso or leaf_dso == "[vdso]":
        c = "libraries: " + re.sub(r"\.so.*", "", leaf_dso.split("/")[-1])
    else:
        c = "server code: " + leaf_dso.split("/")[-1]
    tot[c] = tot.get(c, 0) + 1
    frames = []
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip():
        flush()
        continue
    if line[0] not in " \t":
        flush()
        continue
    m = re.match(r"\s*[0-9a-f]+\s+(\S+)\s+\((.*)\)\s*$", line)
    if m:
        frames.append((re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)), m.group(2)))
flush()
print(f"{n} samples")
for c, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f"{100.0 * v / max(n, 1):6.2f}%  {c}")
' >"$OUT.class.txt"
rm -f "$DATA" "$DATA.old"
exit $RC
