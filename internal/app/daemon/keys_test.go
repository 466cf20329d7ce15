package daemon

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

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

// The embedded broker refuses a packet over embeddedMaxPacket (the
// client is disconnected, nothing is delivered) and delivers a normal one.
func TestEmbeddedBrokerMaxPacket(t *testing.T) {
	b, err := newBroker("127.0.0.1:0", true, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	got := make(chan int, 10)
	sub := paho.NewClient(paho.NewClientOptions().AddBroker(b.url()).SetClientID("sub").
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- len(m.Payload()) }))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer sub.Disconnect(50)
	if tok := sub.Subscribe("big/#", 0, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	pub := paho.NewClient(paho.NewClientOptions().AddBroker(b.url()).SetClientID("pub").SetAutoReconnect(false))
	if tok := pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(50)
	pub.Publish("big/1", 0, false, make([]byte, embeddedMaxPacket+1)).WaitTimeout(2 * time.Second)
	testenv.Eventually(t, 5*time.Second, func() error {
		if pub.IsConnectionOpen() {
			return errors.New("the client that sent an oversized packet is still connected")
		}
		return nil
	})
	pub2 := paho.NewClient(paho.NewClientOptions().AddBroker(b.url()).SetClientID("pub2"))
	if tok := pub2.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub2.Disconnect(50)
	pub2.Publish("big/2", 0, false, make([]byte, 1000)).WaitTimeout(2 * time.Second)
	select {
	case n := <-got:
		if n != 1000 {
			t.Fatalf("delivered a %d-byte payload first; the oversized one must not be", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the normal message was not delivered")
	}
}
