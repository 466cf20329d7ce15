package recovery

import "github.com/presence-dev/presence/internal/envflag"

// RegisterFlags registers -no-hydrate.
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.Bool(&c.NoHydrate, "no-hydrate", "PRESENCE_NO_HYDRATE", "do not rebuild the state from Redis at start-up")
}
