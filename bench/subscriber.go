package bench

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// SubscriberConfig configures the MQTT side of the baseline peers. The
// defaults mirror presence's ingest: 2 connections in one shared-subscription
// group, QoS 1, clean sessions.
type SubscriberConfig struct {
	BrokerURL string
	// ClientID prefixes the connections' client ids (ClientID-N).
	ClientID string
	// Filter is the topic filter, e.g. "root/devices/+/telemetry".
	Filter string
	// ShareGroup makes the subscription "$share/ShareGroup/Filter"; it must
	// be set when Connections > 1.
	ShareGroup  string
	Connections int
	QoS         byte
}

// Subscriber is a set of paho connections that call one handler for every
// message, inline in paho's router goroutine (SetOrderMatters(true), as
// presence's ingest does): a handler that takes time holds back its
// connection, exactly as the seed's synchronous callback does.
type Subscriber struct {
	clients []mqtt.Client
}

// Subscribe connects and subscribes every connection, or fails after 10 s.
func Subscribe(cfg SubscriberConfig, handle func(conn int, m mqtt.Message)) (*Subscriber, error) {
	if cfg.Connections < 1 || (cfg.Connections > 1 && cfg.ShareGroup == "") {
		return nil, errors.New("subscriber: needs at least one connection, and a share group for several")
	}
	filter := cfg.Filter
	if cfg.ShareGroup != "" {
		filter = "$share/" + cfg.ShareGroup + "/" + filter
	}
	s := &Subscriber{}
	for i := range cfg.Connections {
		opts := mqtt.NewClientOptions().
			AddBroker(cfg.BrokerURL).
			SetClientID(cfg.ClientID + "-" + strconv.Itoa(i)).
			SetCleanSession(true).
			SetOrderMatters(true).
			SetKeepAlive(30 * time.Second).
			SetConnectTimeout(10 * time.Second).
			SetAutoReconnect(false).
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { handle(i, m) })
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			s.Close()
			return nil, fmt.Errorf("subscriber %d: connect %s: %v", i, cfg.BrokerURL, tok.Error())
		}
		s.clients = append(s.clients, c)
		if tok := c.Subscribe(filter, cfg.QoS, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			s.Close()
			return nil, fmt.Errorf("subscriber %d: subscribe %s: %v", i, filter, tok.Error())
		}
	}
	return s, nil
}

// Close disconnects every connection.
func (s *Subscriber) Close() {
	for _, c := range s.clients {
		c.Disconnect(100)
	}
	s.clients = nil
}

// DeviceID extracts the numeric id of a "<root>/devices/{id}/telemetry"
// topic, as the seed's handle_telemetry_message does.
func DeviceID(topic string) (int64, error) {
	rest, _, ok := cutLast(topic, '/') // drop "telemetry"
	if !ok {
		return 0, fmt.Errorf("topic %q: no device id", topic)
	}
	_, id, _ := cutLast(rest, '/')
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("topic %q: device id: %w", topic, err)
	}
	return n, nil
}

func cutLast(s string, sep byte) (before, after string, ok bool) {
	i := strings.LastIndexByte(s, sep)
	if i < 0 {
		return "", s, false
	}
	return s[:i], s[i+1:], true
}
