package postgres

import "github.com/presence-dev/presence/internal/envflag"

// RegisterFlags registers the flags (and environment twins) of the fields
// an operator sets: the devices table, its columns, and the flush interval.
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.String(&c.Table, "pg-table", "PRESENCE_PG_TABLE", "the existing devices table (optionally schema.table); never created or altered")
	s.String(&c.IDColumn, "pg-id-column", "PRESENCE_PG_ID_COLUMN", "its id column (bigint as in the seed, or text)")
	s.String(&c.LastSeenColumn, "pg-last-seen-column", "PRESENCE_PG_LAST_SEEN_COLUMN", "its last-seen column (timestamptz); never moves backwards")
	s.String(&c.StatusColumn, "pg-status-column", "PRESENCE_PG_STATUS_COLUMN", "its status column, written if it exists; empty never writes status")
	s.Bool(&c.InsertUnknown, "pg-insert-unknown", "PRESENCE_PG_INSERT_UNKNOWN", "insert devices that have no row (needs a unique index on the id column)")
	s.Duration(&c.Flush.Interval, "pg-flush-interval", "PRESENCE_PG_FLUSH_INTERVAL", "how often changed devices are written to Postgres")
	s.Duration(&c.Flush.MaxYield, "pg-max-yield", "PRESENCE_PG_MAX_YIELD", "how long Postgres writes (devices and history) may wait for a burst of Redis writes to pass, so that Redis, the consumers' contract, goes first; 0: never wait")
}

// RegisterFlags registers -history-table; an empty table turns the
// history off (the daemon then builds no History).
func (c *HistoryConfig) RegisterFlags(s *envflag.Set) {
	s.String(&c.Table, "history-table", "PRESENCE_HISTORY_TABLE", "table receiving every transition (created if missing); empty disables history")
}

// RegisterFlags registers -database-url.
func (c *PoolConfig) RegisterFlags(s *envflag.Set) {
	s.SecretString(&c.URL, "database-url", "DATABASE_URL", "PostgreSQL URL (postgres://user@host:5432/db); empty: no Postgres")
}
