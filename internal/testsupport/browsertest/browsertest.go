// Package browsertest starts headless Chromium for the tests that look at
// the dashboard as a person would (github.com/chromedp/chromedp), with the
// flags this machine's closed network needs.
package browsertest

import (
	"context"
	"os"
	"testing"

	"github.com/chromedp/chromedp"
)

// Path is where Debian's chromium package installs the browser
// (scripts/services.sh installs it).
const Path = "/usr/bin/chromium"

// Start launches a fresh headless Chromium for the test and returns a
// browser context, closed when the test ends (or when ctx is done). It
// skips the test when Chromium is not installed.
func Start(t testing.TB, ctx context.Context, width, height int) context.Context {
	t.Helper()
	if _, err := os.Stat(Path); err != nil {
		t.Skipf("no %s (apt-get install -y chromium; scripts/services.sh does): %v", Path, err)
	}
	// No UserDataDir: chromedp then makes a temporary profile directory
	// and removes it itself, retrying while Chromium's helper processes
	// still write to it (t.TempDir's cleanup does not retry and can fail
	// the test with "directory not empty").
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(Path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(width, height),
	)
	bctx, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	return bctx
}
