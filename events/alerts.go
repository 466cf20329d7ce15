package events

import (
	"math"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// alerts derives offline_alert and mass_offline events from transitions.
// It has no goroutine and no timer per device: one record per offline
// device it still cares about, a min-heap of pending alerts ordered by the
// time the device went offline (checked by the hub's ticker), and a ring
// of per-bucket counters for the mass-outage window. The hub serializes
// every call (Hub.pubMu).
type alerts struct {
	offlineAfter int64 // µs; 0: no offline alerts
	mass         MassConfig
	fleet        func() int
	// quiet, when set, tells the devices whose offline alerts are
	// suppressed: the flapping ones (flaps.flapping).
	quiet func(id string) bool

	// One record per tracked offline device, pointer-free (a mass expiry
	// can make a million of them): the ids are in byID's arena. Free slots
	// are not used.
	slots recPages
	free  []uint32
	byID  idIndex
	peak  int      // most records held at once, for shrinking
	heap  []uint32 // slots with a pending alert, min-heap by since

	// Mass-outage window: numBuckets counters of Window/numBuckets each,
	// counting devices that went offline in the bucket and are still
	// offline. newest is the absolute number of the current bucket.
	bucketNs   int64
	buckets    [numBuckets]int32
	newest     int64
	bucketBase int64 // offRec.bucket is relative to it (see rebase)
	inWindow   int

	active    *activeIncident
	seq       uint32
	fleetSize int // FleetSize() cached for one observe call; -1: not fetched

	m alertMetrics
}

const (
	numBuckets = 32
	noBucket   = math.MinInt64
	// checkChunk bounds the alerts handled under one lock hold, so a burst
	// of due alerts never holds back HandleTransitions for long.
	checkChunk = 4096
)

// offRec is one tracked offline device, 20 bytes and no pointer: no
// field of 8 bytes, so no padding (a mass expiry makes millions).
type offRec struct {
	sinceLo, sinceHi uint32 // µs: the offline transition's At
	heapIdx          int32  // -1: no pending alert (fired, or suppressed by an incident)
	idOff            uint32 // the id in byID's arena (an idRef, flattened)
	bucket           int16  // bucket of its arrival, relative to alerts.bucketBase; noBucket16 if not counted
	idLen            uint8
	state            uint8 // engine.Cause | recUsed | recMember
}

const (
	recUsed   = 1 << 6
	recMember = 1 << 7 // of the active incident
	recCause  = recUsed - 1
)

func (r *offRec) id() idRef           { return idRef{off: r.idOff, n: r.idLen} }
func (r *offRec) setID(x idRef)       { r.idOff, r.idLen = x.off, x.n }
func (r *offRec) since() int64        { return int64(uint64(r.sinceHi)<<32 | uint64(r.sinceLo)) }
func (r *offRec) used() bool          { return r.state&recUsed != 0 }
func (r *offRec) member() bool        { return r.state&recMember != 0 }
func (r *offRec) cause() engine.Cause { return engine.Cause(r.state & recCause) }

func (r *offRec) setMember(on bool) {
	if on {
		r.state |= recMember
	} else {
		r.state &^= recMember
	}
}

func newOffRec(since int64, cause engine.Cause) offRec {
	return offRec{sinceLo: uint32(since), sinceHi: uint32(uint64(since) >> 32), bucket: noBucket16, heapIdx: -1,
		state: uint8(cause)&recCause | recUsed}
}

// noBucket16 is offRec.bucket of a device not counted in the window.
const noBucket16 = math.MinInt16

// rebaseAfter is how far the newest bucket may get from bucketBase before
// rebase moves the base up, keeping every offRec.bucket within int16.
const rebaseAfter = 30_000

// ref is the id place of slot, for byID.
func (a *alerts) ref(slot uint32) idRef { return a.slots.at(slot).id() }

// bucketOf is r's absolute bucket, noBucket if none.
func (a *alerts) bucketOf(r *offRec) int64 {
	if r.bucket == noBucket16 {
		return noBucket
	}
	return a.bucketBase + int64(r.bucket)
}

// recPages holds the records in pages of recPage: growing never copies
// them, and wastes at most a page.
type recPages struct {
	pages [][]offRec
	n     int
}

const recPage = 4096

func (p *recPages) len() int { return p.n }

func (p *recPages) at(i uint32) *offRec { return &p.pages[i/recPage][i%recPage] }

func (p *recPages) add(r offRec) uint32 {
	if p.n%recPage == 0 {
		p.pages = append(p.pages, make([]offRec, recPage))
	}
	i := uint32(p.n)
	*p.at(i) = r
	p.n++
	return i
}

type activeIncident struct {
	seq      uint32
	id       string
	started  int64 // µs
	members  int
	back     int
	fleet    int
	trigger  int
	share    float64
	window   time.Duration
	recoverN int // members back needed, recomputed as members join
}

type alertMetrics struct {
	alerts     [numTypes + 1]*metrics.Counter
	suppressed *metrics.Counter
	rearmed    *metrics.Counter // offline alerts given back after flapping
}

func newAlerts(cfg AlertConfig, fleet func() int, set *metrics.Set) *alerts {
	a := &alerts{
		offlineAfter: cfg.OfflineAfter.Microseconds(),
		mass:         cfg.Mass,
		fleet:        fleet,
		byID:         newIDIndex(),
		bucketNs:     max(int64(cfg.Mass.Window)/numBuckets, 1),
		newest:       noBucket,
	}
	for _, t := range []Type{TypeOfflineAlert, TypeMassOffline, TypeMassOfflineRecovered} {
		a.m.alerts[t] = set.NewCounter(`presence_events_alerts_total{type="` + t.String() + `"}`)
	}
	a.m.suppressed = set.NewCounter("presence_events_offline_alerts_suppressed_total")
	a.m.rearmed = set.NewCounter("presence_events_offline_alerts_rearmed_total")
	return a
}

// tracked is the number of offline devices held.
func (a *alerts) tracked() int { return a.byID.len() }

func (a *alerts) incidentActive() bool { return a.active != nil }

// observe updates the state with a batch of transitions that arrived at
// now and appends the incident events it causes to out.
func (a *alerts) observe(batch []engine.Transition, now time.Time, out []rec) []rec {
	a.advance(now.UnixNano())
	a.fleetSize = -1
	for i := range batch {
		t := &batch[i]
		switch t.To {
		case engine.StatusOffline:
			out = a.offline(t, now, out)
		case engine.StatusOnline:
			out = a.online(t.ID, now, out)
		case engine.StatusUnknown: // decommissioned: no alert, and out of its incident
			out = a.removed(t.ID, now, out)
		}
	}
	return out
}

// counted reports whether an offline transition counts towards a mass
// outage. Restart and handoff transitions are artifacts of our own
// recovery (a node down for longer than the timeout turns its whole fleet
// offline at start-up), and api ones an operator's word: neither is
// evidence of an outage happening now.
func counted(c engine.Cause) bool { return c == engine.CauseTimeout || c == engine.CauseLastWill }

func (a *alerts) offline(t *engine.Transition, now time.Time, out []rec) []rec {
	count := a.mass.Enabled && counted(t.Cause)
	if slot, ok := a.byID.find(t.ID, a.ref); ok {
		// We missed its online transition (cannot happen with the engine's
		// ordering; defensive): start a new offline period.
		a.forget(slot)
	}
	if a.offlineAfter == 0 && !count {
		return out
	}
	r := newOffRec(t.At.UnixMicro(), t.Cause)
	if count {
		r.bucket = int16(a.newest - a.bucketBase)
		a.buckets[a.newest%numBuckets]++
		a.inWindow++
	}
	slot := a.alloc(t.ID, r)
	if a.offlineAfter > 0 {
		a.heapPush(slot)
	}
	if !count || !a.condition() {
		return out
	}
	if a.active != nil {
		a.join(slot)
		return out
	}
	return a.trigger(now, out)
}

func (a *alerts) online(id string, now time.Time, out []rec) []rec {
	slot, ok := a.byID.find(id, a.ref)
	if !ok {
		return out
	}
	r := a.slots.at(slot)
	member := r.member() && a.active != nil
	a.forget(slot)
	if member {
		inc := a.active
		inc.back++
		if inc.back >= inc.recoverN {
			out = a.recover(now, out)
		}
	}
	return out
}

// rearm gives a device offline since sinceUs (µs) its offline alert back
// once it stops flapping: due at sinceUs + OfflineAfter, at once if that
// has passed. One still pending is left as it is.
func (a *alerts) rearm(id string, sinceUs int64, cause engine.Cause) {
	if a.offlineAfter == 0 {
		return
	}
	if _, ok := a.byID.find(id, a.ref); ok {
		return
	}
	a.heapPush(a.alloc(id, newOffRec(sinceUs, cause)))
	a.m.rearmed.Inc()
}

// removed forgets a decommissioned device. A member of the active
// incident leaves it rather than count as back: decommissioning an
// outage's dead devices must not recover the incident early; it recovers
// when the share of the members left that are back reaches RecoverShare.
func (a *alerts) removed(id string, now time.Time, out []rec) []rec {
	slot, ok := a.byID.find(id, a.ref)
	if !ok {
		return out
	}
	member := a.slots.at(slot).member() && a.active != nil
	a.forget(slot)
	if !member {
		return out
	}
	inc := a.active
	inc.members--
	inc.recoverN = max(int(math.Ceil(a.mass.RecoverShare*float64(inc.members))), 1)
	if inc.back >= inc.recoverN || inc.members == 0 {
		out = a.recover(now, out)
	}
	return out
}

// condition reports whether the devices that went offline within the
// window (and are still offline) make a mass outage.
func (a *alerts) condition() bool {
	n, c := a.inWindow, a.mass
	if c.Count > 0 && n >= c.Count {
		return true
	}
	if c.Share > 0 && a.fleet != nil && n >= max(c.MinCount, 1) {
		if f := a.fleetNow(); f > 0 && float64(n) >= c.Share*float64(f) {
			return true
		}
	}
	return false
}

func (a *alerts) fleetNow() int {
	if a.fleetSize < 0 {
		a.fleetSize = 0
		if a.fleet != nil {
			a.fleetSize = a.fleet()
		}
	}
	return a.fleetSize
}

// trigger opens an incident with every device that went offline within
// the window and is still offline, and emits mass_offline.
func (a *alerts) trigger(now time.Time, out []rec) []rec {
	a.seq++
	if a.seq == 0 {
		a.seq = 1
	}
	fleet := a.fleetNow()
	inc := &activeIncident{
		seq:     a.seq,
		id:      strconv.FormatInt(now.UnixMilli(), 10) + "-" + strconv.FormatUint(uint64(a.seq), 10),
		started: now.UnixMicro(),
		trigger: a.inWindow,
		fleet:   fleet,
		window:  a.mass.Window,
	}
	if fleet > 0 {
		inc.share = float64(a.inWindow) / float64(fleet)
	}
	a.active = inc
	oldest := a.newest - numBuckets + 1
	for i := range uint32(a.slots.len()) {
		if r := a.slots.at(i); r.used() && r.bucket != noBucket16 && a.bucketOf(r) >= oldest {
			a.join(i)
		}
	}
	a.m.alerts[TypeMassOffline].Inc()
	return append(out, rec{typ: TypeMassOffline, at: inc.started, inc: &incident{
		id: inc.id, started: inc.started, window: inc.window,
		count: inc.trigger, fleet: inc.fleet, share: inc.share,
	}})
}

func (a *alerts) join(slot uint32) {
	inc := a.active
	a.slots.at(slot).setMember(true)
	inc.members++
	inc.recoverN = max(int(math.Ceil(a.mass.RecoverShare*float64(inc.members))), 1)
}

// recover closes the active incident, emits mass_offline_recovered, and
// gives the members still offline their own offline alert back (due at
// once if their threshold passed during the incident).
func (a *alerts) recover(now time.Time, out []rec) []rec {
	inc := a.active
	a.active = nil
	for i := range uint32(a.slots.len()) {
		r := a.slots.at(i)
		if !r.used() || !r.member() {
			continue
		}
		r.setMember(false)
		if r.heapIdx < 0 && a.offlineAfter > 0 {
			a.heapPush(i)
		}
	}
	a.m.alerts[TypeMassOfflineRecovered].Inc()
	at := now.UnixMicro()
	share := 1.0 // every member decommissioned: nothing is still offline
	if inc.members > 0 {
		share = float64(inc.back) / float64(inc.members)
	}
	return append(out, rec{typ: TypeMassOfflineRecovered, at: at, inc: &incident{
		id: inc.id, started: inc.started, window: inc.window,
		count: inc.members, fleet: inc.fleet, share: share,
		recovered: inc.back, stillOffline: inc.members - inc.back,
	}})
}

// check emits the offline alerts due at now, at most checkChunk of them;
// more reports whether more are due.
func (a *alerts) check(now time.Time, out []rec) (_ []rec, more bool) {
	a.advance(now.UnixNano())
	nowUs := now.UnixMicro()
	for n := 0; len(a.heap) > 0; n++ {
		if n == checkChunk {
			return out, true
		}
		slot := a.heap[0]
		r := a.slots.at(slot)
		due := r.since() + a.offlineAfter
		if due > nowUs {
			break
		}
		a.heapRemove(0)
		if r.member() {
			// Covered by the active incident's mass_offline. The record stays
			// (the incident counts its members back); recover re-arms it.
			a.m.suppressed.Inc()
			continue
		}
		if a.quiet != nil && a.quiet(a.byID.str(r.id())) {
			a.m.suppressed.Inc() // flapping: its flapping event says it all
			a.forget(slot)
			continue
		}
		a.m.alerts[TypeOfflineAlert].Inc()
		out = append(out, rec{typ: TypeOfflineAlert, id: a.byID.str(r.id()), at: due, since: r.since(), cause: r.cause()})
		// Nothing is left to do for this device until it comes back. (Were
		// it still in the mass window, which takes an offline transition
		// dated OfflineAfter in the past, the window undercounts it by one.)
		a.forget(slot)
	}
	return out, false
}

// advance moves the mass window to nowNs, expiring old buckets.
func (a *alerts) advance(nowNs int64) {
	if !a.mass.Enabled {
		return
	}
	cur := nowNs / a.bucketNs
	if a.newest == noBucket {
		a.newest, a.bucketBase = cur, cur
		return
	}
	if cur <= a.newest {
		return // the clock did not move (or went back: keep the newest)
	}
	for b := a.newest + 1; b <= cur && b <= a.newest+numBuckets; b++ {
		i := b % numBuckets
		a.inWindow -= int(a.buckets[i])
		a.buckets[i] = 0
	}
	a.newest = cur
	if a.newest-a.bucketBase > rebaseAfter {
		a.rebase()
	}
}

// rebase moves bucketBase up to just below the window: a record counted in
// a bucket that has left the window is counted no more (noBucket16), the
// others are renumbered. O(records), once every rebaseAfter buckets
// (hours at the default window).
func (a *alerts) rebase() {
	base, oldest := a.newest-numBuckets, a.newest-numBuckets+1
	for i := range uint32(a.slots.len()) {
		r := a.slots.at(i)
		if !r.used() || r.bucket == noBucket16 {
			continue
		}
		if b := a.bucketOf(r); b < oldest {
			r.bucket = noBucket16
		} else {
			r.bucket = int16(b - base)
		}
	}
	a.bucketBase = base
}

// alloc stores r for id and returns its slot.
func (a *alerts) alloc(id string, r offRec) uint32 {
	var slot uint32
	if n := len(a.free); n > 0 {
		slot = a.free[n-1]
		a.free = a.free[:n-1]
		*a.slots.at(slot) = r
	} else {
		slot = a.slots.add(r)
	}
	a.slots.at(slot).setID(a.byID.add(id, slot, a.ref))
	a.peak = max(a.peak, a.byID.len())
	return slot
}

// forget drops a record: its pending alert, its count in the window.
func (a *alerts) forget(slot uint32) {
	r := a.slots.at(slot)
	if r.heapIdx >= 0 {
		a.heapRemove(int(r.heapIdx))
	}
	if b := a.bucketOf(r); b != noBucket && b >= a.newest-numBuckets+1 && b <= a.newest {
		a.buckets[b%numBuckets]--
		a.inWindow--
	}
	a.byID.remove(slot, r.id(), a.ref)
	*r = offRec{}
	a.free = append(a.free, slot)
	switch {
	case a.byID.len() == 0 && a.peak > 1<<14:
		// After a big outage is over, start afresh instead of keeping its
		// memory.
		a.byID, a.slots, a.free, a.heap, a.peak = newIDIndex(), recPages{}, nil, nil, 0
	case a.byID.compactable():
		a.byID.compact(func(move func(uint32, idRef) idRef) {
			for i := range uint32(a.slots.len()) {
				if r := a.slots.at(i); r.used() {
					r.setID(move(i, r.id()))
				}
			}
		})
	}
}

// Indexed min-heap of slots by since.

func (a *alerts) less(i, j int) bool {
	return a.slots.at(a.heap[i]).since() < a.slots.at(a.heap[j]).since()
}

func (a *alerts) swap(i, j int) {
	a.heap[i], a.heap[j] = a.heap[j], a.heap[i]
	a.slots.at(a.heap[i]).heapIdx = int32(i)
	a.slots.at(a.heap[j]).heapIdx = int32(j)
}

func (a *alerts) heapPush(slot uint32) {
	a.heap = append(a.heap, slot)
	i := len(a.heap) - 1
	a.slots.at(slot).heapIdx = int32(i)
	a.up(i)
}

func (a *alerts) heapRemove(i int) {
	last := len(a.heap) - 1
	slot := a.heap[i]
	if i != last {
		a.swap(i, last)
	}
	a.heap = a.heap[:last]
	a.slots.at(slot).heapIdx = -1
	if i != last {
		if !a.down(i) {
			a.up(i)
		}
	}
}

func (a *alerts) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !a.less(i, p) {
			return
		}
		a.swap(i, p)
		i = p
	}
}

func (a *alerts) down(i int) bool {
	start, n := i, len(a.heap)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		j := l
		if r := l + 1; r < n && a.less(r, l) {
			j = r
		}
		if !a.less(j, i) {
			break
		}
		a.swap(i, j)
		i = j
	}
	return i > start
}
