package report

import (
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// at is t0 plus m minutes.
func at(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }

func on(m int) Change  { return Change{Status: engine.StatusOnline, At: at(m), Cause: "telemetry"} }
func off(m int) Change { return Change{Status: engine.StatusOffline, At: at(m), Cause: "timeout"} }

// Every case below is computed by hand on the window [10, 70) minutes with
// now = 100 unless said otherwise; minutes on the left of each history.
func TestUptimeOf(t *testing.T) {
	const (
		U = engine.StatusUnknown
		N = engine.StatusOnline
		F = engine.StatusOffline
	)
	type want struct {
		online, offline, unknown int // minutes
		changes                  int
		initial, final           engine.Status
	}
	tests := []struct {
		name           string
		changes        []Change
		from, to, now  int
		want           want
		wantWindow     int
		wantNoFraction bool
	}{
		{name: "no history", want: want{unknown: 60}},
		{name: "one change before the window", changes: []Change{on(0)},
			want: want{online: 60, initial: N, final: N}},
		{name: "unknown before the first change", changes: []Change{on(30)},
			want: want{unknown: 20, online: 40, changes: 1, final: N}},
		{name: "first change offline inside the window", changes: []Change{off(40)},
			want: want{unknown: 30, offline: 30, changes: 1, final: F}},
		{name: "starts inside an online period", changes: []Change{on(0), off(20), on(50)},
			want: want{online: 10 + 20, offline: 30, changes: 2, initial: N, final: N}},
		{name: "starts inside an offline period", changes: []Change{on(0), off(5), on(40)},
			want: want{offline: 30, online: 30, changes: 1, initial: F, final: N}},
		{name: "ends inside an offline period", changes: []Change{on(0), off(60), on(80)},
			want: want{online: 50, offline: 10, changes: 1, initial: N, final: F}},
		{name: "ends inside an online period", changes: []Change{off(0), on(65), off(75)},
			want: want{offline: 55, online: 5, changes: 1, initial: F, final: N}},
		{name: "change exactly at from sets the start", changes: []Change{on(0), off(10)},
			want: want{offline: 60, initial: F, final: F}},
		{name: "change exactly at to is outside", changes: []Change{on(0), off(70)},
			want: want{online: 60, initial: N, final: N}},
		{name: "only the last change before from matters", changes: []Change{on(0), off(2), on(5)},
			want: want{online: 60, initial: N, final: N}},
		{name: "flaps inside", changes: []Change{on(0), off(15), on(16), off(17), on(18), off(69)},
			want: want{online: 5 + 1 + 51, offline: 1 + 1 + 1, changes: 5, initial: N, final: F}},
		{name: "to in the future stops at now", changes: []Change{on(0), off(90)}, from: 10, to: 200, now: 100,
			want: want{online: 80, offline: 10, changes: 1, initial: N, final: F}, wantWindow: 90},
		{name: "online until now, to in the future", changes: []Change{on(50)}, from: 10, to: 200, now: 100,
			want: want{unknown: 40, online: 50, changes: 1, final: N}, wantWindow: 90},
		{name: "window entirely in the future", changes: []Change{on(0)}, from: 150, to: 200, now: 100,
			want: want{initial: N, final: N}, wantWindow: -1, wantNoFraction: true},
		{name: "equal times: the later one wins", changes: []Change{on(30), off(30)},
			want: want{unknown: 20, offline: 40, changes: 2, final: F}},
		{name: "out of order input counts nothing backwards", changes: []Change{on(40), off(30)},
			want: want{unknown: 30, offline: 30, changes: 2, final: F}},
		{name: "unknown status text is unknown time", changes: []Change{on(0), {Status: U, At: at(40)}},
			want: want{online: 30, unknown: 30, changes: 1, initial: N, final: U}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from, to, now := tt.from, tt.to, tt.now
			if to == 0 {
				from, to, now = 10, 70, 100
			}
			u := UptimeOf(tt.changes, at(from), at(to), at(now))
			got := want{
				online: mins(t, u.Online), offline: mins(t, u.Offline), unknown: mins(t, u.Unknown),
				changes: u.Changes, initial: u.Initial, final: u.Final,
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			window := min(to, now) - from
			switch tt.wantWindow {
			case 0:
			case -1:
				window = 0
			default:
				window = tt.wantWindow
			}
			if w := mins(t, u.Window()); w != window {
				t.Errorf("window %d min, want %d", w, window)
			}
			if sum := u.Online + u.Offline + u.Unknown; sum != u.Window() {
				t.Errorf("online+offline+unknown = %v, window %v", sum, u.Window())
			}
			f, ok := u.Fraction()
			if ok == tt.wantNoFraction {
				t.Fatalf("fraction ok = %v", ok)
			}
			if ok && f != float64(tt.want.online)/float64(window) {
				t.Errorf("fraction %v, want %d/%d", f, tt.want.online, window)
			}
		})
	}
}

func mins(t *testing.T, d time.Duration) int {
	t.Helper()
	if d%time.Minute != 0 {
		t.Fatalf("%v is not whole minutes", d)
	}
	return int(d / time.Minute)
}

// A window split in two adds up: uptime is additive over adjacent windows,
// for any history.
func TestUptimeOfAdditive(t *testing.T) {
	h := []Change{on(0), off(7), on(13), off(29), on(31), off(44), on(58), off(61)}
	for split := 11; split < 70; split += 3 {
		whole := UptimeOf(h, at(10), at(70), at(100))
		a := UptimeOf(h, at(10), at(split), at(100))
		b := UptimeOf(h, at(split), at(70), at(100))
		if a.Online+b.Online != whole.Online || a.Offline+b.Offline != whole.Offline || a.Unknown+b.Unknown != whole.Unknown {
			t.Fatalf("split at %d: %+v + %+v != %+v", split, a, b, whole)
		}
	}
}
