package events

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// Constant log attribute keys (STYLE.md).
const (
	logKeyDest       = "dest"
	logKeyErr        = "err"
	logKeyAttempt    = "attempt"
	logKeyBackoff    = "backoff"
	logKeyPending    = "pending"
	logKeyDropped    = "dropped"
	logKeySuppressed = "suppressed"
	logKeyClients    = "clients"
	logKeyIncident   = "incident"
	logKeyCount      = "count"
)

// errLogEvery is the rate limit of error and drop logs: at most one line
// per destination per interval, carrying the number suppressed.
const errLogEvery = 5 * time.Second

// logLimiter lets one log line through per interval and counts the rest.
type logLimiter struct {
	mu         sync.Mutex
	every      time.Duration
	last       time.Time
	suppressed int
}

func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return true, n
}

// backoff is the wait before retry number attempt (1-based): exponential
// from minD, capped at maxD, with "equal jitter" (uniform in [d/2, d]) so
// that many destinations failing together do not retry in lockstep.
func backoff(minD, maxD time.Duration, attempt int) time.Duration {
	d := minD
	for i := 1; i < attempt && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	half := d / 2
	return half + rand.N(d-half+1)
}

// sleepCtx waits d, or until ctx is done or stop is closed (false then).
func sleepCtx(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
