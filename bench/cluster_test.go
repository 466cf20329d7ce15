package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/internal/app/daemon"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// BenchmarkCluster pushes BenchmarkEndToEnd's input (same broker, same two
// publisher connections, 300,000 messages for 10,000 devices, unpaced) into
// one presenced (nodes=1, not clustered) and into three in-process presenced
// nodes forming one cluster (nodes=3), each with the daemon's defaults, Redis
// and Postgres write-behind on the same prefix and tables, and reports
// messages handled per second: touches accepted by the engines, summed over
// the nodes. With three nodes each node receives about a third of the
// messages from the broker (one shared-subscription group) and forwards
// those whose device another node owns (about 2/3) over the cluster's data
// connections; fwd-msgs, fwd-% and fwd-B/msg come from the nodes'
// presence_cluster_forwarded_* counters.
//
// On one machine the three nodes share its cores with the broker, the
// publishers, Redis and Postgres: this measures the cost of forwarding,
// not how throughput scales with nodes. See BENCHMARKS.md ("One node vs three").
//
//	go test ./bench -run '^$' -bench BenchmarkCluster -benchtime 1x -count 3 -timeout 20m
func BenchmarkCluster(b *testing.B) {
	b.Run("nodes=1", func(b *testing.B) { benchCluster(b, 1) })
	b.Run("nodes=3", func(b *testing.B) { benchCluster(b, 3) })
}

// clusterBenchNode is one daemon of BenchmarkCluster.
type clusterBenchNode struct {
	name string
	d    *daemon.Daemon
}

func (n *clusterBenchNode) url(path string) string { return "http://" + n.d.HTTPAddr() + path }

func benchCluster(b *testing.B, n int) {
	f := newFixture(b, e2eDevices)
	var nodes []*clusterBenchNode
	var seed string
	for i := range n {
		cfg := f.daemonConfig()
		cfg.Postgres.URL = testenv.DatabaseURL()
		cfg.Devices.Table = f.devices
		cfg.History.Table = f.history
		cfg.Ingest.ClientIDPrefix = fmt.Sprintf("%s-n%d", f.name, i+1)
		if cfg.Ingest.Connections != e2eConns || cfg.Ingest.QoS != e2eSubQoS {
			b.Fatalf("daemon defaults changed (%d connections, QoS %d): update the benchmark's workload", cfg.Ingest.Connections, cfg.Ingest.QoS)
		}
		name := "standalone"
		if n > 1 {
			name = fmt.Sprintf("node-%d", i+1)
			cfg.Cluster.NodeName = name
			cfg.Cluster.BindAddr = testenv.FreeAddr(b)
			cfg.Cluster.DataAddr = testenv.FreeAddr(b)
			if i == 0 {
				seed = cfg.Cluster.BindAddr
			} else {
				cfg.Cluster.Join = []string{seed}
			}
		}
		// One after the other: the first creates the history table.
		node := &clusterBenchNode{name: name, d: startBenchDaemon(b, cfg)}
		testenv.Eventually(b, 30*time.Second, func() error { return getOK(node.url("/readyz")) })
		nodes = append(nodes, node)
	}
	if n > 1 {
		testenv.Eventually(b, 60*time.Second, func() error { return clusterFormed(nodes) })
	}

	touches := func() uint64 {
		var t uint64
		for _, nd := range nodes {
			t += nd.d.Engine().Stats().Touches
		}
		return t
	}
	scrape := func() map[string]float64 {
		sum := map[string]float64{}
		for _, nd := range nodes {
			m, err := testenv.ScrapeMetrics(nd.url("/metrics"))
			if err != nil {
				b.Fatal(err)
			}
			for k, v := range m {
				sum[k] += v
			}
		}
		return sum
	}
	var tot e2eTotals
	var fwdMsgs, fwdBytes, clusterDropped, received float64
	var cpu time.Duration
	b.ResetTimer()
	for range b.N {
		before := scrape()
		cpu0 := processCPU(b)
		tot.add(publishAndWait(b, f, touches))
		cpu += processCPU(b) - cpu0
		b.StopTimer()
		after := scrape()
		delta := func(k string) float64 { return after[k] - before[k] }
		fwdMsgs += delta("presence_cluster_forwarded_messages_total")
		fwdBytes += delta("presence_cluster_forwarded_bytes_total")
		clusterDropped += delta("presence_cluster_dropped_messages_total")
		received += delta("presence_ingest_messages_received_total")
		b.StartTimer()
	}
	b.StopTimer()
	tot.report(b)
	b.ReportMetric(100*(1-received/float64(tot.published)), "broker-lost-%")
	// CPU of this process (the daemons and the publishers; not the broker,
	// Redis or Postgres) per message handled.
	b.ReportMetric(float64(cpu.Microseconds())/float64(tot.handled), "cpu-us/msg")
	if n > 1 {
		b.ReportMetric(fwdMsgs/float64(b.N), "fwd-msgs")
		b.ReportMetric(100*fwdMsgs/float64(tot.handled), "fwd-%")
		if fwdMsgs > 0 {
			b.ReportMetric(fwdBytes/fwdMsgs, "fwd-B/msg")
		}
		b.ReportMetric(clusterDropped, "cluster-dropped")
	}
	if n > 1 {
		// Still the same three members: no node left during the run.
		if err := clusterFormed(nodes); err != nil {
			b.Errorf("after the run: %v", err)
		}
	}
	for _, nd := range nodes {
		if st := nd.d.Engine().Stats(); st.Rejected != 0 {
			b.Errorf("%s: engine rejected %d messages", nd.name, st.Rejected)
		}
	}
}

// processCPU is the user plus system CPU time this process used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startBenchDaemon runs a daemon until the benchmark ends.
func startBenchDaemon(b *testing.B, cfg daemon.Config) *daemon.Daemon {
	b.Helper()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", cfg.Cluster.NodeName)
	}
	d, err := daemon.New(cfg, log)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("daemon %s stopped with %v", cfg.Cluster.NodeName, err)
			}
		case <-time.After(30 * time.Second):
			b.Errorf("daemon %s did not stop within 30 s", cfg.Cluster.NodeName)
		}
	})
	return d
}

// clusterFormed checks, through GET /v1/cluster, that every node sees all
// of nodes, alive and usable, with the partitions split as the rendezvous
// table over their names splits them.
func clusterFormed(nodes []*clusterBenchNode) error {
	var names []string
	for _, n := range nodes {
		names = append(names, n.name)
	}
	want := cluster.NewTable(cluster.DefaultPartitions, names).Counts()
	for _, n := range nodes {
		var v struct {
			Node      string `json:"node"`
			Clustered bool   `json:"clustered"`
			Members   []struct {
				Name       string `json:"name"`
				State      string `json:"state"`
				Usable     bool   `json:"usable"`
				Partitions int    `json:"partitions_owned"`
			} `json:"members"`
		}
		if err := getJSON(n.url("/v1/cluster"), &v); err != nil {
			return err
		}
		if !v.Clustered || v.Node != n.name {
			return fmt.Errorf("%s: %+v", n.name, v)
		}
		if len(v.Members) != len(nodes) {
			return fmt.Errorf("%s sees %d members, want %d", n.name, len(v.Members), len(nodes))
		}
		for _, m := range v.Members {
			if !m.Usable || m.State != "alive" || m.Partitions != want[m.Name] {
				return fmt.Errorf("%s sees member %+v, want %d partitions", n.name, m, want[m.Name])
			}
		}
	}
	return nil
}

func getJSON(url string, v any) error {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return json.Unmarshal(body, v)
}
