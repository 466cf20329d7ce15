package events

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/queue"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// receiver is a webhook endpoint that verifies signatures and fails its
// first failFirst requests with 500.
type receiver struct {
	t         *testing.T
	secret    string
	failFirst int32

	requests atomic.Int32
	mu       sync.Mutex
	batches  map[string]bool // batch ids accepted
	events   []Event
	badSig   int
	retried  map[string]int // batch id -> failed attempts
}

func (rv *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	n := rv.requests.Add(1)
	rv.mu.Lock()
	defer rv.mu.Unlock()
	if !VerifySignature([]byte(rv.secret), body, r.Header.Get(HeaderSignature)) {
		rv.badSig++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if ts, err := strconv.ParseInt(r.Header.Get(HeaderTimestamp), 10, 64); err != nil || time.Since(time.Unix(ts, 0)) > time.Minute {
		rv.badSig++
		http.Error(w, "bad timestamp", http.StatusBadRequest)
		return
	}
	var b struct {
		Batch  string            `json:"batch"`
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.Batch != r.Header.Get(HeaderDelivery) {
		rv.t.Errorf("bad body %.100s: %v", body, err)
		return
	}
	if n <= rv.failFirst {
		rv.retried[b.Batch]++
		http.Error(w, "down", http.StatusInternalServerError)
		return
	}
	if rv.batches[b.Batch] {
		rv.t.Errorf("batch %s delivered twice", b.Batch)
	}
	rv.batches[b.Batch] = true
	for _, e := range b.Events {
		rv.events = append(rv.events, decode(rv.t, e))
	}
}

func newReceiver(t *testing.T, secret string, failFirst int32) (*receiver, *httptest.Server) {
	rv := &receiver{t: t, secret: secret, failFirst: failFirst, batches: map[string]bool{}, retried: map[string]int{}}
	srv := httptest.NewServer(rv)
	t.Cleanup(srv.Close)
	return rv, srv
}

func webhookCfg(url, secret string) WebhookConfig {
	w := DefaultWebhookConfig(url, secret)
	w.Delivery.MinBackoff, w.Delivery.MaxBackoff, w.Delivery.BatchSize = 5*time.Millisecond, 40*time.Millisecond, 64
	return w
}

// TestWebhookFailsThenRecovers: the receiver answers 500 to its first 5
// requests; every batch is retried (byte-identical: same batch id, valid
// signature) until accepted, so every transition arrives once, in order.
func TestWebhookFailsThenRecovers(t *testing.T) {
	rv, srv := newReceiver(t, "s3cret", 5)
	cfg := bareConfig()
	cfg.Webhooks = []WebhookConfig{webhookCfg(srv.URL, "s3cret")}
	h, err := New(cfg, Deps{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	runHub(t, h)
	want := trace(30, 20, 6)
	feed(h, want, 6)
	testenv.Eventually(t, 20*time.Second, func() error {
		rv.mu.Lock()
		defer rv.mu.Unlock()
		if len(rv.events) < len(want) {
			return fmt.Errorf("received %d of %d", len(rv.events), len(want))
		}
		return nil
	})
	rv.mu.Lock()
	defer rv.mu.Unlock()
	checkOnceInOrder(t, want, rv.events)
	if rv.badSig != 0 {
		t.Fatalf("%d requests with a bad signature", rv.badSig)
	}
	// The failed attempts were of one batch, retried until accepted.
	for id, n := range rv.retried {
		if !rv.batches[id] {
			t.Fatalf("batch %s failed %d times and never arrived", id, n)
		}
	}
	d := h.dests[0]
	if d.m.Retries.Get() < 5 || d.m.Errors.Get() < 5 {
		t.Fatalf("retries %d errors %d, want >= 5", d.m.Retries.Get(), d.m.Errors.Get())
	}
}

// TestWebhookNeverAnswers: a receiver that accepts connections and never
// answers must not slow HandleTransitions. 2,000 batches are handed over
// while the only webhook worker is stuck in its first request; each call
// returns at once (no call waits for the receiver: the test would hang
// otherwise), the queue stays bounded and the overflow is counted.
func TestWebhookNeverAnswers(t *testing.T) {
	block := make(chan struct{})
	var started atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Add(1)
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(block) })

	cfg := bareConfig()
	w := webhookCfg(srv.URL, "k")
	w.Delivery.QueueCapacity, w.Delivery.Timeout = 1000, time.Minute
	cfg.Webhooks = []WebhookConfig{w}
	h, err := New(cfg, Deps{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.HandleTransitions([]engine.Transition{tr("first", engine.StatusUnknown, engine.StatusOnline, t0, engine.CauseTelemetry)})
	testenv.Eventually(t, 5*time.Second, func() error {
		if started.Load() == 0 {
			return fmt.Errorf("no request yet")
		}
		return nil
	})

	// Call HandleTransitions from a goroutine and require it to finish
	// while the receiver is still blocked: if it waited for the webhook it
	// could only finish after block is closed (at cleanup).
	done := make(chan struct{})
	go func() {
		defer close(done)
		batch := make([]engine.Transition, 100)
		for i := range 2000 {
			for j := range batch {
				batch[j] = tr(fmt.Sprint("d", j), engine.StatusOnline, engine.StatusOffline, t0.Add(time.Duration(i)*time.Second), engine.CauseTimeout)
			}
			h.HandleTransitions(batch)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("HandleTransitions blocked behind a stuck webhook")
	}
	d := h.dests[0]
	if q := d.q.Len(); q > 1000+w.Delivery.BatchSize {
		t.Fatalf("queue holds %d, capacity 1000", q)
	}
	if dr := d.m.Dropped.Get(); dr < 2000*100-1000-1 {
		t.Fatalf("dropped %d, want about %d", dr, 2000*100-1000)
	}
	if started.Load() != 1 {
		t.Fatalf("%d requests, want 1 (the worker is stuck in it)", started.Load())
	}

	// Close gives up at its deadline, aborting the stuck request, and says
	// how much was not sent.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = h.Close(ctx)
	var ue *UnsentError
	if !errors.As(err, &ue) || ue.Unsent["webhook_0"] != 1001 {
		t.Fatalf("Close: %v, want 1001 unsent (1000 queued, 1 in flight)", err)
	}
}

// TestWebhookPermanentFailure: a 4xx answer will not change on retry: the
// batch is dropped and counted, and the next one is sent.
func TestWebhookPermanentFailure(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	t.Cleanup(srv.Close)
	cfg := bareConfig()
	cfg.Webhooks = []WebhookConfig{webhookCfg(srv.URL, "")}
	h, err := New(cfg, Deps{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	d := h.dests[0]
	h.HandleTransitions([]engine.Transition{tr("a", engine.StatusUnknown, engine.StatusOnline, t0, engine.CauseTelemetry)})
	runHub(t, h)
	testenv.Eventually(t, 5*time.Second, func() error {
		if d.m.Dropped.Get() != 1 {
			return fmt.Errorf("dropped %d", d.m.Dropped.Get())
		}
		return nil
	})
	h.HandleTransitions([]engine.Transition{tr("a", engine.StatusOnline, engine.StatusOffline, t0, engine.CauseTimeout)})
	testenv.Eventually(t, 5*time.Second, func() error {
		if d.m.Sent.Get() != 1 {
			return fmt.Errorf("sent %d", d.m.Sent.Get())
		}
		return nil
	})
	if d.m.Retries.Get() != 0 {
		t.Fatalf("a 400 was retried")
	}
}

func TestSign(t *testing.T) {
	// echo -n '{"batch":"x","events":[]}' | openssl dgst -sha256 -hmac secret
	body := []byte(`{"batch":"x","events":[]}`)
	got := Sign([]byte("secret"), body)
	if want := "sha256=8af452820a0847fc48cdbfbb25931e275fecd3d55d2de1be3904fcdd9cd870df"; got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
	if !VerifySignature([]byte("secret"), body, got) || VerifySignature([]byte("other"), body, got) {
		t.Fatal("VerifySignature")
	}
	if VerifySignature(nil, body, Sign(nil, body)) || VerifySignature([]byte{}, body, Sign([]byte{}, body)) {
		t.Fatal("VerifySignature accepts a signature under the empty key")
	}
}

// hmacKey is the block HMAC-SHA256 really keys with (RFC 2104): a key
// longer than the block is hashed, then padded with zeros. Two secrets
// with the same hmacKey sign alike ("k" and "k\x00"): no mutation of the
// secret can tell them apart.
func hmacKey(secret []byte) [sha256.BlockSize]byte {
	var k [sha256.BlockSize]byte
	if len(secret) > sha256.BlockSize {
		sum := sha256.Sum256(secret)
		secret = sum[:]
	}
	copy(k[:], secret)
	return k
}

var signature = regexp.MustCompile(`^sha256=[0-9a-f]{64}$`)

// FuzzVerifySignature: Sign's header verifies for its secret and body, and
// only that exact header does; flipping any bit of the header or the body,
// or cutting or extending either, fails; a changed secret fails unless
// HMAC keys with it alike (hmacKey); the empty secret verifies nothing.
func FuzzVerifySignature(f *testing.F) {
	body := []byte(`{"batch":"x","events":[]}`)
	good := Sign([]byte("secret"), body)
	f.Add([]byte("secret"), body, good, uint(0), byte(0))
	f.Add([]byte("secret"), body, strings.ToUpper(good), uint(7), byte(1))
	f.Add([]byte("secret"), body, good+" ", uint(70), byte(7))
	f.Add([]byte("secret"), body, strings.TrimPrefix(good, "sha256="), uint(3), byte(2))
	f.Add([]byte("secret"), []byte{}, "", uint(0), byte(0))
	f.Add([]byte{}, body, Sign(nil, body), uint(1), byte(3))
	f.Add([]byte("k\x00"), body, Sign([]byte("k"), body), uint(0), byte(0))
	f.Add([]byte(strings.Repeat("s", 65)), body, "sha256=", uint(64), byte(5))
	f.Add([]byte(strings.Repeat("s", 64)), []byte("\xff\x00"), "sha256=\x00", uint(9), byte(6))
	f.Fuzz(func(t *testing.T, secret, body []byte, header string, at uint, bit byte) {
		sig := Sign(secret, body)
		if !signature.MatchString(sig) {
			t.Fatalf("Sign = %q", sig)
		}
		if len(secret) == 0 {
			if VerifySignature(secret, body, sig) || VerifySignature(secret, body, header) {
				t.Fatal("the empty secret verified a signature")
			}
			return
		}
		if !VerifySignature(secret, body, sig) {
			t.Fatalf("Sign(%q, %q) does not verify", secret, body)
		}
		if got := VerifySignature(secret, body, header); got != (header == sig) {
			t.Fatalf("header %q: %v, want %v (signature %q)", header, got, !got, sig)
		}
		flip := func(b []byte) []byte {
			b = bytes.Clone(b)
			b[at%uint(len(b))] ^= 1 << (bit % 8)
			return b
		}
		for _, h := range []string{string(flip([]byte(sig))), sig[:len(sig)-1], sig + "0", " " + sig, strings.ToUpper(sig)} {
			if VerifySignature(secret, body, h) {
				t.Fatalf("mutated header %q verifies", h)
			}
		}
		mutated := [][]byte{append(bytes.Clone(body), bit)}
		if len(body) > 0 {
			mutated = append(mutated, flip(body), body[:len(body)-1])
		}
		for _, b := range mutated {
			if VerifySignature(secret, b, sig) {
				t.Fatalf("body %q verifies the signature of %q", b, body)
			}
		}
		for _, s := range [][]byte{flip(secret), append(bytes.Clone(secret), bit), secret[:len(secret)-1]} {
			if got, alike := VerifySignature(s, body, sig), len(s) > 0 && hmacKey(s) == hmacKey(secret); got != alike {
				t.Fatalf("secret %q for the signature under %q: %v, want %v", s, secret, got, alike)
			}
		}
	})
}

// A webhook that cannot be reached is logged and counted without its URL,
// whose path or query may hold a token.
func TestWebhookErrorHidesURL(t *testing.T) {
	w := newWebhookSender("hook", DefaultWebhookConfig("http://127.0.0.1:1/hook?token=hunter2", ""))
	err := w.send(context.Background(), []rec{statusRec(&engine.Transition{ID: "1", To: engine.StatusOnline, At: t0})})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "webhook hook") {
		t.Fatalf("send = %v", err)
	}
}

// TestWebhookNoRedirects: a webhook answering with a redirect (301, 302,
// 307, 308) is not followed: the target gets nothing, the signed batch
// stays where it was configured, and the batch counts as dropped, not sent.
func TestWebhookNoRedirects(t *testing.T) {
	var reached atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
	t.Cleanup(target.Close)
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.URL+"/elsewhere", code)
		}))
		w := newWebhookSender("hook", DefaultWebhookConfig(srv.URL, "secret"))
		err := w.send(context.Background(), []rec{statusRec(&engine.Transition{ID: "1", To: engine.StatusOnline, At: t0})})
		srv.Close()
		if !queue.IsPermanent(err) || !strings.Contains(err.Error(), "redirects are not followed") {
			t.Errorf("HTTP %d: send = %v, want a permanent error about redirects", code, err)
		}
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("the redirect target got %d requests", n)
	}
}
