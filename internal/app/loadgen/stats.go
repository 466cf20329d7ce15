package loadgen

import (
	"fmt"
	"sync/atomic"
	"time"
)

// connStats are the counters of one connection, written by its two
// goroutines and read by the progress reporter. Padded so that connections
// do not share cache lines.
type connStats struct {
	published atomic.Uint64 // publishes handed to the client (telemetry and status)
	sent      atomic.Uint64 // telemetry completed without error
	status    atomic.Uint64 // status messages completed without error
	errors    atomic.Uint64 // publishes that failed, timed out or found the connection down
	lagNs     atomic.Int64  // how late the oldest due slot was at the last tick
	_         [24]byte
}

// totals is a snapshot of the counters of all connections.
type totals struct {
	published, sent, status, errors uint64
	lag                             time.Duration // worst connection
}

func sum(stats []connStats) totals {
	var t totals
	for i := range stats {
		s := &stats[i]
		t.published += s.published.Load()
		t.sent += s.sent.Load()
		t.status += s.status.Load()
		t.errors += s.errors.Load()
		t.lag = max(t.lag, time.Duration(s.lagNs.Load()))
	}
	return t
}

// inflight is how many publishes await completion.
func (t totals) inflight() uint64 {
	done := t.sent + t.status + t.errors
	if done > t.published {
		return 0
	}
	return t.published - done
}

// Summary is the outcome of a run.
type Summary struct {
	// Sent is the number of telemetry messages completed without error
	// (written for QoS 0, acknowledged for QoS 1/2).
	Sent uint64
	// Status is the number of status messages (-announce) sent.
	Status uint64
	// Errors counts failed or timed-out publishes and publishes attempted while
	// the connection was down.
	Errors uint64
	// Duration is from the start of publishing until the last publish was
	// handed to the client.
	Duration time.Duration
	// Rate is Sent/Duration in messages per second.
	Rate float64
	// Target is the configured total rate in messages per second (before
	// silencing).
	Target float64
}

func (s Summary) String() string {
	return fmt.Sprintf("sent=%d errors=%d status=%d duration=%.3fs rate=%.1f/s target=%.1f/s",
		s.Sent, s.Errors, s.Status, s.Duration.Seconds(), s.Rate, s.Target)
}

// progressLine formats one progress report; rate is over the last interval.
func progressLine(elapsed time.Duration, rate float64, t totals, silent, devices int) string {
	return fmt.Sprintf("t=%s rate=%.0f/s sent=%d errors=%d silent=%d/%d inflight=%d lag=%s",
		elapsed.Round(100*time.Millisecond), rate, t.sent, t.errors, silent, devices, t.inflight(), t.lag.Round(time.Millisecond))
}
