package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/control"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/internal/wire"
)

// clusterView is GET /v1/cluster.
type clusterView struct {
	Node         string          `json:"node"`
	Clustered    bool            `json:"clustered"`
	Partitions   int             `json:"partitions"`
	OwnedDevices int             `json:"owned_devices"`
	Members      []clusterMember `json:"members"`
	// Devices is the cluster's total (the sum of the members' devices).
	Devices int `json:"devices"`
	api.Partial
}

type clusterMember struct {
	Name       string `json:"name"`
	Gossip     string `json:"gossip_addr,omitempty"`
	Data       string `json:"data_addr,omitempty"`
	State      string `json:"state"`
	Usable     bool   `json:"usable"`
	Partitions int    `json:"partitions_owned"`
	// Devices, Online and Version are the member's own answer; absent when
	// it did not answer in time (then Answered is false).
	Answered bool   `json:"answered"`
	Devices  *int   `json:"devices,omitempty"`
	Online   *int   `json:"online,omitempty"`
	Version  string `json:"version,omitempty"`
	// MessagesTotal and TransitionsTotal are the member's engine counters
	// (messages applied, transitions made) since it started: the
	// dashboard's per-node rates.
	MessagesTotal    *uint64 `json:"messages_total,omitempty"`
	TransitionsTotal *uint64 `json:"transitions_total,omitempty"`
	// LastHeard is when this node last heard from the member (a probe
	// answered, a gossiped change); absent for this node itself.
	LastHeard string  `json:"last_heard,omitempty"`
	RTTMillis float64 `json:"rtt_ms,omitempty"`
}

func (d *Daemon) serveCluster(w http.ResponseWriter, r *http.Request) {
	v := clusterView{OwnedDevices: d.eng.Counts().Total, Members: []clusterMember{}}
	if d.node == nil {
		rep := control.LocalReport("standalone", d.eng)
		v.Node, v.Partitions, v.Devices = "standalone", 1, rep.Total
		v.Members = append(v.Members, clusterMember{Name: v.Node, State: "alive", Usable: true, Partitions: 1,
			Answered: true, Devices: &rep.Total, Online: &rep.Online, Version: rep.Version,
			MessagesTotal: &rep.Messages, TransitionsTotal: &rep.Transitions})
	} else {
		v.Node, v.Clustered, v.Partitions = d.node.Name(), true, d.cfg.Cluster.Partitions
		counts := map[string]int{}
		if t := d.node.Table(); t != nil { // nil before the node starts
			counts = t.Counts()
		}
		ctx, cancel := context.WithTimeout(r.Context(), d.cfg.Cluster.QueryTimeout)
		reports, missing := d.fleet.Reports(ctx)
		cancel()
		byName := make(map[string]control.NodeReport, len(reports))
		for _, rep := range reports {
			byName[rep.Node] = rep
			v.Devices += rep.Total
		}
		for _, m := range d.node.Members() {
			cm := clusterMember{Name: m.Name, Gossip: m.Gossip, Data: m.Data,
				State: m.State, Usable: m.Usable, Partitions: counts[m.Name]}
			if rep, ok := byName[m.Name]; ok {
				cm.Answered, cm.Devices, cm.Online, cm.Version = true, &rep.Total, &rep.Online, rep.Version
				cm.MessagesTotal, cm.TransitionsTotal = &rep.Messages, &rep.Transitions
			}
			if !m.LastHeard.IsZero() {
				cm.LastHeard = wire.FormatTime(m.LastHeard)
				cm.RTTMillis = float64(m.RTT.Microseconds()) / 1000
			}
			v.Members = append(v.Members, cm)
		}
		slices.SortFunc(v.Members, func(a, b clusterMember) int { return strings.Compare(a.Name, b.Name) })
		if len(missing) > 0 {
			v.Partial = api.Partial{Partial: true, MissingNodes: missing}
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		wire.WriteError(w, http.StatusInternalServerError, "internal error")
		return
	}
	wire.WriteJSON(w, http.StatusOK, append(b, '\n'))
}

// statusWriter is the API's Writer (POST /v1/devices/{id}/status): the
// status goes through ingest, which takes it only while it runs (after
// recovery, before the handoff), to the engine or the cluster Router.
type statusWriter struct {
	ing  *ingest.Ingester
	node *cluster.Node // nil: a single node
}

func (w statusWriter) SetStatus(id string, s engine.Status, at time.Time, cause engine.Cause) (forwarded bool, err error) {
	forwarded = w.node != nil && !w.node.Owns(id)
	err = unavailable(w.ing.SetStatus(id, s, at, cause))
	return forwarded && err == nil, err
}

// controller is the API's Controller (a device's own timeout,
// decommission): control.Service, taken while ingest runs, as statuses are
// (statusWriter), applied by the engine or, on a cluster node, by the
// Router, which forwards it to the owner.
func (d *Daemon) controller() (*control.Service, error) {
	cc := control.DefaultConfig()
	if d.node != nil {
		cc.QueryTimeout = d.cfg.Cluster.QueryTimeout
	}
	deps := control.Deps{
		Gate:     func(fn func() error) error { return unavailable(d.ing.WhileRunning(fn)) },
		Engine:   d.eng,
		Controls: d.eng,
	}
	if d.node != nil {
		deps.Controls, deps.Cluster = d.node.Router(), d.node
	}
	if d.keys != nil {
		deps.Overrides = d.keys
	}
	return control.New(cc, deps)
}

// unavailable makes ingest's "not running" an api.ErrUnavailable (503).
func unavailable(err error) error {
	if errors.Is(err, ingest.ErrClosed) || errors.Is(err, ingest.ErrNotStarted) {
		return fmt.Errorf("%w: %v", api.ErrUnavailable, err)
	}
	return err
}

// flapLocal is the engine as the API and the cluster's lookups see it:
// each device's state with whether it flaps, from the events hub's
// flapping detector (which the engine does not know).
type flapLocal struct {
	*engine.Engine
	hub *events.Hub
}

func (l flapLocal) Device(id string) (engine.DeviceState, error) {
	st, err := l.Engine.Device(id)
	if err == nil {
		st.Flapping = l.hub.Flapping(id)
	}
	return st, err
}

func (l flapLocal) Devices(ids []string, dst []engine.DeviceState) []engine.DeviceState {
	n := len(dst)
	dst = l.Engine.Devices(ids, dst)
	for i := n; i < len(dst); i++ {
		if dst[i].Status != engine.StatusUnknown {
			dst[i].Flapping = l.hub.Flapping(dst[i].ID)
		}
	}
	return dst
}
