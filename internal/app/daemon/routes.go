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
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/events"
	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/internal/wire"
	"github.com/presence-dev/presence/writeback/redis"
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
		rep := localReport("standalone", d.eng)
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
		reports, missing := d.fleet.reports(ctx)
		cancel()
		byName := make(map[string]nodeReport, len(reports))
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

// deviceControl is what applies the device controls: the engine, or in a
// cluster the Router, which forwards them to the owner.
type deviceControl interface {
	SetTimeout(id string, d time.Duration) error
	ClearTimeout(id string) error
	Decommission(id string, at time.Time) error
}

// controller is the API's Controller (a device's own timeout,
// decommission): taken while ingest runs, as statuses are (statusWriter).
// An override is stored in Redis before it is applied, so that it outlives
// a restart or a rebuild; a decommission reaches the stores write-behind
// (the engine lists the device as Removed for each sink).
type controller struct {
	ing  *ingest.Ingester
	eng  *engine.Engine
	ctl  deviceControl
	node *cluster.Node // nil: a single node
	keys *redis.Sink   // nil: no Redis
	// storeTimeout bounds the write of one override, queryTimeout the
	// lookup of a device another node owns.
	storeTimeout, queryTimeout time.Duration
}

func (d *Daemon) controller() controller {
	c := controller{ing: d.ing, eng: d.eng, ctl: d.eng, node: d.node, keys: d.keys,
		storeTimeout: 5 * time.Second, queryTimeout: d.cfg.Cluster.QueryTimeout}
	if d.node != nil {
		c.ctl = d.node.Router()
	}
	return c
}

func (c controller) SetTimeout(id string, d time.Duration) (forwarded bool, err error) {
	forwarded = c.node != nil && !c.node.Owns(id)
	held := c.held(id, forwarded)
	err = c.ing.WhileRunning(func() error {
		// Nothing is stored for a device never seen; one of a partition
		// being rebuilt may not be back yet (the Router holds the
		// override until it is).
		if !held {
			if err := c.known(id, forwarded); err != nil {
				return err
			}
		}
		if d != 0 {
			if err := engine.ValidTimeout(d); err != nil {
				return err
			}
		}
		if err := c.store(id, d); err != nil {
			return fmt.Errorf("%w: the timeout could not be stored: %v", api.ErrUnavailable, err)
		}
		var err error
		if d == 0 {
			err = c.ctl.ClearTimeout(id)
		} else {
			err = c.ctl.SetTimeout(id, d)
		}
		if err != nil && d != 0 {
			// Not applied (decommissioned meanwhile, or the engine's table
			// of timeouts is full): nothing may outlive it in Redis.
			_ = c.store(id, 0)
		}
		return err
	})
	if held && err == nil {
		err = api.ErrHeld
	}
	return forwarded && err == nil, unavailable(err)
}

// held reports whether this node owns device id but holds its
// partition's messages for a rebuild: a control is then held too, and
// applied after it (api.ErrHeld, 202).
func (c controller) held(id string, forwarded bool) bool {
	return c.node != nil && !forwarded && c.node.Router().Holding(id)
}

// store writes device id's own timeout d (0: none) to Redis, if any.
func (c controller) store(id string, d time.Duration) error {
	if c.keys == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.storeTimeout)
	defer cancel()
	return c.keys.SetTimeoutOverride(ctx, id, d)
}

func (c controller) Decommission(id string, at time.Time) (forwarded bool, err error) {
	forwarded = c.node != nil && !c.node.Owns(id)
	held := c.held(id, forwarded)
	err = c.ing.WhileRunning(func() error {
		if forwarded { // the owner checks again; this answers 404 as a single node would
			if err := c.known(id, true); err != nil {
				return err
			}
		}
		// Its own timeout goes now, not only with the write-behind removal,
		// which a message of the device before the flush supersedes.
		// Best effort: Redis down, the removal deletes it when it is back.
		_ = c.store(id, 0)
		return c.ctl.Decommission(id, at)
	})
	if held && err == nil {
		err = api.ErrHeld
	}
	return forwarded && err == nil, unavailable(err)
}

// known checks that device id exists: in this engine, or, when another
// node owns it, there (or, during a handoff, on the member that still has
// it). engine.ErrNotFound if not; api.ErrUnavailable when a member that
// might know it did not answer in time.
func (c controller) known(id string, remote bool) error {
	if !remote {
		_, err := c.eng.Device(id)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.queryTimeout)
	defer cancel()
	states, missing := c.node.Lookup(ctx, []string{id}, nil)
	switch {
	case states[0].Status != engine.StatusUnknown:
		return nil
	case len(missing) > 0:
		return fmt.Errorf("%w: %s did not answer within %v: whether %s exists is not known",
			api.ErrUnavailable, strings.Join(missing, ", "), c.queryTimeout, wire.Quote(id, 64))
	}
	return engine.ErrNotFound
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
