package cluster_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/ingest"
)

// The Router sits between ingest and the engine.
var _ ingest.Handler = (*cluster.Router)(nil)

// How the daemon wires a node (compiled, not run: it binds ports 7946-7947).
func ExampleNode() {
	eng, err := engine.New(engine.DefaultConfig())
	if err != nil {
		panic(err)
	}
	cfg := cluster.DefaultConfig()
	cfg.NodeName = os.Getenv("PRESENCE_NODE_NAME")
	cfg.BindAddr = os.Getenv("PRESENCE_CLUSTER_BIND") // "0.0.0.0:7946"
	if seeds := os.Getenv("PRESENCE_CLUSTER_JOIN"); seeds != "" {
		cfg.Join = strings.Split(seeds, ",")
	}
	if k := os.Getenv("PRESENCE_CLUSTER_KEY"); k != "" {
		if cfg.SecretKey, err = cluster.ParseKey(k); err != nil {
			panic(err)
		}
	}
	cfg.DataAddr = os.Getenv("PRESENCE_CLUSTER_DATA_ADDR") // "" = gossip port + 1
	cfg.Logger = slog.Default()
	cfg.OnChange = func(c cluster.Change) {
		if ps := c.Rebuild(); len(ps) > 0 {
			// hand ps to a goroutine that rebuilds them from Redis and
			// then calls node.RebuildDone(c), with cfg.RebuildHold set
		}
	}
	node, err := cluster.New(cfg, eng)
	if err != nil {
		panic(err)
	}
	if err := node.Start(context.Background()); err != nil {
		panic(err)
	}
	in, err := ingest.New(ingest.DefaultConfig(), node.Router())
	if err != nil {
		panic(err)
	}
	_ = in.Start(context.Background())
	// ... on shutdown: ingest first, then the node (leave + handoff).
	_ = in.Close(context.Background())
	_ = node.Close(context.Background())
}

// Every node computes the same table from the same member names; a node
// joining takes about 1/N of the partitions, all from the others.
func ExampleTable() {
	before := cluster.NewTable(cluster.DefaultPartitions, []string{"node-a", "node-b", "node-c"})
	after := cluster.NewTable(cluster.DefaultPartitions, []string{"node-c", "node-a", "node-b", "node-d"})

	p := before.PartitionOf("sensor-000123")
	fmt.Println("partition", p, "owner", before.Owner(p))

	moved := cluster.Moved(before, after)
	toD := 0
	for _, p := range moved {
		if after.Owner(p) == "node-d" {
			toD++
		}
	}
	fmt.Println("moved", len(moved), "all to node-d:", toD == len(moved))
	// Output:
	// partition 14 owner node-c
	// moved 262 all to node-d: true
}
