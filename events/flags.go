package events

import (
	"strings"

	"github.com/presence-dev/presence/internal/envflag"
)

// RegisterFlags registers the flags (and environment twins) of the fields
// an operator sets. An empty channel, stream key or MQTT topic turns that
// destination off (and a set one on); a zero mass-offline window turns the
// detector off. The Redis destinations also need Deps.Redis: the daemon
// turns them off without Redis.
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.StringSwitch(&c.PubSub.Channel, &c.PubSub.Enabled, "events-channel", "PRESENCE_EVENTS_CHANNEL", "Redis Pub/Sub channel receiving every transition as JSON (with Redis); empty: none")
	s.StringSwitch(&c.Stream.Key, &c.Stream.Enabled, "events-stream", "PRESENCE_EVENTS_STREAM", "Redis Stream receiving every transition, for consumer groups (with Redis); empty: none")
	s.Bool(&c.PubSub.Sharded, "events-channel-sharded", "PRESENCE_EVENTS_CHANNEL_SHARDED", "publish events with SPUBLISH (Redis 7 sharded Pub/Sub: on Redis Cluster only the channel's shard carries them; subscribers use SSUBSCRIBE)")
	s.Int(&c.Stream.Shards, "events-stream-shards", "PRESENCE_EVENTS_STREAM_SHARDS", "split the stream into N streams {stream}:0..{stream}:N-1, a device's events always in the same one, for Redis Cluster to spread over its masters (default 1: one stream)")
	s.Duration(&c.Stream.Retention, "events-stream-retention", "PRESENCE_EVENTS_STREAM_RETENTION", "the stream keeps the entries of this long (XTRIM MINID ~ now-retention); 0: no trimming by age")
	s.Int64(&c.Stream.MaxLen, "events-stream-maxlen", "PRESENCE_EVENTS_STREAM_MAXLEN", "approximate length the stream is capped at (XTRIM MAXLEN ~); 0: no cap")
	s.StringSwitch(&c.MQTT.Topic, &c.MQTT.Enabled, "events-mqtt-topic", "PRESENCE_EVENTS_MQTT_TOPIC", "retained MQTT message online/offline per device on this topic, e.g. devices/{id}/presence; empty: none")
	s.Var(&webhooksFlag{hooks: &c.Webhooks, fresh: true}, "webhook-url", "PRESENCE_WEBHOOK_URLS", "URLs receiving JSON batches of events by HTTP POST, comma-separated or repeated")
	s.SecretString(&c.WebhookSecret, "webhook-secret", "PRESENCE_WEBHOOK_SECRET", "HMAC-SHA256 key signing webhook bodies (X-Presence-Signature: sha256=...)")
	s.Duration(&c.Alerts.OfflineAfter, "offline-alert-after", "PRESENCE_OFFLINE_ALERT_AFTER", "emit one offline_alert event per offline period after this long offline; 0: never")
	s.Int(&c.Alerts.Mass.Count, "mass-offline-count", "PRESENCE_MASS_OFFLINE_COUNT", "devices going offline within -mass-offline-window that make one mass_offline incident (or the share below)")
	s.Float64(&c.Alerts.Mass.Share, "mass-offline-share", "PRESENCE_MASS_OFFLINE_SHARE", "share of the fleet (0..1) going offline within the window that makes a mass_offline incident; 0: count only")
	s.Int(&c.Alerts.Flapping.Changes, "flapping-changes", "PRESENCE_FLAPPING_CHANGES", "a device changing status more than this many times within -flapping-window is flapping (one flapping event; its offline alerts suppressed); 0: no detection")
	s.Duration(&c.Alerts.Flapping.Window, "flapping-window", "PRESENCE_FLAPPING_WINDOW", "window of the flapping detector; a flapping device stable this long raises flapping_stopped")
	s.DurationSwitch(&c.Alerts.Mass.Window, &c.Alerts.Mass.Enabled, "mass-offline-window", "PRESENCE_MASS_OFFLINE_WINDOW", "window of the mass-outage detector; 0 disables it")
}

// webhooksFlag is Config.Webhooks as a list of URLs, each with the
// default delivery (DefaultWebhookConfig). Webhook URLs may carry tokens:
// its String is never shown (no default).
type webhooksFlag struct {
	hooks *[]WebhookConfig
	fresh bool
}

func (*webhooksFlag) String() string { return "" }

func (f *webhooksFlag) Set(v string) error {
	if f.fresh {
		*f.hooks, f.fresh = nil, false
	}
	for _, u := range strings.Split(v, ",") {
		if u = strings.TrimSpace(u); u != "" {
			*f.hooks = append(*f.hooks, DefaultWebhookConfig(u, ""))
		}
	}
	return nil
}

// Reset makes the next Set replace the list.
func (f *webhooksFlag) Reset() { f.fresh = true }
