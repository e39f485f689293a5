set terminal png size 900,540
set grid
set key bottom right
set output '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-cdf.png'
set title 'game-24000-x0.25: latency CDF'
set logscale x
set xlabel 'latency (ms)'
set ylabel 'fraction'
plot '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-cdf-handshake.dat' using 1:2 with steps lw 2 title 'handshake', '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-cdf-request.dat' using 1:2 with steps lw 2 title 'request', '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-cdf-broadcast.dat' using 1:2 with steps lw 2 title 'broadcast', '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-cdf-publish.dat' using 1:2 with steps lw 2 title 'publish'
unset logscale x
set key top left
set yrange [0:*]
set y2range [0:*]
set output '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-throughput.png'
set title 'game-24000-x0.25: throughput'
set xlabel 'time (s)'
set ylabel 'per second'
set y2label 'connections'
set y2tics
plot '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-series.dat' using 1:3 with lines lw 2 title 'deliveries/s', '' using 1:4 with lines lw 2 title 'publishes/s', '' using 1:2 axes x1y2 with lines title 'open connections'
set output '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-memory.png'
set title 'game-24000-x0.25: server memory and CPU'
set ylabel 'RSS (MB)'
set y2label 'CPU (% of a core)'
plot '/work/main/bench/results/cluster-2026-12-01-190956/plots/game-24000-x0.25-series.dat' using 1:5 with lines lw 2 title 'server RSS (MB)', '' using 1:6 axes x1y2 with lines title 'server CPU %'
