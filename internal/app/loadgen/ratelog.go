package loadgen

import (
	"log/slog"
	"time"

	"github.com/presence-dev/presence/internal/ratelog"
)

// limitedLogger logs at most one warning per interval; the next one after
// a quiet spell says how many were suppressed in between. Errors at 50k
// msg/s must not become 50k log lines per second.
type limitedLogger struct {
	log *slog.Logger
	lim *ratelog.Limiter[struct{}] // one key: all of the logger's lines
}

func newLimitedLogger(log *slog.Logger, every time.Duration) *limitedLogger {
	return &limitedLogger{log: log, lim: ratelog.New[struct{}](every, nil)}
}

// Log logs msg at warning level unless a message was logged less than the
// interval ago, in which case it only counts it.
func (l *limitedLogger) Log(msg string, args ...any) {
	ok, n := l.lim.Allow(struct{}{})
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Warn(msg, args...)
}

// Flush logs the count of messages suppressed since the last one, if any.
func (l *limitedLogger) Flush(msg string) {
	if n := l.lim.TakeSuppressed(struct{}{}); n > 0 {
		l.log.Warn(msg, "suppressed", n)
	}
}
