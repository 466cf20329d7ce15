package wire_test

import (
	"fmt"
	"time"

	"github.com/presence-dev/presence/internal/wire"
)

func ExampleFormatTime() {
	at := time.Date(2025, 12, 14, 11, 30, 45, 123456789, time.FixedZone("CET", 3600))
	fmt.Println(wire.FormatTime(at))
	fmt.Println(wire.FormatTime(at.Truncate(time.Second)))
	// Output:
	// 2025-12-14T10:30:45.123456+00:00
	// 2025-12-14T10:30:45.000000+00:00
}
