package writeback

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/pgident"
)

// PostgresConfig configures the Postgres state sink. The devices table
// belongs to the user: this package never creates or alters it; it only
// updates (and, with InsertUnknown, inserts) rows.
type PostgresConfig struct {
	// Table is the devices table, optionally schema-qualified
	// ("public.devices"; split on '.'). Default "devices". Names are
	// quoted, so they are case-sensitive.
	Table string
	// IDColumn holds the device id. Default "id". Its type is detected: an
	// integer column (bigint as in the seed, integer, smallint) receives
	// the id parsed as a decimal integer, and ids that are not (or out of
	// range) are counted in skipped_total and not written; a text,
	// varchar or char column receives the id as is.
	IDColumn string
	// LastSeenColumn is the last message time (timestamptz; a timestamp
	// without time zone receives UTC). Default "last_seen". It never moves
	// backwards: a row is only updated by a newer time (or, for the status,
	// the same time).
	LastSeenColumn string
	// StatusColumn receives "online"/"offline" when it exists (text,
	// varchar, an enum with those labels, or boolean: true for online).
	// Default "status". Empty: never written. A missing column is not an
	// error (the seed's table has none).
	StatusColumn string
	// InsertUnknown inserts devices that have no row (INSERT ... ON
	// CONFLICT on IDColumn, which then needs a unique index; other
	// columns of the table get their defaults). Default false: unknown
	// devices are ignored, as the seed only updated existing rows.
	InsertUnknown bool
	// Flush is the write-behind loop. BatchSize is rows per transaction
	// (one COPY into a temporary staging table plus one UPDATE ... FROM).
	// Defaults: Interval 1 s, FlushAt 100000, BatchSize 20000,
	// Concurrency 1 (see BENCHMARKS.fragment.md).
	Flush FlushConfig
}

// DefaultPostgresConfig returns the defaults documented on PostgresConfig.
func DefaultPostgresConfig() PostgresConfig {
	return PostgresConfig{
		Table:          "devices",
		IDColumn:       "id",
		LastSeenColumn: "last_seen",
		StatusColumn:   "status",
		Flush: FlushConfig{
			Interval:     time.Second,
			FlushAt:      100000,
			BatchSize:    20000,
			Concurrency:  1,
			MinBackoff:   200 * time.Millisecond,
			MaxBackoff:   15 * time.Second,
			WriteTimeout: 30 * time.Second,
		},
	}
}

// Validate reports the first invalid field, wrapping ErrInvalidConfig.
func (c PostgresConfig) Validate() error {
	if _, err := pgident.ParseTable(c.Table); err != nil {
		return fmt.Errorf("%w: postgres: Table: %v", ErrInvalidConfig, err)
	}
	if c.IDColumn == "" || c.LastSeenColumn == "" {
		return fmt.Errorf("%w: postgres: IDColumn and LastSeenColumn must be set", ErrInvalidConfig)
	}
	if c.IDColumn == c.LastSeenColumn || (c.StatusColumn != "" && (c.StatusColumn == c.IDColumn || c.StatusColumn == c.LastSeenColumn)) {
		return fmt.Errorf("%w: postgres: column names must differ", ErrInvalidConfig)
	}
	return c.Flush.validate("postgres")
}

// Postgres keeps the devices table in step with the engine: each flush
// drains the dirty devices from the Source and writes them in batches of
// Flush.BatchSize, each deduplicated and sorted by id, with one COPY into a
// temporary staging table and one UPDATE ... FROM.
//
// The table layout is detected on the first flush (and again after a
// failed one), so the sink starts while Postgres is down.
type Postgres struct {
	pool *pgxpool.Pool
	cfg  PostgresConfig
	f    *flusher

	mu     sync.Mutex // guards plan
	plan   *pgPlan
	rows   [][]pgRow // per concurrent batch; indexed by batchIndex
	bufIdx chan int
}

// NewPostgres builds a Postgres sink. It does no I/O; Run starts the flush
// loop. The pool is the caller's: Close does not close it.
func NewPostgres(pool *pgxpool.Pool, src Source, cfg PostgresConfig) (*Postgres, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || src == nil {
		return nil, fmt.Errorf("%w: postgres: nil pool or source", ErrInvalidConfig)
	}
	p := &Postgres{
		pool:   pool,
		cfg:    cfg,
		rows:   make([][]pgRow, cfg.Flush.Concurrency),
		bufIdx: make(chan int, cfg.Flush.Concurrency),
	}
	for i := range cfg.Flush.Concurrency {
		p.bufIdx <- i
	}
	p.f = newFlusher("postgres", "rows", src, cfg.Flush, p)
	return p, nil
}

// Run flushes every Flush.Interval (earlier once Flush.FlushAt devices are
// dirty) until ctx is done or Close is called; see Redis.Run.
func (p *Postgres) Run(ctx context.Context) error { return p.f.run(ctx) }

// Flush writes every device that is dirty now; see Redis.Flush.
func (p *Postgres) Flush(ctx context.Context) error { return p.f.flush(ctx) }

// Close stops Run and flushes what is still dirty within ctx; see
// Redis.Close.
func (p *Postgres) Close(ctx context.Context) error { return p.f.close(ctx) }

// Metrics returns the set holding this sink's metrics.
func (p *Postgres) Metrics() *metrics.Set { return p.f.m.set }

// Check detects the table layout now and returns what is wrong with it
// (ErrNoTable, ErrUnsupportedColumn) or the connection error. Optional: the
// flush loop does the same on its first flush; the daemon may call Check to
// fail fast at start-up on a misconfigured table.
func (p *Postgres) Check(ctx context.Context) error {
	_, err := p.prepare(ctx)
	return err
}

// idKind is how device ids are written.
type idKind uint8

const (
	idText idKind = iota
	idInt
)

// pgPlan is what the detected table layout turns into: the staging table
// and the statements of one batch.
type pgPlan struct {
	id        idKind
	idMin     int64
	idMax     int64
	hasStatus bool
	lsNoTZ    bool   // last_seen is timestamp without time zone (holds UTC)
	stage     string // staging table name (temporary, per connection)
	create    string // CREATE TEMP TABLE IF NOT EXISTS ...
	apply     string // UPDATE ... FROM stage, or INSERT ... ON CONFLICT
}

type pgColumn struct {
	name    string
	typname string // pg_type.typname, e.g. "int8"
	typtype string // 'b' base, 'e' enum, 'd' domain, ...
	format  string // format_type(), e.g. "bigint"
}

func (p *Postgres) prepare(ctx context.Context) (*pgPlan, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.plan != nil {
		return p.plan, nil
	}
	table, _ := pgident.ParseTable(p.cfg.Table)
	rows, err := p.pool.Query(ctx, `
		SELECT a.attname, t.typname, t.typtype::text, format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`,
		table.Sanitize())
	if err != nil {
		return nil, fmt.Errorf("postgres: detect columns of %s: %w", p.cfg.Table, err)
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pgColumn, error) {
		var c pgColumn
		err := r.Scan(&c.name, &c.typname, &c.typtype, &c.format)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: detect columns of %s: %w", p.cfg.Table, err)
	}
	plan, err := buildPlan(table, p.cfg, cols)
	if err != nil {
		return nil, err
	}
	p.plan = plan
	if p.cfg.StatusColumn != "" && !plan.hasStatus {
		p.f.log.Info("writeback: status column not found, writing last_seen only",
			"table", p.cfg.Table, "column", p.cfg.StatusColumn)
	}
	return plan, nil
}

func buildPlan(table pgx.Identifier, cfg PostgresConfig, cols []pgColumn) (*pgPlan, error) {
	find := func(name string) (pgColumn, bool) {
		for _, c := range cols {
			if c.name == name {
				return c, true
			}
		}
		return pgColumn{}, false
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: table %s", ErrNoTable, cfg.Table)
	}
	idCol, ok := find(cfg.IDColumn)
	if !ok {
		return nil, fmt.Errorf("%w: column %s.%s", ErrNoTable, cfg.Table, cfg.IDColumn)
	}
	lsCol, ok := find(cfg.LastSeenColumn)
	if !ok {
		return nil, fmt.Errorf("%w: column %s.%s", ErrNoTable, cfg.Table, cfg.LastSeenColumn)
	}
	plan := &pgPlan{}
	stageID := "text"
	switch idCol.typname {
	case "int8":
		plan.id, plan.idMin, plan.idMax, stageID = idInt, -1<<63, 1<<63-1, "bigint"
	case "int4":
		plan.id, plan.idMin, plan.idMax, stageID = idInt, -1<<31, 1<<31-1, "bigint"
	case "int2":
		plan.id, plan.idMin, plan.idMax, stageID = idInt, -1<<15, 1<<15-1, "bigint"
	case "text", "varchar", "bpchar":
		plan.id = idText
	default:
		return nil, fmt.Errorf("%w: %s.%s is %s (want an integer or text type)", ErrUnsupportedColumn, cfg.Table, cfg.IDColumn, idCol.format)
	}
	newLS := "s.last_seen"
	switch lsCol.typname {
	case "timestamptz":
	case "timestamp":
		newLS, plan.lsNoTZ = "(s.last_seen AT TIME ZONE 'UTC')", true
	default:
		return nil, fmt.Errorf("%w: %s.%s is %s (want timestamptz)", ErrUnsupportedColumn, cfg.Table, cfg.LastSeenColumn, lsCol.format)
	}
	var newSt string
	if cfg.StatusColumn != "" {
		if stCol, ok := find(cfg.StatusColumn); ok {
			plan.hasStatus = true
			switch {
			case stCol.typname == "text" || stCol.typname == "varchar" || stCol.typname == "bpchar":
				newSt = "s.status"
			case stCol.typname == "bool":
				newSt = "(s.status = 'online')"
			case stCol.typtype == "e":
				newSt = "s.status::" + stCol.format
			default:
				return nil, fmt.Errorf("%w: %s.%s is %s (want text, an enum or boolean)", ErrUnsupportedColumn, cfg.Table, cfg.StatusColumn, stCol.format)
			}
		}
	}

	// One staging table per id kind: the pool's connections may serve
	// several sinks.
	plan.stage = "presence_wb_stage_" + stageID
	plan.create = "CREATE TEMP TABLE IF NOT EXISTS " + plan.stage +
		" (id " + stageID + " NOT NULL, last_seen timestamptz, status text NOT NULL) ON COMMIT DELETE ROWS"

	tbl := table.Sanitize()
	id := pgx.Identifier{cfg.IDColumn}.Sanitize()
	ls := pgx.Identifier{cfg.LastSeenColumn}.Sanitize()
	st := ""
	if plan.hasStatus {
		st = pgx.Identifier{cfg.StatusColumn}.Sanitize()
	}
	// guard: the row moves only forward. A newer last_seen always wins; the
	// same last_seen (or none: a device known without a message time) may
	// still change the status (an offline transition keeps last_seen), but
	// never from offline back to online: at one last_seen, offline is the
	// later state, so a stale cluster owner cannot undo a timeout.
	offline := strings.ReplaceAll(newSt, "s.status", "'offline'::text") // offline in the column's type
	guard := func(newLS, newSt string) string {
		if !plan.hasStatus {
			return "(t." + ls + " IS NULL OR t." + ls + " < " + newLS + ")"
		}
		return "((t." + ls + " IS NULL AND " + newLS + " IS NOT NULL) OR t." + ls + " < " + newLS +
			" OR ((" + newLS + " IS NULL OR t." + ls + " = " + newLS + ") AND t." + st + " IS DISTINCT FROM " + newSt +
			" AND (" + newSt + " IS NOT DISTINCT FROM " + offline + " OR t." + st + " IS DISTINCT FROM " + offline + ")))"
	}
	if !cfg.InsertUnknown {
		set := ls + " = COALESCE(" + newLS + ", t." + ls + ")"
		if plan.hasStatus {
			set += ", " + st + " = " + newSt
		}
		plan.apply = "UPDATE " + tbl + " AS t SET " + set + " FROM " + plan.stage + " AS s WHERE t." + id + " = s.id AND " + guard(newLS, newSt)
	} else {
		cols, sel := id+", "+ls, "s.id, "+newLS
		set := ls + " = COALESCE(EXCLUDED." + ls + ", t." + ls + ")"
		if plan.hasStatus {
			cols += ", " + st
			sel += ", " + newSt
			set += ", " + st + " = EXCLUDED." + st
		}
		plan.apply = "INSERT INTO " + tbl + " AS t (" + cols + ") SELECT " + sel + " FROM " + plan.stage + " AS s ORDER BY s.id" +
			" ON CONFLICT (" + id + ") DO UPDATE SET " + set + " WHERE " + guard("EXCLUDED."+ls, "EXCLUDED."+st)
	}
	return plan, nil
}

// pgRow is one staged row.
type pgRow struct {
	intID    int64
	textID   string
	lastSeen time.Time // zero: NULL
	status   string
}

var stageColumns = []string{"id", "last_seen", "status"}

func (p *Postgres) writeBatch(ctx context.Context, states []engine.DeviceState) (writeResult, error) {
	var res writeResult
	plan, err := p.prepare(ctx)
	if err != nil {
		return res, err
	}
	bi := <-p.bufIdx
	defer func() { p.bufIdx <- bi }()
	rows := p.rows[bi][:0]
	defer func() { clear(rows); p.rows[bi] = rows[:0] }()

	for i := range states {
		s := &states[i]
		if s.Status != engine.StatusOnline && s.Status != engine.StatusOffline {
			res.skipped++
			continue
		}
		if s.LastSeen.IsZero() && !plan.hasStatus {
			continue // nothing to write
		}
		r := pgRow{lastSeen: s.LastSeen.UTC().Truncate(time.Microsecond), status: s.Status.String()}
		if plan.id == idInt {
			n, err := strconv.ParseInt(s.ID, 10, 64)
			if err != nil || n < plan.idMin || n > plan.idMax {
				res.skipped++
				continue
			}
			r.intID = n
		} else {
			r.textID = s.ID
		}
		rows = append(rows, r)
	}
	rows = dedupeRows(rows, plan.id)
	if len(rows) == 0 {
		return res, nil
	}

	n, err := p.apply(ctx, plan, rows)
	if err != nil {
		p.mu.Lock()
		p.plan = nil // the table may have changed: detect again
		p.mu.Unlock()
		return writeResult{}, err
	}
	res.units = int(n)
	return res, nil
}

// dedupeRows sorts rows by id (a stable lock order between writers) and
// keeps one row per id, the newest ("0042" and "42" are the same bigint).
func dedupeRows(rows []pgRow, kind idKind) []pgRow {
	cmpID := func(a, b *pgRow) int {
		if kind == idInt {
			return cmp.Compare(a.intID, b.intID)
		}
		return strings.Compare(a.textID, b.textID)
	}
	slices.SortFunc(rows, func(a, b pgRow) int {
		if c := cmpID(&a, &b); c != 0 {
			return c
		}
		return b.lastSeen.Compare(a.lastSeen) // newest first
	})
	return slices.CompactFunc(rows, func(a, b pgRow) bool { return cmpID(&a, &b) == 0 })
}

func (p *Postgres) apply(ctx context.Context, plan *pgPlan, rows []pgRow) (int64, error) {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("postgres begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, plan.create); err != nil {
		return 0, fmt.Errorf("postgres staging table: %w", err)
	}
	vals := make([]any, 3)
	src := pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
		r := &rows[i]
		if plan.id == idInt {
			vals[0] = r.intID
		} else {
			vals[0] = r.textID
		}
		if r.lastSeen.IsZero() {
			vals[1] = nil
		} else {
			vals[1] = r.lastSeen
		}
		vals[2] = r.status
		return vals, nil
	})
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{plan.stage}, stageColumns, src); err != nil {
		return 0, fmt.Errorf("postgres copy %d rows: %w", len(rows), err)
	}
	tag, err := tx.Exec(ctx, plan.apply)
	if err != nil {
		return 0, fmt.Errorf("postgres apply %d rows: %w", len(rows), err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("postgres commit: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ReadStates reads the stored last_seen (and status, if the column
// exists) of the given devices. Status is StatusUnknown without a status
// column; devices without a row (or ids the table cannot hold) have
// StatusUnknown and a zero LastSeen.
// Used by tests and tools.
func (p *Postgres) ReadStates(ctx context.Context, ids []string) ([]engine.DeviceState, error) {
	plan, err := p.prepare(ctx)
	if err != nil {
		return nil, err
	}
	table, _ := pgident.ParseTable(p.cfg.Table)
	id := pgx.Identifier{p.cfg.IDColumn}.Sanitize()
	ls := pgx.Identifier{p.cfg.LastSeenColumn}.Sanitize()
	st := "NULL::text"
	if plan.hasStatus {
		st = pgx.Identifier{p.cfg.StatusColumn}.Sanitize() + "::text"
	}
	out := make([]engine.DeviceState, len(ids))
	byID := make(map[string][]int, len(ids))
	keys := make([]string, 0, len(ids))
	for i, s := range ids {
		out[i].ID = s
		k := s
		if plan.id == idInt {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				continue
			}
			k = strconv.FormatInt(n, 10)
		}
		if _, ok := byID[k]; !ok {
			keys = append(keys, k)
		}
		byID[k] = append(byID[k], i)
	}
	lsExpr := ls
	if plan.lsNoTZ {
		lsExpr = "(" + ls + " AT TIME ZONE 'UTC')"
	}
	q := "SELECT " + id + "::text, " + lsExpr + ", " + st + " FROM " + table.Sanitize() + " WHERE " + id + "::text = ANY($1)"
	rows, err := p.pool.Query(ctx, q, keys)
	if err != nil {
		return nil, fmt.Errorf("postgres read: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			k      string
			seen   *time.Time
			status *string
		)
		if err := rows.Scan(&k, &seen, &status); err != nil {
			return nil, fmt.Errorf("postgres read: %w", err)
		}
		for _, i := range byID[k] {
			if seen != nil {
				out[i].LastSeen = seen.UTC()
			}
			if status != nil {
				switch *status {
				case "online", "true":
					out[i].Status = engine.StatusOnline
				case "offline", "false":
					out[i].Status = engine.StatusOffline
				}
			}
		}
	}
	return out, rows.Err()
}
