// Package metricsx holds what the components share to name their metrics
// (VictoriaMetrics/metrics takes a name with its labels as one string).
package metricsx

import "strings"

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// EscapeLabelValue escapes a label value for the Prometheus text format:
// backslash, double quote and newline.
func EscapeLabelValue(s string) string { return labelEscaper.Replace(s) }

// Label returns name="value" with value escaped, e.g. for
// "presence_events_sent_total{" + Label("dest", name) + "}".
func Label(name, value string) string { return name + `="` + EscapeLabelValue(value) + `"` }
