package writeback

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// fakeSource is an in-memory Source: the current state of every device and
// a dirty set of ids, like the engine's Tracker.
type fakeSource struct {
	mu     sync.Mutex
	states map[string]engine.DeviceState
	dirty  map[string]struct{}
	order  []string // dirty ids in insertion order (may hold stale ones)
	maxLen int      // largest Len ever seen
	drains int
}

func newFakeSource() *fakeSource {
	return &fakeSource{states: map[string]engine.DeviceState{}, dirty: map[string]struct{}{}}
}

// Set records new current states and marks them dirty.
func (s *fakeSource) Set(states ...engine.DeviceState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range states {
		s.states[st.ID] = st
		s.markLocked(st.ID)
	}
}

func (s *fakeSource) markLocked(id string) {
	if _, ok := s.dirty[id]; ok {
		return
	}
	s.dirty[id] = struct{}{}
	s.order = append(s.order, id)
	s.maxLen = max(s.maxLen, len(s.dirty))
}

func (s *fakeSource) Drain(dst []engine.DeviceState, limit int) []engine.DeviceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drains++
	n := 0
	i := 0
	for ; i < len(s.order) && n < limit; i++ {
		id := s.order[i]
		if _, ok := s.dirty[id]; !ok {
			continue
		}
		delete(s.dirty, id)
		dst = append(dst, s.states[id])
		n++
	}
	s.order = slices.Delete(s.order, 0, i)
	return dst
}

func (s *fakeSource) MarkDirty(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.markLocked(id)
	}
}

func (s *fakeSource) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.dirty)
}

func (s *fakeSource) MaxLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxLen
}

// Snapshot returns every device's current state, sorted by id.
func (s *fakeSource) Snapshot() []engine.DeviceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]engine.DeviceState, 0, len(s.states))
	for _, st := range s.states {
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b engine.DeviceState) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newRedisClient connects to the test Redis (through addr if not empty).
func newRedisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(testenv.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" { // through a test proxy: fail fast, the sink retries
		opts.Addr = addr
		opts.MaxRetries = -1
		opts.DialTimeout = 300 * time.Millisecond
		opts.ReadTimeout = time.Second
		opts.WriteTimeout = time.Second
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	if addr == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatalf("redis at %s: %v (set REDIS_URL)", opts.Addr, err)
		}
	}
	return c
}

// cleanupRedisPrefix deletes every key under prefix when the test ends.
func cleanupRedisPrefix(t testing.TB, c redis.UniversalClient, prefix string) {
	t.Cleanup(func() { deleteRedisPrefix(t, c, prefix) })
}

func deleteRedisPrefix(t testing.TB, c redis.UniversalClient, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	it := c.Scan(ctx, 0, escapeGlob(prefix)+"*", 10000).Iterator()
	keys := make([]string, 0, 10000)
	flush := func() {
		if len(keys) > 0 {
			if err := c.Unlink(ctx, keys...).Err(); err != nil {
				t.Errorf("cleanup %s: %v", prefix, err)
			}
			keys = keys[:0]
		}
	}
	for it.Next(ctx) {
		keys = append(keys, it.Val())
		if len(keys) == cap(keys) {
			flush()
		}
	}
	flush()
	if err := it.Err(); err != nil {
		t.Errorf("cleanup scan %s: %v", prefix, err)
	}
}

// newPool connects to the test Postgres (through addr if not empty).
func newPool(t testing.TB, addr string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testenv.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		host, port, _ := net.SplitHostPort(addr)
		cfg.ConnConfig.Host = host
		var p uint16
		for _, c := range port {
			p = p*10 + uint16(c-'0')
		}
		cfg.ConnConfig.Port = p
		cfg.ConnConfig.ConnectTimeout = time.Second
		cfg.ConnConfig.Fallbacks = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if addr == "" {
		if err := pool.Ping(ctx); err != nil {
			t.Fatalf("postgres: %v (set DATABASE_URL)", err)
		}
	}
	return pool
}

// createDevicesTable creates a uniquely named devices table like the
// seed's (id bigint primary key, last_seen timestamptz) plus extra column
// definitions, and drops it when the test ends.
func createDevicesTable(t testing.TB, pool *pgxpool.Pool, idType string, extra string) string {
	t.Helper()
	name := testenv.Name(t)
	sql := "CREATE TABLE " + name + " (id " + idType + " PRIMARY KEY, last_seen timestamptz" + extra + ")"
	ctx := context.Background()
	if _, err := pool.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropTable(t, pool, name) })
	return name
}

func dropTable(t testing.TB, pool *pgxpool.Pool, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
		t.Errorf("drop %s: %v", name, err)
	}
}

var errNotYet = errors.New("not yet")
