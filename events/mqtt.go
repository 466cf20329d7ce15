package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/presence-dev/presence/engine"
)

// mqttSender publishes each status event as "online"/"offline" to the
// device's topic, retained, and waits for the broker's acknowledgements of
// the whole batch. paho reconnects by itself; while it is disconnected
// publishes fail at once and the worker backs off.
type mqttSender struct {
	cfg    MQTTConfig
	client mqtt.Client
	prefix string // topic before {id}
	suffix string // topic after {id}
	toks   []mqtt.Token
	log    *slog.Logger
}

func newMQTTSender(cfg MQTTConfig, log *slog.Logger) *mqttSender {
	if cfg.ClientID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		cfg.ClientID = "presence-events-" + hex.EncodeToString(b[:])
	}
	pre, suf, _ := strings.Cut(cfg.Topic, "{id}")
	s := &mqttSender{cfg: cfg, prefix: pre, suffix: suf, log: log.With(logKeyDest, "mqtt")}
	opts := mqtt.NewClientOptions().
		AddBroker(cfg.BrokerURL).
		SetClientID(cfg.ClientID).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(30 * time.Second).
		SetConnectTimeout(cfg.ConnectTimeout).
		// Publishes made while disconnected fail at once instead of waiting
		// in paho's store: the worker's queue is the only buffer, bounded and
		// counted.
		SetResumeSubs(false).
		SetOrderMatters(true).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			s.log.Warn("events: mqtt connection lost, reconnecting", logKeyErr, err)
		})
	if cfg.Username != "" {
		opts.SetUsername(cfg.Username).SetPassword(cfg.Password)
	}
	if cfg.TLS != nil {
		opts.SetTLSConfig(cfg.TLS)
	}
	s.client = mqtt.NewClient(opts)
	return s
}

func (*mqttSender) accepts(t Type) bool {
	return t == TypeStatus || t == TypeRemoved || t == TypeFlapping || t == TypeFlappingStopped
}

// flapSuffix is the subtopic of a device's topic whose retained message
// says whether it is flapping: "true" or "false".
const flapSuffix = "/flapping"

func (s *mqttSender) connect() {
	s.client.Connect() // retries in the background (SetConnectRetry)
}

func (s *mqttSender) disconnect() { s.client.Disconnect(250) }

func (s *mqttSender) topic(id string) string { return s.prefix + id + s.suffix }

var errMQTTDown = errors.New("mqtt: not connected")

func (s *mqttSender) send(ctx context.Context, batch []rec) error {
	if !s.client.IsConnectionOpen() {
		return errMQTTDown
	}
	s.toks = s.toks[:0]
	for i := range batch {
		r := &batch[i]
		var payload string
		switch {
		case r.typ == TypeRemoved:
			// Retained: clears the device's retained status, and whether
			// it was flapping.
			payload = ""
			s.toks = append(s.toks, s.client.Publish(s.topic(r.id)+flapSuffix, s.cfg.QoS, s.cfg.Retained, payload))
		case r.typ == TypeFlapping || r.typ == TypeFlappingStopped:
			s.toks = append(s.toks, s.client.Publish(s.topic(r.id)+flapSuffix, s.cfg.QoS, s.cfg.Retained,
				map[bool]string{true: "true", false: "false"}[r.typ == TypeFlapping]))
			continue
		case r.status == engine.StatusOnline:
			payload = "online"
		case r.status == engine.StatusOffline:
			payload = "offline"
		default:
			continue
		}
		s.toks = append(s.toks, s.client.Publish(s.topic(r.id), s.cfg.QoS, s.cfg.Retained, payload))
	}
	defer clear(s.toks)
	for _, t := range s.toks {
		select {
		case <-t.Done():
			if err := t.Error(); err != nil {
				return fmt.Errorf("mqtt publish: %w", err)
			}
		case <-ctx.Done():
			return fmt.Errorf("mqtt publish: %w", ctx.Err())
		}
	}
	return nil
}
