package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// fakeBroker records what its publishers publish, with the (fake) time.
type fakeBroker struct {
	mu    sync.Mutex
	start time.Time
	msgs  []fakeMsg
	// behaviour
	down   atomic.Bool // Connected reports false
	hold   bool        // publishes never complete
	failed error       // publishes complete with this error
	dials  int
}

type fakeMsg struct {
	conn    int
	topic   string
	payload string
	at      time.Duration
}

type fakeToken struct {
	done chan struct{}
	err  error
}

func (t *fakeToken) Done() <-chan struct{} { return t.done }
func (t *fakeToken) Error() error          { return t.err }

type fakePub struct {
	b    *fakeBroker
	conn int
}

func (b *fakeBroker) dial(_ context.Context, _ Config, conn int) (Publisher, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dials++
	return &fakePub{b: b, conn: conn}, nil
}

func (p *fakePub) Publish(topic string, _ byte, payload []byte) Pending {
	b := p.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs = append(b.msgs, fakeMsg{p.conn, topic, string(payload), time.Since(b.start)})
	t := &fakeToken{done: make(chan struct{}), err: b.failed}
	if !b.hold {
		close(t.done)
	}
	return t
}

func (p *fakePub) Connected() bool { return !p.b.down.Load() }
func (p *fakePub) Close()          {}

func (b *fakeBroker) messages() []fakeMsg {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]fakeMsg(nil), b.msgs...)
}

func runFake(t *testing.T, cfg Config, b *fakeBroker, ctx context.Context) (Summary, *Runner) {
	t.Helper()
	r, err := New(cfg, Options{Dial: b.dial})
	if err != nil {
		t.Fatal(err)
	}
	b.start = time.Now()
	sum, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return sum, r
}

func smallConfig() Config {
	cfg := DefaultConfig()
	cfg.Devices, cfg.Rate, cfg.Conns, cfg.Duration = 100, 1000, 4, 2*time.Second
	cfg.Progress = 0
	return cfg
}

// In fake time the generator publishes exactly the schedule: every device
// once per period, on its own connection, on time to within one tick.
func TestRunPacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := smallConfig()
		b := &fakeBroker{}
		sum, r := runFake(t, cfg, b, t.Context())
		msgs := b.messages()
		if sum.Sent != 2000 || len(msgs) != 2000 || sum.Errors != 0 {
			t.Fatalf("sent %d, published %d, errors %d; want 2000, 2000, 0", sum.Sent, len(msgs), sum.Errors)
		}
		if sum.Duration < cfg.Duration || sum.Duration > cfg.Duration+cfg.Tick {
			t.Errorf("duration %s, want %s..+tick", sum.Duration, cfg.Duration)
		}
		if sum.Rate < 999 || sum.Rate > 1000 {
			t.Errorf("rate %.1f, want ~1000", sum.Rate)
		}
		perDevice := map[string]int{}
		s := r.Schedule()
		for i, m := range msgs {
			perDevice[m.topic]++
			var p struct {
				Seq  uint64  `json:"seq"`
				TS   int64   `json:"ts"`
				Temp float64 `json:"temp"`
			}
			if err := json.Unmarshal([]byte(m.payload), &p); err != nil {
				t.Fatalf("payload %q: %v", m.payload, err)
			}
			var id uint64
			if _, err := fmt.Sscanf(m.topic, "devices/%d/telemetry", &id); err != nil {
				t.Fatalf("topic %q: %v", m.topic, err)
			}
			d := id - cfg.IDStart
			if s.Conn(d) != m.conn {
				t.Errorf("device %d published on conn %d", d, m.conn)
			}
			due := s.At(p.Seq*uint64(cfg.Devices) + d)
			if m.at < due || m.at > due+cfg.Tick {
				t.Fatalf("message %d (device %d seq %d) at %s, due %s", i, d, p.Seq, m.at, due)
			}
		}
		if len(perDevice) != 100 {
			t.Errorf("%d devices published, want 100", len(perDevice))
		}
		for topic, n := range perDevice {
			if n != 20 {
				t.Errorf("%s published %d times, want 20", topic, n)
			}
		}
	})
}

// Silencers stop at silent-after, announce it, and come back after
// return-after; the others never stop.
func TestRunSilenceAndReturn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := smallConfig() // each device every 100ms
		cfg.Duration = 3 * time.Second
		cfg.SilentFraction, cfg.SilentAfter, cfg.ReturnAfter, cfg.Announce = 0.1, time.Second, time.Second, true
		cfg.StatusTopic = "st/{id}"
		b := &fakeBroker{}
		sum, r := runFake(t, cfg, b, t.Context())
		s := r.Schedule()
		type devLog struct {
			telemetry []time.Duration
			status    []string
			statusAt  []time.Duration
		}
		logs := map[uint64]*devLog{}
		for _, m := range b.messages() {
			var id uint64
			var l *devLog
			if strings.HasPrefix(m.topic, "st/") {
				fmt.Sscanf(m.topic, "st/%d", &id)
				l = logs[id-1]
				if l == nil {
					l = &devLog{}
					logs[id-1] = l
				}
				l.status = append(l.status, m.payload)
				l.statusAt = append(l.statusAt, m.at)
				continue
			}
			fmt.Sscanf(m.topic, "devices/%d/telemetry", &id)
			if l = logs[id-1]; l == nil {
				l = &devLog{}
				logs[id-1] = l
			}
			l.telemetry = append(l.telemetry, m.at)
		}
		silencers := 0
		for d := range uint64(100) {
			l := logs[d]
			if !s.Silencer(d) {
				if len(l.telemetry) != 30 || len(l.status) != 0 {
					t.Errorf("device %d: %d telemetry, %v status; want 30, none", d, len(l.telemetry), l.status)
				}
				continue
			}
			silencers++
			// 10 slots before 1s, none in [1s, 2s), 10 in [2s, 3s); a
			// message goes out within one tick of its slot.
			var before, during, after int
			for _, at := range l.telemetry {
				switch at -= cfg.Tick; {
				case at < time.Second:
					before++
				case at < 2*time.Second:
					during++
				default:
					after++
				}
			}
			if before != 10 || during != 0 || after != 10 {
				t.Errorf("silencer %d: %d/%d/%d messages before/during/after silence, want 10/0/10", d, before, during, after)
			}
			if want := []string{"offline", "online"}; fmt.Sprint(l.status) != fmt.Sprint(want) {
				t.Fatalf("silencer %d status %v, want %v", d, l.status, want)
			}
			// Announced at the first skipped slot and at the first slot back.
			period := 100 * time.Millisecond
			if at := l.statusAt[0]; at < time.Second || at > time.Second+period+cfg.Tick {
				t.Errorf("silencer %d offline at %s, want within a period after 1s", d, at)
			}
			if at := l.statusAt[1]; at < 2*time.Second || at > 2*time.Second+period+cfg.Tick {
				t.Errorf("silencer %d online at %s, want within a period after 2s", d, at)
			}
		}
		if silencers != 10 || sum.Status != 20 || sum.Sent != 3000-100 {
			t.Errorf("silencers %d, status %d, sent %d; want 10, 20, 2900", silencers, sum.Status, sum.Sent)
		}
	})
}

func TestRunCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := smallConfig()
		cfg.Duration, cfg.Count = 0, 1234
		b := &fakeBroker{}
		sum, _ := runFake(t, cfg, b, t.Context())
		if sum.Sent != 1234 || len(b.messages()) != 1234 {
			t.Fatalf("sent %d, published %d; want 1234", sum.Sent, len(b.messages()))
		}
		if d := sum.Duration; d < 1230*time.Millisecond || d > 1240*time.Millisecond {
			t.Errorf("duration %s, want ~1.234s", d)
		}
	})
}

func TestRunCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := smallConfig()
		cfg.Duration = 0
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(500*time.Millisecond, cancel)
		b := &fakeBroker{}
		sum, _ := runFake(t, cfg, b, ctx)
		if sum.Sent < 495 || sum.Sent > 505 || sum.Errors != 0 {
			t.Errorf("sent %d errors %d after 0.5s at 1000/s", sum.Sent, sum.Errors)
		}
	})
}

func TestRunErrors(t *testing.T) {
	t.Run("disconnected", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			cfg := smallConfig()
			cfg.Duration = time.Second
			b := &fakeBroker{}
			b.down.Store(true)
			sum, _ := runFake(t, cfg, b, t.Context())
			if sum.Sent != 0 || sum.Errors != 1000 || len(b.messages()) != 0 {
				t.Errorf("sent %d errors %d published %d; want 0, 1000, 0", sum.Sent, sum.Errors, len(b.messages()))
			}
		})
	})
	t.Run("failed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			cfg := smallConfig()
			cfg.Duration = time.Second
			b := &fakeBroker{failed: errors.New("boom")}
			sum, _ := runFake(t, cfg, b, t.Context())
			if sum.Sent != 0 || sum.Errors != 1000 {
				t.Errorf("sent %d errors %d; want 0, 1000", sum.Sent, sum.Errors)
			}
		})
	})
	t.Run("never acknowledged", func(t *testing.T) {
		// A full in-flight window stalls the workers; the run still ends at
		// duration + connect timeout, counting what never completed.
		synctest.Test(t, func(t *testing.T) {
			cfg := smallConfig()
			cfg.Duration, cfg.Inflight, cfg.ConnectTimeout = time.Second, 10, 2*time.Second
			b := &fakeBroker{hold: true}
			start := time.Now()
			sum, _ := runFake(t, cfg, b, t.Context())
			published := uint64(len(b.messages()))
			// Per connection: a full channel, one in the acker's hands and
			// one in the blocked send.
			if want := uint64(4 * (cfg.Inflight + 2)); sum.Sent != 0 || sum.Errors != want || published != want {
				t.Errorf("sent %d errors %d published %d; want 0 sent, %d published and failed", sum.Sent, sum.Errors, published, want)
			}
			if took := time.Since(start); took > cfg.Duration+2*cfg.ConnectTimeout {
				t.Errorf("run took %s", took)
			}
		})
	})
}

func TestRunProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := smallConfig()
		cfg.Duration, cfg.Progress = 3500*time.Millisecond, time.Second
		cfg.SilentFraction, cfg.SilentAfter = 0.5, 2*time.Second
		var out strings.Builder
		r, err := New(cfg, Options{Dial: (&fakeBroker{}).dial, Progress: &out})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Run(t.Context()); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 3 {
			t.Fatalf("progress lines %q, want 3", lines)
		}
		// Whether the worker's tick at a whole second runs before or after
		// the report is up to the scheduler: allow one tick of messages.
		for i, want := range []struct{ sent, silent int }{{1000, 0}, {2000, 50}, {2500, 50}} {
			var sec, rate, sent, errs, silent, devices int
			_, err := fmt.Sscanf(lines[i], "t=%ds rate=%d/s sent=%d errors=%d silent=%d/%d", &sec, &rate, &sent, &errs, &silent, &devices)
			if err != nil || sec != i+1 || sent < want.sent-6 || sent > want.sent+1 || errs != 0 || silent != want.silent || devices != 100 {
				t.Errorf("line %d = %q (%v), want sent ~%d silent %d/100", i, lines[i], err, want.sent, want.silent)
			}
		}
	})
}

func TestRunDialError(t *testing.T) {
	cfg := smallConfig()
	boom := errors.New("refused")
	calls := 0
	r, err := New(cfg, Options{Dial: func(context.Context, Config, int) (Publisher, error) {
		if calls++; calls == 2 {
			return nil, boom
		}
		return &fakePub{b: &fakeBroker{}}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(t.Context()); !errors.Is(err, boom) {
		t.Errorf("Run = %v, want %v", err, boom)
	}
}

func TestAppendPayload(t *testing.T) {
	for _, size := range []int{0, 1, 40, 44, 50, 60, 200, 4096} {
		b := appendPayload(nil, 123456, 1734171045123, 42, size)
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("size %d: %q: %v", size, b, err)
		}
		if len(b) < size || (size > 60 && len(b) != size) {
			t.Errorf("size %d: got %d bytes: %q", size, len(b), b)
		}
		if v["seq"] != 123456.0 || v["ts"] != 1734171045123.0 {
			t.Errorf("payload %q", b)
		}
	}
}

func FuzzAppendPayload(f *testing.F) {
	f.Add(uint64(0), int64(0), uint64(0), 0)
	f.Add(uint64(1<<63), int64(-1), uint64(99), 300)
	f.Fuzz(func(t *testing.T, seq uint64, ts int64, d uint64, size int) {
		size = max(0, size%5000)
		b := appendPayload(nil, seq, ts, d, size)
		if !json.Valid(b) || len(b) < size {
			t.Fatalf("size %d: invalid or short payload %q", size, b)
		}
	})
}

func TestLimitedLogger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var out strings.Builder
		l := newLimitedLogger(newTextLogger(&out), 5*time.Second)
		for range 100 {
			l.Log("boom")
			time.Sleep(100 * time.Millisecond) // 10 s in fake time
		}
		l.Log("boom")
		l.Flush("end")
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 3 {
			t.Fatalf("got %d lines, want 3 (first, after 5s, after 10s):\n%s", len(lines), out.String())
		}
		if !strings.Contains(lines[1], "suppressed=49") || !strings.Contains(lines[2], "suppressed=49") {
			t.Errorf("lines lack suppressed counts:\n%s", out.String())
		}
	})
}

func newTextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}
