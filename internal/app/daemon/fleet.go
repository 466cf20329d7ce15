package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"slices"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/report"
)

// The queries a clustered daemon answers for the others (cluster.Node.
// HandleQuery), JSON both ways.
const (
	queryCounts  = "counts"  // no body; api.NodeCounts
	queryLongest = "longest" // report.ListQuery; report.List
)

// fleet answers the API for the whole cluster (api.Cluster, and the
// report's Cluster): it asks the other nodes through the node's
// authenticated query connections.
type fleet struct {
	node *cluster.Node
	eng  *engine.Engine
}

// register installs the handlers of the other nodes' queries; before the
// node starts.
func (f *fleet) register(rep *report.Report) {
	f.node.HandleQuery(queryCounts, func(context.Context, []byte) ([]byte, error) {
		c := f.eng.Counts()
		return json.Marshal(nodeReport{
			NodeCounts: api.NodeCounts{Node: f.node.Name(), Total: c.Total, Online: c.Online, Offline: c.Offline},
			Version:    version(),
		})
	})
	f.node.HandleQuery(queryLongest, func(ctx context.Context, body []byte) ([]byte, error) {
		var q report.ListQuery
		if err := json.Unmarshal(body, &q); err != nil {
			return nil, fmt.Errorf("longest: %w", err)
		}
		l, err := rep.Longest(ctx, q)
		if err != nil {
			return nil, err
		}
		return json.Marshal(l)
	})
}

// Devices implements api.Cluster.
func (f *fleet) Devices(ctx context.Context, ids []string, dst []engine.DeviceState) ([]engine.DeviceState, []int, []string) {
	start := len(dst)
	out, missing := f.node.Lookup(ctx, ids, dst)
	if len(missing) == 0 {
		return out, nil, nil
	}
	var unavailable []int
	t := f.node.Table()
	for i, st := range out[start:] {
		if st.Status == engine.StatusUnknown && t != nil && slices.Contains(missing, t.OwnerOf(ids[i])) {
			unavailable = append(unavailable, i)
		}
	}
	return out, unavailable, missing
}

// nodeReport is a node's answer to queryCounts.
type nodeReport struct {
	api.NodeCounts
	Version string `json:"version"`
}

// reports asks every node for its nodeReport.
func (f *fleet) reports(ctx context.Context) ([]nodeReport, []string) {
	var nodes []nodeReport
	var missing []string
	for _, a := range f.node.Ask(ctx, queryCounts, nil) {
		var r nodeReport
		if a.Err != nil || json.Unmarshal(a.Body, &r) != nil {
			missing = append(missing, a.Node)
			continue
		}
		nodes = append(nodes, r)
	}
	return nodes, missing
}

// Counts implements api.Cluster.
func (f *fleet) Counts(ctx context.Context) ([]api.NodeCounts, []string) {
	reports, missing := f.reports(ctx)
	nodes := make([]api.NodeCounts, len(reports))
	for i, r := range reports {
		nodes[i] = r.NodeCounts
	}
	return nodes, missing
}

// version is this build's: the module version and the VCS revision.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v, rev, dirty := bi.Main.Version, "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += "+" + rev
		if dirty {
			v += "-dirty"
		}
	}
	return v
}

// Lists is the report's Cluster: every node's Longest of q.
func (f *fleet) Lists(ctx context.Context, q report.ListQuery) ([]report.List, []string) {
	body, err := json.Marshal(q)
	if err != nil {
		return nil, f.node.Table().Members()
	}
	var lists []report.List
	var missing []string
	for _, a := range f.node.Ask(ctx, queryLongest, body) {
		var l report.List
		if a.Err != nil || json.Unmarshal(a.Body, &l) != nil {
			missing = append(missing, a.Node)
			continue
		}
		lists = append(lists, l)
	}
	return lists, missing
}
