package api

import (
	"strconv"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// appendDevice appends st as a Device object. st.Status is online or
// offline.
func appendDevice(b []byte, st *engine.DeviceState) []byte {
	b = append(b, `{"id":`...)
	b = wire.AppendJSONString(b, st.ID)
	b = append(b, `,"status":"`...)
	b = append(b, st.Status.String()...)
	b = append(b, `","last_seen":`...)
	b = appendTime(b, st.LastSeen)
	b = append(b, `,"since":`...)
	b = appendTime(b, st.Since)
	b = append(b, `,"timeout_seconds":`...)
	b = strconv.AppendFloat(b, st.Timeout.Seconds(), 'f', -1, 64)
	if st.TimeoutSource != 0 {
		b = append(b, `,"timeout_source":"`...)
		b = append(b, st.TimeoutSource.String()...)
		b = append(b, '"')
	}
	if st.Flapping {
		b = append(b, `,"flapping":true`...)
	}
	return append(b, '}')
}

// appendTime appends t in TimeLayout, quoted, or null for the zero time.
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = wire.AppendTime(b, t)
	return append(b, '"')
}
