package loadgen

import (
	"fmt"
	"testing"
	"time"
)

func testSchedule(devices, conns int, rate, fraction float64, silentAfter, returnAfter time.Duration) *Schedule {
	c := DefaultConfig()
	c.Devices, c.Conns, c.Rate = devices, conns, rate
	c.SilentFraction, c.SilentAfter, c.ReturnAfter = fraction, silentAfter, returnAfter
	s := NewSchedule(c)
	return &s
}

func TestScheduleSlots(t *testing.T) {
	s := testSchedule(10, 3, 100, 0, 0, 0) // a slot every 10ms, each device every 100ms
	for _, tc := range []struct {
		k        uint64
		at       time.Duration
		dev, seq uint64
		conn     int
	}{
		{0, 0, 0, 0, 0},
		{1, 10 * time.Millisecond, 1, 0, 1},
		{9, 90 * time.Millisecond, 9, 0, 0},
		{10, 100 * time.Millisecond, 0, 1, 0},
		{25, 250 * time.Millisecond, 5, 2, 2},
	} {
		if got := s.At(tc.k); got != tc.at {
			t.Errorf("At(%d) = %s, want %s", tc.k, got, tc.at)
		}
		if got := s.Device(tc.k); got != tc.dev {
			t.Errorf("Device(%d) = %d, want %d", tc.k, got, tc.dev)
		}
		if got := s.Seq(tc.k); got != tc.seq {
			t.Errorf("Seq(%d) = %d, want %d", tc.k, got, tc.seq)
		}
		if got := s.Conn(tc.dev); got != tc.conn {
			t.Errorf("Conn(%d) = %d, want %d", tc.dev, got, tc.conn)
		}
	}
}

// The cursors of all connections together visit every slot exactly once,
// each in increasing order, and only slots of their own devices.
func TestCursorsPartitionSlots(t *testing.T) {
	for _, tc := range []struct{ devices, conns int }{{1, 1}, {10, 1}, {10, 3}, {7, 7}, {1000, 4}, {1001, 16}} {
		t.Run(fmt.Sprintf("devices=%d/conns=%d", tc.devices, tc.conns), func(t *testing.T) {
			s := testSchedule(tc.devices, tc.conns, 1000, 0, 0, 0)
			const slots = 5000
			seen := make([]int, slots)
			for c := range tc.conns {
				cur := s.Cursor(c)
				prev := -1
				for k := cur.Slot(); k < slots; k = cur.Slot() {
					if int(k) <= prev {
						t.Fatalf("conn %d: slot %d after %d", c, k, prev)
					}
					if got := s.Conn(s.Device(k)); got != c {
						t.Fatalf("conn %d got slot %d of device %d (conn %d)", c, k, s.Device(k), got)
					}
					seen[k]++
					prev = int(k)
					cur.Next()
				}
			}
			for k, n := range seen {
				if n != 1 {
					t.Fatalf("slot %d visited %d times", k, n)
				}
			}
		})
	}
}

// Every device publishes exactly once per period, and the messages of one
// period are spread evenly: no two slots closer than 1/rate.
func TestScheduleEvenSpread(t *testing.T) {
	s := testSchedule(10000, 4, 20000, 0, 0, 0)
	period := 500 * time.Millisecond
	perDevice := make([]int, 10000)
	for k := uint64(0); s.At(k) < 3*period; k++ {
		perDevice[s.Device(k)]++
		if k > 0 && s.At(k)-s.At(k-1) != 50*time.Microsecond {
			t.Fatalf("gap before slot %d is %s, want 50µs", k, s.At(k)-s.At(k-1))
		}
	}
	for d, n := range perDevice {
		if n != 3 {
			t.Fatalf("device %d published %d times in 3 periods, want 3", d, n)
		}
	}
}

func TestSilencers(t *testing.T) {
	for _, tc := range []struct {
		devices, conns int
		fraction       float64
		want           int
	}{
		{10, 2, 0.5, 5}, {10, 3, 0.1, 1}, {10000, 4, 0.1, 1000}, {10001, 7, 0.25, 2500},
		{100, 8, 1, 100}, {100, 8, 0, 0}, {3, 1, 0.5, 2},
	} {
		t.Run(fmt.Sprintf("%d/%d/%g", tc.devices, tc.conns, tc.fraction), func(t *testing.T) {
			s := testSchedule(tc.devices, tc.conns, 1000, tc.fraction, time.Second, 0)
			perConn := make([]int, tc.conns)
			total := 0
			for d := range uint64(tc.devices) {
				if s.Silencer(d) {
					total++
					perConn[s.Conn(d)]++
				}
			}
			if total != tc.want {
				t.Fatalf("%d silencers, want %d", total, tc.want)
			}
			// Spread: each connection holds its share, within one device.
			for c, n := range perConn {
				share := float64(s.connDevices(uint64(c))) * float64(tc.want) / float64(tc.devices)
				if float64(n) < share-1 || float64(n) > share+1 {
					t.Errorf("conn %d has %d silencers, share %.1f", c, n, share)
				}
			}
		})
	}
}

// The timeline of one silencer and one normal device, slot by slot.
func TestKindTimeline(t *testing.T) {
	// 4 devices at 4 msg/s: each device publishes every second, device d at
	// d*250ms. Half go silent after 2.1s and come back 2s later (at 4.1s).
	s := testSchedule(4, 1, 4, 0.5, 2100*time.Millisecond, 2*time.Second)
	var silencer, normal uint64 = 99, 99
	for d := range uint64(4) {
		if s.Silencer(d) && silencer == 99 {
			silencer = d
		}
		if !s.Silencer(d) && normal == 99 {
			normal = d
		}
	}
	if silencer == 99 || normal == 99 {
		t.Fatal("want both a silencer and a normal device")
	}
	timeline := func(d uint64) []Kind {
		var ks []Kind
		for m := range uint64(7) {
			ks = append(ks, s.Kind(m*4+d))
		}
		return ks
	}
	// The expected kinds follow from the definition: the silencer's slots
	// are at offset + m seconds.
	offset := s.At(silencer)
	var want []Kind
	for m := range 7 {
		at := offset + time.Duration(m)*time.Second
		prev := at - time.Second
		switch {
		case at < 2100*time.Millisecond:
			want = append(want, KindTelemetry)
		case at < 4100*time.Millisecond && prev < 2100*time.Millisecond:
			want = append(want, KindGoOffline)
		case at < 4100*time.Millisecond:
			want = append(want, KindSilent)
		case prev < 4100*time.Millisecond:
			want = append(want, KindReturn)
		default:
			want = append(want, KindTelemetry)
		}
	}
	if got := timeline(silencer); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("silencer %d (offset %s): %v, want %v", silencer, offset, got, want)
	}
	for _, k := range timeline(normal) {
		if k != KindTelemetry {
			t.Errorf("normal device %d: %v, want only telemetry", normal, timeline(normal))
			break
		}
	}
}

func TestKindExplicit(t *testing.T) {
	// One device, every second, silent from 2.5s, back after 2s (4.5s).
	s := testSchedule(1, 1, 1, 1, 2500*time.Millisecond, 2*time.Second)
	want := []Kind{KindTelemetry, KindTelemetry, KindTelemetry, KindGoOffline, KindSilent, KindReturn, KindTelemetry}
	for k, w := range want {
		if got := s.Kind(uint64(k)); got != w {
			t.Errorf("slot %d (%s): %s, want %s", k, s.At(uint64(k)), got, w)
		}
	}
	// Never returning: silent for good.
	s = testSchedule(1, 1, 1, 1, 2500*time.Millisecond, 0)
	for k := uint64(4); k < 1000; k++ {
		if got := s.Kind(k); got != KindSilent {
			t.Fatalf("slot %d: %s, want silent", k, got)
		}
	}
	// A window shorter than the period that holds no slot: no announcement.
	s = testSchedule(1, 1, 1, 1, 2100*time.Millisecond, 500*time.Millisecond)
	for k := range uint64(10) {
		if got := s.Kind(k); got != KindTelemetry {
			t.Errorf("slot %d: %s, want telemetry (window between slots)", k, got)
		}
	}
	// Silent before its first slot: silent, never "offline" (it never was online).
	s = testSchedule(10, 1, 1, 1, time.Second, 0) // device 9 first due at 9s
	if got := s.Kind(9); got != KindSilent {
		t.Errorf("first slot after silent-after: %s, want silent", got)
	}
}

func TestSilentAt(t *testing.T) {
	s := testSchedule(100, 4, 100, 0.1, 10*time.Second, 5*time.Second)
	for _, tc := range []struct {
		t    time.Duration
		want int
	}{{0, 0}, {9 * time.Second, 0}, {10 * time.Second, 10}, {14 * time.Second, 10}, {15 * time.Second, 0}} {
		if got := s.SilentAt(tc.t); got != tc.want {
			t.Errorf("SilentAt(%s) = %d, want %d", tc.t, got, tc.want)
		}
	}
}
