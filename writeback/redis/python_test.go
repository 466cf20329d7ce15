package redis

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
	"github.com/presence-dev/presence/writeback/writebacktest"
)

// pythonRoundTrip is what an existing Python consumer does with a
// last-seen value.
const pythonRoundTrip = `import sys, datetime
for line in sys.stdin.read().split():
    d = datetime.datetime.fromisoformat(line)
    assert d.tzinfo is not None and d.utcoffset() == datetime.timedelta(0), line
    print(d.isoformat())`

// TestPythonConsumerReadsLastSeen writes devices through the Redis sink,
// reads the lastseen keys back as a consumer would, and parses them with
// the real Python datetime.fromisoformat.
func TestPythonConsumerReadsLastSeen(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	client := testenv.RedisClient(t, "")
	prefix := testenv.Name(t) + ":"
	testenv.CleanupRedisPrefix(t, client, prefix)
	src := writebacktest.NewFakeSource()
	cfg := DefaultConfig()
	cfg.KeyPrefix = prefix
	cfg.Flush.Logger = testenv.Logger(t)
	sink, err := New(client, src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	times := []time.Time{
		writebacktest.T0,
		time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),             // zero microseconds
		time.Date(2025, 1, 1, 0, 0, 0, 1000, time.UTC),          // one microsecond
		time.Date(2024, 2, 29, 23, 59, 59, 999999999, time.UTC), // truncated, not rounded
		time.Date(2025, 7, 1, 9, 0, 0, 500000000, time.FixedZone("X", -7*3600)),
		time.Date(1999, 12, 31, 23, 59, 59, 42000, time.UTC),
	}
	for i, at := range times {
		src.Set(writebacktest.Dev(i, engine.StatusOnline, at))
	}
	ctx := context.Background()
	if err := sink.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	stored := make([]string, len(times))
	for i := range times {
		v, err := client.Get(ctx, sink.LastSeenKey(writebacktest.Dev(i, 0, time.Time{}).ID)).Result()
		if err != nil {
			t.Fatal(err)
		}
		stored[i] = v
		in.WriteString(v + "\n")
	}
	cmd := exec.Command(py, "-c", pythonRoundTrip)
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	// The exact one-liner a consumer would run on one value.
	one := exec.Command(py, "-c", "import sys,datetime; print(datetime.datetime.fromisoformat(sys.stdin.read().strip()).isoformat())")
	one.Stdin = strings.NewReader(stored[0])
	if got, err := one.Output(); err != nil || strings.TrimSpace(string(got)) != stored[0] {
		t.Fatalf("python one-liner: %q, %v; want %q", got, err, stored[0])
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(times) {
		t.Fatalf("python printed %d lines, want %d: %q", len(lines), len(times), out)
	}
	for i, at := range times {
		want := at.UTC().Truncate(time.Microsecond)
		// Python's isoformat drops a zero fraction; otherwise it must give
		// back exactly what we stored.
		if want.Nanosecond() != 0 && lines[i] != stored[i] {
			t.Errorf("python round trip %q -> %q", stored[i], lines[i])
		}
		got, err := wire.ParseTime(lines[i])
		if err != nil || !got.Equal(want) {
			t.Errorf("python read %q as %q = %v, want %v", stored[i], lines[i], got, want)
		}
	}
}
