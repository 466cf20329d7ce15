package report

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/presence-dev/presence/internal/pgident"
)

// ErrInvalidConfig wraps every error of Config.Validate.
var ErrInvalidConfig = errors.New("report: invalid config")

// Config configures a Report. Start from DefaultConfig; Validate (also
// called by New) reports every problem at once.
type Config struct {
	// Table is the history table postgres.History fills, (device_id text,
	// status text, changed_at timestamptz, cause text) with an index on
	// (device_id, changed_at); optionally schema-qualified ("ops.history").
	// It is quoted as an identifier, never interpolated raw. Default
	// "device_status_history", the history's own default
	// (writeback/postgres).
	Table string

	// DefaultHistoryLimit is how many changes GET .../history returns
	// without ?limit=; MaxHistoryLimit the most it accepts (a larger limit
	// is a 400). Each change costs about 100 bytes of JSON.
	DefaultHistoryLimit, MaxHistoryLimit int

	// DefaultListLimit is how many devices GET /v1/devices returns without
	// ?limit=; MaxListLimit the most it accepts. The scan keeps only that
	// many devices (a heap), about 150 bytes each, whatever the fleet size.
	DefaultListLimit, MaxListLimit int

	// DefaultWindow is the uptime window when ?from= is absent: from =
	// to - DefaultWindow. Default 24 h.
	DefaultWindow time.Duration

	// QueryTimeout bounds one history query (the fleet figure reads every
	// row before the window's end, see FleetUptime). Default 10 s.
	QueryTimeout time.Duration

	// MaxConcurrentScans bounds the whole-fleet requests running at once
	// (GET /v1/devices scans every device of the engine; GET /v1/uptime
	// reads the history of every device); later ones wait for a slot, or
	// until their client gives up. Default 2: each scan keeps a core busy.
	MaxConcurrentScans int

	// MaxConcurrentQueries bounds the PostgreSQL queries of the history
	// endpoints running at once (history, uptime, fleet uptime); later
	// ones wait for a slot, or until their client gives up. The pool is
	// shared with the write-behind (the devices table and the history),
	// whose flushes must not wait behind a burst of report requests: keep
	// it below the pool's size (pgxpool's default: 4, or the number of
	// CPUs if more). Default 2.
	MaxConcurrentQueries int

	// Cluster, if set, answers GET /v1/devices for the whole cluster (a
	// clustered daemon): it returns every answering node's Longest of q and
	// the nodes that did not answer in time; the lists are merged
	// (MergeLists) and the answer says it is partial. A request with
	// scope=local is answered from this node's engine alone. Nil: this
	// node's engine.
	Cluster func(ctx context.Context, q ListQuery) (lists []List, missing []string)

	// ClusterTimeout bounds how long a cluster-wide list waits for the
	// nodes (with Cluster). Default 1 s.
	ClusterTimeout time.Duration

	// Now is the clock: "now" of relative times, the end of open windows,
	// the offline durations of the live list. Nil means time.Now. Give the
	// engine's clock.
	Now func() time.Time

	// Logger receives database errors, at most one line per 10 s. Nil
	// means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		Table:                "device_status_history",
		DefaultHistoryLimit:  100,
		MaxHistoryLimit:      10000,
		DefaultListLimit:     100,
		MaxListLimit:         10000,
		DefaultWindow:        24 * time.Hour,
		QueryTimeout:         10 * time.Second,
		MaxConcurrentScans:   2,
		MaxConcurrentQueries: 2,
		ClusterTimeout:       time.Second,
	}
}

// Validate reports every invalid field, wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if _, err := pgident.ParseTable(c.Table); err != nil {
		bad("Table: %v", err)
	}
	if c.DefaultHistoryLimit < 1 || c.MaxHistoryLimit < c.DefaultHistoryLimit || c.MaxHistoryLimit > 1_000_000 {
		bad("need 1 <= DefaultHistoryLimit <= MaxHistoryLimit <= 1e6, got %d, %d", c.DefaultHistoryLimit, c.MaxHistoryLimit)
	}
	if c.DefaultListLimit < 1 || c.MaxListLimit < c.DefaultListLimit || c.MaxListLimit > 1_000_000 {
		bad("need 1 <= DefaultListLimit <= MaxListLimit <= 1e6, got %d, %d", c.DefaultListLimit, c.MaxListLimit)
	}
	if c.DefaultWindow <= 0 {
		bad("DefaultWindow must be > 0, got %v", c.DefaultWindow)
	}
	if c.QueryTimeout <= 0 {
		bad("QueryTimeout must be > 0, got %v", c.QueryTimeout)
	}
	if c.MaxConcurrentQueries < 1 {
		bad("MaxConcurrentQueries must be >= 1, got %d", c.MaxConcurrentQueries)
	}
	if c.MaxConcurrentScans < 1 {
		bad("MaxConcurrentScans must be >= 1, got %d", c.MaxConcurrentScans)
	}
	if c.Cluster != nil && c.ClusterTimeout <= 0 {
		bad("ClusterTimeout must be > 0 with Cluster, got %v", c.ClusterTimeout)
	}
	return errors.Join(errs...)
}
