package report

import (
	"container/heap"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/presence-dev/presence/engine"
)

// ListQuery selects devices of the live engine for the operations list.
type ListQuery struct {
	// Status keeps only online or only offline devices; StatusUnknown keeps
	// both.
	Status engine.Status
	// LongerThan keeps devices in their current status for longer than
	// that (now - Since > LongerThan); 0 keeps all.
	LongerThan time.Duration
	// Limit is how many devices to return, > 0.
	Limit int
}

// List is the answer to a ListQuery.
type List struct {
	// Devices are the matching devices longest in their status first
	// (Since ascending, then id), at most Limit.
	Devices []engine.DeviceState
	// Matched counts every matching device, returned or not.
	Matched int
	// AsOf is the time the durations were measured against.
	AsOf time.Time
}

// Longest scans the engine and returns the devices longest in their
// current status: with Status offline, those offline longest, the first an
// operator looks at. Memory is bounded by Limit (a heap keeps the best
// Limit seen), whatever the fleet size; time is one pass over the fleet,
// O(n log Limit). It waits for one of Config.MaxConcurrentScans slots and
// stops early when ctx is done.
func (r *Report) Longest(ctx context.Context, q ListQuery) (List, error) {
	if q.Limit <= 0 {
		return List{}, fmt.Errorf("report: limit must be > 0, got %d", q.Limit)
	}
	if err := r.acquire(ctx); err != nil {
		return List{}, err
	}
	defer r.release()
	now := r.now()
	l := longest(r.live, q, now, ctx.Err)
	if err := ctx.Err(); err != nil {
		return List{}, err
	}
	return l, nil
}

// longest is Longest without the semaphore; stop is polled every few
// thousand devices.
func longest(live Live, q ListQuery, now time.Time, stop func() error) List {
	cutoff := now.Add(-q.LongerThan) // keep Since < cutoff
	h := &sinceHeap{}
	matched, n := 0, 0
	live.Range(func(st engine.DeviceState) bool {
		n++
		if n%4096 == 0 && stop() != nil {
			return false
		}
		if q.Status != engine.StatusUnknown && st.Status != q.Status {
			return true
		}
		if q.LongerThan > 0 && !st.Since.Before(cutoff) {
			return true
		}
		matched++
		if len(*h) < q.Limit {
			heap.Push(h, st)
		} else if older(&st, &(*h)[0]) {
			(*h)[0] = st
			heap.Fix(h, 0)
		}
		return true
	})
	out := []engine.DeviceState(*h)
	slices.SortFunc(out, func(a, b engine.DeviceState) int {
		if older(&a, &b) {
			return -1
		}
		if older(&b, &a) {
			return 1
		}
		return 0
	})
	return List{Devices: out, Matched: matched, AsOf: now}
}

// MergeLists merges the answers of several nodes to q (each the
// Longest of its own devices) into the cluster's: the longest q.Limit of
// all, Matched summed, AsOf the earliest. A device in two lists (a stray
// during a handoff) is kept once, with its newest last_seen; one that
// made only one node's list is counted in Matched by both (a stray is
// rare and brief).
func MergeLists(q ListQuery, lists []List) List {
	var out List
	seen := make(map[string]int)
	for _, l := range lists {
		out.Matched += l.Matched
		if out.AsOf.IsZero() || (!l.AsOf.IsZero() && l.AsOf.Before(out.AsOf)) {
			out.AsOf = l.AsOf
		}
		for _, st := range l.Devices {
			if i, dup := seen[st.ID]; dup {
				out.Matched--
				if st.LastSeen.After(out.Devices[i].LastSeen) {
					out.Devices[i] = st
				}
				continue
			}
			seen[st.ID] = len(out.Devices)
			out.Devices = append(out.Devices, st)
		}
	}
	slices.SortFunc(out.Devices, func(a, b engine.DeviceState) int {
		switch {
		case older(&a, &b):
			return -1
		case older(&b, &a):
			return 1
		}
		return 0
	})
	if len(out.Devices) > q.Limit {
		out.Devices = out.Devices[:q.Limit]
	}
	return out
}

// older orders devices longest in their status first: Since ascending, then
// id for a stable answer.
func older(a, b *engine.DeviceState) bool {
	if !a.Since.Equal(b.Since) {
		return a.Since.Before(b.Since)
	}
	return a.ID < b.ID
}

// sinceHeap is a max-heap on older: its root is the least old of the kept
// devices, the one a better candidate replaces.
type sinceHeap []engine.DeviceState

func (h sinceHeap) Len() int           { return len(h) }
func (h sinceHeap) Less(i, j int) bool { return older(&h[j], &h[i]) }
func (h sinceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *sinceHeap) Push(x any)        { *h = append(*h, x.(engine.DeviceState)) }
func (h *sinceHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
