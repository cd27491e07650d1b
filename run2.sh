B=/work/wt-kernel14/target/debug/blastgate; P=/work/wt-kernel14/target/debug/blastgate-probe
$B daemon --detach-on-exit --deadline 60 --config cfg.toml > daemon.log 2>&1 &
DPID=$!
for i in $(seq 50); do [ -S control.sock ] && $B status --config cfg.toml >/dev/null 2>&1 && break; sleep 0.2; done
for i in 1 2 3; do
$P packet-listen 34997 1500 > listen.out &
LP=$!
sleep 0.3
out=$($B run --agent x --config cfg.toml -- $P uring-packet-chain 34997 2>&1); echo "agent chain -> exit $? $out"
wait $LP; cat listen.out
done
kill $DPID; wait $DPID; $B uninstall --config cfg.toml >/dev/null 2>&1
