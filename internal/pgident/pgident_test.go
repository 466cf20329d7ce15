package pgident

import (
	"strings"
	"testing"
)

func TestParseTable(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "devices", want: `"devices"`},
		{in: "app.Devices", want: `"app"."Devices"`},
		{in: `we"ird`, want: `"we""ird"`},
		{in: "", err: "empty"},
		{in: "a.b.c", err: "more than one '.'"},
		{in: "a.", err: "empty part"},
		{in: ".a", err: "empty part"},
		{in: "a\x00b", err: "NUL"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			id, err := ParseTable(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseTable(%q) = %v, %v; want an error mentioning %q", tc.in, id, err, tc.err)
				}
				return
			}
			if err != nil || id.Sanitize() != tc.want {
				t.Fatalf("ParseTable(%q) = %s, %v; want %s", tc.in, id.Sanitize(), err, tc.want)
			}
		})
	}
}

func FuzzParseTable(f *testing.F) {
	for _, s := range []string{"devices", "app.devices", "a..b", "", "x\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseTable(s)
		if err != nil {
			return
		}
		if len(id) < 1 || len(id) > 2 || strings.Join(id, ".") != s {
			t.Fatalf("ParseTable(%q) = %q", s, id)
		}
	})
}
