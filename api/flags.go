package api

import "github.com/presence-dev/presence/internal/envflag"

// RegisterFlags registers the flags (and environment twins) of the fields
// an operator sets: the address and the bearer token.
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.String(&c.Addr, "http-addr", "PRESENCE_HTTP_ADDR", "address of the HTTP API")
	s.SecretString(&c.Token, "api-token", "PRESENCE_API_TOKEN", "bearer token required by /v1/ routes; empty: no authentication")
}
