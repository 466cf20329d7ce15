package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/writeback"
)

// PoolConfig is the connection to PostgreSQL that the state sink, the
// history and the reports share.
type PoolConfig struct {
	// URL is a libpq connection URL or DSN: postgres://user:password@host:5432/db
	// (DATABASE_URL). Empty: no PostgreSQL.
	URL string
}

// Enabled reports whether PostgreSQL is configured.
func (c PoolConfig) Enabled() bool { return c.URL != "" }

// Validate parses the URL without connecting. The error names the
// variable and never quotes the URL (it may hold a password).
func (c PoolConfig) Validate() error {
	if _, err := pgxpool.ParseConfig(c.URL); err != nil {
		return fmt.Errorf("%w: postgres: DATABASE_URL (-database-url) is not a PostgreSQL URL or DSN (want postgres://user@host:5432/db)", writeback.ErrInvalidConfig)
	}
	return nil
}

// Open builds the pool; it connects on first use.
func (c PoolConfig) Open(ctx context.Context) (*pgxpool.Pool, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return pgxpool.New(ctx, c.URL)
}
