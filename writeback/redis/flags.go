package redis

import "github.com/presence-dev/presence/internal/envflag"

// RegisterFlags registers the flags (and environment twins) of the fields
// an operator sets: the key prefix, the TTL and the flush interval.
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.String(&c.KeyPrefix, "redis-prefix", "PRESENCE_REDIS_PREFIX", "prefix of the Redis keys {prefix}status:{id} and {prefix}lastseen:{id}; change only with every consumer")
	s.Duration(&c.TTL, "redis-ttl", "PRESENCE_REDIS_TTL", "TTL of the Redis keys, whole seconds")
	s.Duration(&c.Flush.Interval, "redis-flush-interval", "PRESENCE_REDIS_FLUSH_INTERVAL", "how often changed devices are written to Redis")
}
