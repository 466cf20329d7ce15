package testenv

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/wire"
)

// Logger is a test's logger: everything on stderr with -v, nothing
// otherwise.
func Logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// RedisClient connects to the test Redis (through addr, a Proxy, if not
// empty: then it fails fast, for tests of outages) and closes it when the
// test ends.
func RedisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(RedisURL())
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

// CleanupRedisPrefix deletes every key under prefix when the test ends.
func CleanupRedisPrefix(t testing.TB, c redis.UniversalClient, prefix string) {
	t.Cleanup(func() { DeleteRedisPrefix(t, c, prefix) })
}

// DeleteRedisPrefix deletes every key under prefix (SCAN, UNLINK).
func DeleteRedisPrefix(t testing.TB, c redis.UniversalClient, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	it := c.Scan(ctx, 0, wire.RedisMatch(prefix), 10000).Iterator()
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

// Pool connects to the test Postgres (through addr, a Proxy, if not
// empty) and closes it when the test ends.
func Pool(t testing.TB, addr string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(DatabaseURL())
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

// DevicesTable creates a devices table named after the test, like the
// seed's (id idType PRIMARY KEY, last_seen timestamptz) plus extra column
// definitions, and drops it when the test ends.
func DevicesTable(t testing.TB, pool *pgxpool.Pool, idType string, extra string) string {
	t.Helper()
	name := Name(t)
	sql := "CREATE TABLE " + name + " (id " + idType + " PRIMARY KEY, last_seen timestamptz" + extra + ")"
	ctx := context.Background()
	if _, err := pool.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { DropTable(t, pool, name) })
	return name
}

// DropTable drops table name if it exists.
func DropTable(t testing.TB, pool *pgxpool.Pool, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := pool.Exec(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
		t.Errorf("drop %s: %v", name, err)
	}
}
