package loadgen

import (
	"log/slog"
	"sync"
	"time"
)

// limitedLogger logs at most one message per interval; the next message
// after a quiet spell says how many were suppressed in between. Errors at
// 50k msg/s must not become 50k log lines per second.
type limitedLogger struct {
	log   *slog.Logger
	every time.Duration

	mu         sync.Mutex
	last       time.Time // zero: never logged
	suppressed int
}

func newLimitedLogger(log *slog.Logger, every time.Duration) *limitedLogger {
	return &limitedLogger{log: log, every: every}
}

// Log logs msg at warning level unless a message was logged less than the
// interval ago, in which case it only counts it.
func (l *limitedLogger) Log(msg string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Warn(msg, args...)
}

// Flush logs the count of messages suppressed since the last one, if any.
func (l *limitedLogger) Flush(msg string) {
	l.mu.Lock()
	n := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if n > 0 {
		l.log.Warn(msg, "suppressed", n)
	}
}
