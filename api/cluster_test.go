package api

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/presence-dev/presence/engine"
)

// fakeCluster is a two-node cluster seen from node "a": ids starting with
// "b-" are node b's; b answers unless down.
type fakeCluster struct {
	local *engine.Engine // node a's devices
	b     map[string]engine.DeviceState
	down  bool
}

func (c *fakeCluster) Devices(_ context.Context, ids []string, dst []engine.DeviceState) ([]engine.DeviceState, []int, []string) {
	var unavailable []int
	var missing []string
	for i, id := range ids {
		if !strings.HasPrefix(id, "b-") {
			dst = c.local.Devices([]string{id}, dst)
			continue
		}
		if c.down {
			dst = append(dst, engine.DeviceState{ID: id})
			unavailable = append(unavailable, i)
			missing = []string{"b"}
			continue
		}
		st, ok := c.b[id]
		if !ok {
			st = engine.DeviceState{ID: id}
		}
		dst = append(dst, st)
	}
	return dst, unavailable, missing
}

func (c *fakeCluster) Counts(context.Context) ([]NodeCounts, []string) {
	lc := c.local.Counts()
	nodes := []NodeCounts{{Node: "a", Total: lc.Total, Online: lc.Online, Offline: lc.Offline}}
	if c.down {
		return nodes, []string{"b"}
	}
	return append(nodes, NodeCounts{Node: "b", Total: len(c.b), Online: len(c.b)}), nil
}

func TestClusterAnswers(t *testing.T) {
	var fc *fakeCluster
	f := newFixture(t, func(c *Config) { c.Cluster = clusterFunc(func() Cluster { return fc }) })
	fc = &fakeCluster{local: f.eng, b: map[string]engine.DeviceState{
		"b-1": {ID: "b-1", Status: engine.StatusOnline, LastSeen: t0, Since: t0, Timeout: engine.DefaultConfig().DefaultTimeout},
	}}
	f.touch("a-1", t0)

	// A device of another node, then this node's.
	for _, id := range []string{"b-1", "a-1"} {
		if w := f.do("GET", "/v1/devices/"+id, ""); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"status":"online"`) {
			t.Fatalf("%s: %d %s", id, w.Code, w.Body)
		}
	}
	// scope=local answers from this node: b's device is unknown here.
	if w := f.do("GET", "/v1/devices/b-1?scope=local", ""); w.Code != http.StatusNotFound {
		t.Fatalf("scope=local: %d %s", w.Code, w.Body)
	}
	if w := f.do("GET", "/v1/devices/a-1?scope=everything", ""); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "scope") {
		t.Fatalf("bad scope: %d %s", w.Code, w.Body)
	}
	var st Stats
	w := f.do("GET", "/v1/stats", "")
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || st.Total != 2 || st.Online != 2 || len(st.Nodes) != 2 || st.Partial.Partial {
		t.Fatalf("stats: %v %s", err, w.Body)
	}
	w = f.do("GET", "/v1/stats?scope=local", "")
	st = Stats{}
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || st.Total != 1 || st.Nodes != nil {
		t.Fatalf("local stats: %v %s", err, w.Body)
	}

	// b is down: its devices are unavailable, not missing, and the
	// answers say so.
	fc.down = true
	w = f.do("GET", "/v1/devices/b-1", "")
	var e struct {
		Error string `json:"error"`
		Partial
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != http.StatusServiceUnavailable ||
		!e.Partial.Partial || !slices.Equal(e.MissingNodes, []string{"b"}) || !strings.Contains(e.Error, "did not answer") {
		t.Fatalf("device of a missing node: %d %s (%v)", w.Code, w.Body, err)
	}
	var bg BatchGetResponse
	w = f.do("POST", "/v1/devices:batchGet", `{"ids":["a-1","b-1","a-never","b-2","!bad id"]}`)
	if err := json.Unmarshal(w.Body.Bytes(), &bg); err != nil || w.Code != http.StatusOK {
		t.Fatalf("batchGet: %d %s", w.Code, w.Body)
	}
	if len(bg.Devices) != 1 || bg.Devices[0].ID != "a-1" || !slices.Equal(bg.Missing, []string{"a-never"}) ||
		!slices.Equal(bg.Unavailable, []string{"b-1", "b-2"}) || !bg.Partial.Partial || !slices.Equal(bg.MissingNodes, []string{"b"}) {
		t.Fatalf("partial batchGet: %s", w.Body)
	}
	w = f.do("GET", "/v1/stats", "")
	st = Stats{}
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil || st.Total != 1 || !st.Partial.Partial || !slices.Equal(st.MissingNodes, []string{"b"}) {
		t.Fatalf("partial stats: %v %s", err, w.Body)
	}
	// A complete batchGet has none of the cluster fields.
	fc.down = false
	w = f.do("POST", "/v1/devices:batchGet", `{"ids":["a-1","b-1"]}`)
	if strings.Contains(w.Body.String(), "partial") || strings.Contains(w.Body.String(), "unavailable") {
		t.Fatalf("complete batchGet: %s", w.Body)
	}
}

// clusterFunc defers to a Cluster built after the fixture.
type clusterFunc func() Cluster

func (f clusterFunc) Devices(ctx context.Context, ids []string, dst []engine.DeviceState) ([]engine.DeviceState, []int, []string) {
	return f().Devices(ctx, ids, dst)
}
func (f clusterFunc) Counts(ctx context.Context) ([]NodeCounts, []string) { return f().Counts(ctx) }
