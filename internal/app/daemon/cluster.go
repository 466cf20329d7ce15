package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
)

// settle waits, after joining, until the membership has been stable for a
// moment (at most a few seconds), so that this node hydrates only the
// partitions it owns and restart transitions are not reported by several
// nodes at once.
func (d *Daemon) settle(ctx context.Context) {
	deadline := time.Now().Add(5 * time.Second)
	last, stableSince := len(d.node.Members()), time.Now()
	for time.Now().Before(deadline) && time.Since(stableSince) < time.Second {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		if n := len(d.node.Members()); n != last {
			last, stableSince = n, time.Now()
		}
	}
}

// owns reports whether this node times the device (always, unclustered).
func (d *Daemon) owns(id string) bool { return d.node == nil || d.node.Owns(id) }

// onClusterChange rebuilds, from Redis, the partitions this node gained from
// a node that crashed (a graceful one handed them over). Devices whose
// deadline passed in the gap turn offline at once, cause handoff.
func (d *Daemon) onClusterChange(c cluster.Change) {
	parts := c.Rebuild()
	d.log.Info("cluster membership changed", "members", len(c.New.Members()), "moved", len(c.Moved),
		"joined", c.Joined, "left", c.Left, "failed", c.Failed, "rebuild", len(parts))
	if len(parts) == 0 || d.redisSink == nil {
		return
	}
	go d.rebuild(c, parts) // the callback must not block membership
}

// rebuildHold bounds how long the messages of partitions gained from a
// crashed node wait for their rebuild; rebuild gives up sooner.
const rebuildHold = 30 * time.Second

// rebuild rebuilds parts, c.Rebuild(), from Redis.
func (d *Daemon) rebuild(c cluster.Change, parts []int) {
	start := time.Now()
	// Then the messages held meanwhile are applied: after the devices'
	// state, so that a device that was online is not reported online again.
	defer d.node.RebuildDone(c)
	ctx, cancel := context.WithTimeout(context.Background(), rebuildHold-5*time.Second)
	defer cancel()
	n := 0
	adopt := func(states []engine.DeviceState) error {
		owned := states[:0]
		for _, st := range states {
			if d.owns(st.ID) { // the table may have moved on meanwhile
				owned = append(owned, st)
			}
		}
		if err := d.eng.Adopt(owned, time.Now()); err != nil {
			d.log.Warn("cluster rebuild skipped some devices", "err", err)
		}
		n += len(owned)
		return nil
	}
	// The per-partition index names the devices; without one (data written
	// before it existed, or no cluster history) walk the keyspace.
	how := "index"
	err := d.index.Devices(ctx, d.redisSink, parts, adopt)
	if err == nil && n == 0 {
		how = "scan"
		err = d.rebuildByScan(ctx, parts, adopt)
	}
	if err != nil {
		d.log.Error("cluster rebuild from Redis failed", "err", err, "rebuilt", n, "via", how)
		return
	}
	d.log.Info("partitions rebuilt from Redis", "partitions", len(parts), "devices", n, "via", how,
		"took", time.Since(start).Round(time.Millisecond))
}

func (d *Daemon) rebuildByScan(ctx context.Context, parts []int, adopt func([]engine.DeviceState) error) error {
	want := make(map[int]bool, len(parts))
	for _, p := range parts {
		want[p] = true
	}
	table := d.node.Table()
	var buf []engine.DeviceState
	err := d.redisSink.Scan(ctx, func(st engine.DeviceState) error {
		if want[table.PartitionOf(st.ID)] {
			buf = append(buf, st)
			if len(buf) == hydrateChunk {
				adopt(buf)
				buf = buf[:0]
			}
		}
		return nil
	})
	adopt(buf)
	return err
}

// clusterView is GET /v1/cluster.
type clusterView struct {
	Node         string          `json:"node"`
	Clustered    bool            `json:"clustered"`
	Partitions   int             `json:"partitions"`
	OwnedDevices int             `json:"owned_devices"`
	Members      []clusterMember `json:"members"`
}

type clusterMember struct {
	Name       string `json:"name"`
	Gossip     string `json:"gossip_addr,omitempty"`
	Data       string `json:"data_addr,omitempty"`
	State      string `json:"state"`
	Usable     bool   `json:"usable"`
	Partitions int    `json:"partitions_owned"`
}

func (d *Daemon) serveCluster(w http.ResponseWriter, _ *http.Request) {
	v := clusterView{OwnedDevices: d.eng.Counts().Total, Members: []clusterMember{}}
	if d.node == nil {
		v.Node, v.Partitions = "standalone", 1
		v.Members = append(v.Members, clusterMember{Name: v.Node, State: "alive", Usable: true, Partitions: 1})
	} else {
		t := d.node.Table()
		v.Node, v.Clustered, v.Partitions = d.node.Name(), true, t.Partitions()
		counts := t.Counts()
		for _, m := range d.node.Members() {
			v.Members = append(v.Members, clusterMember{Name: m.Name, Gossip: m.Gossip, Data: m.Data,
				State: m.State, Usable: m.Usable, Partitions: counts[m.Name]})
		}
		slices.SortFunc(v.Members, func(a, b clusterMember) int {
			if a.Name < b.Name {
				return -1
			}
			if a.Name > b.Name {
				return 1
			}
			return 0
		})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}
