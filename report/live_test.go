package report

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/engine"
)

func newLiveReport(t testing.TB, live Live, now time.Time) *Report {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Now = func() time.Time { return now }
	r, err := New(nil, live, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The heap keeps exactly what a full sort would, for any limit.
func TestLongestMatchesSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	now := at(1000)
	var fleet fakeLive
	for i := range 5000 {
		st := engine.StatusOnline
		if rng.IntN(3) == 0 {
			st = engine.StatusOffline
		}
		since := at(rng.IntN(1000)) // many equal times: the id breaks ties
		fleet = append(fleet, engine.DeviceState{ID: fmt.Sprintf("d%05d", i), Status: st, Since: since, LastSeen: since})
	}
	for _, q := range []ListQuery{
		{Status: engine.StatusOffline, Limit: 10},
		{Status: engine.StatusOffline, LongerThan: 600 * time.Minute, Limit: 100},
		{Status: engine.StatusOnline, Limit: 1},
		{Limit: 10000},
		{Status: engine.StatusOffline, LongerThan: 2000 * time.Minute, Limit: 5},
	} {
		var want []engine.DeviceState
		for _, st := range fleet {
			if (q.Status == 0 || st.Status == q.Status) && now.Sub(st.Since) > q.LongerThan {
				want = append(want, st)
			}
		}
		matched := len(want)
		slices.SortFunc(want, func(a, b engine.DeviceState) int {
			if c := a.Since.Compare(b.Since); c != 0 {
				return c
			}
			return cmpString(a.ID, b.ID)
		})
		want = want[:min(len(want), q.Limit)]
		got, err := newLiveReport(t, fleet, now).Longest(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if got.Matched != matched || !slices.Equal(got.Devices, want) {
			t.Errorf("%+v: matched %d (want %d), %d devices, equal %v", q, got.Matched, matched, len(got.Devices), slices.Equal(got.Devices, want))
		}
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Against the real engine: devices going offline at different times come
// back offline longest first, with how long.
func TestListWithEngine(t *testing.T) {
	now := t0
	cfg := engine.DefaultConfig()
	cfg.Now = func() time.Time { return now }
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"c", "a", "b", "live"} {
		if err := e.Touch(id, t0.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	e.Touch("live", t0.Add(30*time.Minute)) //nolint:errcheck
	now = t0.Add(30*time.Minute + 30*time.Second)
	e.Advance(now)
	r := newLiveReport(t, e, now)

	var l ListResponse
	get(t, r, "/v1/devices?status=offline&offline_longer_than=28m&limit=2", 200, &l)
	// c went offline at 1m (deadline of its touch at 0), a at 2m, b at 3m;
	// a is offline for 28.5m, b for 27.5m.
	if l.Matched != 2 || len(l.Devices) != 2 || l.Devices[0].ID != "c" || l.Devices[1].ID != "a" ||
		l.Devices[0].ForSeconds != 29.5*60 || l.Devices[0].Status != "offline" ||
		l.Devices[0].Since != "2025-01-01T00:01:00.000000+00:00" || l.AsOf != "2025-01-01T00:30:30.000000+00:00" {
		t.Errorf("%+v", l)
	}
	get(t, r, "/v1/devices?offline_longer_than=10m", 200, &l)
	if l.Matched != 3 || len(l.Devices) != 3 {
		t.Errorf("%+v", l)
	}
	get(t, r, "/v1/devices?status=online", 200, &l)
	if l.Matched != 1 || l.Devices[0].ID != "live" || l.Devices[0].TimeoutSeconds != 60 {
		t.Errorf("%+v", l)
	}
	get(t, r, "/v1/devices", 200, &l)
	if l.Matched != 4 {
		t.Errorf("%+v", l)
	}
}

// Bad input is a 400 with a JSON error, before any query; without a
// database the history endpoints answer 503.
func TestBadRequests(t *testing.T) {
	r := newLiveReport(t, fakeLive(nil), at(100))
	for _, path := range []string{
		"/v1/devices?status=sleeping",
		"/v1/devices?limit=0",
		"/v1/devices?limit=10001",
		"/v1/devices?limit=ten",
		"/v1/devices?offline_longer_than=-5m",
		"/v1/devices?offline_longer_than=10",
		"/v1/devices?status=online&offline_longer_than=1m",
		"/v1/devices?longer_than=1m&offline_longer_than=1m",
		"/v1/devices?limit=1&limit=2",
		"/v1/devices?stauts=offline",
		"/v1/devices?%zz",
		"/v1/devices/a/history?from=yesterday",
		"/v1/devices/a/history?from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z",
		"/v1/devices/a/history?limit=100000",
		"/v1/devices/a/history?from=-1x",
		"/v1/devices/a/uptime?to=0000-01-01T00:00:00Z",
		"/v1/devices/a/uptime?from=now&to=now",
		"/v1/devices/a/uptime?from=2025-01-01",
		"/v1/devices/a%2Fb/uptime",
		"/v1/uptime?from=-1h&to=-2h",
		"/v1/uptime?window=1h",
	} {
		var e api.Error
		get(t, r, path, 400, &e)
		if e.Error == "" {
			t.Errorf("%s: empty error", path)
		}
		t.Logf("%-60s %s", path, e.Error)
	}
	for _, path := range []string{
		"/v1/devices/a/history", "/v1/devices/a/uptime?from=-1h", "/v1/uptime",
		// An unencoded '+' arrives as a space and is still read as '+'.
		"/v1/devices/a/uptime?from=2025-01-01T00:10:00+00:00",
	} {
		var e api.Error
		get(t, r, path, 503, &e)
	}
}

// The endpoints sit behind the API's bearer token.
func TestMountedBehindToken(t *testing.T) {
	cfg := api.DefaultConfig()
	cfg.Token = "secret"
	srv, err := api.New(cfg, emptyStore{})
	if err != nil {
		t.Fatal(err)
	}
	newLiveReport(t, fakeLive(nil), at(100)).Mount(srv)
	for _, tok := range []string{"", "Bearer secret"} {
		req := httptest.NewRequest(http.MethodGet, "/v1/devices?status=offline", nil)
		if tok != "" {
			req.Header.Set("Authorization", tok)
		}
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		want := map[string]int{"": 401, "Bearer secret": 200}[tok]
		if rec.Code != want {
			t.Errorf("token %q: %d, want %d", tok, rec.Code, want)
		}
	}
}

// A list request whose client has gone stops the scan and waits for no
// slot.
func TestLongestCancelled(t *testing.T) {
	r := newLiveReport(t, make(fakeLive, 100000), at(100))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Longest(ctx, ListQuery{Limit: 1}); err == nil {
		t.Fatal("no error")
	}
}

// BenchmarkLongest1M is Longest over a fake fleet of a million devices,
// half of them offline; BenchmarkLongest1MBaselineSort is its baseline.
func BenchmarkLongest1M(b *testing.B) {
	r := newLiveReport(b, fakeFleet1M(), at(200000))
	q := ListQuery{Status: engine.StatusOffline, Limit: 100}
	for b.Loop() {
		if _, err := r.Longest(context.Background(), q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLongest1MBaselineSort answers BenchmarkLongest1M's query the
// straightforward way: every match into a slice, sort, first Limit.
func BenchmarkLongest1MBaselineSort(b *testing.B) {
	benchmarkLongestSort(b, fakeFleet1M(), at(200000), ListQuery{Status: engine.StatusOffline, Limit: 100})
}

func fakeFleet1M() fakeLive {
	rng := rand.New(rand.NewPCG(5, 6))
	fleet := make(fakeLive, 1_000_000)
	for i := range fleet {
		fleet[i] = engine.DeviceState{ID: fmt.Sprint(i), Status: engine.Status(1 + rng.IntN(2)), Since: at(rng.IntN(100000))}
	}
	return fleet
}

// BenchmarkLongestEngine1M is the list endpoint's scan over a real engine
// holding a million devices, a third of them offline.
// BenchmarkLongestEngine1MBaselineSort is its baseline.
func BenchmarkLongestEngine1M(b *testing.B) {
	e, now := engineFleet1M(b)
	r := newLiveReport(b, e, now)
	b.ResetTimer()
	for b.Loop() {
		l, err := r.Longest(context.Background(), engineQuery)
		if err != nil || len(l.Devices) != 100 {
			b.Fatal(err, len(l.Devices))
		}
	}
}

// BenchmarkLongestEngine1MBaselineSort answers BenchmarkLongestEngine1M's
// query by collecting every match and sorting.
func BenchmarkLongestEngine1MBaselineSort(b *testing.B) {
	e, now := engineFleet1M(b)
	benchmarkLongestSort(b, e, now, engineQuery)
}

var engineQuery = ListQuery{Status: engine.StatusOffline, LongerThan: 10 * time.Minute, Limit: 100}

// engineFleet1M is a real engine holding a million devices, a third of
// them offline at the returned time.
func engineFleet1M(b *testing.B) (*engine.Engine, time.Time) {
	now := t0
	cfg := engine.DefaultConfig()
	cfg.Now = func() time.Time { return now }
	cfg.Logger = slog.New(slog.DiscardHandler) // no sink: the queue fills
	e, err := engine.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]engine.Touch, 0, 4096)
	for i := range 1_000_000 {
		at := t0.Add(time.Duration(i%3600) * time.Second)
		if i%3 == 0 {
			at = at.Add(-2 * time.Hour) // offline by the time of the scan
		}
		batch = append(batch, engine.Touch{ID: fmt.Sprintf("dev-%07d", i), At: at})
		if len(batch) == cap(batch) {
			e.TouchBatch(batch)
			batch = batch[:0]
		}
	}
	e.TouchBatch(batch)
	now = t0.Add(time.Hour)
	e.Advance(now)
	return e, now
}

// benchmarkLongestSort times longestSort on live and checks once that it
// answers what Longest answers.
func benchmarkLongestSort(b *testing.B, live Live, now time.Time, q ListQuery) {
	want, err := newLiveReport(b, live, now).Longest(context.Background(), q)
	if err != nil {
		b.Fatal(err)
	}
	if got := longestSort(live, q, now); !slices.EqualFunc(got, want.Devices, func(a, b engine.DeviceState) bool {
		return a.ID == b.ID && a.Since.Equal(b.Since)
	}) || len(got) != q.Limit {
		b.Fatalf("baseline answers %d devices, differently from Longest", len(got))
	}
	b.ResetTimer()
	for b.Loop() {
		if l := longestSort(live, q, now); len(l) != q.Limit {
			b.Fatal(len(l))
		}
	}
}

// longestSort is the baseline of longest: collect every matching device,
// sort.Slice by Since (then id), keep the first Limit. Memory grows with
// the matches, time is O(n log n).
func longestSort(live Live, q ListQuery, now time.Time) []engine.DeviceState {
	cutoff := now.Add(-q.LongerThan)
	var all []engine.DeviceState
	live.Range(func(st engine.DeviceState) bool {
		if (q.Status == engine.StatusUnknown || st.Status == q.Status) &&
			(q.LongerThan == 0 || st.Since.Before(cutoff)) {
			all = append(all, st)
		}
		return true
	})
	sort.Slice(all, func(i, j int) bool { return older(&all[i], &all[j]) })
	return all[:min(q.Limit, len(all))]
}
