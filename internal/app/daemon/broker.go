package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// broker is the embedded MQTT broker (mochi-mqtt) that presenced runs when
// no MQTT_URL is given, so that a newcomer's devices (or -demo) have
// somewhere to publish. It accepts anonymous clients: it listens on
// loopback by default (-embedded-mqtt-addr), warns when told otherwise, and
// accepts packets of at most embeddedMaxPacket bytes.
type broker struct {
	srv   *mqtt.Server
	addr  string // the address it listens on
	log   *slog.Logger
	close sync.Once // mochi's Close panics the second time
}

// newBroker binds addr (so that a taken port fails at once; Start serves).
// When addr is the default and taken (another broker runs there), it
// listens on a free port instead and says so; an address given explicitly
// must be free.
func newBroker(addr string, explicit bool, log *slog.Logger) (*broker, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) && !explicit {
		host, _, _ := net.SplitHostPort(addr)
		ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err == nil {
			log.Warn("an MQTT broker already listens on the default address: the embedded broker takes a free port instead; "+
				"set MQTT_URL=tcp://"+addr+" to read from the broker already there",
				"taken", addr, "embedded", ln.Addr().String())
		}
	}
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("embedded MQTT broker: %s is in use: stop what listens there, choose another "+
				"-embedded-mqtt-addr (PRESENCE_EMBEDDED_MQTT_ADDR), or set -mqtt-url (MQTT_URL) to use that broker: %w", addr, err)
		}
		return nil, fmt.Errorf("embedded MQTT broker: listen on %s: %w", addr, err)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = embeddedMaxPacket
	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true,
		Logger:       slog.New(minLevel{log.Handler(), slog.LevelError}).With("component", "embedded-broker"), // it warns about every closed client
	})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		ln.Close()
		return nil, fmt.Errorf("embedded MQTT broker: %w", err)
	}
	if err := srv.AddListener(listeners.NewNet("tcp", ln)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("embedded MQTT broker: %w", err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		log.Warn("the embedded MQTT broker listens beyond loopback and accepts anonymous clients: anyone who reaches "+
			ln.Addr().String()+" can publish device messages; on a network, run a broker with authentication and set -mqtt-url (MQTT_URL)",
			"addr", ln.Addr().String())
	}
	return &broker{srv: srv, addr: ln.Addr().String(), log: log}, nil
}

// embeddedMaxPacket bounds one MQTT packet the embedded broker accepts
// (bytes): ingest drops payloads over 64 KiB and topics over 256 bytes
// anyway, and a larger packet only costs the broker memory. A client that
// sends a larger one is disconnected.
const embeddedMaxPacket = 256 << 10

// Start serves (it starts the listener's goroutine and returns).
func (b *broker) Start(context.Context) error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("embedded MQTT broker: %w", err)
	}
	b.log.Info("embedded MQTT broker listening", "addr", b.addr)
	return nil
}

// Close closes the listener and every client. Idempotent.
func (b *broker) Close(context.Context) error {
	var err error
	b.close.Do(func() { err = b.srv.Close() })
	return err
}

// url is where MQTT clients reach the broker.
func (b *broker) url() string { return "tcp://" + b.addr }
