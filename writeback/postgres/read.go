package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/pgident"
)

// ReadStates reads the stored last_seen (and status, if the column
// exists) of the given devices. Status is StatusUnknown without a status
// column; devices without a row (or ids the table cannot hold) have
// StatusUnknown and a zero LastSeen. The writeback conformance suite reads
// every sink back with it; the lookup uses the id column's index.
func (p *Sink) ReadStates(ctx context.Context, ids []string) ([]engine.DeviceState, error) {
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
	// Compare the column itself, not a cast of it, so that its index
	// serves the lookup.
	q := "SELECT " + id + "::text, " + lsExpr + ", " + st + " FROM " + table.Sanitize() + " WHERE " + id + " = ANY($1)"
	var arg any = keys
	if plan.id == idInt {
		ns := make([]int64, len(keys))
		for i, k := range keys {
			ns[i], _ = strconv.ParseInt(k, 10, 64) // canonical: parsed above
		}
		arg = ns
	}
	rows, err := p.pool.Query(ctx, q, arg)
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
