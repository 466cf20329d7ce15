package api

import (
	"net/http"
	"strings"

	"github.com/presence-dev/presence/internal/wire"
)

// NotReadyError is a readiness failure that names its check, for
// Config.Ready. /readyz shows Check to anyone and Err only to a holder of
// the API token: Err may hold addresses, user names or worse.
type NotReadyError struct {
	// Check is a short fixed name, such as "recovery" or "ingest": 1 to 32
	// bytes of a-z, 0-9, '-' and '_'. Any other name shows as
	// "unspecified".
	Check string
	// Err says why the check fails.
	Err error
}

// NotReady returns a *NotReadyError: check is failing because of err.
func NotReady(check string, err error) error { return &NotReadyError{Check: check, Err: err} }

// Error is "check: err".
func (e *NotReadyError) Error() string {
	if e.Err == nil {
		return e.Check
	}
	return e.Check + ": " + e.Err.Error()
}

func (e *NotReadyError) Unwrap() error { return e.Err }

// reasonUnspecified names a readiness failure that no NotReadyError names.
const reasonUnspecified = "unspecified"

// readyReasons appends to dst the name of each check that err reports
// failing: the Check of each *NotReadyError in err's tree (the outermost
// on each branch; errors.Join lists several), reasonUnspecified for a
// branch without one. Each name appears once.
func readyReasons(dst []string, err error) []string {
	switch e := err.(type) {
	case *NotReadyError:
		if validCheck(e.Check) {
			return appendOnce(dst, e.Check)
		}
	case interface{ Unwrap() []error }:
		if errs := e.Unwrap(); len(errs) > 0 {
			for _, x := range errs {
				if x != nil {
					dst = readyReasons(dst, x)
				}
			}
			return dst
		}
	case interface{ Unwrap() error }:
		if x := e.Unwrap(); x != nil {
			return readyReasons(dst, x)
		}
	}
	return appendOnce(dst, reasonUnspecified)
}

func appendOnce(dst []string, s string) []string {
	for _, x := range dst {
		if x == s {
			return dst
		}
	}
	return append(dst, s)
}

// validCheck reports whether s may be shown as a check's name: short, and
// in a character set that cannot carry a URL, an address or a secret's
// punctuation.
func validCheck(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case 'a' <= b && b <= 'z', '0' <= b && b <= '9', b == '-', b == '_':
		default:
			return false
		}
	}
	return true
}

// readyz serves GET /readyz: 200 once Config.Ready returns nil, else 503
// with the names of the failing checks and, for a holder of the API token,
// the error itself. The error is logged, at a limited rate.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	var err error
	if s.cfg.Ready != nil {
		err = s.cfg.Ready()
	}
	if err == nil {
		wire.WriteJSON(w, http.StatusOK, readyBody)
		return
	}
	reasons := readyReasons(nil, err)
	key := strings.Join(reasons, ",")
	if ok, n := s.readyLog.Allow(key); ok {
		s.log.Info("api: not ready", "reasons", key, "error", err.Error(), "suppressed", n)
	}
	msg := "not ready: " + strings.Join(reasons, ", ")
	if s.credential(r) == credentialValid {
		msg = "not ready: " + err.Error()
	}
	wire.WriteJSON(w, http.StatusServiceUnavailable, appendNotReady(nil, reasons, msg))
}

// appendNotReady appends the Readiness of a 503 and a newline.
func appendNotReady(b []byte, reasons []string, msg string) []byte {
	b = append(b, `{"status":"not ready","reasons":[`...)
	for i, x := range reasons {
		if i > 0 {
			b = append(b, ',')
		}
		b = wire.AppendJSONString(b, x)
	}
	b = append(b, `],"error":`...)
	b = wire.AppendJSONString(b, msg)
	return append(b, "}\n"...)
}
