package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/presence-dev/presence/internal/queue"
)

// Webhook request headers.
const (
	// HeaderSignature is "sha256=" + lower-case hex HMAC-SHA256 of the raw
	// body with WebhookConfig.Secret as the key.
	HeaderSignature = "X-Presence-Signature"
	// HeaderTimestamp is the Unix time in seconds the request was sent
	// (each retry has its own).
	HeaderTimestamp = "X-Presence-Timestamp"
	// HeaderDelivery is the batch id, the same on every retry of a batch
	// and in the body's "batch" field: a receiver that saw it already can
	// acknowledge and ignore the retry.
	HeaderDelivery = "X-Presence-Delivery"
)

// Sign returns the X-Presence-Signature value of body under secret.
// Receivers compute the same and compare with hmac.Equal.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// VerifySignature reports whether header (the X-Presence-Signature value)
// is body's signature under secret, exactly as Sign writes it, comparing in
// constant time (hmac.Equal). An empty secret verifies nothing: the hub
// signs nothing without a secret, and anyone can sign with the empty key.
func VerifySignature(secret, body []byte, header string) bool {
	if len(secret) == 0 {
		return false
	}
	return hmac.Equal([]byte(Sign(secret, body)), []byte(header))
}

// webhookBatches numbers batches; with the process start time it makes
// batch ids unique across restarts.
var (
	webhookEpoch   = strconv.FormatInt(time.Now().UnixMilli(), 36)
	webhookBatches atomic.Uint64
)

// webhookSender POSTs batches to one URL. The body of a batch is built
// once and kept for its retries, so a retry is byte-identical (same
// signature, same batch id).
type webhookSender struct {
	name   string
	url    string
	secret []byte
	client *http.Client
	enc    encoder

	// The batch being delivered, identified by its first event (the worker
	// retries the same inflight slice; a fill may append to it).
	body    []byte
	batchID string
	bodyFor int // len(batch) the body was built for
	first   rec
}

func newWebhookSender(name string, cfg WebhookConfig) *webhookSender {
	c := cfg.Client
	if c == nil {
		c = &http.Client{
			Timeout: cfg.Delivery.Timeout,
			// Never follow a redirect: a 301/302 would turn the POST into
			// a GET that counts as delivered, and any redirect would send
			// the signed batch to an address nobody configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &webhookSender{name: name, url: cfg.URL, secret: []byte(cfg.Secret), client: c}
}

func (*webhookSender) accepts(Type) bool { return true }

func (w *webhookSender) build(batch []rec) {
	if w.body != nil && w.bodyFor == len(batch) && w.first == batch[0] {
		return // a retry of the same batch
	}
	w.batchID = webhookEpoch + "-" + strconv.FormatUint(webhookBatches.Add(1), 10)
	b := append(w.body[:0], `{"batch":"`...)
	b = append(b, w.batchID...)
	b = append(b, `","events":[`...)
	for i := range batch {
		if i > 0 {
			b = append(b, ',')
		}
		b = w.enc.appendJSON(b, &batch[i])
	}
	w.body = append(b, "]}"...)
	w.bodyFor, w.first = len(batch), batch[0]
}

func (w *webhookSender) send(ctx context.Context, batch []rec) error {
	w.build(batch)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(w.body))
	if err != nil {
		return queue.Permanent(fmt.Errorf("webhook %s: %w", w.name, err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "presence-events")
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(time.Now().Unix(), 10))
	req.Header.Set(HeaderDelivery, w.batchID)
	if len(w.secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(w.secret, w.body))
	}
	resp, err := w.client.Do(req)
	if err != nil {
		// A *url.Error quotes the URL, and tokens live in webhook URLs:
		// keep the cause only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("webhook %s: POST: %w", w.name, err)
	}
	// Drain a little so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		w.body, w.bodyFor = w.body[:0], 0
		return nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return fmt.Errorf("webhook %s: HTTP %d", w.name, code)
	case code >= 300 && code < 400:
		w.body, w.bodyFor = w.body[:0], 0
		return queue.Permanent(fmt.Errorf("webhook %s: HTTP %d: redirects are not followed; configure the address it redirects to", w.name, code))
	default:
		// Any other answer (4xx) will not change on retry: the batch is
		// dropped and counted.
		w.body, w.bodyFor = w.body[:0], 0
		return queue.Permanent(fmt.Errorf("webhook %s: HTTP %d", w.name, code))
	}
}
