set terminal png size 900,540
set grid
set key bottom right
set output '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-cdf.png'
set title 'fanout-4node: latency CDF'
set logscale x
set xlabel 'latency (ms)'
set ylabel 'fraction'
plot '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-cdf-handshake.dat' using 1:2 with steps lw 2 title 'handshake', '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-cdf-broadcast.dat' using 1:2 with steps lw 2 title 'broadcast', '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-cdf-publish.dat' using 1:2 with steps lw 2 title 'publish'
unset logscale x
set key top left
set yrange [0:*]
set y2range [0:*]
set output '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-throughput.png'
set title 'fanout-4node: throughput'
set xlabel 'time (s)'
set ylabel 'per second'
set y2label 'connections'
set y2tics
plot '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-series.dat' using 1:3 with lines lw 2 title 'deliveries/s', '' using 1:4 with lines lw 2 title 'publishes/s', '' using 1:2 axes x1y2 with lines title 'open connections'
set output '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-memory.png'
set title 'fanout-4node: server memory and CPU'
set ylabel 'RSS (MB)'
set y2label 'CPU (% of a core)'
plot '/work/main/bench/results/cluster-2026-12-01-190956/plots/fanout-4node-series.dat' using 1:5 with lines lw 2 title 'server RSS (MB)', '' using 1:6 axes x1y2 with lines title 'server CPU %'
