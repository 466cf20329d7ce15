package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/presence-dev/presence/engine"
)

// FuzzDataServer feeds a frame sequence to the data server with the
// default limits (MaxFrameSize 4 MiB, MaxBatch and HandoffChunk 1024),
// after a valid hello unless the input's first byte is odd (then the input
// is the whole stream, handshake included); see serveStream for what must
// hold. The seeds are small, for the fuzzer's speed:
// TestDataServerAtFrameLimits runs the frames at the limits.
func FuzzDataServer(f *testing.F) {
	now := time.Now()
	seq := func(frames ...[]byte) []byte { return append([]byte{0}, bytes.Join(frames, nil)...) }
	f.Add(seq(appendBatch(nil, []msg{{id: "a", at: now.UnixNano()}, {id: "b", flags: msgOffline | msgZeroTime}})))
	f.Add(seq(appendState(nil, []engine.DeviceState{{ID: "s", Status: engine.StatusOnline, LastSeen: now}}), appendEnd(nil, 1)))
	f.Add(seq(appendBatch(nil, nil), appendEnd(nil, 0), appendHello(nil, "node-1", "node-0", nil)))
	f.Add(seq([]byte{0, 0x40, 0, 1, frameBatch})) // one byte over MaxFrameSize
	f.Add(append([]byte{1}, appendHello(nil, "node-1", "node-0", nil)...))
	f.Add([]byte{1, 0, 0, 0, 9, frameHello, 'p', 'r', 'e', 's', 'e', 'n', 'c', 'e'})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		stream := data[1:]
		if data[0]%2 == 0 {
			stream = append(appendHello(nil, "node-1", "node-0", nil), stream...)
		}
		local, _ := serveStream(t, stream)
		for _, id := range local.ids() {
			if !bytes.Contains(data, []byte(id)) {
				t.Fatalf("the engine got id %q, which is not in the input", id)
			}
		}
	})
}

// TestDataServerAtFrameLimits sends frames at the default limits: a batch
// of MaxBatch messages with the longest ids is applied, one message more
// closes the connection, and so does a frame longer than MaxFrameSize;
// one of exactly MaxFrameSize is read (and refused as malformed).
func TestDataServerAtFrameLimits(t *testing.T) {
	cfg := DefaultConfig()
	hello := appendHello(nil, "node-1", "node-0", nil)
	full := make([]msg, cfg.MaxBatch)
	for i := range full {
		full[i] = msg{id: fmt.Sprintf("%0128d", i), at: time.Now().UnixNano()}
	}
	local, _ := serveStream(t, append(append([]byte(nil), hello...), appendBatch(nil, full)...))
	if got := len(local.ids()); got != cfg.MaxBatch {
		t.Fatalf("%d of %d devices applied", got, cfg.MaxBatch)
	}
	over := append(full, msg{id: "one-more", flags: msgZeroTime})
	if local, err := serveStream(t, append(append([]byte(nil), hello...), appendBatch(nil, over)...)); len(local.ids()) != 0 ||
		!errors.Is(err, ErrBadFrame) {
		t.Fatalf("a batch over MaxBatch applied %d devices (%v)", len(local.ids()), err)
	}
	for _, n := range []int{cfg.MaxFrameSize, cfg.MaxFrameSize + 1} {
		frame := make([]byte, 4+n)
		binary.BigEndian.PutUint32(frame, uint32(n))
		frame[4] = frameBatch
		stream := append(append(append([]byte(nil), hello...), frame...),
			appendBatch(nil, []msg{{id: "after", flags: msgZeroTime}})...)
		local, err := serveStream(t, stream)
		if local.has("after") {
			t.Fatalf("a frame of %d bytes did not end the connection", n)
		}
		// The frame at the limit is read and found malformed (its body is
		// zeros: trailing bytes), the one over it refused by its length.
		if tooLarge := errors.Is(err, ErrFrameTooLarge); tooLarge != (n > cfg.MaxFrameSize) || !errors.Is(err, ErrBadFrame) && !tooLarge {
			t.Fatalf("a frame of %d bytes: %v", n, err)
		}
	}
}

// serveStream runs the data server (default limits, insecure, every
// sender a member) on stream, written by a client that then closes. The
// server must not panic and must end the connection within 10 s. It
// returns what reached the engine and how serve ended.
func serveStream(t *testing.T, stream []byte) (*fakeLocal, error) {
	cfg := DefaultConfig()
	cfg.NodeName = "node-0"
	cfg.BindAddr = "127.0.0.1:7946"
	cfg.Logger = testLogger(t)
	cfg.HandshakeTimeout = 2 * time.Second
	local := newFakeLocal()
	r := newRouter(&cfg, local, cfg.Logger, newClusterMetrics(metrics.NewSet()))
	defer r.close()
	srv := newServer(r, nil, cfg.Logger, time.Now, anyMember)
	client, server := net.Pipe()
	defer server.Close()
	done := make(chan error, 1)
	go func() {
		src, refused, _ := srv.admit(server)
		if refused != nil {
			done <- refused
			return
		}
		var authed bool
		done <- srv.serve(server, src, &authed)
	}()
	go func() {
		_, _ = client.Write(stream)
		_ = client.Close()
	}()
	go func() { _, _ = io.Copy(io.Discard, client) }() // welcome, acks
	select {
	case err := <-done:
		return local, err
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not end the connection")
	}
	return local, nil
}
