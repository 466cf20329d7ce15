package loadgen_test

import (
	"fmt"
	"time"

	"github.com/presence-dev/presence/internal/app/loadgen"
)

// Four devices at 8 msg/s publish every 500ms each, spread evenly over time
// and over two connections; half of them go silent after one second and
// announce it in their first skipped slot.
func ExampleSchedule() {
	cfg := loadgen.DefaultConfig()
	cfg.Devices, cfg.Rate, cfg.Conns = 4, 8, 2
	cfg.SilentFraction, cfg.SilentAfter = 0.5, time.Second
	s := loadgen.NewSchedule(cfg)
	for k := range uint64(16) {
		d := s.Device(k)
		fmt.Printf("%-6s device %d (id %d) conn %d seq %d: %s\n", s.At(k), d, cfg.IDStart+d, s.Conn(d), s.Seq(k), s.Kind(k))
	}
	// Output:
	// 0s     device 0 (id 1) conn 0 seq 0: telemetry
	// 125ms  device 1 (id 2) conn 1 seq 0: telemetry
	// 250ms  device 2 (id 3) conn 0 seq 0: telemetry
	// 375ms  device 3 (id 4) conn 1 seq 0: telemetry
	// 500ms  device 0 (id 1) conn 0 seq 1: telemetry
	// 625ms  device 1 (id 2) conn 1 seq 1: telemetry
	// 750ms  device 2 (id 3) conn 0 seq 1: telemetry
	// 875ms  device 3 (id 4) conn 1 seq 1: telemetry
	// 1s     device 0 (id 1) conn 0 seq 2: telemetry
	// 1.125s device 1 (id 2) conn 1 seq 2: telemetry
	// 1.25s  device 2 (id 3) conn 0 seq 2: go-offline
	// 1.375s device 3 (id 4) conn 1 seq 2: go-offline
	// 1.5s   device 0 (id 1) conn 0 seq 3: telemetry
	// 1.625s device 1 (id 2) conn 1 seq 3: telemetry
	// 1.75s  device 2 (id 3) conn 0 seq 3: silent
	// 1.875s device 3 (id 4) conn 1 seq 3: silent
}
