package ingest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// startMochi runs an embedded mochi-mqtt broker (the daemon's embedded
// default) on a free port until t ends and returns its URL.
func startMochi(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an embedded broker (-short)")
	}
	addr := testenv.FreeAddr(t)
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { closeMochi(t, srv) })
	return "tcp://" + addr
}

// closeMochi closes an embedded broker once the sessions of the clients
// that left have ended. mochi v2.7.9's Close takes its clients' read lock
// twice (Clients.GetByListener calls Len): a session ending meanwhile,
// its Delete waiting for the write lock, deadlocks it (TestTLS hung once
// so in a full run). By the time the test's cleanups run its ingesters
// have disconnected, so the wait is short. Should Close hang all the same,
// it is left behind after 5 s (logged): a leaked goroutine, not a test
// binary stuck until its timeout.
func closeMochi(t testing.TB, srv *mochi.Server) {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		left := 0
		for _, cl := range srv.Clients.GetAll() {
			if !cl.Net.Inline {
				left++
			}
		}
		if left == 0 {
			break
		}
	}
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Log("the embedded broker's Close hung (mochi's clients lock); left behind")
	}
}

// TestBrokers subscribes, shared and plain, on the three brokers presence
// meets: Mosquitto (the machine's), mochi-mqtt (the embedded one) and the
// MQTT gateway of nats-server, which has no shared subscriptions. Where the
// subscriptions deliver, the probe makes the Ingester ready and never
// reaches the handler; where they do not (NATS, shared), the Ingester is
// not ready, and says why and what to set.
func TestBrokers(t *testing.T) {
	brokers := []struct {
		name   string
		url    func(testing.TB) string
		shared bool // delivers on $share/ subscriptions
	}{
		{"mosquitto", brokerURL, true},
		{"mochi", startMochi, true},
		{"nats", testenv.NATSMQTT, false},
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			url := b.url(t)
			t.Run("shared", func(t *testing.T) {
				e := newTestEnvAt(t, url)
				c := e.config()
				c.ProbeTimeout = time.Second
				if b.shared {
					in := e.start(c)
					e.checkDelivers(in)
					return
				}
				in, err := New(c, e.h)
				if err != nil {
					t.Fatal(err)
				}
				if err := in.Start(context.Background()); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { in.Close(context.Background()) })
				// Subscribed (SUBACK granted), but nothing comes back.
				waitFor(t, "both SUBACKs", func() bool { return in.Stats().Subscribed == 2 })
				testenv.Eventually(t, 10*time.Second, func() error {
					err := in.ReadyErr()
					if err == nil {
						return fmt.Errorf("ready on a broker without shared subscriptions")
					}
					if !strings.Contains(err.Error(), "PRESENCE_SHARE_GROUP=none") {
						return fmt.Errorf("ReadyErr = %v, want the fix named", err)
					}
					t.Logf("ReadyErr: %v", err)
					return nil
				})
				e.publish(e.prefix+"devices/lost/telemetry", nil)
				time.Sleep(300 * time.Millisecond)
				if got := e.h.snapshot(); len(got) != 0 {
					t.Fatalf("handler got %v through a shared subscription NATS does not deliver on", got)
				}
			})
			t.Run("plain", func(t *testing.T) {
				e := newTestEnvAt(t, url)
				c := e.config()
				c.ShareGroup, c.Connections = "", 1
				e.checkDelivers(e.start(c))
			})
		})
	}
}

// checkDelivers publishes telemetry and a Last Will and checks that both
// arrive, that the probe came back and that no probe reached the handler.
func (e *testEnv) checkDelivers(in *Ingester) {
	e.t.Helper()
	if err := in.ReadyErr(); err != nil {
		e.t.Fatal(err)
	}
	if n := in.m.probesOK.Get(); n == 0 {
		e.t.Fatal("ready without a probe back")
	}
	e.publish(e.prefix+"devices/d1/telemetry", []byte("{}"))
	e.publish(e.prefix+"devices/d2/status", []byte("offline"))
	waitFor(e.t, "both messages", func() bool { return len(e.h.snapshot()) == 2 })
	for _, ev := range e.h.snapshot() {
		if strings.HasPrefix(ev.ID, ProbePrefix) {
			e.t.Fatalf("probe %q reached the handler", ev.ID)
		}
	}
}

// TestProbeOverlappingFilters: a status filter overlapped by a telemetry
// filter ("devices/{id}/#" and "devices/{id}/status") is proved by its own
// probe, which both match: the Ingester becomes ready, and no probe reaches
// the handler.
func TestProbeOverlappingFilters(t *testing.T) {
	e := newTestEnvAt(t, startMochi(t))
	c := e.config()
	c.Topics = []Topic{
		{Pattern: e.prefix + "devices/{id}/#"},
		{Pattern: e.prefix + "devices/{id}/status", Kind: KindStatus},
	}
	in := e.start(c)
	if got := e.h.snapshot(); len(got) != 0 {
		t.Fatalf("handler got %v", got)
	}
	if in.m.probesOK.Get() == 0 {
		t.Fatal("ready without a probe back")
	}
}

// TestProbeAfterReconnect: a connection that comes back is probed again;
// readiness returns once the probe of the new generation is back.
func TestProbeAfterReconnect(t *testing.T) {
	e := newTestEnv(t)
	p := newProxy(t, e.url)
	c := e.config()
	c.BrokerURL = "tcp://" + p.Addr()
	in := e.start(c)
	in.probe.mu.Lock()
	gen := in.probe.gen
	in.probe.mu.Unlock()
	p.Cut()
	waitFor(t, "not ready after the cut", func() bool { return !in.Ready() })
	p.Restore()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := in.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	in.probe.mu.Lock()
	defer in.probe.mu.Unlock()
	if in.probe.gen <= gen {
		t.Fatalf("probe generation %d after a reconnect, was %d", in.probe.gen, gen)
	}
}

// TestPersistentSessionAcrossRestart: with persistent sessions (stable
// client ids, clean session off) Mosquitto queues QoS 1 messages while
// presenced is stopped, in a shared group, and delivers them when it
// starts again; they are applied with the time they arrive.
func TestPersistentSessionAcrossRestart(t *testing.T) {
	e := newTestEnv(t)
	c := e.config()
	c.CleanSession = false
	c.ClientIDPrefix = fmt.Sprintf("ingest-persist-%08x", rand.Uint32())
	// Remove the sessions from the broker at the end, whatever happens: a
	// clean connect under the same ids discards them.
	t.Cleanup(func() {
		for i := range c.Connections {
			discardSession(t, e.url, c.ClientIDPrefix+"-"+fmt.Sprint(i))
		}
	})
	first := e.start(c)
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		e.publish(fmt.Sprintf("%sdevices/p%d/telemetry", e.prefix, i), nil)
	}
	restart := time.Now()
	second := e.start(c)
	waitFor(t, "the queued messages", func() bool { return len(e.h.snapshot()) == n })
	for _, ev := range e.h.snapshot() {
		if ev.At.Before(restart) {
			t.Fatalf("%s applied at %v, before the restart at %v: want its receive time", ev.ID, ev.At, restart)
		}
	}
	if err := second.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// discardSession ends the persistent session of client id at url: a clean
// connect under the same id discards it.
func discardSession(t *testing.T, url, id string) {
	t.Helper()
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true))
	if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Errorf("discard session %s: %v", id, tok.Error())
		return
	}
	cl.Disconnect(50)
}

// TestTLS subscribes over ssl:// (openConn's TLS dial) to an embedded
// broker with a certificate of the test's own CA, and refuses a broker the
// configured roots do not trust.
func TestTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded broker (-short)")
	}
	cert, pool := selfSigned(t)
	addr := testenv.FreeAddr(t)
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tls", Address: addr, TLSConfig: tc})); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { closeMochi(t, srv) })

	e := &testEnv{t: t, url: "ssl://" + addr, h: &fakeHandler{}, logw: newTestWriter(t)}
	e.prefix = "test/" + testenv.Name(t) + "/"
	c := e.config()
	c.TLS = &tls.Config{RootCAs: pool}
	in := e.start(c)
	if err := srv.Publish(e.prefix+"devices/tls1/telemetry", []byte("{}"), false, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message over TLS", func() bool { return len(e.h.snapshot()) == 1 })
	if in.m.probesOK.Get() == 0 {
		t.Error("ready without a probe back")
	}

	c.TLS = &tls.Config{RootCAs: x509.NewCertPool()} // trusts nothing
	untrusted, err := New(c, e.h)
	if err != nil {
		t.Fatal(err)
	}
	if err := untrusted.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer untrusted.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := untrusted.WaitReady(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("WaitReady with an untrusted broker = %v, want a certificate error", err)
	}
}

// selfSigned returns a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "presence test broker"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
