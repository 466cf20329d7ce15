package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/presence-dev/presence/cluster"
	"github.com/presence-dev/presence/ingest"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/internal/wire"
)

// stack is the real Redis, Postgres and Mosquitto with names private to one
// test: a topic root, a Redis key prefix, a devices table and a history
// table.
type stack struct {
	t       *testing.T
	name    string
	rdb     *redis.Client
	pool    *pgxpool.Pool
	pub     paho.Client
	devices string // devices table
	history string // history table
}

func newStack(t *testing.T, ids ...int) *stack {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test")
	}
	s := &stack{t: t, name: testenv.Name(t)}
	s.devices, s.history = s.name+"_devices", s.name+"_history"
	opts, err := redis.ParseURL(testenv.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	s.rdb = redis.NewClient(opts)
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := s.rdb.Keys(ctx, s.name+":*").Result()
		if len(keys) > 0 {
			s.rdb.Del(ctx, keys...)
		}
		s.rdb.Close()
	})
	ctx := context.Background()
	if s.pool, err = pgxpool.New(ctx, testenv.DatabaseURL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+s.devices+", "+s.history)
		s.pool.Close()
	})
	if _, err := s.pool.Exec(ctx, "CREATE TABLE "+s.devices+" (id bigint PRIMARY KEY, name text, last_seen timestamptz, status text)"); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := s.pool.Exec(ctx, "INSERT INTO "+s.devices+" (id, name) VALUES ($1, $2)", id, fmt.Sprint("device ", id)); err != nil {
			t.Fatal(err)
		}
	}
	po := paho.NewClientOptions().AddBroker(testenv.MQTTURL()).SetClientID(s.name + "-pub")
	s.pub = paho.NewClient(po)
	if tok := s.pub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	t.Cleanup(func() { s.pub.Disconnect(100) })
	return s
}

// config is a daemon configuration on the stack: 2 s timeout, 100 ms
// flushes, the API on a free port.
func (s *stack) config() Config {
	c := DefaultConfig()
	c.Ingest.BrokerURL = testenv.MQTTURL()
	c.Ingest.ClientIDPrefix = s.name
	c.Ingest.ShareGroup = s.name
	c.Ingest.Topics = []ingest.Topic{
		{Pattern: s.name + "/devices/{id}/telemetry", Kind: ingest.KindTelemetry},
		{Pattern: s.name + "/devices/{id}/status", Kind: ingest.KindStatus},
	}
	c.Redis.URL = testenv.RedisURL()
	c.Keys.KeyPrefix = s.name + ":device:"
	c.Keys.Flush.Interval = 100 * time.Millisecond
	c.Postgres.URL = testenv.DatabaseURL()
	c.Devices.Table = s.devices
	c.Devices.Flush.Interval = 100 * time.Millisecond
	c.History.Table = s.history
	c.Events.PubSub.Channel = s.name + ":events"
	c.Events.Stream.Key = s.name + ":stream"
	c.Engine.DefaultTimeout = 2 * time.Second
	c.API.Addr = "127.0.0.1:0"
	c.ShutdownTimeout = 10 * time.Second
	return c
}

func (s *stack) env(c Config) []string {
	return append(os.Environ(),
		"MQTT_URL="+c.Ingest.BrokerURL, "MQTT_CLIENT_ID="+c.Ingest.ClientIDPrefix, "PRESENCE_SHARE_GROUP="+c.Ingest.ShareGroup,
		"PRESENCE_TELEMETRY_TOPICS="+c.Ingest.Topics[0].Spec(), "PRESENCE_STATUS_TOPICS="+c.Ingest.Topics[1].Spec(),
		"REDIS_URL="+c.Redis.URL, "PRESENCE_REDIS_PREFIX="+c.Keys.KeyPrefix,
		"PRESENCE_REDIS_FLUSH_INTERVAL="+c.Keys.Flush.Interval.String(), "DATABASE_URL="+c.Postgres.URL,
		"PRESENCE_PG_TABLE="+c.Devices.Table, "PRESENCE_PG_FLUSH_INTERVAL="+c.Devices.Flush.Interval.String(),
		"PRESENCE_HISTORY_TABLE="+c.History.Table, "DEVICE_OFFLINE_TIMEOUT="+c.Engine.DefaultTimeout.String(),
		"PRESENCE_EVENTS_CHANNEL="+c.Events.PubSub.Channel, "PRESENCE_EVENTS_STREAM="+c.Events.Stream.Key,
		"PRESENCE_HTTP_ADDR="+c.API.Addr)
}

func (s *stack) publish(id int, kind, payload string) {
	s.t.Helper()
	tok := s.pub.Publish(fmt.Sprintf("%s/devices/%d/%s", s.name, id, kind), 1, false, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		s.t.Fatalf("publish: %v", tok.Error())
	}
}

func (s *stack) publishRaw(topic, payload string) {
	s.t.Helper()
	tok := s.pub.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		s.t.Fatalf("publish: %v", tok.Error())
	}
}

// redisState reads a device as an existing consumer does.
func (s *stack) redisState(id int) (status string, lastSeen time.Time, err error) {
	ctx := context.Background()
	p := s.name + ":device:"
	vals, err := s.rdb.MGet(ctx, fmt.Sprint(p, "status:", id), fmt.Sprint(p, "lastseen:", id)).Result()
	if err != nil {
		return "", time.Time{}, err
	}
	if vals[0] == nil || vals[1] == nil {
		return "", time.Time{}, fmt.Errorf("device %d: no keys", id)
	}
	lastSeen, err = wire.ParseTime(vals[1].(string))
	return vals[0].(string), lastSeen, err
}

func (s *stack) pgState(id int) (status string, lastSeen time.Time, err error) {
	var st *string
	var ls *time.Time
	err = s.pool.QueryRow(context.Background(), "SELECT status, last_seen FROM "+s.devices+" WHERE id = $1", id).Scan(&st, &ls)
	if err == nil && (st == nil || ls == nil) {
		err = fmt.Errorf("device %d: row not written", id)
	}
	if err != nil {
		return "", time.Time{}, err
	}
	return *st, *ls, nil
}

type historyRow struct {
	status, cause string
	at            time.Time
}

func (s *stack) historyOf(id int) []historyRow {
	s.t.Helper()
	rows, err := s.pool.Query(context.Background(),
		"SELECT status, cause, changed_at FROM "+s.history+" WHERE device_id = $1 ORDER BY changed_at, status DESC", fmt.Sprint(id))
	if err != nil {
		return nil // the table appears with the first write
	}
	defer rows.Close()
	var out []historyRow
	for rows.Next() {
		var r historyRow
		if err := rows.Scan(&r.status, &r.cause, &r.at); err != nil {
			s.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// running is an in-process daemon.
type running struct {
	d      *Daemon
	cancel context.CancelFunc
	done   chan error
}

func startDaemon(t *testing.T, c Config) *running {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := New(c, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	testenv.Eventually(t, 10*time.Second, func() error { return r.get("/readyz", nil) })
	return r
}

func (r *running) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("daemon stopped with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Error("daemon did not stop")
	}
}

// get fetches path from the API and fails unless it answers 200.
func (r *running) get(path string, body *string) error {
	resp, err := http.Get("http://" + r.d.HTTPAddr() + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if body != nil {
		*body = string(b)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return nil
}

// timeoutsKey is the hash holding device id's own timeout in c's Redis:
// that of its partition.
func timeoutsKey(c Config, id string) string {
	return c.Keys.KeyPrefix + "timeouts:" + strconv.Itoa(cluster.PartitionOf(id, c.Recovery.Index.Partitions))
}

// overrides returns every device's own timeout stored under c's prefix.
func (s *stack) overrides(c Config) map[string]string {
	s.t.Helper()
	ctx := context.Background()
	keys, err := s.rdb.Keys(ctx, wire.RedisMatch(c.Keys.KeyPrefix+"timeouts:")).Result()
	if err != nil {
		s.t.Fatal(err)
	}
	all := map[string]string{}
	for _, k := range keys {
		m, err := s.rdb.HGetAll(ctx, k).Result()
		if err != nil {
			s.t.Fatal(err)
		}
		maps.Copy(all, m)
	}
	return all
}
