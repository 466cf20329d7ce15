package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// invalidIDMsg explains engine.ValidID to a client.
const invalidIDMsg = ": a device id is 1 to 128 bytes of printable ASCII without spaces, '/', '+' or '#' (percent-encode '?', '%' and '#' in the URL)"

// device serves GET /v1/devices/{id}.
func (s *Server) device(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !engine.ValidID(id) {
		s.reject(w, r, http.StatusBadRequest, reasonInvalidID, "invalid device id "+wire.Quote(id, 64)+invalidIDMsg)
		return
	}
	cluster, ok := s.clusterScope(w, r)
	if !ok {
		return
	}
	var st engine.DeviceState
	var err error
	if cluster {
		ctx, cancel := s.clusterContext(r)
		states, unavailable, missing := s.cfg.Cluster.Devices(ctx, []string{id}, nil)
		cancel()
		if len(unavailable) > 0 {
			b := wire.AppendError(nil, unavailableMsg(id, missing, s.cfg.ClusterTimeout))
			b = appendPartial(b[:len(b)-2], missing) // before the closing "}\n"
			wire.WriteJSON(w, http.StatusServiceUnavailable, append(b, "}\n"...))
			return
		}
		st = states[0]
	} else {
		st, err = s.store.Device(id)
	}
	switch {
	case errors.Is(err, engine.ErrNotFound) || (err == nil && st.Status == engine.StatusUnknown):
		wire.WriteError(w, http.StatusNotFound, "device "+wire.Quote(id, 64)+" not found")
		return
	case errors.Is(err, engine.ErrInvalidID):
		s.reject(w, r, http.StatusBadRequest, reasonInvalidID, "invalid device id "+wire.Quote(id, 64)+invalidIDMsg)
		return
	case err != nil:
		s.fail(w, r, err)
		return
	}
	b := appendDevice(make([]byte, 0, 192), &st)
	wire.WriteJSON(w, http.StatusOK, append(b, '\n'))
}

// statsHandler serves GET /v1/stats.
func (s *Server) statsHandler(w http.ResponseWriter, r *http.Request) {
	cluster, ok := s.clusterScope(w, r)
	if !ok {
		return
	}
	var st Stats
	if cluster {
		ctx, cancel := s.clusterContext(r)
		nodes, missing := s.cfg.Cluster.Counts(ctx)
		cancel()
		for _, n := range nodes {
			st.Total += n.Total
			st.Online += n.Online
			st.Offline += n.Offline
		}
		st.Nodes = nodes
		if len(missing) > 0 {
			st.Partial = Partial{Partial: true, MissingNodes: missing}
		}
	} else {
		c := s.store.Counts()
		st = Stats{Total: c.Total, Online: c.Online, Offline: c.Offline}
	}
	if s.stats != nil {
		st.Engine = engineStats(s.stats.Stats())
	}
	b, err := json.Marshal(&st)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	wire.WriteJSON(w, http.StatusOK, append(b, '\n'))
}

// metricsHandler serves GET /metrics: every set, then the Go runtime and
// process metrics.
func (s *Server) metricsHandler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	for _, set := range s.sets {
		set.WritePrometheus(w)
	}
	if s.cfg.ProcessMetrics {
		metrics.WriteProcessMetrics(w)
	}
}

var (
	okBody    = []byte(`{"status":"ok"}` + "\n")
	readyBody = []byte(`{"status":"ready"}` + "\n")
)

// healthz serves GET /healthz: 200 while the process serves.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	wire.WriteJSON(w, http.StatusOK, okBody)
}
