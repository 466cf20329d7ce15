package cluster

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/presence-dev/presence/engine"
)

// pendingControls keeps, for a while, the device controls received from a
// peer that found no such device here. During a handoff the device's
// new owner may get a control (sent by a node whose table has already
// moved) before the device's record: the control waits for the record
// (adopt applies it after the records of the batch), up to
// Config.HandoffTimeout, instead of being lost. At most maxPending wait;
// one per device, the latest.
type pendingControls struct {
	mu   sync.Mutex
	byID map[string]pendingControl
}

type pendingControl struct {
	m        msg
	deadline time.Time
}

// maxPending bounds the controls waiting for their device.
const maxPending = 1 << 16

// add keeps m (whose id is cloned: it is a substring of a peer's frame)
// until deadline, and reports whether it did.
func (p *pendingControls) add(m msg, now, deadline time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byID == nil {
		p.byID = make(map[string]pendingControl)
	}
	if _, ok := p.byID[m.id]; !ok && len(p.byID) >= maxPending {
		p.expireLocked(now)
		if len(p.byID) >= maxPending {
			return false
		}
	}
	m.id = strings.Clone(m.id)
	p.byID[m.id] = pendingControl{m: m, deadline: deadline}
	return true
}

func (p *pendingControls) expireLocked(now time.Time) int {
	n := 0
	for id, c := range p.byID {
		if now.After(c.deadline) {
			delete(p.byID, id)
			n++
		}
	}
	return n
}

// take removes and returns the controls waiting for the devices of recs
// (none expired), and drops the expired ones; it reports how many
// expired.
func (p *pendingControls) take(recs []engine.DeviceState, now time.Time) (due []msg, expired int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.byID) == 0 {
		return nil, 0
	}
	expired = p.expireLocked(now)
	for i := range recs {
		if c, ok := p.byID[recs[i].ID]; ok {
			delete(p.byID, recs[i].ID)
			due = append(due, c.m)
		}
	}
	return due, expired
}

// applyReceived applies a device control received from a peer; one for a
// device this node does not know yet waits for its handoff record.
func (r *Router) applyReceived(m *msg) {
	err := r.applyControl(m)
	if !errors.Is(err, engine.ErrNotFound) {
		if err != nil {
			r.m.dropped[dropLocalError].Inc()
		}
		return
	}
	now := time.Now()
	if r.pending.add(*m, now, now.Add(r.cfg.HandoffTimeout)) {
		r.m.controlsPending.Inc()
		return
	}
	r.m.dropped[dropLocalError].Inc()
}

// adopted applies the controls that waited for the devices of recs, just
// adopted.
func (r *Router) adopted(recs []engine.DeviceState) {
	due, expired := r.pending.take(recs, time.Now())
	r.m.dropped[dropLocalError].Add(expired)
	for i := range due {
		if r.applyControl(&due[i]) != nil {
			r.m.dropped[dropLocalError].Inc()
		}
	}
}
