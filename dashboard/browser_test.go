package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/dashboard"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/browsertest"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
	"github.com/presence-dev/presence/report"
	"github.com/presence-dev/presence/writeback/postgres"
)

// The dashboard in a real browser, against a real engine, API, report and
// (when reachable) PostgreSQL history, with the API token on: the test
// pastes the token, searches a device, sees it online, lets it time out,
// sees it offline, in the device panel, the live transitions and the
// history; sets and drops its own timeout, sees a flapping device marked,
// decommissions another; then saves a screenshot.
func TestDashboardInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// History in PostgreSQL when it is there; the page copes without.
	var pool *pgxpool.Pool
	var hist *postgres.History
	table := testenv.Name(t)
	if p, err := pgxpool.New(ctx, testenv.DatabaseURL()); err == nil {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err = p.Ping(pctx)
		pcancel()
		if err != nil {
			t.Logf("no PostgreSQL (%v): history not shown", err)
			p.Close()
		} else {
			pool = p
			t.Cleanup(func() {
				pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{table}.Sanitize()) //nolint:errcheck
				pool.Close()
			})
			hc := postgres.DefaultHistoryConfig()
			hc.Table, hc.Interval = table, 50*time.Millisecond
			if hist, err = postgres.NewHistory(pool, hc); err != nil {
				t.Fatal(err)
			}
		}
	}

	events := newBroadcaster()
	ecfg := engine.DefaultConfig()
	ecfg.DefaultTimeout, ecfg.Tick = 2*time.Second, 20*time.Millisecond
	ecfg.Sink = engine.SinkFunc(func(b []engine.Transition) {
		if hist != nil {
			hist.HandleTransitions(b)
		}
		events.publish(b)
	})
	eng, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if hist != nil {
		if err := hist.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		wg.Wait()
		eng.Close(context.Background()) //nolint:errcheck // delivers what is left
		if hist != nil {
			hist.Close(context.Background()) //nolint:errcheck
		}
	}()

	acfg := api.DefaultConfig()
	acfg.Token = "s3cret-token"
	acfg.Controller = api.EngineController(eng)
	srv, err := api.New(acfg, flapStore{eng, "flappy"})
	if err != nil {
		t.Fatal(err)
	}
	rcfg := report.DefaultConfig()
	rcfg.Table = table
	rep, err := report.New(pool, eng, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	rep.Mount(srv)
	dashboard.Mount(srv)
	srv.Handle("GET /v1/events", events)
	// /v1/cluster as a clustered daemon serves it: this node from the
	// engine, and a second node that does not answer.
	srv.Handle("GET /v1/cluster", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c, st := eng.Counts(), eng.Stats()
		fmt.Fprintf(w, `{"node":"node-a","clustered":true,"partitions":1024,"owned_devices":%d,"devices":%d,
			"members":[{"name":"node-a","state":"alive","usable":true,"partitions_owned":512,"answered":true,
			"devices":%d,"online":%d,"version":"test","messages_total":%d,"transitions_total":%d},
			{"name":"node-b","state":"alive","usable":true,"partitions_owned":512,"answered":false,
			"last_heard":%q}],"partial":true,"missing_nodes":["node-b"]}`,
			c.Total, c.Total, c.Total, c.Online, st.Touches, st.OnlineTransitions+st.OfflineTransitions,
			time.Now().Add(-3*time.Second).UTC().Format(time.RFC3339))
	}))
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	defer events.close() // before ts.Close: ends the open stream

	// Background fleet so the counts and the offline list are not empty.
	for i := range 5 {
		eng.Touch(fmt.Sprintf("sensor-%d", i), time.Now().Add(-time.Hour)) //nolint:errcheck
	}
	eng.Touch("flappy", time.Now().Add(-time.Hour)) //nolint:errcheck // shown flapping (flapStore)
	// The device under test, once started, stays online while it keeps
	// talking.
	const dev = "dev-42"
	startTouch, stopTouch := make(chan struct{}), make(chan struct{})
	wg.Go(func() {
		select {
		case <-startTouch:
		case <-stopTouch:
			return
		}
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			eng.Touch(dev, time.Now()) //nolint:errcheck
			select {
			case <-stopTouch:
				return
			case <-tk.C:
			}
		}
	})
	stopOnce := sync.OnceFunc(func() { close(stopTouch) })
	defer stopOnce()

	bctx := browsertest.Start(t, ctx, 1280, 1100)
	cancelBrowser := func() { chromedp.Cancel(bctx) } //nolint:errcheck // ends the browser early

	// Collect the page's console: an uncaught exception or a CSP violation
	// fails the test.
	var consoleMu sync.Mutex
	var problems []string
	console := chromedp.Console(bctx)
	wg.Go(func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
				consoleMu.Lock()
				problems = append(problems, m.String())
				consoleMu.Unlock()
			}
		}
	})
	defer cancelBrowser() // ends the console iterator before wg.Wait

	start := time.Now()
	step := func(name string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, a); err != nil {
			if png := shot(t, bctx, "failed"); png != nil {
				os.WriteFile(filepath.Join(os.TempDir(), "presence-dashboard-failed.png"), png, 0o644) //nolint:errcheck
			}
			consoleMu.Lock()
			for _, p := range problems {
				t.Logf("browser console: %s", p)
			}
			consoleMu.Unlock()
			t.Fatalf("%s: %v (after %v)", name, err, time.Since(start).Round(time.Millisecond))
		}
		t.Logf("%-40s ok after %v", name, time.Since(start).Round(time.Millisecond))
	}
	waitFor := func(name, js string) {
		t.Helper()
		step(name, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Poll[bool](js, chromedp.WithPollingTimeout(10*time.Second), chromedp.WithPollingInterval(100*time.Millisecond))(ctx, tg)
			return chromedp.Void{}, err
		})
	}
	text := func(sel string) string { return fmt.Sprintf("(document.querySelector(%q)?.textContent || '')", sel) }

	step("open the page", chromedp.Navigate(ts.URL+"/"))
	waitFor("the page asks for the token", "!document.getElementById('auth-banner').hidden")
	step("paste the token", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#token"), acfg.Token),
		chromedp.Click(chromedp.CSS("#token-save")),
	))
	waitFor("fleet counts shown", text("#count-total")+" === '6'")
	waitFor("live transitions connected", text("#events-state")+" === 'live'")
	step("search the device", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#search-id"), dev),
		chromedp.Click(chromedp.CSS("#search-form button")),
	))
	waitFor("device not found yet", text("#dev-status")+" === 'not found'")

	close(startTouch)
	waitFor("device online", text("#dev-status")+" === 'online'")
	waitFor("count online", text("#count-online")+" === '1'")
	waitFor("live event: online", "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('"+dev+"') && li.textContent.includes('unknown→online'))")
	waitFor("offline list has the old sensors", "document.querySelectorAll('#offline-list tr').length === 6")

	stopOnce() // silence: offline after the 2 s timeout
	silent := time.Now()
	waitFor("device offline", text("#dev-status")+" === 'offline'")
	t.Logf("offline on the page %v after the last touch (timeout 2 s, page refresh 2 s or on the event)", time.Since(silent).Round(time.Millisecond))
	waitFor("live event: offline", "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('"+dev+"') && li.textContent.includes('online→offline'))")
	events.send(`{"type":"mass_offline","incident":"inc-1","at":"2025-12-14T10:30:45.000000+00:00","count":1200,"fleet":10000,"share":0.12,"window_seconds":30}`)
	waitFor("incident shown", text("#events")+".includes('mass offline') && "+text("#events")+".includes('1,200 of 10,000 devices (12.00%)')")
	if pool != nil {
		waitFor("history shows the timeout", text("#dev-history")+".includes('timeout') && "+text("#dev-history")+".includes('telemetry')")
		waitFor("uptime shown", text("#dev-uptime")+".includes('%')")
		waitFor("timeline drawn", "document.querySelectorAll('#dev-timeline rect.online').length >= 1 && document.querySelectorAll('#dev-timeline rect.offline').length >= 1")
		waitFor("fleet availability shown", text("#fleet-uptime")+".includes('%')")
	} else {
		waitFor("history marked unavailable", text("#dev-history-note")+".includes('PostgreSQL')")
	}
	// The controls: its own timeout set and dropped, through the API.
	click := func(name, sel string) { step(name, chromedp.Click(chromedp.CSS(sel))) }
	step("set a timeout of an hour", chromedp.Steps(
		chromedp.SendKeys(chromedp.CSS("#timeout-input"), "3600"),
		chromedp.Click(chromedp.CSS("#timeout-set")),
	))
	waitFor("own timeout shown", text("#dev-timeout")+" === '1h 0m (device)'")
	if d, _ := eng.Device(dev); d.Timeout != time.Hour || d.TimeoutSource != engine.TimeoutDevice {
		t.Fatalf("after Set: %+v", d)
	}
	click("back to the default", "#timeout-reset")
	waitFor("default timeout shown", text("#dev-timeout")+" === '2s (default)' && "+text("#dev-control-msg")+" === 'timeout reset: done.'")

	// A flapping device is marked; its flapping event is listed.
	step("search the flapping device", chromedp.Steps(
		chromedp.SetValue(chromedp.CSS("#search-id"), "flappy"),
		chromedp.Click(chromedp.CSS("#search-form button")),
	))
	shown := func(id string) string {
		return fmt.Sprintf("(getComputedStyle(document.getElementById(%q)).display !== 'none')", id)
	}
	waitFor("flapping badge shown", shown("dev-flapping"))
	events.send(`{"type":"flapping","id":"flappy","status":"offline","at":"2025-12-14T10:31:15.123456+00:00","since":"2025-12-14T10:30:45.123456+00:00"}`)
	waitFor("flapping event listed", "[...document.querySelectorAll('#events li.flapping')].some(li => li.textContent.includes('flappy'))")

	// Decommission asks twice, then the device is gone, with a removed
	// event.
	step("search an old sensor", chromedp.Steps(
		chromedp.SetValue(chromedp.CSS("#search-id"), "sensor-0"),
		chromedp.Click(chromedp.CSS("#search-form button")),
	))
	waitFor("sensor-0 offline, no flapping badge", text("#dev-status")+" === 'offline' && !"+shown("dev-flapping"))
	click("decommission, once", "#decommission")
	waitFor("asks to confirm", text("#decommission")+" === 'Confirm: forget sensor-0'")
	if _, err := eng.Device("sensor-0"); err != nil {
		t.Fatalf("decommissioned on the first click: %v", err)
	}
	click("confirm", "#decommission")
	waitFor("sensor-0 gone", text("#dev-status")+" === 'not found' && "+text("#dev-control-msg")+" === 'decommission: done.'")
	waitFor("no controls for a device not found", "!"+shown("dev-controls"))
	waitFor("removed event listed", "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('removed') && li.textContent.includes('sensor-0'))")
	waitFor("fleet count down", text("#count-total")+" === '6'") // 5 sensors, flappy and the device, less sensor-0
	if _, err := eng.Device("sensor-0"); err == nil {
		t.Fatal("sensor-0 still known after the decommission")
	}
	step("back to the device", chromedp.Steps(
		chromedp.SetValue(chromedp.CSS("#search-id"), dev),
		chromedp.Click(chromedp.CSS("#search-form button")),
	))
	waitFor("device shown again", text("#dev-id")+" === '"+dev+"' && "+text("#dev-status")+" === 'offline' && !"+shown("dev-flapping")+" && "+shown("dev-controls"))

	waitFor("rates charted", "document.querySelector('#chart-msgs polyline') !== null")
	waitFor("a row per node", "document.querySelectorAll('#nodes tr').length === 2")
	waitFor("the node that does not answer is marked", text("#nodes tr[data-node='node-b']")+".includes('not answering')")
	waitFor("this node's devices shown", text("#nodes tr[data-node='node-a']")+".includes('ok')")

	png := shot(t, bctx, "dashboard")
	if os.Getenv("UPDATE_SCREENSHOT") != "" { // refresh the one the docs show
		if err := os.WriteFile(filepath.Join("testdata", "screenshot.png"), png, 0o644); err != nil {
			t.Errorf("copy screenshot: %v", err)
		}
	}
	consoleMu.Lock()
	defer consoleMu.Unlock()
	for _, p := range problems {
		t.Errorf("browser console: %s", p)
	}
}

// flapStore is the engine with one device flapping, as the daemon's store
// says it from the events hub's detector.
type flapStore struct {
	*engine.Engine
	flapping string
}

func (s flapStore) Device(id string) (engine.DeviceState, error) {
	st, err := s.Engine.Device(id)
	st.Flapping = err == nil && id == s.flapping
	return st, err
}

// shot saves a full-page screenshot under t.TempDir and returns it.
func shot(t *testing.T, ctx context.Context, name string) []byte {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot: %v", err)
		return nil
	}
	p := filepath.Join(t.TempDir(), name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d bytes)", p, len(png))
	return png
}

// broadcaster is a stand-in for the events package's GET /v1/events: the
// same JSON per transition, as server-sent events.
type broadcaster struct {
	mu     sync.Mutex
	subs   map[chan []byte]struct{}
	done   chan struct{}
	closed bool
}

func newBroadcaster() *broadcaster {
	return &broadcaster{subs: map[chan []byte]struct{}{}, done: make(chan struct{})}
}

func (b *broadcaster) publish(batch []engine.Transition) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, tr := range batch {
		ev := map[string]string{
			"type": "status", "id": tr.ID, "status": tr.To.String(), "previous": tr.From.String(),
			"at": tr.At.UTC().Format(api.TimeLayout), "cause": tr.Cause.String(),
		}
		if tr.To == engine.StatusUnknown { // a decommission
			ev["type"] = "removed"
			delete(ev, "status")
		}
		msg, _ := json.Marshal(ev)
		for c := range b.subs {
			select {
			case c <- msg:
			default: // a slow reader loses events, never blocks the engine
			}
		}
	}
}

// send publishes one raw JSON event.
func (b *broadcaster) send(msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.subs {
		select {
		case c <- []byte(msg):
		default:
		}
	}
}

func (b *broadcaster) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
}

func (b *broadcaster) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := make(chan []byte, 256)
	b.mu.Lock()
	b.subs[c] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.subs, c)
		b.mu.Unlock()
	}()
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Time{}) //nolint:errcheck
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": hello\n\n")
	rc.Flush() //nolint:errcheck
	for n := 1; ; n++ {
		select {
		case <-r.Context().Done():
			return
		case <-b.done:
			return
		case msg := <-c:
			fmt.Fprintf(w, "id: %d\ndata: %s\n\n", n, msg)
			rc.Flush() //nolint:errcheck
		}
	}
}
