package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/wire"
)

// SeedStatus is what the seed tracker reports for a device.
type SeedStatus string

// The seed's two statuses.
const (
	SeedOnline  SeedStatus = "online"
	SeedOffline SeedStatus = "offline"
)

// SeedConfig configures a SeedTracker; the zero values are those of the
// seed's constructor except the names, which tests make unique.
type SeedConfig struct {
	// KeyPrefix replaces the seed's "device:" (keys {prefix}status:{id} and
	// {prefix}lastseen:{id}).
	KeyPrefix string
	// TTL of both keys; the seed's 24 h when zero.
	TTL time.Duration
	// Timeout is the seed's timeout_seconds; 60 s when zero.
	Timeout time.Duration
	// Table is the devices table; StatusColumn its status column, written
	// by sync_status_to_database ("status" when empty).
	Table        string
	StatusColumn string
	// DisableDBSync is the seed's enable_db_sync=False.
	DisableDBSync bool
	// Now is the clock (datetime.now(timezone.utc)); nil is time.Now.
	Now func() time.Time
}

// SeedTracker is a faithful Go port of the seed's DeviceStatusTracker
// (SEED.md), the design presence replaces, used as the baseline of
// BenchmarkEndToEnd. Every method does exactly the round trips the Python
// does, one after another, with nothing batched or pipelined:
//
//   - UpdateDeviceActivity (update_device_activity, called for every
//     telemetry message): SETEX status "online", SETEX lastseen (ISO 8601),
//     then UPDATE devices SET last_seen = $1 WHERE id = $2 (autocommit).
//   - CheckAndUpdateStatus (check_and_update_status, the background
//     monitor's per-device step): GET lastseen, GET status, and when they
//     disagree SETEX status and UPDATE devices SET status.
//
// The port is kinder to the seed than the original: Go instead of Python,
// no GIL, a pooled Redis client and pgx's prepared statements.
type SeedTracker struct {
	rdb *redis.Client
	db  *pgxpool.Pool
	cfg SeedConfig

	updateLastSeen, updateStatus string
}

// NewSeedTracker builds a tracker on the caller's clients (not closed by it).
// db may be nil when DisableDBSync is set.
func NewSeedTracker(rdb *redis.Client, db *pgxpool.Pool, cfg SeedConfig) (*SeedTracker, error) {
	if cfg.TTL == 0 {
		cfg.TTL = 24 * time.Hour
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.StatusColumn == "" {
		cfg.StatusColumn = "status"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if rdb == nil || (db == nil && !cfg.DisableDBSync) || (cfg.Table == "" && !cfg.DisableDBSync) {
		return nil, errors.New("seed tracker: needs a Redis client, and a pool and table unless DB sync is disabled")
	}
	table := pgIdent(cfg.Table)
	return &SeedTracker{
		rdb: rdb, db: db, cfg: cfg,
		updateLastSeen: "UPDATE " + table + " SET last_seen = $1 WHERE id = $2",
		updateStatus:   "UPDATE " + table + " SET " + pgIdent(cfg.StatusColumn) + " = $1 WHERE id = $2",
	}, nil
}

func (s *SeedTracker) statusKey(id int64) string {
	return s.cfg.KeyPrefix + "status:" + strconv.FormatInt(id, 10)
}

func (s *SeedTracker) lastSeenKey(id int64) string {
	return s.cfg.KeyPrefix + "lastseen:" + strconv.FormatInt(id, 10)
}

// UpdateDeviceActivity is update_device_activity: the device is online and
// was seen now. Three round trips: two Redis SETs with EX and, with DB sync,
// one Postgres UPDATE.
func (s *SeedTracker) UpdateDeviceActivity(ctx context.Context, id int64) error {
	now := s.cfg.Now().UTC()
	if err := s.rdb.Set(ctx, s.statusKey(id), string(SeedOnline), s.cfg.TTL).Err(); err != nil {
		return fmt.Errorf("seed: set status: %w", err)
	}
	if err := s.rdb.Set(ctx, s.lastSeenKey(id), wire.FormatTime(now), s.cfg.TTL).Err(); err != nil {
		return fmt.Errorf("seed: set last seen: %w", err)
	}
	if s.cfg.DisableDBSync {
		return nil
	}
	return s.SyncLastSeenToDatabase(ctx, id, now)
}

// SyncLastSeenToDatabase is sync_last_seen_to_database: one UPDATE, no guard
// against moving last_seen backwards (the seed has none).
func (s *SeedTracker) SyncLastSeenToDatabase(ctx context.Context, id int64, at time.Time) error {
	if _, err := s.db.Exec(ctx, s.updateLastSeen, at, id); err != nil {
		return fmt.Errorf("seed: update last_seen: %w", err)
	}
	return nil
}

// SyncStatusToDatabase is sync_status_to_database: one UPDATE.
func (s *SeedTracker) SyncStatusToDatabase(ctx context.Context, id int64, status SeedStatus) error {
	if _, err := s.db.Exec(ctx, s.updateStatus, string(status), id); err != nil {
		return fmt.Errorf("seed: update status: %w", err)
	}
	return nil
}

// LastSeen is get_last_seen: one GET; ok is false when the key is missing.
func (s *SeedTracker) LastSeen(ctx context.Context, id int64) (t time.Time, ok bool, err error) {
	v, err := s.rdb.Get(ctx, s.lastSeenKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("seed: get last seen: %w", err)
	}
	t, err = wire.ParseTime(v) // datetime.fromisoformat
	if err != nil {
		return time.Time{}, false, fmt.Errorf("seed: last seen %q: %w", v, err)
	}
	return t, true, nil
}

// IsDeviceOnline is is_device_online: seen less than Timeout ago.
func (s *SeedTracker) IsDeviceOnline(ctx context.Context, id int64) (bool, error) {
	t, ok, err := s.LastSeen(ctx, id)
	if err != nil || !ok {
		return false, err
	}
	return s.cfg.Now().Sub(t) < s.cfg.Timeout, nil
}

// DeviceStatus is get_device_status: derived from the last-seen time only.
func (s *SeedTracker) DeviceStatus(ctx context.Context, id int64) (SeedStatus, error) {
	online, err := s.IsDeviceOnline(ctx, id)
	if err != nil {
		return "", err
	}
	if online {
		return SeedOnline, nil
	}
	return SeedOffline, nil
}

// CheckAndUpdateStatus is check_and_update_status: derive the status from
// the last-seen time, compare it with the cached one and, when it changed,
// write it to Redis and the database. Two round trips when nothing changed,
// four when it did.
func (s *SeedTracker) CheckAndUpdateStatus(ctx context.Context, id int64) (SeedStatus, error) {
	current, err := s.DeviceStatus(ctx, id)
	if err != nil {
		return "", err
	}
	cached, err := s.rdb.Get(ctx, s.statusKey(id)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("seed: get status: %w", err)
	}
	if cached == string(current) {
		return current, nil
	}
	if err := s.rdb.Set(ctx, s.statusKey(id), string(current), s.cfg.TTL).Err(); err != nil {
		return "", fmt.Errorf("seed: set status: %w", err)
	}
	if !s.cfg.DisableDBSync {
		if err := s.SyncStatusToDatabase(ctx, id, current); err != nil {
			return "", err
		}
	}
	return current, nil
}

// Monitor is the seed's background monitoring task: every interval it runs
// CheckAndUpdateStatus for every device, one after another, until ctx ends.
// offline, if not nil, is called for each device found offline (the seed's
// notify_admin). Errors are counted in errs and skipped, as the seed logs
// and continues: Monitor returns how many checks failed, and the first
// failure, once ctx ends.
func (s *SeedTracker) Monitor(ctx context.Context, ids []int64, interval time.Duration, offline func(id int64)) (failed int, first error) {
	for {
		for _, id := range ids {
			if ctx.Err() != nil {
				return failed, first
			}
			st, err := s.CheckAndUpdateStatus(ctx, id)
			switch {
			case err != nil:
				if ctx.Err() == nil {
					failed++
					if first == nil {
						first = fmt.Errorf("device %d: %w", id, err)
					}
				}
			case st == SeedOffline && offline != nil:
				offline(id)
			}
		}
		select {
		case <-ctx.Done():
			return failed, first
		case <-time.After(interval):
		}
	}
}

// pgIdent quotes a possibly schema-qualified identifier.
func pgIdent(name string) string { return pgx.Identifier(strings.Split(name, ".")).Sanitize() }
