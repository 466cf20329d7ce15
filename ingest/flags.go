package ingest

import (
	"slices"
	"strconv"
	"strings"

	"github.com/presence-dev/presence/internal/envflag"
)

// RegisterFlags registers the flags (and environment twins) of the fields
// an operator sets: the broker and its credentials, the connections, the
// share group and the topic patterns. An empty -mqtt-url is for the daemon
// to fill (it runs an embedded broker then); Validate refuses it.
func (c *Config) RegisterFlags(s *envflag.Set) {
	s.String(&c.BrokerURL, "mqtt-url", "MQTT_URL", "MQTT broker: tcp://host:1883, ssl://host:8883, ws://host:port/path; empty runs the embedded broker")
	s.String(&c.Username, "mqtt-username", "MQTT_USERNAME", "MQTT username (user info in -mqtt-url works too)")
	s.SecretString(&c.Password, "mqtt-password", "MQTT_PASSWORD", "MQTT password; prefer the variable to keep it out of ps")
	s.String(&c.ClientIDPrefix, "mqtt-client-id", "MQTT_CLIENT_ID", "prefix of the subscriber connections' client ids")
	s.Int(&c.Connections, "mqtt-connections", "PRESENCE_MQTT_CONNECTIONS", "subscriber connections sharing the stream (1..64)")
	s.Uint8(&c.QoS, "mqtt-qos", "PRESENCE_MQTT_QOS", "QoS of the subscriptions: 0, 1 or 2")
	s.Var(shareGroupFlag{&c.ShareGroup}, "share-group", "PRESENCE_SHARE_GROUP", "shared-subscription group ($share/GROUP/...): connections and cluster nodes split the stream; none subscribes plainly, for brokers without shared subscriptions (one connection; every cluster node reads the whole stream)")
	s.Var(persistentFlag{&c.CleanSession}, "mqtt-persistent-session", "PRESENCE_MQTT_PERSISTENT_SESSION", "keep a persistent MQTT session per connection (stable client ids PREFIX-N): the broker queues QoS 1 messages while presenced is down")
	s.Duration(&c.ProbeTimeout, "mqtt-probe-timeout", "PRESENCE_MQTT_PROBE_TIMEOUT", "not ready until a probe published on every subscribed filter came back; after this long, /readyz names the likely cause (0: no probe)")
	s.Var(&topicsFlag{topics: &c.Topics, kind: KindTelemetry, fresh: true}, "telemetry-topic", "PRESENCE_TELEMETRY_TOPICS",
		"telemetry topic patterns, comma-separated or repeated, each with one {id} segment and an optional timeout of its own: devices/{id}/telemetry,sensors/fast/{id}=30s,meters/{id}/data=10m")
	s.Var(&topicsFlag{topics: &c.Topics, kind: KindStatus, fresh: true}, "status-topic", "PRESENCE_STATUS_TOPICS",
		`status topic patterns whose payload "online"/"offline" (a Last Will) is an explicit transition`)
}

// NoShareGroup is the -share-group value that disables sharing (an empty
// environment variable counts as unset).
const NoShareGroup = "none"

// shareGroupFlag is -share-group: a group, or NoShareGroup (or "") for
// plain subscriptions.
type shareGroupFlag struct{ p *string }

func (f shareGroupFlag) String() string {
	if f.p == nil || *f.p == "" {
		return NoShareGroup
	}
	return *f.p
}

func (f shareGroupFlag) Set(v string) error {
	if v = strings.TrimSpace(v); strings.EqualFold(v, NoShareGroup) {
		v = ""
	}
	*f.p = v
	return nil
}

// persistentFlag is -mqtt-persistent-session, the inverse of
// Config.CleanSession.
type persistentFlag struct{ clean *bool }

func (f persistentFlag) String() string {
	if f.clean == nil {
		return "false"
	}
	return strconv.FormatBool(!*f.clean)
}

func (f persistentFlag) Set(v string) error {
	on, err := envflag.ParseBool(v)
	if err != nil {
		return err
	}
	*f.clean = !on
	return nil
}

func (persistentFlag) IsBoolFlag() bool { return true }

// topicsFlag is the patterns of one Kind in Config.Topics, as a
// comma-separated list of topic specs (ParseTopicSpec). The first value set
// replaces the patterns of its kind (the defaults, or the environment's),
// later ones add to them; telemetry patterns stay before status ones.
type topicsFlag struct {
	topics *[]Topic
	kind   Kind
	fresh  bool
}

func (f *topicsFlag) String() string {
	if f.topics == nil {
		return ""
	}
	var specs []string
	for _, t := range *f.topics {
		if t.Kind == f.kind {
			specs = append(specs, t.Spec())
		}
	}
	return strings.Join(specs, ",")
}

func (f *topicsFlag) Set(v string) error {
	if f.fresh {
		*f.topics = slices.DeleteFunc(slices.Clone(*f.topics), func(t Topic) bool { return t.Kind == f.kind })
		f.fresh = false
	}
	for _, spec := range strings.Split(v, ",") {
		if spec = strings.TrimSpace(spec); spec == "" {
			continue
		}
		t, err := ParseTopicSpec(f.kind, spec)
		if err != nil {
			return err
		}
		*f.topics = append(*f.topics, t)
	}
	slices.SortStableFunc(*f.topics, func(a, b Topic) int { return int(a.Kind) - int(b.Kind) })
	return nil
}

// Reset makes the next Set replace the patterns of its kind.
func (f *topicsFlag) Reset() { f.fresh = true }
