package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/envflag"
	"github.com/presence-dev/presence/writeback"
)

// ClientConfig is the connection to Redis, as the seed read it from the
// environment: REDIS_URL wins when set; otherwise REDIS_HOST, REDIS_PORT,
// REDIS_DB, REDIS_USERNAME, REDIS_PASSWORD and REDIS_TLS; with REDIS_ADDRS a
// Redis Cluster (or, with REDIS_MASTER_NAME, Sentinels), whose credentials
// and database come from the same variables. Key names are the seed's in
// every case: the Cluster client splits pipelines by slot.
type ClientConfig struct {
	// URL is redis://[user:password@]host:port/db, rediss:// for TLS.
	URL string
	// Host, Port, DB, Username, Password and TLS build the address when
	// URL is empty. Defaults localhost, 6379, 0, none, none, off. Port and
	// DB are text, read only when they are used, as the seed did: a
	// Kubernetes pod beside a Service named redis gets
	// REDIS_PORT=tcp://10.0.0.1:6379, which must not stop a presenced that
	// uses REDIS_URL, or no Redis at all.
	Host     string
	Port     string
	DB       string
	Username string
	Password string
	TLS      bool
	// Addrs are Redis Cluster seed nodes, or Sentinels when MasterName is
	// set, host:port each.
	Addrs      []string
	MasterName string
}

// DefaultClientConfig is no Redis (Enabled is false).
func DefaultClientConfig() ClientConfig { return ClientConfig{} }

// RegisterFlags registers the flags (and environment twins) of every
// field.
func (c *ClientConfig) RegisterFlags(s *envflag.Set) {
	s.SecretString(&c.URL, "redis-url", "REDIS_URL", "Redis URL: redis://[user:password@]host:port/db, rediss:// for TLS; wins over -redis-host")
	s.String(&c.Host, "redis-host", "REDIS_HOST", "Redis host; Redis is used when this, -redis-url or -redis-addrs is set")
	s.String(&c.Port, "redis-port", "REDIS_PORT", "Redis port (default 6379)")
	s.String(&c.DB, "redis-db", "REDIS_DB", "Redis database number (default 0)")
	s.String(&c.Username, "redis-username", "REDIS_USERNAME", "Redis ACL user name (with -redis-host or -redis-addrs)")
	s.SecretString(&c.Password, "redis-password", "REDIS_PASSWORD", "Redis password")
	s.Bool(&c.TLS, "redis-tls", "REDIS_TLS", "connect with TLS (with -redis-host or -redis-addrs; rediss:// in -redis-url)")
	s.Var(envflag.NewList(&c.Addrs), "redis-addrs", "REDIS_ADDRS", "Redis Cluster seed nodes, or Sentinel addresses with -redis-master, host:port comma-separated; wins over -redis-url and -redis-host (password and db from them still apply)")
	s.String(&c.MasterName, "redis-master", "REDIS_MASTER_NAME", "Sentinel master name: -redis-addrs are Sentinels")
}

// Enabled reports whether Redis is configured at all.
func (c ClientConfig) Enabled() bool { return c.URL != "" || c.Host != "" || len(c.Addrs) > 0 }

// Validate reports what is wrong with the settings, without connecting.
// Errors name the variable at fault and never quote a password.
func (c ClientConfig) Validate() error {
	opts, err := c.options()
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range c.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("%w: redis: REDIS_ADDRS (-redis-addrs): %q is not host:port", writeback.ErrInvalidConfig, a))
		}
	}
	if c.MasterName == "" && len(c.Addrs) > 0 && opts.DB != 0 {
		errs = append(errs, fmt.Errorf("%w: redis: database %d (REDIS_DB, or the path of REDIS_URL) with Redis Cluster (REDIS_ADDRS without REDIS_MASTER_NAME): a Cluster has only database 0", writeback.ErrInvalidConfig, opts.DB))
	}
	if c.MasterName != "" && len(c.Addrs) == 0 {
		errs = append(errs, fmt.Errorf("%w: redis: REDIS_MASTER_NAME (-redis-master) needs Sentinel addresses in REDIS_ADDRS", writeback.ErrInvalidConfig))
	}
	return errors.Join(errs...)
}

// NewClient builds the client (it connects on first use): a single node,
// a Cluster client with Addrs, or a Sentinel-backed failover client with
// Addrs and MasterName.
func (c ClientConfig) NewClient() (goredis.UniversalClient, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	opts, _ := c.options()
	if len(c.Addrs) == 0 {
		return goredis.NewClient(opts), nil
	}
	tlsConfig := opts.TLSConfig
	if tlsConfig != nil {
		// Each node's certificate is checked against the host of its own
		// address (crypto/tls takes the server name from the address it
		// dials when ServerName is empty), not against REDIS_HOST.
		tlsConfig = tlsConfig.Clone()
		tlsConfig.ServerName = ""
	}
	client := goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs:         c.Addrs,
		MasterName:    c.MasterName,
		DB:            opts.DB,
		Username:      opts.Username,
		Password:      opts.Password,
		TLSConfig:     tlsConfig,
		IsClusterMode: c.MasterName == "",
	})
	if cc, ok := client.(*goredis.ClusterClient); ok {
		reload := reloadOnDialError{cc}
		cc.OnNewNode(func(node *goredis.Client) { node.AddHook(reload) })
	}
	return client, nil
}

// reloadOnDialError has the Cluster client reload its slot map when a
// connection to a node cannot be made (go-redis issue #3979): a master
// that died stays in the map until ClusterStateReloadInterval (60 s)
// otherwise, and every write to its slots fails until then although its
// replica was promoted seconds after. The reload is lazy (in the
// background, at most one at a time, 200 ms apart), and a reload during
// the failover finds the old map, so the next failed dial (the pool
// retries every second) reloads again.
type reloadOnDialError struct{ cc *goredis.ClusterClient }

func (h reloadOnDialError) DialHook(next goredis.DialHook) goredis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			h.cc.ReloadState(ctx)
		}
		return conn, err
	}
}

func (reloadOnDialError) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook { return next }

func (reloadOnDialError) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// options are the single node's options (with Addrs, only the
// credentials, database and TLS of them are used).
func (c ClientConfig) options() (*goredis.Options, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: redis: "+format, append([]any{writeback.ErrInvalidConfig}, args...)...)
	}
	if u := strings.TrimSpace(c.URL); u != "" {
		opts, err := goredis.ParseURL(u)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) { // it quotes the URL, password and all
				return nil, bad("REDIS_URL (-redis-url) is not a URL (want redis://[user:password@]host:port/db, rediss:// for TLS)")
			}
			return nil, bad("REDIS_URL (-redis-url): %v (want redis://[user:password@]host:port/db, rediss:// for TLS)", err)
		}
		return opts, nil
	}
	host := strings.Trim(c.Host, "[]") // an IPv6 address may come bracketed
	if host == "" {
		host = "localhost"
	}
	port := 6379
	if s := strings.TrimSpace(c.Port); s != "" {
		p, err := strconv.Atoi(s)
		if err != nil || p < 1 || p > 65535 {
			return nil, bad("REDIS_PORT (-redis-port) %q is not a port number", s)
		}
		port = p
	}
	db := 0
	if s := strings.TrimSpace(c.DB); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, bad("REDIS_DB (-redis-db) %q is not a database number", s)
		}
		db = n
	}
	opts := &goredis.Options{
		Addr:     net.JoinHostPort(host, strconv.Itoa(port)),
		DB:       db,
		Username: c.Username,
		Password: c.Password,
	}
	if c.TLS {
		// What ParseURL sets up for rediss://: the host as server name.
		u, err := goredis.ParseURL("rediss://" + opts.Addr)
		if err != nil {
			return nil, bad("REDIS_HOST (-redis-host) %q with REDIS_TLS: %v", c.Host, err)
		}
		opts.TLSConfig = u.TLSConfig
	}
	return opts, nil
}
