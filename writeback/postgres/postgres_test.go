package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/writeback"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// harnessRows is how many devices (ids 1..n) the Postgres harness tables
// hold; the conformance suite stays below it.
const harnessRows = 2000

func pgAddr(t testing.TB) string {
	cfg, err := pgxpool.ParseConfig(testenv.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port)))
}

func newPostgresHarness(idType, extra string, insertUnknown bool) writebacktest.NewHarness {
	return func(t *testing.T, src writeback.Source, o writebacktest.Opts) writebacktest.Harness {
		t.Helper()
		direct := testenv.Pool(t, "")
		table := testenv.DevicesTable(t, direct, idType, extra)
		if !insertUnknown {
			if _, err := direct.Exec(context.Background(),
				"INSERT INTO "+table+" (id) SELECT g::text::"+idType+" FROM generate_series(0, $1::int) g", harnessRows); err != nil {
				t.Fatal(err)
			}
		}
		pool := direct
		var px *testenv.Proxy
		if o.ViaProxy {
			px = testenv.NewProxy(t, pgAddr(t))
			pool = testenv.Pool(t, px.Addr())
		}
		cfg := DefaultConfig()
		cfg.Table = table
		cfg.InsertUnknown = insertUnknown
		cfg.Flush = writebacktest.FlushConfig(t, cfg.Flush, o)
		sink, err := New(pool, src, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return writebacktest.Harness{Sink: sink, Label: "postgres", HasStatus: extra != "", Monotonic: true, Proxy: px}
	}
}

// newTestPostgres builds a sink over a fresh table created with createSQL
// (%s is the table name) and returns it with the table name.
func newTestPostgres(t *testing.T, createSQL string, mod func(*Config)) (*Sink, *writebacktest.FakeSource, *pgxpool.Pool, string) {
	t.Helper()
	pool := testenv.Pool(t, "")
	table := testenv.Name(t)
	if _, err := pool.Exec(context.Background(), fmt.Sprintf(createSQL, pgx.Identifier{table}.Sanitize())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.DropTable(t, pool, pgx.Identifier{table}.Sanitize()) })
	cfg := DefaultConfig()
	cfg.Table = table
	cfg.Flush.Logger = testenv.Logger(t)
	if mod != nil {
		mod(&cfg)
	}
	src := writebacktest.NewFakeSource()
	sink, err := New(pool, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return sink, src, pool, table
}

func TestPostgresSkipsNonIntegerIDs(t *testing.T) {
	sink, src, pool, table := newTestPostgres(t, "CREATE TABLE %s (id bigint PRIMARY KEY, last_seen timestamptz)", nil)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "INSERT INTO "+table+" (id) VALUES (1), (42)"); err != nil {
		t.Fatal(err)
	}
	src.Set(writebacktest.Dev(1, engine.StatusOnline, writebacktest.T0),
		engine.DeviceState{ID: "abc", Status: engine.StatusOnline, LastSeen: writebacktest.T0},
		engine.DeviceState{ID: "1.5", Status: engine.StatusOnline, LastSeen: writebacktest.T0},
		engine.DeviceState{ID: "99999999999999999999", Status: engine.StatusOnline, LastSeen: writebacktest.T0},
		// "0042" and "42" are the same row: the newer wins.
		engine.DeviceState{ID: "0042", Status: engine.StatusOnline, LastSeen: writebacktest.T0.Add(time.Hour)},
		engine.DeviceState{ID: "42", Status: engine.StatusOnline, LastSeen: writebacktest.T0},
	)
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := writebacktest.Counter(sink.Metrics(), "presence_writeback_skipped_total", "postgres"); got != 3 {
		t.Fatalf("skipped_total = %d, want 3", got)
	}
	got, err := sink.ReadStates(ctx, []string{"1", "42"})
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].LastSeen.Equal(writebacktest.T0.Truncate(time.Microsecond)) || !got[1].LastSeen.Equal(writebacktest.T0.Add(time.Hour).Truncate(time.Microsecond)) {
		t.Fatalf("got %+v", got)
	}
}

func TestPostgresUnknownDevicesNotInserted(t *testing.T) {
	sink, src, pool, table := newTestPostgres(t, "CREATE TABLE %s (id bigint PRIMARY KEY, last_seen timestamptz, status text)", nil)
	ctx := context.Background()
	src.Set(writebacktest.Dev(5, engine.StatusOnline, writebacktest.T0))
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows = %d, %v; want 0", n, err)
	}
}

func TestPostgresColumnTypes(t *testing.T) {
	check := func(name, create string, st engine.Status, wantStatus string) {
		t.Run(name, func(t *testing.T) {
			sink, src, pool, table := newTestPostgres(t, create, func(c *Config) { c.InsertUnknown = true })
			ctx := context.Background()
			src.Set(engine.DeviceState{ID: "7", Status: st, LastSeen: writebacktest.T0})
			if err := sink.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			var (
				status string
				seen   string
			)
			q := "SELECT status::text, to_char(last_seen, 'YYYY-MM-DD HH24:MI:SS.US') FROM " + pgx.Identifier{table}.Sanitize()
			if err := pool.QueryRow(ctx, q).Scan(&status, &seen); err != nil {
				t.Fatal(err)
			}
			if status != wantStatus || seen != "2025-12-14 10:30:45.123456" {
				t.Fatalf("got status %q last_seen %q", status, seen)
			}
			got, err := sink.ReadStates(ctx, []string{"7"})
			if err != nil || got[0].Status != st || !got[0].LastSeen.Equal(writebacktest.T0.Truncate(time.Microsecond)) {
				t.Fatalf("ReadStates = %+v, %v", got, err)
			}
		})
	}
	check("boolean", "CREATE TABLE %s (id int PRIMARY KEY, last_seen timestamptz, status boolean)", engine.StatusOffline, "false")
	check("varchar id", "CREATE TABLE %s (id varchar(64) PRIMARY KEY, last_seen timestamptz, status text)", engine.StatusOnline, "online")
	check("timestamp without tz", "CREATE TABLE %s (id bigint PRIMARY KEY, last_seen timestamp, status text)", engine.StatusOnline, "online")

	t.Run("enum", func(t *testing.T) {
		pool := testenv.Pool(t, "")
		typ := testenv.Name(t)
		ctx := context.Background()
		if _, err := pool.Exec(ctx, "CREATE TYPE "+typ+" AS ENUM ('online', 'offline')"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP TYPE IF EXISTS "+typ) })
		check("enum", "CREATE TABLE %s (id bigint PRIMARY KEY, last_seen timestamptz, status "+typ+")", engine.StatusOffline, "offline")
	})
}

func TestPostgresQuotedNames(t *testing.T) {
	pool := testenv.Pool(t, "")
	ctx := context.Background()
	schema := testenv.Name(t) + "_S"
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	tbl := pgx.Identifier{schema, `My "Devices"`}
	if _, err := pool.Exec(ctx, "CREATE TABLE "+tbl.Sanitize()+` ("Device ID" bigint PRIMARY KEY, "Seen; DROP" timestamptz, "St" text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO "+tbl.Sanitize()+` ("Device ID") VALUES (3)`); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Table = schema + `.My "Devices"`
	cfg.IDColumn, cfg.LastSeenColumn, cfg.StatusColumn = "Device ID", "Seen; DROP", "St"
	src := writebacktest.NewFakeSource()
	sink, err := New(pool, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := writebacktest.Dev(3, engine.StatusOffline, writebacktest.T0)
	src.Set(want)
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := writebacktest.StoredMismatch(writebacktest.Harness{Sink: sink, HasStatus: true}, []engine.DeviceState{want}); err != nil {
		t.Fatal(err)
	}
}

func TestPostgresCheck(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t, "")
	check := func(name string, create string, mod func(*Config), want error) {
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Table = testenv.Name(t)
			cfg.Flush.Logger = testenv.Logger(t)
			if create != "" {
				if _, err := pool.Exec(ctx, fmt.Sprintf(create, cfg.Table)); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { testenv.DropTable(t, pool, cfg.Table) })
			}
			if mod != nil {
				mod(&cfg)
			}
			sink, err := New(pool, writebacktest.NewFakeSource(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := sink.Check(ctx); !errors.Is(err, want) {
				t.Fatalf("Check = %v, want %v", err, want)
			}
		})
	}
	check("ok", "CREATE TABLE %s (id bigint, last_seen timestamptz)", nil, nil)
	check("missing table", "", nil, ErrNoTable)
	check("missing column", "CREATE TABLE %s (id bigint, seen timestamptz)", nil, ErrNoTable)
	check("uuid id", "CREATE TABLE %s (id uuid, last_seen timestamptz)", nil, ErrUnsupportedColumn)
	check("int last_seen", "CREATE TABLE %s (id bigint, last_seen bigint)", nil, ErrUnsupportedColumn)
	check("json status", "CREATE TABLE %s (id bigint, last_seen timestamptz, status jsonb)", nil, ErrUnsupportedColumn)
	check("status disabled", "CREATE TABLE %s (id bigint, last_seen timestamptz, status jsonb)",
		func(c *Config) { c.StatusColumn = "" }, nil)
}

// TestPostgresNeverAltersDevicesTable: the user's table keeps its exact
// definition; only rows change.
func TestPostgresNeverAltersDevicesTable(t *testing.T) {
	sink, src, pool, table := newTestPostgres(t, "CREATE TABLE %s (id bigint PRIMARY KEY, last_seen timestamptz)", nil)
	ctx := context.Background()
	def := func() string {
		var s string
		err := pool.QueryRow(ctx, `SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
			FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, table).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := def()
	src.Set(writebacktest.Dev(1, engine.StatusOnline, writebacktest.T0))
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if after := def(); after != before {
		t.Fatalf("table changed: %q -> %q", before, after)
	}
}

// TestPostgresConcurrentSinks: two nodes writing overlapping devices to
// the same table (sorted batches) neither deadlock nor move last_seen back.
func TestPostgresConcurrentSinks(t *testing.T) {
	pool := testenv.Pool(t, "")
	table := testenv.DevicesTable(t, pool, "bigint", ", status text")
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "INSERT INTO "+table+" (id) SELECT generate_series(1, 3000)"); err != nil {
		t.Fatal(err)
	}
	srcs := []*writebacktest.FakeSource{writebacktest.NewFakeSource(), writebacktest.NewFakeSource()}
	for k, src := range srcs {
		cfg := DefaultConfig()
		cfg.Table = table
		cfg.Flush.BatchSize = 500
		cfg.Flush.Logger = testenv.Logger(t)
		sink, err := New(pool, src, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3000 {
			// Node k is newer on every other device.
			off := time.Duration((i+k)%2) * time.Second
			src.Set(writebacktest.Dev(3000-i, engine.StatusOnline, writebacktest.T0.Add(off)))
		}
		t.Run(strconv.Itoa(k), func(t *testing.T) {
			t.Parallel()
			if err := sink.Flush(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(func() {
		var older int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE last_seen IS NULL OR last_seen < $1", writebacktest.T0.Add(time.Second)).Scan(&older); err != nil {
			t.Error(err)
		} else if older != 0 {
			t.Errorf("%d rows kept the older last_seen", older)
		}
	})
}

func TestPostgresConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"no table":       func(c *Config) { c.Table = "" },
		"three parts":    func(c *Config) { c.Table = "a.b.c" },
		"empty part":     func(c *Config) { c.Table = "a." },
		"no id":          func(c *Config) { c.IDColumn = "" },
		"same columns":   func(c *Config) { c.StatusColumn = c.IDColumn },
		"no batch":       func(c *Config) { c.Flush.BatchSize = 0 },
		"too concurrent": func(c *Config) { c.Flush.Concurrency = 1000 },
	} {
		c := DefaultConfig()
		mod(&c)
		if err := c.Validate(); !errors.Is(err, writeback.ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
}

func postgresKinds() map[string]writebacktest.NewHarness {
	return map[string]writebacktest.NewHarness{
		"postgres/bigint+status":  newPostgresHarness("bigint", ", status text", false),
		"postgres/text-no-status": newPostgresHarness("text", "", false),
		"postgres/insert-unknown": newPostgresHarness("bigint", ", status varchar(16)", true),
	}
}

// TestConformance runs the state sinks' shared behaviour tests.
func TestConformance(t *testing.T) { writebacktest.RunConformance(t, postgresKinds()) }

// TestOutage: see writebacktest.RunOutage.
func TestOutage(t *testing.T) { writebacktest.RunOutage(t, postgresKinds()) }

// The UPDATE joins by index lookups only where an index leads with the id
// column and the staged id compares with it without a cast: elsewhere a
// nested loop would scan the table for every row of a batch.
func TestPostgresJoinByIndex(t *testing.T) {
	check := func(name, create string, want bool) {
		t.Run(name, func(t *testing.T) {
			sink, _, _, _ := newTestPostgres(t, create, nil)
			plan, err := sink.prepare(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(plan.create, "enable_mergejoin = off"); got != want {
				t.Fatalf("index lookups forced: %v, want %v (%s)", got, want, plan.create)
			}
		})
	}
	check("primary key", "CREATE TABLE %s (id bigint PRIMARY KEY, last_seen timestamptz, status text)", true)
	check("int4 unique", "CREATE TABLE %s (id integer UNIQUE, last_seen timestamptz)", true)
	check("text primary key", "CREATE TABLE %s (id text PRIMARY KEY, last_seen timestamptz)", true)
	check("no index", "CREATE TABLE %s (id bigint, last_seen timestamptz)", false)
	check("index led by another column", "CREATE TABLE %s (id bigint, last_seen timestamptz, UNIQUE (last_seen, id))", false)
	check("char(n)", "CREATE TABLE %s (id char(8) PRIMARY KEY, last_seen timestamptz)", false)
}
