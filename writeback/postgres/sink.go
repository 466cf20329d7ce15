package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/pgident"
	"github.com/presence-dev/presence/writeback"
)

// Errors of this package. Compare with errors.Is.
var (
	// ErrUnsupportedColumn: a configured column has a type this package
	// cannot write (see Config).
	ErrUnsupportedColumn = errors.New("writeback: unsupported column type")
	// ErrNoTable: the configured devices table or one of its required
	// columns does not exist.
	ErrNoTable = errors.New("writeback: devices table or column not found")
)

// Config configures the Postgres state sink. The devices table
// belongs to the user: this package never creates or alters it; it only
// updates (and, with InsertUnknown, inserts) rows.
type Config struct {
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
	// Concurrency 2 (one connection encodes and copies while the other's
	// UPDATE runs: a 1M mass expiry took 1.6x a plain COPY + UPDATE of the
	// same rows against 2.5x with 1, BENCHMARKS.md), MaxYield 30 s (the
	// daemon sets Yield: PostgreSQL waits for the Redis writers during a
	// burst).
	Flush writeback.FlushConfig
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		Table:          "devices",
		IDColumn:       "id",
		LastSeenColumn: "last_seen",
		StatusColumn:   "status",
		Flush: writeback.FlushConfig{
			Interval:     time.Second,
			FlushAt:      100000,
			BatchSize:    20000,
			Concurrency:  2,
			MinBackoff:   200 * time.Millisecond,
			MaxBackoff:   15 * time.Second,
			WriteTimeout: 30 * time.Second,
			MaxYield:     30 * time.Second,
		},
	}
}

// Validate reports the first invalid field, wrapping
// writeback.ErrInvalidConfig.
func (c Config) Validate() error {
	if _, err := pgident.ParseTable(c.Table); err != nil {
		return fmt.Errorf("%w: postgres: Table (-pg-table): %v", writeback.ErrInvalidConfig, err)
	}
	if c.IDColumn == "" || c.LastSeenColumn == "" {
		return fmt.Errorf("%w: postgres: IDColumn and LastSeenColumn (-pg-id-column, -pg-last-seen-column) must be set", writeback.ErrInvalidConfig)
	}
	if c.IDColumn == c.LastSeenColumn || (c.StatusColumn != "" && (c.StatusColumn == c.IDColumn || c.StatusColumn == c.LastSeenColumn)) {
		return fmt.Errorf("%w: postgres: column names must differ", writeback.ErrInvalidConfig)
	}
	return c.Flush.Validate("postgres")
}

// Sink keeps the devices table in step with the engine: each flush
// drains the dirty devices from the Source and writes them in batches of
// Flush.BatchSize, each deduplicated and sorted by id, with one COPY into a
// temporary staging table and one UPDATE ... FROM.
//
// The table layout is detected on the first flush (and again after a
// failed one), so the sink starts while Postgres is down.
//
// Its lifecycle, Flush and Metrics are the embedded writeback.Flusher's.
type Sink struct {
	*writeback.Flusher
	pool *pgxpool.Pool
	cfg  Config

	mu     sync.Mutex // guards plan
	plan   *pgPlan
	rows   [][]pgRow // per concurrent batch; indexed by batchIndex
	bufIdx chan int
}

// New builds a Postgres sink. It does no I/O; Start starts the flush loop.
// The pool is the caller's: Close does not close it.
func New(pool *pgxpool.Pool, src writeback.Source, cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || src == nil {
		return nil, fmt.Errorf("%w: postgres: nil pool or source", writeback.ErrInvalidConfig)
	}
	p := &Sink{
		pool:   pool,
		cfg:    cfg,
		rows:   make([][]pgRow, cfg.Flush.Concurrency),
		bufIdx: make(chan int, cfg.Flush.Concurrency),
	}
	for i := range cfg.Flush.Concurrency {
		p.bufIdx <- i
	}
	p.Flusher = writeback.NewFlusher("postgres", "rows", src, cfg.Flush, p.writeBatch)
	return p, nil
}

// Check detects the table layout now and returns what is wrong with it
// (ErrNoTable, ErrUnsupportedColumn) or the connection error. Optional: the
// flush loop does the same on its first flush; the daemon may call Check to
// fail fast at start-up on a misconfigured table.
func (p *Sink) Check(ctx context.Context) error {
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
	create    string // CREATE TEMP TABLE IF NOT EXISTS ...; the join's plan
	apply     string // UPDATE ... FROM stage, or INSERT ... ON CONFLICT
}

type pgColumn struct {
	name    string
	typname string // pg_type.typname, e.g. "int8"
	typtype string // 'b' base, 'e' enum, 'd' domain, ...
	format  string // format_type(), e.g. "bigint"
	indexed bool   // the id column only: a valid index leads with it
}

func (p *Sink) prepare(ctx context.Context) (*pgPlan, error) {
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
	// Whether the id column leads a valid index (for buildPlan's join).
	var idIndexed bool
	err = p.pool.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND a.attname = $2)`,
		table.Sanitize(), p.cfg.IDColumn).Scan(&idIndexed)
	if err != nil {
		return nil, fmt.Errorf("postgres: detect the indexes of %s: %w", p.cfg.Table, err)
	}
	for i := range cols {
		cols[i].indexed = idIndexed && cols[i].name == p.cfg.IDColumn
	}
	plan, err := buildPlan(table, p.cfg, cols)
	if err != nil {
		return nil, err
	}
	p.plan = plan
	if p.cfg.StatusColumn != "" && !plan.hasStatus {
		p.Logger().Info("writeback: status column not found, writing last_seen only",
			"table", p.cfg.Table, "column", p.cfg.StatusColumn)
	}
	return plan, nil
}

func buildPlan(table pgx.Identifier, cfg Config, cols []pgColumn) (*pgPlan, error) {
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
	if idCol.indexed && idCol.typname != "bpchar" {
		// The staging table has no statistics, and a batch's ids spread
		// over the whole id range (devices drain in hash order): left to
		// itself the planner merge-joins along the whole primary key, a
		// scan of the table per batch (1M index entries for 20,000 rows,
		// 10M at 10M devices). A nested loop of index lookups costs the
		// batch, not the table (BENCHMARKS.md, mass expiry). Only where an
		// index leads with the id column and the staged id compares with
		// it without a cast (not char(n), staged as text): without one a
		// nested loop would scan the table for every row.
		plan.create += "; SET LOCAL enable_mergejoin = off; SET LOCAL enable_hashjoin = off"
	}

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

func (p *Sink) writeBatch(ctx context.Context, states []engine.DeviceState) (writeback.WriteResult, error) {
	var res writeback.WriteResult
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
			res.Skipped++
			continue
		}
		if s.LastSeen.IsZero() && !plan.hasStatus {
			continue // nothing to write
		}
		r := pgRow{lastSeen: s.LastSeen.UTC().Truncate(time.Microsecond), status: s.Status.String()}
		if plan.id == idInt {
			n, err := strconv.ParseInt(s.ID, 10, 64)
			if err != nil || n < plan.idMin || n > plan.idMax {
				res.Skipped++
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
		return writeback.WriteResult{}, err
	}
	res.Units = int(n)
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

func (p *Sink) apply(ctx context.Context, plan *pgPlan, rows []pgRow) (int64, error) {
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
