package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// passwordHook admits one username/password (and the inline publisher).
type passwordHook struct {
	mochi.HookBase
	user, pass string
}

func (h *passwordHook) ID() string { return "test-password" }

func (h *passwordHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *passwordHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	return cl.Net.Inline || (string(pk.Connect.Username) == h.user && string(pk.Connect.Password) == h.pass)
}

func (h *passwordHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// TestWebsocketAndAuth runs ingest over ws:// with a username and password
// against an embedded broker (mochi-mqtt, the daemon's embedded default):
// right credentials subscribe (shared, 2 connections) and receive, wrong
// ones leave WaitReady failing with the broker's reason.
func TestWebsocketAndAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded broker (-short)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // mochi listens itself; the port is free again (tiny race)

	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(&passwordHook{user: "ingest", pass: "s3cret"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: addr})); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { closeMochi(t, srv) })

	cfg := DefaultConfig()
	cfg.BrokerURL = "ws://" + addr + "/mqtt"
	cfg.Username, cfg.Password = "ingest", "s3cret"
	cfg.ConnectRetryInterval = 50 * time.Millisecond
	cfg.DisconnectQuiesce = 10 * time.Millisecond
	h := &fakeHandler{}
	in, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close(context.Background())
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c", "d"} {
		if err := srv.Publish("devices/"+id+"/telemetry", []byte("x"), false, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Publish("devices/a/status", []byte("offline"), false, 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "5 events", func() bool { return len(h.snapshot()) == 5 })

	bad := cfg
	bad.Password = "wrong"
	bad.Connections, bad.ShareGroup = 1, ""
	in2, err := New(bad, &fakeHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer in2.Close(context.Background())
	if err := in2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if err := in2.ReadyErr(); err == nil || !strings.Contains(err.Error(), "last error") {
			return fmt.Errorf("no connection attempt has failed yet (%v)", err)
		}
		return nil
	})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	err = in2.WaitReady(ctx2)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "not authorized") {
		t.Fatalf("wrong password: WaitReady = %v, want a not-authorized error", err)
	}
	t.Log(err)
}
