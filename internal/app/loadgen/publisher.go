package loadgen

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Pending is an outstanding publish. paho's mqtt.Token satisfies it.
type Pending interface {
	// Done is closed once the publish completed: written to the socket for
	// QoS 0, acknowledged for QoS 1 and 2, or failed.
	Done() <-chan struct{}
	// Error is the failure, if any, once Done is closed.
	Error() error
}

// Publisher is one broker connection as the generator uses it.
type Publisher interface {
	// Publish hands a message over without waiting for its completion. The
	// payload must not be modified afterwards.
	Publish(topic string, qos byte, payload []byte) Pending
	// Connected reports whether the connection is up right now; the
	// generator counts a publish while it is down as an error instead of
	// letting the client queue or drop it silently.
	Connected() bool
	// Close disconnects; it is called once.
	Close()
}

// Dialer opens connection number conn (0-based) of a run.
type Dialer func(ctx context.Context, cfg Config, conn int) (Publisher, error)

// PahoDialer dials with paho.mqtt.golang: clean session, automatic reconnect,
// client id "<cfg.ClientID>-<pid>-<conn>". Connection losses are logged to log
// at a limited rate.
func PahoDialer(log *slog.Logger) Dialer {
	lost := newLimitedLogger(log, 5*time.Second)
	return func(ctx context.Context, cfg Config, conn int) (Publisher, error) {
		opts := mqtt.NewClientOptions().
			AddBroker(cfg.Broker).
			SetClientID(fmt.Sprintf("%s-%d-%d", cfg.ClientID, os.Getpid(), conn)).
			SetUsername(cfg.Username).
			SetPassword(cfg.Password).
			SetCleanSession(true).
			SetOrderMatters(false).
			SetAutoReconnect(true).
			SetMaxReconnectInterval(5 * time.Second).
			SetConnectTimeout(cfg.ConnectTimeout).
			SetWriteTimeout(cfg.ConnectTimeout).
			SetKeepAlive(30 * time.Second).
			SetConnectionLostHandler(func(_ mqtt.Client, err error) {
				lost.Log("connection lost, reconnecting", "conn", conn, "err", err)
			})
		c := mqtt.NewClient(opts)
		tok := c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			c.Disconnect(0)
			return nil, ctx.Err()
		case <-time.After(cfg.ConnectTimeout):
			c.Disconnect(0)
			return nil, fmt.Errorf("connect to %s: no answer within %s", cfg.Broker, cfg.ConnectTimeout)
		}
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("connect to %s: %w", cfg.Broker, err)
		}
		return pahoPublisher{c}, nil
	}
}

type pahoPublisher struct{ c mqtt.Client }

func (p pahoPublisher) Publish(topic string, qos byte, payload []byte) Pending {
	return p.c.Publish(topic, qos, false, payload)
}

func (p pahoPublisher) Connected() bool { return p.c.IsConnectionOpen() }

func (p pahoPublisher) Close() { p.c.Disconnect(250) }
