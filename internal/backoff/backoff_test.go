package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	const minD, maxD = 100 * time.Millisecond, 2 * time.Second
	for _, tc := range []struct {
		attempt int
		ceil    time.Duration // d before jitter
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, 1600 * time.Millisecond},
		{6, maxD}, // capped
		{1000, maxD},
	} {
		lo, hi := tc.ceil, time.Duration(0)
		for range 2000 {
			d := Delay(minD, maxD, tc.attempt)
			if d < tc.ceil/2 || d > tc.ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v]", tc.attempt, d, tc.ceil/2, tc.ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Jittered: the draws spread over most of the range.
		if hi-lo < tc.ceil/4 {
			t.Errorf("attempt %d: draws within [%v, %v], want spread over [%v, %v]", tc.attempt, lo, hi, tc.ceil/2, tc.ceil)
		}
	}
}
