package postgres

import (
	"context"
	"fmt"
	"net"
	"strings"

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

// Unverified says why connections to a database off this host would not
// be verified TLS ("" when they are, or when every host is loopback or a
// Unix socket): the sslmode of the URL is not verify-full. libpq's and
// pgx's default, prefer, encrypts without checking the server's
// certificate and falls back to plaintext; require and verify-ca do not
// check the host name either.
func (c PoolConfig) Unverified() string {
	cfg, err := pgxpool.ParseConfig(c.URL)
	if err != nil {
		return ""
	}
	cc := cfg.ConnConfig
	remote := !localHost(cc.Host)
	for _, fb := range cc.Fallbacks {
		remote = remote || !localHost(fb.Host)
	}
	if !remote {
		return ""
	}
	tlsc, plaintext := cc.TLSConfig, false
	for _, fb := range cc.Fallbacks {
		plaintext = plaintext || fb.TLSConfig == nil
	}
	switch {
	case tlsc == nil:
		return "sslmode=disable: the connection is not encrypted"
	case plaintext:
		return "sslmode=prefer (the default) does not check the server's certificate and falls back to plaintext"
	case tlsc.InsecureSkipVerify:
		return "sslmode=require or verify-ca does not check that the certificate names the server"
	}
	return ""
}

// localHost reports whether host is a Unix socket directory or a loopback
// address or name.
func localHost(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
