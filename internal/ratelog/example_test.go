package ratelog_test

import (
	"fmt"
	"time"

	"github.com/presence-dev/presence/internal/ratelog"
)

func Example() {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	lim := ratelog.New[string](5*time.Second, nil)
	for i := range 12 { // one failure a second
		now := t0.Add(time.Duration(i) * time.Second)
		if ok, n := lim.AllowAt("send failed", now); ok {
			fmt.Printf("%ds: send failed (suppressed %d)\n", i, n)
		}
	}
	// Output:
	// 0s: send failed (suppressed 0)
	// 5s: send failed (suppressed 4)
	// 10s: send failed (suppressed 4)
}
