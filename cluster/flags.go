package cluster

import (
	"github.com/presence-dev/presence/internal/envflag"
)

// RegisterFlags registers the flags (and environment twins) of the fields
// an operator sets: the node's name, its gossip and data addresses, the
// seeds and the gossip key. The daemon runs a cluster node when
// -cluster-bind or -cluster-join is set (it registers them over an empty
// BindAddr to tell).
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.String(&c.NodeName, "node-name", "PRESENCE_NODE_NAME", "this node's name in the cluster: unique, and stable across restarts (ownership follows the names)")
	s.String(&c.BindAddr, "cluster-bind", "PRESENCE_CLUSTER_BIND", "gossip address host:port (memberlist); setting it or -cluster-join runs presenced as a cluster node")
	s.Var(envflag.NewList(&c.Join), "cluster-join", "PRESENCE_CLUSTER_JOIN", "seed nodes' gossip addresses, comma-separated; joined at start and again periodically so a healed partition merges")
	s.Secret(keyFlag{c}, "cluster-key", "PRESENCE_CLUSTER_KEY", "cluster key, base64 of 16, 24 or 32 bytes, the same on every node: encrypts gossip and authenticates and encrypts node-to-node data (TLS 1.3); a comma-separated list adds keys accepted but not sent, for rotation (SECURITY.md). Required unless every address is loopback or -cluster-insecure")
	s.Bool(&c.Insecure, "cluster-insecure", "PRESENCE_CLUSTER_INSECURE", "allow a cluster without -cluster-key on non-loopback addresses: anyone who reaches its ports can join and change what it reports; warned at start and hourly")
	s.Duration(&c.QueryTimeout, "cluster-query-timeout", "PRESENCE_CLUSTER_QUERY_TIMEOUT", "how long an API answer for the whole cluster waits for the other nodes; later, the answer says which nodes are missing (partial)")
	s.String(&c.DataAddr, "cluster-data-addr", "PRESENCE_CLUSTER_DATA_ADDR", "address peers forward messages and hand devices to (default: the gossip host, gossip port + 1)")
}

// keyFlag is SecretKey and SecondaryKeys in base64 (ParseKeys).
type keyFlag struct{ c *Config }

func (keyFlag) String() string { return "" }
func (f keyFlag) Set(v string) error {
	p, sec, err := ParseKeys(v)
	if err != nil {
		return err
	}
	f.c.SecretKey, f.c.SecondaryKeys = p, sec
	return nil
}
