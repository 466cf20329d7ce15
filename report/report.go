package report

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/pgident"
)

// ErrNoHistory is returned by the history queries of a Report built without
// a database: the daemon runs without PostgreSQL or without a history table.
var ErrNoHistory = errors.New("report: no history database configured")

// Live is the live state the device list reads: *engine.Engine satisfies
// it.
type Live interface {
	// Range calls fn with every device until fn returns false, without
	// holding a lock during fn.
	Range(fn func(engine.DeviceState) bool)
}

// Report answers history, uptime and operations queries: the history from
// the PostgreSQL table postgres.History fills, the device list from the
// live engine. It starts no goroutine; its methods are safe for concurrent
// use.
type Report struct {
	pool    *pgxpool.Pool // nil: no history
	live    Live
	cfg     Config
	now     func() time.Time
	log     *slog.Logger
	scans   chan struct{} // semaphore of MaxConcurrentScans
	queries chan struct{} // semaphore of MaxConcurrentQueries

	qHistory, qUptime, qFleet string

	logMu   sync.Mutex
	logNext time.Time
	logSupp int
}

// New builds a Report. pool may be nil: the history endpoints then answer
// 503 and the methods ErrNoHistory. live is the engine.
func New(pool *pgxpool.Pool, live Live, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if live == nil {
		return nil, fmt.Errorf("%w: nil Live", ErrInvalidConfig)
	}
	id, _ := pgident.ParseTable(cfg.Table)
	t := id.Sanitize()
	r := &Report{
		pool:    pool,
		live:    live,
		cfg:     cfg,
		now:     cfg.Now,
		log:     cfg.Logger,
		scans:   make(chan struct{}, cfg.MaxConcurrentScans),
		queries: make(chan struct{}, cfg.MaxConcurrentQueries),

		// Newest first; ctid orders changes of equal time as they were
		// written (the writer appends in engine order).
		qHistory: "SELECT status, changed_at, cause FROM " + t +
			" WHERE device_id = $1 AND changed_at >= $2 AND changed_at < $3" +
			" ORDER BY changed_at DESC, ctid DESC LIMIT $4",
		// The last change at or before the window's start (the status at
		// from), then the changes inside it; both read the index on
		// (device_id, changed_at).
		qUptime: "SELECT status, changed_at FROM (" +
			"(SELECT status, changed_at, ctid, 0 AS part FROM " + t +
			" WHERE device_id = $1 AND changed_at <= $2 ORDER BY changed_at DESC, ctid DESC LIMIT 1)" +
			" UNION ALL " +
			"(SELECT status, changed_at, ctid, 1 AS part FROM " + t +
			" WHERE device_id = $1 AND changed_at > $2 AND changed_at < $3)" +
			") u ORDER BY part, changed_at, ctid",
		qFleet: fleetQuery(t),
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	return r, nil
}

// fleetQuery is the fleet availability in one statement. Each change
// becomes a period [changed_at, next change) with LEAD over the device's
// changes; the periods overlapping [$1, $2) are clipped to it and summed
// per device, then over devices. $3 is the window in seconds.
func fleetQuery(t string) string {
	return `WITH h AS (
	SELECT device_id, status, changed_at,
	       lead(changed_at) OVER (PARTITION BY device_id ORDER BY changed_at, ctid) AS next_at
	FROM ` + t + `
	WHERE changed_at < $2
), p AS (
	SELECT device_id, status,
	       extract(epoch FROM least(coalesce(next_at, $2), $2) - greatest(changed_at, $1))::float8 AS secs
	FROM h
	WHERE coalesce(next_at, $2) > $1
), d AS (
	SELECT device_id,
	       coalesce(sum(secs) FILTER (WHERE status = 'online'), 0) AS online,
	       coalesce(sum(secs) FILTER (WHERE status IN ('online', 'offline')), 0) AS known
	FROM p
	GROUP BY device_id
)
SELECT count(*), coalesce(sum(online), 0), coalesce(sum(known), 0), coalesce(avg(online / $3::float8), 0)
FROM d`
}

// Now is the Report's clock.
func (r *Report) Now() time.Time { return r.now() }

// History returns the changes of device id with from <= changed_at < to,
// newest first, at most limit (> 0). A zero from or to is unbounded. To
// page back, ask again with to set to the oldest time returned (changes
// sharing that exact time may then repeat or, beyond limit, be skipped).
// A history table that does not exist yet (nothing was written) reads as
// empty.
func (r *Report) History(ctx context.Context, id string, from, to time.Time, limit int) ([]Change, error) {
	if r.pool == nil {
		return nil, ErrNoHistory
	}
	if limit <= 0 {
		return nil, fmt.Errorf("report: limit must be > 0, got %d", limit)
	}
	if err := take(ctx, r.queries); err != nil {
		return nil, err
	}
	defer func() { <-r.queries }()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	defer cancel()
	rows, err := r.pool.Query(ctx, r.qHistory, id, bound(from, pgtype.NegativeInfinity),
		bound(to, pgtype.Infinity), limit)
	if err != nil {
		if isUndefinedTable(err) {
			return []Change{}, nil
		}
		return nil, r.dbErr(err)
	}
	defer rows.Close()
	out := make([]Change, 0, min(limit, 256))
	for rows.Next() {
		var st, cause string
		var at time.Time
		if err := rows.Scan(&st, &at, &cause); err != nil {
			return nil, r.dbErr(err)
		}
		out = append(out, Change{Status: engine.ParseStatus(st), At: at.UTC(), Cause: cause})
	}
	if err := rows.Err(); err != nil {
		if isUndefinedTable(err) {
			return []Change{}, nil
		}
		return nil, r.dbErr(err)
	}
	return out, nil
}

// Uptime computes the uptime of device id over [from, to) (to clamped to
// now), with UptimeOf's rules: the last change at or before from gives the
// status at from; without one the device is unknown until its first change.
// Rows stream through the computation: a long window costs time, not
// memory.
func (r *Report) Uptime(ctx context.Context, id string, from, to time.Time) (Uptime, error) {
	if r.pool == nil {
		return Uptime{}, ErrNoHistory
	}
	acc := newUptimeAcc(from, to, r.now())
	from, to = acc.u.From, acc.u.To
	if !to.After(from) {
		return acc.result(), nil
	}
	if err := take(ctx, r.queries); err != nil {
		return Uptime{}, err
	}
	defer func() { <-r.queries }()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	defer cancel()
	rows, err := r.pool.Query(ctx, r.qUptime, id, from, to)
	if err != nil {
		if isUndefinedTable(err) { // nothing written yet: all unknown
			return acc.result(), nil
		}
		return Uptime{}, r.dbErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var at time.Time
		if err := rows.Scan(&st, &at); err != nil {
			return Uptime{}, r.dbErr(err)
		}
		acc.add(Change{Status: engine.ParseStatus(st), At: at})
	}
	if err := rows.Err(); err != nil {
		if isUndefinedTable(err) {
			return newUptimeAcc(from, to, to).result(), nil
		}
		return Uptime{}, r.dbErr(err)
	}
	return acc.result(), nil
}

// Fleet is the availability of the fleet over a window.
type Fleet struct {
	// From and To are the window, To clamped to now.
	From, To time.Time
	// Devices counts the devices whose status is known, or becomes known,
	// during the window: those with a change before To (a device whose last
	// change was long before From counts, with that status).
	Devices int
	// MeanFraction is the mean over Devices of each one's Uptime fraction
	// (online time / window; time before a device's first change counts as
	// not online, as in Uptime). 0 without devices.
	MeanFraction float64
	// OnlineSeconds and KnownSeconds sum, over Devices, the time online and
	// the time with a known status (online or offline) in the window.
	OnlineSeconds, KnownSeconds float64
	// Availability is OnlineSeconds / KnownSeconds: the share of
	// device-time online while known, which does not penalize devices added
	// during the window. 0 without known time.
	Availability float64
}

// FleetUptime computes the fleet's availability over [from, to) (to
// clamped to now) in one SQL statement. It reads every history row before
// to (the last change before from of a device may be arbitrarily old): its
// cost grows with the table, not with the window. It waits for one of
// Config.MaxConcurrentScans slots.
func (r *Report) FleetUptime(ctx context.Context, from, to time.Time) (Fleet, error) {
	if r.pool == nil {
		return Fleet{}, ErrNoHistory
	}
	now := r.now()
	if to.After(now) {
		to = now
	}
	if to.Before(from) {
		to = from
	}
	f := Fleet{From: from, To: to}
	if !to.After(from) {
		return f, nil
	}
	if err := r.acquire(ctx); err != nil {
		return Fleet{}, err
	}
	defer r.release()
	if err := take(ctx, r.queries); err != nil {
		return Fleet{}, err
	}
	defer func() { <-r.queries }()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.QueryTimeout)
	defer cancel()
	err := r.pool.QueryRow(ctx, r.qFleet, from, to, to.Sub(from).Seconds()).
		Scan(&f.Devices, &f.OnlineSeconds, &f.KnownSeconds, &f.MeanFraction)
	if err != nil {
		if isUndefinedTable(err) {
			return Fleet{From: from, To: to}, nil
		}
		return Fleet{}, r.dbErr(err)
	}
	if f.KnownSeconds > 0 {
		f.Availability = f.OnlineSeconds / f.KnownSeconds
	}
	return f, nil
}

// bound is t as a query parameter, or the infinity inf for a zero t.
func bound(t time.Time, inf pgtype.InfinityModifier) pgtype.Timestamptz {
	if t.IsZero() {
		return pgtype.Timestamptz{InfinityModifier: inf, Valid: true}
	}
	return pgtype.Timestamptz{Time: t, Valid: true}
}

func (r *Report) acquire(ctx context.Context) error { return take(ctx, r.scans) }

// take waits for a slot of the semaphore sem, or until ctx is done.
func take(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Report) release() { <-r.scans }

func isUndefinedTable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42P01"
}

// dbErr wraps a database error, logged at a limited rate.
func (r *Report) dbErr(err error) error {
	if !errors.Is(err, context.Canceled) {
		r.logLimited("report: history query failed", err)
	}
	return fmt.Errorf("report: history query: %w", err)
}

// logLimited logs at most one line per 10 s, with how many were suppressed.
func (r *Report) logLimited(msg string, err error) {
	r.logMu.Lock()
	now := time.Now()
	if now.Before(r.logNext) {
		r.logSupp++
		r.logMu.Unlock()
		return
	}
	n := r.logSupp
	r.logSupp, r.logNext = 0, now.Add(10*time.Second)
	r.logMu.Unlock()
	r.log.Error(msg, "error", err.Error(), "suppressed", n)
}
