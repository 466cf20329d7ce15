// Package backoff computes the waits of retry loops (write-behind flushes,
// event destinations).
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay is the wait before retry number attempt (1-based): minD doubled
// per attempt, capped at maxD, with "equal jitter" (uniform in [d/2, d]) so
// that many loops failing together do not retry in lockstep.
func Delay(minD, maxD time.Duration, attempt int) time.Duration {
	d := minD
	for i := 1; i < attempt && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	half := d / 2
	return half + rand.N(d-half+1)
}
