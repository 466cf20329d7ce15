package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// Cluster answers for every node of a cluster (Config.Cluster): a
// clustered daemon asks the other nodes. Every answer names the members
// that did not answer within the context's deadline; what they own is then
// reported as unavailable, not as unknown.
type Cluster interface {
	// Devices returns the state of each id, in order. unavailable are the
	// indexes of ids whose owner did not answer (and no other member knew
	// them); missing names the members that did not answer.
	Devices(ctx context.Context, ids []string, dst []engine.DeviceState) (states []engine.DeviceState, unavailable []int, missing []string)
	// Counts returns each answering member's counts, and the members that
	// did not answer.
	Counts(ctx context.Context) (nodes []NodeCounts, missing []string)
}

// NodeCounts is one node's share of the fleet (Stats.Nodes).
type NodeCounts struct {
	Node    string `json:"node"`
	Total   int    `json:"total"`
	Online  int    `json:"online"`
	Offline int    `json:"offline"`
}

// Partial is part of every cluster-wide answer that lacks members: Partial
// is true and MissingNodes names them. Both are absent from a complete
// answer.
type Partial struct {
	Partial      bool     `json:"partial,omitempty"`
	MissingNodes []string `json:"missing_nodes,omitempty"`
}

// Scope values: the query parameter scope=local answers from this node
// alone (its own devices), for debugging; scope=cluster, the default,
// answers for the whole cluster.
const (
	ScopeCluster = "cluster"
	ScopeLocal   = "local"
)

// clusterScope reports whether r is answered for the whole cluster; false
// with ok false means the request was refused (an unknown scope).
func (s *Server) clusterScope(w http.ResponseWriter, r *http.Request) (cluster, ok bool) {
	switch sc := r.URL.Query().Get("scope"); sc {
	case "", ScopeCluster:
		return s.cfg.Cluster != nil, true
	case ScopeLocal:
		return false, true
	default:
		s.reject(w, r, http.StatusBadRequest, reasonInvalidQuery,
			"scope "+wire.Quote(sc, 32)+": want cluster (the default) or local")
		return false, false
	}
}

// clusterContext bounds a cluster-wide answer by Config.ClusterTimeout.
func (s *Server) clusterContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.ClusterTimeout)
}

// appendPartial appends `,"partial":true,"missing_nodes":[...]` when
// missing is not empty.
func appendPartial(b []byte, missing []string) []byte {
	if len(missing) == 0 {
		return b
	}
	b = append(b, `,"partial":true,"missing_nodes":[`...)
	for i, m := range missing {
		if i > 0 {
			b = append(b, ',')
		}
		b = wire.AppendJSONString(b, m)
	}
	return append(b, ']')
}

// unavailableMsg is the 503 of a device whose owner did not answer.
func unavailableMsg(id string, missing []string, budget time.Duration) string {
	return "device " + wire.Quote(id, 64) + ": its owner (" + strings.Join(missing, ", ") +
		") did not answer within " + strconv.FormatFloat(budget.Seconds(), 'g', -1, 64) + "s; retry, or ask with scope=local"
}
