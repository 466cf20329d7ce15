package wire

import "strings"

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// Label returns name="value" for a metric name (VictoriaMetrics/metrics
// takes a name with its labels as one string), value escaped for the
// Prometheus text format (backslash, double quote, newline), e.g.
// "presence_events_sent_total{" + Label("dest", name) + "}".
func Label(name, value string) string {
	return name + `="` + labelEscaper.Replace(value) + `"`
}
