package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/presence-dev/presence/internal/testsupport/browsertest"
)

// The dashboard of a running presenced, in headless Chromium: a device
// publishes over MQTT and the page shows it online; its Last Will arrives
// and the page shows it offline, in the device panel and in the live
// transitions read from the real SSE stream; a screenshot is saved.
func TestDashboardOfRunningDaemon(t *testing.T) {
	s := newStack(t)
	c := s.config()
	c.Engine.DefaultTimeout = time.Minute
	r := startDaemon(t, c)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bctx := browsertest.Start(t, ctx, 1280, 1000)

	text := func(sel string) string { return fmt.Sprintf("(document.querySelector(%q)?.textContent || '')", sel) }
	waitFor := func(name, js string) {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(15*time.Second))); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	run := func(name string, a ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		for _, x := range a {
			if err := chromedp.Do(bctx, x); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	run("open", chromedp.Navigate("http://"+r.d.HTTPAddr()+"/"))
	waitFor("live transitions connected", text("#events-state")+" === 'live'")
	run("search", chromedp.SendKeys(chromedp.CSS("#search-id"), "601"), chromedp.Click(chromedp.CSS("#search-form button")))
	waitFor("not found yet", text("#dev-status")+" === 'not found'")

	s.publish(601, "telemetry", `{"temp":20}`)
	run("search again", chromedp.Click(chromedp.CSS("#search-form button")))
	waitFor("online on the page", text("#dev-status")+" === 'online'")
	s.publish(601, "status", "offline")
	waitFor("offline on the page", text("#dev-status")+" === 'offline'")
	waitFor("live transition shown", "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('601') && li.textContent.includes('last_will'))")

	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(90))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "presenced-dashboard.png")
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(png))
}
