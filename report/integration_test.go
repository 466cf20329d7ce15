package report

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// histDB is a real PostgreSQL with a history table of its own, laid out as
// postgres.History (writeback/postgres) creates it.
type histDB struct {
	pool  *pgxpool.Pool
	table string
}

func newHistDB(t *testing.T) *histDB {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL")
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("PostgreSQL at %s: %v (set DATABASE_URL)", testenv.DatabaseURL(), err)
	}
	d := &histDB{pool: pool, table: testenv.Name(t)}
	tbl := pgx.Identifier{d.table}.Sanitize()
	for _, q := range []string{
		"CREATE TABLE " + tbl + " (device_id text NOT NULL, status text NOT NULL, changed_at timestamptz NOT NULL, cause text NOT NULL)",
		"CREATE INDEX ON " + tbl + " (device_id, changed_at)",
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+tbl) }) //nolint:errcheck
	return d
}

func (d *histDB) insert(t *testing.T, id string, changes ...Change) {
	t.Helper()
	rows := make([][]any, len(changes))
	for i, c := range changes {
		rows[i] = []any{id, c.Status.String(), c.At, c.Cause}
	}
	_, err := d.pool.CopyFrom(context.Background(), pgx.Identifier{d.table},
		[]string{"device_id", "status", "changed_at", "cause"}, pgx.CopyFromRows(rows))
	if err != nil {
		t.Fatal(err)
	}
}

func (d *histDB) report(t *testing.T, now time.Time) *Report {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Table, cfg.Now = d.table, func() time.Time { return now }
	r, err := New(d.pool, fakeLive(nil), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The database path gives what UptimeOf gives on the same hand-made
// histories, for windows whose edges fall inside online and offline
// periods, on changes, before any change and past now.
func TestUptimeAgainstPostgres(t *testing.T) {
	d := newHistDB(t)
	hist := map[string][]Change{
		"always":   {on(0)},
		"late":     {on(30)},
		"flapping": {on(0), off(15), on(16), off(17), on(18), off(69)},
		"edges":    {on(0), off(10), on(70)},
		"offline":  {on(0), off(5)},
	}
	for id, h := range hist {
		d.insert(t, id, h...)
	}
	now := at(100)
	r := d.report(t, now)
	ctx := context.Background()
	windows := [][2]int{{10, 70}, {0, 100}, {-50, 5}, {16, 17}, {20, 300}, {5, 6}, {69, 71}}
	for id, h := range append2(hist, "never", nil) {
		for _, w := range windows {
			got, err := r.Uptime(ctx, id, at(w[0]), at(w[1]))
			if err != nil {
				t.Fatal(err)
			}
			want := UptimeOf(h, at(w[0]), at(w[1]), now)
			if !sameUptime(got, want) {
				t.Errorf("%s %v: got %+v, want %+v", id, w, got, want)
			}
		}
	}
	// A hand check of one of them through HTTP.
	var u UptimeResponse
	get(t, r, "/v1/devices/edges/uptime?from="+url.QueryEscape(at(10).Format(time.RFC3339))+"&to="+at(80).Format(time.RFC3339), 200, &u)
	if u.OnlineSeconds != 600 || u.OfflineSeconds != 3600 || u.UnknownSeconds != 0 || *u.Fraction != 600.0/4200 ||
		u.StatusAtFrom != "offline" || u.StatusAtTo != "online" || u.Changes != 1 {
		t.Errorf("edges [10, 80): %+v", u)
	}
}

func append2(m map[string][]Change, id string, h []Change) map[string][]Change {
	m[id] = h
	return m
}

func sameUptime(a, b Uptime) bool {
	return a.From.Equal(b.From) && a.To.Equal(b.To) && a.Online == b.Online && a.Offline == b.Offline &&
		a.Unknown == b.Unknown && a.Changes == b.Changes && a.Initial == b.Initial && a.Final == b.Final
}

// The fleet figure of the single SQL statement equals the mean of the
// per-device computation, on a random fleet with microsecond times.
func TestFleetUptimeAgainstPostgres(t *testing.T) {
	d := newHistDB(t)
	rng := rand.New(rand.NewPCG(1, 2))
	hist := map[string][]Change{}
	for i := range 200 {
		id := fmt.Sprintf("dev-%03d", i)
		var h []Change
		tm := t0.Add(-time.Duration(rng.IntN(200)) * time.Minute)
		st := engine.StatusOnline
		for range rng.IntN(12) {
			h = append(h, Change{Status: st, At: tm, Cause: "telemetry"})
			tm = tm.Add(time.Duration(rng.Int64N(int64(90 * time.Minute)))).Truncate(time.Microsecond)
			st = 3 - st // online <-> offline
		}
		hist[id] = h
		if len(h) > 0 {
			d.insert(t, id, h...)
		}
	}
	now := at(150)
	r := d.report(t, now)
	for _, w := range [][2]int{{10, 70}, {-300, 0}, {0, 1000}, {100, 101}, {-1000, -900}} {
		from, to := at(w[0]), at(w[1])
		got, err := r.FleetUptime(context.Background(), from, to)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		var sumFrac, online, known float64
		for _, h := range hist {
			if len(h) == 0 || !h[0].At.Before(got.To) {
				continue // no change before the end: not in the figure
			}
			u := UptimeOf(h, from, to, now)
			n++
			f, _ := u.Fraction()
			sumFrac += f
			online += u.Online.Seconds()
			known += (u.Online + u.Offline).Seconds()
		}
		want := Fleet{Devices: n, OnlineSeconds: online, KnownSeconds: known}
		if n > 0 {
			want.MeanFraction = sumFrac / float64(n)
		}
		if known > 0 {
			want.Availability = online / known
		}
		if got.Devices != want.Devices || !near(got.MeanFraction, want.MeanFraction) || !near(got.OnlineSeconds, want.OnlineSeconds) ||
			!near(got.KnownSeconds, want.KnownSeconds) || !near(got.Availability, want.Availability) {
			t.Errorf("window %v: got %+v\nwant %+v", w, got, want)
		}
		t.Logf("window %v: %d devices, mean fraction %.4f, availability %.4f", w, got.Devices, got.MeanFraction, got.Availability)
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestHistoryAgainstPostgres(t *testing.T) {
	d := newHistDB(t)
	d.insert(t, "a", on(0), off(10), on(20), off(30), on(40))
	d.insert(t, "b", on(5))
	r := d.report(t, at(100))
	ctx := context.Background()
	check := func(from, to time.Time, limit int, want ...int) {
		t.Helper()
		got, err := r.History(ctx, "a", from, to, limit)
		if err != nil {
			t.Fatal(err)
		}
		var mins []int
		for _, c := range got {
			mins = append(mins, int(c.At.Sub(t0)/time.Minute))
		}
		if fmt.Sprint(mins) != fmt.Sprint(want) {
			t.Errorf("History(%v, %v, %d) = %v, want %v (newest first)", from, to, limit, mins, want)
		}
	}
	check(time.Time{}, time.Time{}, 100, 40, 30, 20, 10, 0)
	check(time.Time{}, time.Time{}, 2, 40, 30)
	check(at(10), at(40), 100, 30, 20, 10) // [from, to)
	check(at(41), time.Time{}, 100)

	var h HistoryResponse
	get(t, r, "/v1/devices/a/history?limit=2", 200, &h)
	if !h.Truncated || len(h.Changes) != 2 || h.Changes[0] != (ChangeJSON{"online", "2025-01-01T00:40:00.000000+00:00", "telemetry"}) ||
		h.From != nil || h.To != nil {
		t.Errorf("history: %+v", h)
	}
	get(t, r, "/v1/devices/a/history?limit=5", 200, &h)
	if h.Truncated || len(h.Changes) != 5 {
		t.Errorf("history limit=5: %+v", h)
	}
	get(t, r, "/v1/devices/nobody/history", 200, &h)
	if h.Changes == nil || len(h.Changes) != 0 {
		t.Errorf("unknown device: %+v", h)
	}
}

// Before writeback has written anything the table does not exist: the
// history is empty and uptime unknown, not an error.
func TestMissingTable(t *testing.T) {
	d := newHistDB(t)
	d.table = testenv.Name(t) // never created
	r := d.report(t, at(100))
	ctx := context.Background()
	if h, err := r.History(ctx, "a", time.Time{}, time.Time{}, 10); err != nil || len(h) != 0 {
		t.Errorf("History = %v, %v", h, err)
	}
	if u, err := r.Uptime(ctx, "a", at(0), at(10)); err != nil || u.Unknown != 10*time.Minute {
		t.Errorf("Uptime = %+v, %v", u, err)
	}
	if f, err := r.FleetUptime(ctx, at(0), at(10)); err != nil || f.Devices != 0 {
		t.Errorf("FleetUptime = %+v, %v", f, err)
	}
}

// A quoted, schema-qualified name works, and odd characters stay inside
// the identifier.
func TestTableNameQuoting(t *testing.T) {
	d := newHistDB(t)
	ctx := context.Background()
	odd := d.table + `"; DROP TABLE x; --`
	q := pgx.Identifier{odd}.Sanitize()
	if _, err := d.pool.Exec(ctx, "CREATE TABLE "+q+" (LIKE "+pgx.Identifier{d.table}.Sanitize()+")"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.pool.Exec(context.Background(), "DROP TABLE "+q) }) //nolint:errcheck
	d.table = "public." + odd
	d.insert2(t, odd, "x", on(0))
	r := d.report(t, at(100))
	if u, err := r.Uptime(ctx, "x", at(10), at(20)); err != nil || u.Online != 10*time.Minute {
		t.Fatalf("Uptime = %+v, %v", u, err)
	}
}

func (d *histDB) insert2(t *testing.T, table, id string, c Change) {
	t.Helper()
	_, err := d.pool.Exec(context.Background(), "INSERT INTO "+pgx.Identifier{table}.Sanitize()+" VALUES ($1, $2, $3, $4)",
		id, c.Status.String(), c.At, c.Cause)
	if err != nil {
		t.Fatal(err)
	}
}

// get serves path through an api.Server with the report mounted and
// decodes the JSON answer into v.
func get(t *testing.T, r *Report, path string, code int, v any) {
	t.Helper()
	srv, err := api.New(api.DefaultConfig(), emptyStore{})
	if err != nil {
		t.Fatal(err)
	}
	r.Mount(srv)
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != code {
		t.Fatalf("GET %s: %d %s, want %d", path, rec.Code, rec.Body, code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: Content-Type %q", path, ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, rec.Body)
	}
}

// emptyStore is an api.Store that knows no device.
type emptyStore struct{}

func (emptyStore) Device(string) (engine.DeviceState, error) {
	return engine.DeviceState{}, engine.ErrNotFound
}
func (emptyStore) Devices(ids []string, dst []engine.DeviceState) []engine.DeviceState {
	for _, id := range ids {
		dst = append(dst, engine.DeviceState{ID: id})
	}
	return dst
}
func (emptyStore) Counts() engine.Counts { return engine.Counts{} }

// fakeLive is a Live over a slice.
type fakeLive []engine.DeviceState

func (f fakeLive) Range(fn func(engine.DeviceState) bool) {
	for _, st := range f {
		if !fn(st) {
			return
		}
	}
}

// A query slower than QueryTimeout is a 504, not a hang.
func TestQueryTimeout(t *testing.T) {
	d := newHistDB(t)
	d.insert(t, "a", on(0))
	cfg := DefaultConfig()
	cfg.Table, cfg.QueryTimeout = d.table, time.Nanosecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Now = func() time.Time { return at(100) }
	r, err := New(d.pool, fakeLive(nil), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v1/devices/a/history", "/v1/devices/a/uptime", "/v1/uptime"} {
		var e api.Error
		get(t, r, path, 504, &e)
	}
}

// The history queries share the pool with the write-behind: at most
// MaxConcurrentQueries run at once, the others wait for a slot (or for
// their client) without taking a connection.
func TestQueriesWaitForASlot(t *testing.T) {
	d := newHistDB(t)
	r := d.report(t, at(100))
	for range cap(r.queries) { // every slot busy
		r.queries <- struct{}{}
	}
	before := d.pool.Stat().AcquireCount()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.History(ctx, "a", time.Time{}, time.Time{}, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("History with every slot busy = %v, want it to wait until its ctx ends", err)
	}
	if _, err := r.Uptime(ctx, "a", at(0), at(10)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Uptime with every slot busy = %v", err)
	}
	if n := d.pool.Stat().AcquireCount() - before; n != 0 {
		t.Fatalf("%d connections acquired while waiting", n)
	}
	<-r.queries // one slot free
	if _, err := r.History(context.Background(), "a", time.Time{}, time.Time{}, 10); err != nil {
		t.Fatal(err)
	}
}
