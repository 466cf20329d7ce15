package daemon

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/internal/envflag"
)

func getenv(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestParseFlags(t *testing.T) {
	check := func(name string, args []string, env func(string) string, ok func(Config) bool) {
		t.Helper()
		c, err := ParseFlags(args, env, io.Discard)
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !ok(c) {
			t.Fatalf("%s: %+v", name, c)
		}
	}
	check("defaults", nil, getenv(), func(c Config) bool {
		return c.Ingest.BrokerURL == "" && !c.Redis.Enabled() && !c.Postgres.Enabled() && c.Engine.DefaultTimeout == time.Minute &&
			c.API.Addr == "127.0.0.1:8080" && c.Ingest.Topics[0].Pattern == "devices/{id}/telemetry" && !c.clustered()
	})
	check("seed environment", nil, getenv("REDIS_HOST", "cache", "REDIS_PORT", "6380", "REDIS_DB", "2", "DEVICE_OFFLINE_TIMEOUT", "300"),
		func(c Config) bool { return c.Redis.Enabled() && c.Engine.DefaultTimeout == 5*time.Minute })
	check("duration timeout", []string{"-timeout", "90s"}, getenv("DEVICE_OFFLINE_TIMEOUT", "30"),
		func(c Config) bool { return c.Engine.DefaultTimeout == 90*time.Second })
	check("per-topic timeouts", []string{"-telemetry-topic", "sensors/fast/{id}=30s", "-telemetry-topic", "meters/{id}/data=10m"}, getenv(),
		func(c Config) bool {
			ts := c.Ingest.Topics
			return len(ts) == 3 && ts[0].Timeout == 30*time.Second && ts[1].Timeout == 10*time.Minute
		})
	check("cluster", nil, getenv("REDIS_ADDRS", "r1:7000,r2:7000", "REDIS_PASSWORD", "pw"), func(c Config) bool {
		cl, err := c.Redis.NewClient()
		if err != nil {
			return false
		}
		defer cl.Close()
		_, isCluster := cl.(*redis.ClusterClient)
		return c.Redis.Enabled() && isCluster
	})
	check("sentinel", nil, getenv("REDIS_ADDRS", "s1:26379", "REDIS_MASTER_NAME", "mymaster"), func(c Config) bool {
		cl, err := c.Redis.NewClient()
		if err != nil {
			return false
		}
		defer cl.Close()
		_, isSingle := cl.(*redis.Client) // a failover client
		return isSingle
	})
	check("no shared subscriptions", nil, getenv("PRESENCE_SHARE_GROUP", "none"), func(c Config) bool {
		return c.Ingest.ShareGroup == "" && c.Ingest.Connections == 1
	})
	check("no shared subscriptions, clustered", []string{"-share-group=NONE", "-cluster-bind", "127.0.0.1:7946"}, getenv(), func(c Config) bool {
		r := c.resolve("tcp://b:1883")
		return r.Ingest.ShareGroup == "" && r.Ingest.Connections == 1 && r.Cluster.ReadsAll
	})
	check("shared, clustered", []string{"-cluster-bind", "127.0.0.1:7946"}, getenv(), func(c Config) bool {
		return !c.resolve("tcp://b:1883").Cluster.ReadsAll
	})
	check("persistent session", nil, getenv("PRESENCE_MQTT_PERSISTENT_SESSION", "true", "PRESENCE_NODE_NAME", "n1"), func(c Config) bool {
		return !c.Ingest.CleanSession && c.resolve("tcp://b:1883").Ingest.ClientIDPrefix == "presenced"
	})
	check("persistent session, clustered", []string{"-mqtt-persistent-session", "-cluster-bind", "127.0.0.1:7946"}, getenv("PRESENCE_NODE_NAME", "n1"), func(c Config) bool {
		return !c.Ingest.CleanSession && c.resolve("tcp://b:1883").Ingest.ClientIDPrefix == "presenced-n1"
	})
	check("the events stream apart from the device keys", nil, getenv("REDIS_URL", "redis://r:6379"), func(c Config) bool {
		return c.Events.Stream.Key == "device:events:stream" && c.Keys.KeyPrefix == "device:"
	})
	check("event names after a prefix of its own", []string{"-redis-prefix", "fleet2:"}, getenv("REDIS_URL", "redis://r:6379/15"), func(c Config) bool {
		r := c.resolve("tcp://b:1883")
		return r.Events.Stream.Key == "fleet2:events:stream" && r.Events.PubSub.Channel == "fleet2:status:events"
	})
	check("event names given keep theirs", []string{"-redis-prefix", "fleet2:", "-events-stream", "s", "-events-channel", "c"}, getenv("REDIS_URL", "redis://r:6379"), func(c Config) bool {
		r := c.resolve("tcp://b:1883")
		return r.Events.Stream.Key == "s" && r.Events.PubSub.Channel == "c"
	})
	check("a cluster node on Redis Cluster", []string{"-cluster-join", "seed:7946", "-cluster-bind", "127.0.0.1:7946"}, getenv("REDIS_ADDRS", "r1:7000,r2:7000", "PRESENCE_NODE_NAME", "n1"), func(c Config) bool {
		r := c.resolve("tcp://b:1883")
		return c.Validate() == nil && r.Keys.Guarded && len(r.Redis.Addrs) == 2
	})
	check("probe off", nil, getenv("PRESENCE_MQTT_PROBE_TIMEOUT", "0"), func(c Config) bool { return c.Ingest.ProbeTimeout == 0 })
	check("services", nil, getenv("MQTT_URL", "tcp://broker:1883", "REDIS_URL", "redis://r:6379/1", "DATABASE_URL", "postgres://db/x"),
		func(c Config) bool {
			return c.Ingest.BrokerURL == "tcp://broker:1883" && c.Redis.Enabled() && c.Postgres.URL != ""
		})
}

func TestParseFlagsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  func(string) string
		want string
	}{
		{[]string{"-timeout", "0"}, getenv(), "-timeout"},
		{nil, getenv("DEVICE_OFFLINE_TIMEOUT", "8d"), "DEVICE_OFFLINE_TIMEOUT"},
		{[]string{"-tick", "1ms"}, getenv(), "-tick"},
		{[]string{"-mqtt-qos", "3"}, getenv(), "-mqtt-qos"},
		{[]string{"-telemetry-topic", "devices/{id}/{id}"}, getenv(), "-telemetry-topic"},
		{[]string{"-telemetry-topic", "devices/{id}=forever"}, getenv(), "-telemetry-topic"},
		{[]string{"-http-addr", "8080"}, getenv(), "-http-addr"},
		{[]string{"-log-level", "loud"}, getenv(), "-log-level"},
		{[]string{"-demo", "-1"}, getenv(), "-demo"},
		{nil, getenv("REDIS_URL", "mysql://x"), "REDIS_URL"},
		{[]string{"-redis-host", "r", "-redis-ttl", "1.5"}, getenv(), "TTL"},
		{[]string{"-database-url", "postgres://x", "-pg-table", ""}, getenv(), "Table"},
		{[]string{"-mqtt-connections", "2", "-share-group", ""}, getenv(), "Share"},
		{[]string{"-mqtt-connections", "2"}, getenv("PRESENCE_SHARE_GROUP", "none"), "Share"},
		{nil, getenv("PRESENCE_MQTT_PERSISTENT_SESSION", "maybe"), "PRESENCE_MQTT_PERSISTENT_SESSION"},
		{[]string{"-mqtt-probe-timeout", "-1s"}, getenv(), "probe"},
		// The stream key of before issue 12 is the status key of a device named "stream".
		{nil, getenv("REDIS_URL", "redis://r:6379", "PRESENCE_EVENTS_STREAM", "device:status:stream"), `a device named "stream"`},
		{[]string{"-redis-prefix", "x:", "-events-stream", "x:index:7"}, getenv("REDIS_URL", "redis://r:6379"), "-events-stream"},
		{[]string{"-redis-prefix", "x:", "-events-stream", "x:timeouts:7"}, getenv("REDIS_URL", "redis://r:6379"), "-events-stream"},
		{[]string{"-redis-prefix", "x:", "-events-stream", "x:timeouts"}, getenv("REDIS_URL", "redis://r:6379"), "own timeouts"},
		{nil, getenv("REDIS_ADDRS", "r1"), "REDIS_ADDRS"},
		{nil, getenv("REDIS_ADDRS", "r1:7000,r2:7000", "REDIS_DB", "3"), "only database 0"},
		{[]string{"-events-stream-shards", "-1"}, getenv("REDIS_URL", "redis://r:6379"), "Shards"},
		{[]string{"-cluster-key", "not base64!"}, getenv(), "PRESENCE_CLUSTER_KEY"},
		{[]string{"-pprof-addr", "0.0.0.0:6060"}, getenv(), "-api-token"},
		{nil, getenv("PRESENCE_PPROF_ADDR", "6060"), "-pprof-addr"},
	} {
		c, err := ParseFlags(tc.args, tc.env, io.Discard)
		if err == nil {
			err = c.Validate()
		}
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	var out strings.Builder
	if _, err := ParseFlags([]string{"-h"}, getenv(), &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "(env REDIS_URL)") {
		t.Fatalf("-h: %v\n%s", err, out.String())
	}
}

// The embedded default: no broker, Redis or Postgres configured; -demo
// devices come and go through the API.
func TestEmbeddedDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("takes seconds")
	}
	c := DefaultConfig()
	c.EmbeddedMQTTAddr = "127.0.0.1:0"
	c.API.Addr = "127.0.0.1:0"
	c.Demo = 30
	c.Engine.DefaultTimeout = time.Second
	r := startDaemon(t, c)
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := r.d.Engine().Stats()
		if st.OfflineTransitions > 0 && st.OnlineTransitions > 30 {
			break // some went offline, and some of those came back
		}
		if time.Now().After(deadline) {
			t.Fatalf("demo devices did not come and go: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var body string
	if err := r.get("/v1/devices/1001", &body); err != nil || !strings.Contains(body, `"id":"1001"`) {
		t.Fatalf("API: %v %s", err, body)
	}
}

// docs/CONFIGURATION.md names every flag and its variable, and no flag
// that does not exist.
func TestConfigurationDocIsComplete(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/CONFIGURATION.md")
	if err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	s := envflag.New("presenced")
	c.RegisterFlags(s)
	known := map[string]bool{}
	s.VisitAll(func(f *flag.Flag) {
		known[f.Name] = true
		env := f.Usage[strings.LastIndex(f.Usage, "(env ")+len("(env ") : len(f.Usage)-1]
		if !bytes.Contains(doc, []byte("`-"+f.Name+"`")) || !bytes.Contains(doc, []byte(env)) {
			t.Errorf("docs/CONFIGURATION.md lacks `-%s` or %s", f.Name, env)
		}
	})
	for _, m := range regexp.MustCompile("`-([a-z][a-z0-9-]+)").FindAllSubmatch(doc, -1) {
		if name := string(m[1]); !known[name] && name != "h" {
			t.Errorf("docs/CONFIGURATION.md names -%s, which presenced does not have", name)
		}
	}
}

// The deployment examples and the page on running a cluster name only
// settings presenced has: every variable of ours and every flag they
// mention is in presenced -h.
func TestDeployFilesNameRealSettings(t *testing.T) {
	c := DefaultConfig()
	s := envflag.New("presenced")
	c.RegisterFlags(s)
	envs, flags := map[string]bool{}, map[string]bool{"h": true}
	s.VisitAll(func(f *flag.Flag) {
		flags[f.Name] = true
		envs[f.Usage[strings.LastIndex(f.Usage, "(env ")+len("(env "):len(f.Usage)-1]] = true
	})
	files := []string{"../../../docs/RUNNING.md"}
	err := filepath.WalkDir("../../../deploy", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, path)
		}
		return err
	})
	if err != nil || len(files) < 4 {
		t.Fatalf("deploy files: %v %v", files, err)
	}
	envRE := regexp.MustCompile(`\b((?:PRESENCE|MQTT|REDIS|DEVICE)_[A-Z0-9_]+|DATABASE_URL)\b`)
	flagRE := regexp.MustCompile("`-([a-z][a-z0-9-]+)`|\\s--?([a-z][a-z0-9]*(?:-[a-z0-9]+)+)\\b")
	named := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range envRE.FindAllString(string(b), -1) {
			named++
			if !envs[m] {
				t.Errorf("%s names %s, which presenced does not read", f, m)
			}
		}
		if !strings.HasSuffix(f, ".md") {
			continue
		}
		for _, m := range flagRE.FindAllStringSubmatch(string(b), -1) {
			name := m[1] + m[2]
			if !flags[name] && !strings.HasPrefix(name, "from-literal") {
				t.Errorf("%s names the flag -%s, which presenced does not have", f, name)
			}
		}
	}
	if named < 20 {
		t.Fatalf("only %d settings named in %v: the check reads nothing", named, files)
	}
}
