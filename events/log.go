package events

import (
	"time"

	"github.com/presence-dev/presence/internal/ratelog"
)

// Constant log attribute keys (STYLE.md).
const (
	logKeyDest       = "dest"
	logKeyErr        = "err"
	logKeyAttempt    = "attempt"
	logKeyBackoff    = "backoff"
	logKeyPending    = "pending"
	logKeyDropped    = "dropped"
	logKeySuppressed = "suppressed"
	logKeyClients    = "clients"
	logKeyIncident   = "incident"
	logKeyCount      = "count"
)

// errLogEvery is the rate limit of error and drop logs: at most one line
// per destination per interval, carrying the number suppressed.
const errLogEvery = 5 * time.Second

// logLine is a kind of rate-limited log line, a key of a
// ratelog.Limiter: at most one line of each kind per errLogEvery.
type logLine uint8

const (
	lineSlowClients logLine = iota // slow SSE clients disconnected
	lineTrimFailed                 // the stream's XTRIM failed
)

func newLogLimiter() *ratelog.Limiter[logLine] { return ratelog.New[logLine](errLogEvery, nil) }
