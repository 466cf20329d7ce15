package postgres

import "testing"

// Unverified: only a database off this host without sslmode=verify-full
// is reported, with the reason.
func TestUnverified(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"postgres://u@127.0.0.1:5432/test", false},
		{"postgres://u@localhost/test?sslmode=disable", false},
		{"host=/var/run/postgresql dbname=test", false},
		{"postgres://u@db.example.com/test", true},                      // prefer
		{"postgres://u@db.example.com/test?sslmode=disable", true},      // plaintext
		{"postgres://u@db.example.com/test?sslmode=require", true},      // no verification
		{"postgres://u@db.example.com/test?sslmode=verify-full", false}, // verified
	} {
		got := PoolConfig{URL: tc.url}.Unverified()
		if (got != "") != tc.want {
			t.Errorf("%s: Unverified() = %q, want a warning: %v", tc.url, got, tc.want)
		}
	}
}
