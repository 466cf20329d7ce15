package report

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// Mounter is where Mount puts the routes: *api.Server, whose Handle adds
// the API's metrics, panic recovery and bearer token.
type Mounter interface {
	Handle(pattern string, h http.Handler)
}

// Mount adds the report's endpoints to m (see the package documentation):
// GET /v1/devices/{id}/history, GET /v1/devices/{id}/uptime, GET /v1/uptime
// and GET /v1/devices.
func (r *Report) Mount(m Mounter) {
	m.Handle("GET /v1/devices/{id}/history", http.HandlerFunc(r.serveHistory))
	m.Handle("GET /v1/devices/{id}/uptime", http.HandlerFunc(r.serveUptime))
	m.Handle("GET /v1/uptime", http.HandlerFunc(r.serveFleet))
	m.Handle("GET /v1/devices", http.HandlerFunc(r.serveList))
}

// The types below are the JSON the endpoints return; Go clients may decode
// into them. Times are api.TimeLayout strings.

// HistoryResponse answers GET /v1/devices/{id}/history.
type HistoryResponse struct {
	ID string `json:"id"`
	// From and To echo the window; null when unbounded.
	From *string `json:"from"`
	To   *string `json:"to"`
	// Changes are newest first.
	Changes []ChangeJSON `json:"changes"`
	// Truncated is true when the window holds more changes than limit:
	// ask again with to = the oldest "at" returned.
	Truncated bool `json:"truncated"`
}

// ChangeJSON is one change of a device's status.
type ChangeJSON struct {
	Status string `json:"status"`
	At     string `json:"at"`
	Cause  string `json:"cause"`
}

// UptimeResponse answers GET /v1/devices/{id}/uptime.
type UptimeResponse struct {
	ID             string  `json:"id"`
	From           string  `json:"from"`
	To             string  `json:"to"`
	WindowSeconds  float64 `json:"window_seconds"`
	OnlineSeconds  float64 `json:"online_seconds"`
	OfflineSeconds float64 `json:"offline_seconds"`
	UnknownSeconds float64 `json:"unknown_seconds"`
	// Fraction is online_seconds / window_seconds; null for an empty window.
	Fraction *float64 `json:"fraction"`
	Changes  int      `json:"changes"`
	// StatusAtFrom and StatusAtTo are online, offline or unknown.
	StatusAtFrom string `json:"status_at_from"`
	StatusAtTo   string `json:"status_at_to"`
}

// FleetResponse answers GET /v1/uptime; see Fleet.
type FleetResponse struct {
	From          string  `json:"from"`
	To            string  `json:"to"`
	WindowSeconds float64 `json:"window_seconds"`
	Devices       int     `json:"devices"`
	MeanFraction  float64 `json:"mean_fraction"`
	OnlineSeconds float64 `json:"online_seconds"`
	KnownSeconds  float64 `json:"known_seconds"`
	Availability  float64 `json:"availability"`
}

// ListResponse answers GET /v1/devices.
type ListResponse struct {
	Devices []ListedDevice `json:"devices"`
	// Matched counts every matching device; more than len(devices) when
	// the list was cut at limit.
	Matched int    `json:"matched"`
	AsOf    string `json:"as_of"`
	// Partial, in a cluster, names the nodes that did not answer in time:
	// their devices are not in the list (absent when all answered).
	api.Partial
}

// ListedDevice is api.Device plus how long it has been in its status.
type ListedDevice struct {
	api.Device
	// ForSeconds is as_of - since.
	ForSeconds float64 `json:"for_seconds"`
}

func (r *Report) serveHistory(w http.ResponseWriter, req *http.Request) {
	id, ok := deviceID(w, req)
	if !ok {
		return
	}
	q, ok := query(w, req, "from", "to", "limit")
	if !ok {
		return
	}
	now := r.now()
	from, to, err := r.window(q, now, false)
	if err != nil {
		wire.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	limit, err := ParseLimit(q.Get("limit"), r.cfg.DefaultHistoryLimit, r.cfg.MaxHistoryLimit)
	if err != nil {
		wire.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	changes, err := r.History(req.Context(), id, from, to, limit+1)
	if err != nil {
		r.fail(w, req, err)
		return
	}
	resp := HistoryResponse{ID: id, From: optTime(from), To: optTime(to), Changes: make([]ChangeJSON, 0, len(changes))}
	if len(changes) > limit {
		changes, resp.Truncated = changes[:limit], true
	}
	for _, c := range changes {
		resp.Changes = append(resp.Changes, ChangeJSON{Status: c.Status.String(), At: wire.FormatTime(c.At), Cause: c.Cause})
	}
	writeJSON(w, http.StatusOK, &resp)
}

func (r *Report) serveUptime(w http.ResponseWriter, req *http.Request) {
	id, ok := deviceID(w, req)
	if !ok {
		return
	}
	q, ok := query(w, req, "from", "to")
	if !ok {
		return
	}
	from, to, err := r.window(q, r.now(), true)
	if err != nil {
		wire.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	u, err := r.Uptime(req.Context(), id, from, to)
	if err != nil {
		r.fail(w, req, err)
		return
	}
	resp := UptimeResponse{
		ID: id, From: wire.FormatTime(u.From), To: wire.FormatTime(u.To),
		WindowSeconds: u.Window().Seconds(), OnlineSeconds: u.Online.Seconds(),
		OfflineSeconds: u.Offline.Seconds(), UnknownSeconds: u.Unknown.Seconds(),
		Changes: u.Changes, StatusAtFrom: u.Initial.String(), StatusAtTo: u.Final.String(),
	}
	if f, ok := u.Fraction(); ok {
		resp.Fraction = &f
	}
	writeJSON(w, http.StatusOK, &resp)
}

func (r *Report) serveFleet(w http.ResponseWriter, req *http.Request) {
	q, ok := query(w, req, "from", "to")
	if !ok {
		return
	}
	from, to, err := r.window(q, r.now(), true)
	if err != nil {
		wire.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	f, err := r.FleetUptime(req.Context(), from, to)
	if err != nil {
		r.fail(w, req, err)
		return
	}
	writeJSON(w, http.StatusOK, &FleetResponse{
		From: wire.FormatTime(f.From), To: wire.FormatTime(f.To), WindowSeconds: f.To.Sub(f.From).Seconds(),
		Devices: f.Devices, MeanFraction: f.MeanFraction,
		OnlineSeconds: f.OnlineSeconds, KnownSeconds: f.KnownSeconds, Availability: f.Availability,
	})
}

func (r *Report) serveList(w http.ResponseWriter, req *http.Request) {
	q, ok := query(w, req, "status", "longer_than", "offline_longer_than", "limit", "scope")
	if !ok {
		return
	}
	lq, err := r.listQuery(q)
	if err != nil {
		wire.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	var l List
	var missing []string
	switch sc := q.Get("scope"); {
	case sc != "" && sc != api.ScopeCluster && sc != api.ScopeLocal:
		wire.WriteError(w, http.StatusBadRequest, "scope "+wire.Quote(sc, 32)+": want cluster (the default) or local")
		return
	case r.cfg.Cluster != nil && sc != api.ScopeLocal:
		ctx, cancel := context.WithTimeout(req.Context(), r.cfg.ClusterTimeout)
		var lists []List
		lists, missing = r.cfg.Cluster(ctx, lq)
		cancel()
		l = MergeLists(lq, lists)
		if l.AsOf.IsZero() {
			l.AsOf = r.now()
		}
	default:
		if l, err = r.Longest(req.Context(), lq); err != nil {
			r.fail(w, req, err)
			return
		}
	}
	resp := ListResponse{Devices: make([]ListedDevice, 0, len(l.Devices)), Matched: l.Matched, AsOf: wire.FormatTime(l.AsOf)}
	if len(missing) > 0 {
		resp.Partial = api.Partial{Partial: true, MissingNodes: missing}
	}
	for i := range l.Devices {
		st := &l.Devices[i]
		resp.Devices = append(resp.Devices, ListedDevice{
			Device: api.Device{
				ID: st.ID, Status: st.Status.String(), LastSeen: wire.FormatTime(st.LastSeen),
				Since: wire.FormatTime(st.Since), TimeoutSeconds: st.Timeout.Seconds(),
			},
			ForSeconds: max(l.AsOf.Sub(st.Since).Seconds(), 0),
		})
	}
	writeJSON(w, http.StatusOK, &resp)
}

// listQuery reads the parameters of GET /v1/devices.
func (r *Report) listQuery(q url.Values) (ListQuery, error) {
	var lq ListQuery
	switch s := q.Get("status"); s {
	case "", "all":
	case "online":
		lq.Status = engine.StatusOnline
	case "offline":
		lq.Status = engine.StatusOffline
	default:
		return lq, fmt.Errorf("status %q: want online, offline or all", wire.Truncate(s, 32))
	}
	lt, olt := q.Get("longer_than"), q.Get("offline_longer_than")
	switch {
	case lt != "" && olt != "":
		return lq, errors.New("give longer_than or offline_longer_than, not both")
	case olt != "":
		if lq.Status == engine.StatusOnline {
			return lq, errors.New("offline_longer_than contradicts status=online")
		}
		lq.Status, lt = engine.StatusOffline, olt
	}
	if lt != "" {
		d, err := ParseDuration(lt)
		if err != nil {
			return lq, err
		}
		lq.LongerThan = d
	}
	var err error
	lq.Limit, err = ParseLimit(q.Get("limit"), r.cfg.DefaultListLimit, r.cfg.MaxListLimit)
	return lq, err
}

// window reads from and to. With defaults, a missing to is now and a
// missing from is to - DefaultWindow; without, a missing bound is zero
// (unbounded).
func (r *Report) window(q url.Values, now time.Time, defaults bool) (from, to time.Time, err error) {
	if s := q.Get("to"); s != "" {
		if to, err = ParseTime(s, now); err != nil {
			return from, to, fmt.Errorf("to: %v", err)
		}
	} else if defaults {
		to = now
	}
	if s := q.Get("from"); s != "" {
		if from, err = ParseTime(s, now); err != nil {
			return from, to, fmt.Errorf("from: %v", err)
		}
	} else if defaults {
		from = to.Add(-r.cfg.DefaultWindow)
	}
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		return from, to, fmt.Errorf("from (%s) must be before to (%s)", wire.FormatTime(from), wire.FormatTime(to))
	}
	return from, to, nil
}

// deviceID reads and checks the {id} path value, answering 400 if invalid.
func deviceID(w http.ResponseWriter, req *http.Request) (string, bool) {
	id := req.PathValue("id")
	if !engine.ValidID(id) {
		wire.WriteError(w, http.StatusBadRequest, "invalid device id "+wire.Quote(id, 64)+
			": a device id is 1 to 128 bytes of printable ASCII without spaces, '/', '+' or '#'")
		return "", false
	}
	return id, true
}

// query parses the query string, answering 400 for a malformed one, an
// unknown parameter (a typo would silently change the answer) or a repeated
// one.
func query(w http.ResponseWriter, req *http.Request, allowed ...string) (url.Values, bool) {
	q, err := url.ParseQuery(req.URL.RawQuery)
	if err != nil {
		wire.WriteError(w, http.StatusBadRequest, "malformed query string")
		return nil, false
	}
next:
	for k, v := range q {
		for _, a := range allowed {
			if k == a {
				if len(v) > 1 {
					wire.WriteError(w, http.StatusBadRequest, "parameter "+strconv.Quote(k)+" given more than once")
					return nil, false
				}
				continue next
			}
		}
		wire.WriteError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q; allowed: %v", wire.Truncate(k, 32), allowed))
		return nil, false
	}
	return q, true
}

// fail answers an error of a query method.
func (r *Report) fail(w http.ResponseWriter, req *http.Request, err error) {
	switch {
	case errors.Is(err, ErrNoHistory):
		wire.WriteError(w, http.StatusServiceUnavailable, "history is not available: presenced runs without a PostgreSQL history table")
	case req.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		wire.WriteError(w, http.StatusServiceUnavailable, "request cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		wire.WriteError(w, http.StatusGatewayTimeout, "history query took longer than "+r.cfg.QueryTimeout.String())
	default:
		wire.WriteError(w, http.StatusInternalServerError, "internal error")
	}
}

func optTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := wire.FormatTime(t)
	return &s
}

// writeJSON writes v as JSON with code and the api package's headers.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		wire.WriteError(w, http.StatusInternalServerError, "internal error")
		return
	}
	wire.WriteJSON(w, code, append(b, '\n'))
}
