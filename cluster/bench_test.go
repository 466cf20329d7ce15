package cluster

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// countLocal counts what reaches it and passes it on to e (if not nil).
type countLocal struct {
	nopLocal
	n atomic.Int64
	e *engine.Engine
}

func (c *countLocal) TouchBatch(b []engine.Touch) int {
	rej := 0
	if c.e != nil {
		rej = c.e.TouchBatch(b)
	}
	c.n.Add(int64(len(b)))
	return rej
}

func (c *countLocal) SetStatus(id string, s engine.Status, at time.Time, cause engine.Cause) error {
	c.n.Add(1)
	if c.e != nil {
		return c.e.SetStatus(id, s, at, cause)
	}
	return nil
}

func (c *countLocal) MarkOffline(id string, at time.Time) error {
	c.n.Add(1)
	if c.e != nil {
		return c.e.MarkOffline(id, at)
	}
	return nil
}

func newCountLocal(b *testing.B, withEngine bool) *countLocal {
	if !withEngine {
		return &countLocal{}
	}
	cfg := engine.DefaultConfig()
	cfg.Sink = engine.SinkFunc(func([]engine.Transition) {})
	e, err := engine.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return &countLocal{e: e}
}

// BenchmarkForward measures messages per second through a Router: path=local
// applies the batches to the local engine (the baseline: a node owning every
// device), path=forward sends every message to a peer over loopback TCP,
// where the peer's server decodes it, checks ownership and applies it. The
// engine is the real one (engine=real, 4096 devices, every touch a
// last_seen update) or a counter (engine=none: the routing and forwarding
// cost alone). One op is one message; batches of 512 like ingest's. msgs/s
// counts messages that reached the owner's engine; bytes/msg is the wire
// size, frame headers included. channel=plain is plain TCP (a loopback
// cluster without a key), channel=tls the keyed cluster's TLS 1.3 with the
// key proofs at connect. Sender and receiver share the 2 cores.
//
//	go test -run '^$' -bench 'BenchmarkForward$' -benchtime 2000000x -count 6 ./cluster/
func BenchmarkForward(b *testing.B) {
	for _, withEngine := range []bool{true, false} {
		eng := "engine=none"
		if withEngine {
			eng = "engine=real"
		}
		b.Run(eng+"/path=local", func(b *testing.B) {
			dst := newCountLocal(b, withEngine)
			r, _, addr := benchRouter(b, "a", dst)
			// A table in which a owns everything, without the "alone" fast
			// path: the router looks up every id's partition, as a node of
			// a cluster does for the devices it owns.
			tb := NewTable(DefaultPartitions, []string{"a"})
			r.route.Store(&routing{table: tb, owners: make([]*peer, tb.Partitions()),
				addrs: map[string]string{"a": addr}})
			benchRun(b, r, dst)
		})
		for _, keyed := range []bool{false, true} {
			channel := "/channel=plain"
			if keyed {
				channel = "/channel=tls"
			}
			b.Run(eng+"/path=forward"+channel, func(b *testing.B) {
				benchForward(b, withEngine, keyed)
			})
		}
	}
}

// benchForward is path=forward: a forwards every message to b, over TLS
// with the key proofs when keyed.
func benchForward(b *testing.B, withEngine, keyed bool) {
	dst := newCountLocal(b, withEngine)
	rb, _, addrB := benchRouter(b, "b", dst)
	ra, ma, addrA := benchRouter(b, "a", &countLocal{})
	if keyed {
		for _, r := range []*Router{ra, rb} {
			ch, err := newChannel([][]byte{[]byte("0123456789abcdef0123456789abcdef")})
			if err != nil {
				b.Fatal(err)
			}
			r.ch = ch
		}
	}
	// b owns everything; a forwards every message to b.
	tb := NewTable(DefaultPartitions, []string{"b"})
	addrs := map[string]string{"a": addrA, "b": addrB}
	rb.setTable(tb, addrs)
	ra.setTable(tb, addrs)
	benchRun(b, ra, dst)
	if n := ma.fwdMessages.Get(); n > 0 {
		b.ReportMetric(float64(ma.fwdBytes.Get())/float64(n), "bytes/msg")
	}
	var drops uint64
	for r := range numDropReasons {
		drops += ma.dropped[r].Get()
	}
	b.ReportMetric(float64(drops)/float64(b.N), "drops/op")
}

// benchRouter is a router with its data server on loopback.
func benchRouter(b *testing.B, name string, local Local) (*Router, *clusterMetrics, string) {
	cfg := testConfig(b, name)
	cfg.EnqueueWait = time.Second // measure throughput: wait for room, do not drop
	m := newClusterMetrics(metrics.NewSet())
	r := newRouter(&cfg, local, cfg.Logger, m)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := newServer(r, ln, cfg.Logger, time.Now, anyMember)
	srv.start()
	b.Cleanup(func() { r.close(); srv.close() })
	return r, m, ln.Addr().String()
}

var benchBatches = func() [][]engine.Touch {
	const batchSize = 512
	ids := deviceIDs("sensor", 4096)
	batches := make([][]engine.Touch, len(ids)/batchSize)
	now := time.Now()
	for i := range batches {
		batches[i] = touchBatch(ids[i*batchSize:(i+1)*batchSize], now)
		for j := range batches[i] {
			batches[i][j].At = now.Add(time.Duration(j) * 9731) // ~5 ms spread
		}
	}
	return batches
}()

// benchRun sends b.N messages into r and waits until dst has them all.
func benchRun(b *testing.B, r *Router, dst *countLocal) {
	b.ReportAllocs()
	b.ResetTimer()
	sent := 0
	for i := 0; sent < b.N; i++ {
		batch := benchBatches[i%len(benchBatches)]
		// Later rounds are newer, so that the engine updates last_seen.
		if i%len(benchBatches) == 0 && i > 0 {
			for _, bt := range benchBatches {
				for j := range bt {
					bt[j].At = bt[j].At.Add(10 * time.Millisecond)
				}
			}
		}
		r.TouchBatch(batch)
		sent += len(batch)
	}
	for dst.n.Load() < int64(sent) && b.Elapsed() < time.Minute {
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(dst.n.Load())/b.Elapsed().Seconds(), "msgs/s")
}

// benchCluster starts n keyed nodes on loopback, each over a real engine,
// and returns them once their tables agree.
func benchCluster(b *testing.B, n int) ([]*Node, []*engine.Engine) {
	b.Helper()
	var nodes []*Node
	var engines []*engine.Engine
	for i := range n {
		cfg := testConfig(b, fmt.Sprintf("n%d", i))
		cfg.SecretKey = []byte("0123456789abcdef0123456789abcdef")
		if i > 0 {
			cfg.Join = []string{nodes[0].gossip}
		}
		ecfg := engine.DefaultConfig()
		ecfg.Sink = engine.SinkFunc(func([]engine.Transition) {})
		e, err := engine.New(ecfg)
		if err != nil {
			b.Fatal(err)
		}
		nd, err := New(cfg, e)
		if err != nil {
			b.Fatal(err)
		}
		if err := nd.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = nd.halt() })
		nodes, engines = append(nodes, nd), append(engines, e)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := true
		for _, nd := range nodes {
			if nd.Table() == nil || len(nd.Table().Members()) != n {
				ok = false
			}
		}
		if ok {
			return nodes, engines
		}
		if time.Now().After(deadline) {
			b.Fatal("the cluster did not form")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkClusterBatchGet is Node.Lookup of 10,000 known ids (what
// POST /v1/devices:batchGet does before encoding JSON, which costs the same
// everywhere): nodes=1 is one node holding every device (the baseline);
// nodes=3 is a keyed three-node cluster on loopback, asked at one node,
// which owns a third and asks the two others for theirs (TLS, one query
// each, in parallel) and then every member for nothing (all known). The
// three nodes share the machine's 2 cores. One op is one 10k-id lookup.
//
//	go test -run '^$' -bench 'BenchmarkClusterBatchGet|BenchmarkClusterLookup' -count 6 ./cluster/
func BenchmarkClusterBatchGet(b *testing.B) {
	ids := deviceIDs("batch", 10000)
	b.Run("nodes=1/path=engine", func(b *testing.B) {
		// Today's single node: the API reads the engine directly.
		nodes, engines := benchCluster(b, 1)
		nodes[0].Router().TouchBatch(touchBatch(ids, time.Now()))
		var dst []engine.DeviceState
		b.ReportAllocs()
		for b.Loop() {
			dst = engines[0].Devices(ids, dst[:0])
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/batch")
	})
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			nodes, _ := benchCluster(b, n)
			if rej := nodes[0].Router().TouchBatch(touchBatch(ids, time.Now())); rej != 0 {
				b.Fatal(rej)
			}
			waitKnown(b, nodes[0], ids)
			var dst []engine.DeviceState
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				var missing []string
				dst, missing = nodes[0].Lookup(ctx, ids, dst[:0])
				cancel()
				if len(missing) > 0 {
					b.Fatalf("missing %v", missing)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/batch")
		})
	}
}

// BenchmarkClusterLookup is the latency of one device's lookup
// (GET /v1/devices/{id}) in a keyed three-node cluster: at=owner asks the
// node that owns the device (a local engine read), at=other asks another
// node, which queries the owner over its authenticated query connection.
func BenchmarkClusterLookup(b *testing.B) {
	nodes, _ := benchCluster(b, 3)
	id := ""
	for i := range 100000 {
		if cand := fmt.Sprintf("one-%d", i); nodes[0].Table().OwnerOf(cand) == nodes[1].Name() {
			id = cand
			break
		}
	}
	nodes[1].Router().TouchBatch(touchBatch([]string{id}, time.Now()))
	for _, tc := range []struct {
		name string
		at   *Node
	}{{"at=owner", nodes[1]}, {"at=other", nodes[0]}} {
		b.Run(tc.name, func(b *testing.B) {
			waitKnown(b, tc.at, []string{id})
			var dst []engine.DeviceState
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				dst, _ = tc.at.Lookup(ctx, []string{id}, dst[:0])
				cancel()
				if dst[0].Status != engine.StatusOnline {
					b.Fatalf("%+v", dst[0])
				}
			}
		})
	}
}

// waitKnown waits until at answers every id.
func waitKnown(b *testing.B, at *Node, ids []string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := at.Lookup(context.Background(), ids, nil)
		known := 0
		for _, st := range got {
			if st.Status != engine.StatusUnknown {
				known++
			}
		}
		if known == len(ids) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d devices known", known, len(ids))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
