package report

import (
	"time"

	"github.com/presence-dev/presence/engine"
)

// Change is one row of the history table: the device's status from At on,
// and why it changed.
type Change struct {
	// Status is StatusOnline or StatusOffline; a status text the table
	// should not hold reads as StatusUnknown.
	Status engine.Status
	At     time.Time
	// Cause is the history's cause text: telemetry, timeout, last_will,
	// restart or handoff.
	Cause string
}

// Uptime is how one device spent a window of time.
type Uptime struct {
	// From and To are the window, To clamped to now: time that has not
	// happened yet is not counted. To == From for an empty window.
	From, To time.Time
	// Online, Offline and Unknown add up to To - From. Unknown is the time
	// before the device's first known change.
	Online, Offline, Unknown time.Duration
	// Changes counts the changes strictly inside the window (From, To).
	Changes int
	// Initial is the status at From (set by the last change at or before
	// From); Final the status at the end of the window, just before To (a
	// change exactly at To is outside). StatusUnknown when not known.
	Initial, Final engine.Status
}

// Window is the length of the window, To - From.
func (u Uptime) Window() time.Duration { return u.To.Sub(u.From) }

// Fraction is Online / Window, in [0, 1]; ok is false for an empty window,
// where no fraction exists. Unknown time counts as not online.
func (u Uptime) Fraction() (f float64, ok bool) {
	w := u.Window()
	if w <= 0 {
		return 0, false
	}
	return float64(u.Online) / float64(w), true
}

// UptimeOf computes the uptime of one device over the window [from, to)
// from its changes, oldest first (among equal times the later one in the
// slice wins). Changes at or before from only set the status at from (pass
// at least the last one of them, or the start is unknown); changes at or
// after the window's end are ignored. The status of the last change extends
// to the end of the window. The end is min(to, now): the future is not
// counted.
//
// Time before the first known change is Unknown, never online: a device not
// yet seen was not available.
func UptimeOf(changes []Change, from, to, now time.Time) Uptime {
	a := newUptimeAcc(from, to, now)
	for i := range changes {
		a.add(changes[i])
	}
	return a.result()
}

// uptimeAcc folds changes, oldest first, into an Uptime without keeping
// them: the database path streams rows through it.
type uptimeAcc struct {
	u     Uptime
	cur   engine.Status // status since curAt
	curAt time.Time     // start of the current period, inside the window
}

func newUptimeAcc(from, to, now time.Time) *uptimeAcc {
	if to.After(now) {
		to = now
	}
	if to.Before(from) {
		to = from
	}
	return &uptimeAcc{u: Uptime{From: from, To: to}, curAt: from}
}

func (a *uptimeAcc) add(c Change) {
	switch {
	case !c.At.After(a.u.From): // at or before the window: the status at From
		a.cur, a.u.Initial = c.Status, c.Status
	case !c.At.Before(a.u.To): // at or after the end: not in the window
	default:
		at := c.At
		if at.Before(a.curAt) { // out of order: count nothing backwards
			at = a.curAt
		}
		a.credit(at)
		a.cur, a.curAt = c.Status, at
		a.u.Changes++
	}
}

// credit adds the current period, up to until, to its status.
func (a *uptimeAcc) credit(until time.Time) {
	d := until.Sub(a.curAt)
	switch a.cur {
	case engine.StatusOnline:
		a.u.Online += d
	case engine.StatusOffline:
		a.u.Offline += d
	default:
		a.u.Unknown += d
	}
}

func (a *uptimeAcc) result() Uptime {
	a.credit(a.u.To)
	a.curAt = a.u.To
	a.u.Final = a.cur
	return a.u
}
