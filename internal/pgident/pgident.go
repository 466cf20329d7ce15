// Package pgident parses the PostgreSQL table names of this module's
// configurations ("table" or "schema.table") into identifiers that pgx
// quotes, so that a name is never pasted into SQL as it stands.
package pgident

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ParseTable splits "table" or "schema.table" into a pgx.Identifier
// (Sanitize quotes it). Each part is taken as written, case and all; it
// must not be empty nor hold a NUL byte.
func ParseTable(s string) (pgx.Identifier, error) {
	if s == "" {
		return nil, errors.New("empty")
	}
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return nil, fmt.Errorf("%q has more than one '.'", s)
	}
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("%q has an empty part", s)
		}
		if strings.IndexByte(p, 0) >= 0 {
			return nil, fmt.Errorf("%q holds a NUL byte", s)
		}
	}
	return pgx.Identifier(parts), nil
}
