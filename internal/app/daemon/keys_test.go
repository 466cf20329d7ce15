package daemon

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// TestDeviceNamedStream: a device named "stream" writes its status key
// and leaves the events stream alone (the stream's default key used to be
// device:status:stream, that device's status key). Here under the test's
// own prefix: {prefix}events:stream beside {prefix}status:stream.
func TestDeviceNamedStream(t *testing.T) {
	s := newStack(t)
	c := s.config()
	c.Events.Stream.Key = c.Keys.KeyPrefix + "events:stream"
	startDaemon(t, c)
	s.publishRaw(s.name+"/devices/stream/telemetry", "{}")
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() error {
		if v, err := s.rdb.Get(ctx, c.Keys.KeyPrefix+"status:stream").Result(); err != nil || v != "online" {
			return fmt.Errorf("status key of device stream: %q %v", v, err)
		}
		if typ, err := s.rdb.Type(ctx, c.Events.Stream.Key).Result(); err != nil || typ != "stream" {
			return fmt.Errorf("%s is a %q (%v), want the events stream", c.Events.Stream.Key, typ, err)
		}
		if n, err := s.rdb.XLen(ctx, c.Events.Stream.Key).Result(); err != nil || n == 0 {
			return fmt.Errorf("stream holds %d entries (%v)", n, err)
		}
		return nil
	})
}
