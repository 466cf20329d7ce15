package ingest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/internal/ratelog"
)

// conn is one subscriber connection.
//
// Lifecycle: paho connects (retrying the first connection every
// ConnectRetryInterval, reconnecting with exponential backoff from 1 s to
// MaxReconnectInterval), then calls onConnect in a goroutine of its own;
// onConnect subscribes, retrying until it succeeds or the connection goes.
// It subscribes on every connect whatever CleanSession says: a clean
// session has no subscriptions, and renewing a persistent one is harmless.
type conn struct {
	in     *Ingester
	idx    int
	id     string // MQTT client id
	client mqtt.Client

	gen        atomic.Uint64 // incremented by every onConnect
	subscribed atomic.Bool   // the current connection's SUBACK succeeded
	lastErr    atomic.Pointer[connError]

	log *ratelog.Limiter[connLine] // per LogInterval: one line lost, one line failed
}

// connLine is a kind of log line of a connection, a key of conn.log.
type connLine uint8

const (
	lineLost   connLine = iota // connection lost
	lineFailed                 // connect or subscribe failed
)

type connError struct{ err error }

func (in *Ingester) newConns(nonce string) []*conn {
	conns := make([]*conn, in.cfg.Connections)
	for i := range conns {
		c := &conn{in: in, idx: i, log: ratelog.New[connLine](in.cfg.LogInterval, in.clock)}
		if in.cfg.CleanSession {
			c.id = in.cfg.ClientIDPrefix + "-" + nonce + "-" + strconv.Itoa(i)
		} else {
			c.id = in.cfg.ClientIDPrefix + "-" + strconv.Itoa(i)
		}
		opts := mqtt.NewClientOptions().
			AddBroker(in.cfg.BrokerURL).
			SetClientID(c.id).
			SetCleanSession(in.cfg.CleanSession).
			// The callback never blocks (it only queues), so it can run
			// inline in paho's router goroutine: order kept per connection
			// and no goroutine per message. SetOrderMatters(false) would
			// start a goroutine for every message and lose the order of a
			// device's messages (e.g. telemetry then its Last Will).
			SetOrderMatters(true).
			SetAutoReconnect(true).
			SetConnectRetry(true).
			SetConnectRetryInterval(in.cfg.ConnectRetryInterval).
			SetMaxReconnectInterval(in.cfg.MaxReconnectInterval).
			SetConnectTimeout(in.cfg.ConnectTimeout).
			SetKeepAlive(in.cfg.KeepAlive).
			SetPingTimeout(min(in.cfg.KeepAlive/2, 10*time.Second)).
			// We subscribe in onConnect; paho must not replay stored SUBSCRIBEs.
			SetResumeSubs(false).
			// Subscriptions carry no callback: every message goes to this
			// one handler exactly once, even when two filters overlap.
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
				c.in.onMessage(c.idx, m.Topic(), m.Payload())
			}).
			SetOnConnectHandler(func(mqtt.Client) { c.onConnect() }).
			SetConnectionLostHandler(func(_ mqtt.Client, err error) { c.onLost(err) }).
			// Called synchronously before every reconnect attempt, so it is
			// ordered before the next onConnect.
			SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) { c.subscribed.Store(false) }).
			SetConnectionNotificationHandler(c.onNotification).
			SetCustomOpenConnectionFn(func(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
				// Acknowledging at read time is for clean sessions only: at a
				// disconnect, what was read but not yet handed to the callback
				// is lost, which a persistent session would have redelivered.
				return openConn(u, o, in.cfg.QoS > 0 && in.cfg.CleanSession)
			})
		if in.cfg.Username != "" {
			opts.SetUsername(in.cfg.Username).SetPassword(in.cfg.Password)
		}
		if in.cfg.TLS != nil {
			opts.SetTLSConfig(in.cfg.TLS)
		}
		c.client = mqtt.NewClient(opts)
		conns[i] = c
	}
	return conns
}

// connState counts connections with an open network connection, and those
// also subscribed.
func (in *Ingester) connState() (connected, subscribed int) {
	for _, c := range in.conns {
		if c.client.IsConnectionOpen() {
			connected++
			if c.subscribed.Load() {
				subscribed++
			}
		}
	}
	return connected, subscribed
}

// connReadyErr says why not every connection is subscribed (nil when all
// are).
func (in *Ingester) connReadyErr() error {
	for _, c := range in.conns {
		if c.client.IsConnectionOpen() && c.subscribed.Load() {
			continue
		}
		state := "not connected"
		if c.client.IsConnectionOpen() {
			state = "connected, not subscribed yet"
		}
		if e := c.lastErr.Load(); e != nil {
			return fmt.Errorf("MQTT connection %d (%s) %s: last error: %w", c.idx, c.id, state, e.err)
		}
		return fmt.Errorf("MQTT connection %d (%s) %s", c.idx, c.id, state)
	}
	return nil
}

// onConnect runs in a goroutine paho starts for each successful connect.
func (c *conn) onConnect() {
	in := c.in
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return
	}
	in.subWG.Add(1)
	in.mu.Unlock()
	defer in.subWG.Done()

	gen := c.gen.Add(1)
	c.subscribed.Store(false)
	c.lastErr.Store(nil)
	in.m.connects.Inc()
	backoff := time.Second
	for {
		err := c.subscribe()
		if err == nil {
			if c.gen.Load() == gen {
				c.subscribed.Store(true)
				in.log.Info("ingest: subscribed", "conn", c.idx, "client_id", c.id)
				in.probe.restart()
			}
			return
		}
		in.m.subErrs.Inc()
		c.lastErr.Store(&connError{err})
		if ok, sup := c.log.Allow(lineFailed); ok {
			in.log.Error("ingest: subscribe failed", "conn", c.idx, "error", err, "suppressed", sup)
		}
		if !c.client.IsConnectionOpen() || c.gen.Load() != gen {
			return // the next connect subscribes again
		}
		select {
		case <-time.After(backoff):
		case <-in.done:
			return
		}
		backoff = min(2*backoff, in.cfg.MaxReconnectInterval)
	}
}

// subscribe subscribes to every filter and checks each SUBACK code.
func (c *conn) subscribe() error {
	tok := c.client.SubscribeMultiple(c.in.subs, nil)
	t := time.NewTimer(c.in.cfg.SubscribeTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
	case <-t.C:
		return errors.New("no SUBACK within SubscribeTimeout")
	case <-c.in.done:
		return ErrClosed
	}
	if err := tok.Error(); err != nil {
		return err
	}
	st, ok := tok.(*mqtt.SubscribeToken)
	if !ok {
		return nil
	}
	for f, code := range st.Result() {
		if code == 0x80 {
			return fmt.Errorf("broker refused subscription %q (SUBACK 0x80: not authorised, or no shared subscriptions?)", f)
		}
	}
	return nil
}

func (c *conn) onLost(err error) {
	in := c.in
	in.m.lost.Inc()
	c.lastErr.Store(&connError{err})
	if ok, sup := c.log.Allow(lineLost); ok {
		in.log.Warn("ingest: connection lost, reconnecting", "conn", c.idx, "error", err, "suppressed", sup)
	}
}

// onNotification records failed connection attempts (paho retries them).
func (c *conn) onNotification(_ mqtt.Client, n mqtt.ConnectionNotification) {
	var err error
	switch n := n.(type) {
	case mqtt.ConnectionNotificationBrokerFailed:
		err = n.Reason
	case mqtt.ConnectionNotificationFailed:
		err = n.Reason
	default:
		return
	}
	c.lastErr.Store(&connError{err})
	if ok, sup := c.log.Allow(lineFailed); ok {
		c.in.log.Warn("ingest: connection attempt failed", "conn", c.idx,
			"broker", redact(c.in.cfg.BrokerURL), "error", err, "suppressed", sup)
	}
}
