package metricsx

import (
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

func TestLabel(t *testing.T) {
	check := func(value, want string) {
		t.Helper()
		if got := Label("route", value); got != want {
			t.Errorf("Label(%q) = %s, want %s", value, got, want)
		}
	}
	check("GET /v1/devices/{id}", `route="GET /v1/devices/{id}"`)
	check(`a"b\c`+"\nd", `route="a\"b\\c\nd"`)
	check("é", `route="é"`) // UTF-8 stays as it is
	check("", `route=""`)
}

// Whatever a value holds, the metric name stays one the metrics package
// accepts.
func FuzzLabel(f *testing.F) {
	for _, s := range []string{"x", `"`, `\`, "\n", `\"`, "webhook_0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("value %q: %v", v, p)
			}
		}()
		metrics.NewSet().NewCounter("x_total{" + Label("l", v) + "}")
	})
}
