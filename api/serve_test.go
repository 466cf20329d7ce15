package api

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serve starts f's server (its Config.Addr is a free local port) until the
// test ends, and returns its base URL and a function that closes it and
// returns Close's result.
func (f *fixture) serve() (base string, stop func() error) {
	f.t.Helper()
	if err := f.srv.Start(context.Background()); err != nil {
		f.t.Fatal(err)
	}
	stop = func() error {
		done := make(chan error, 1)
		go func() { done <- f.srv.Close(context.Background()) }()
		select {
		case err := <-done:
			return err
		case <-time.After(15 * time.Second):
			f.t.Fatal("Close did not return")
			return nil
		}
	}
	f.t.Cleanup(func() { stop() })
	return "http://" + f.srv.Addr(), stop
}

func TestServe(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("123", t0)
	base, stop := f.serve()
	for _, path := range []string{"/healthz", "/v1/devices/123"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
	resp, err := http.Post(base+"/v1/devices:batchGet", "application/json", strings.NewReader(`{"ids":["123"]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"id":"123"`) {
		t.Errorf("batchGet over the network: %d %s", resp.StatusCode, body)
	}
	if err := stop(); err != nil {
		t.Fatalf("Close after a clean shutdown: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := f.srv.Start(context.Background()); err == nil {
		t.Error("Start after Close succeeded")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("still serving after shutdown")
	}
	if !strings.Contains(f.log.String(), "api: stopped") {
		t.Errorf("no stop log line:\n%s", f.log)
	}
}

// TestServeStreaming: a streaming handler mounted with Handle can lift the
// write timeout and flush through the middleware, and ends at shutdown.
func TestServeStreaming(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.WriteTimeout = 200 * time.Millisecond
		c.ShutdownTimeout = 10 * time.Second
	})
	handlerErr := make(chan error, 1)
	f.srv.Handle("GET /v1/events", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Time{}); err != nil {
			handlerErr <- err
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			io.WriteString(w, "data: tick\n\n")
			if err := rc.Flush(); err != nil {
				handlerErr <- err
				return
			}
			select {
			case <-r.Context().Done():
				handlerErr <- nil
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}))
	base, stop := f.serve()
	resp, err := http.Get(base + "/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	// Read past the write timeout: the stream must survive it.
	deadline := time.Now().Add(400 * time.Millisecond)
	for n := 0; time.Now().Before(deadline); n++ {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("stream broke after %d lines: %v", n, err)
		}
		if line != "data: tick\n" && line != "\n" {
			t.Fatalf("line %q", line)
		}
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %v: the stream's context was not cancelled", d)
	}
	if err := <-handlerErr; err != nil {
		t.Fatalf("streaming through the middleware: %v", err)
	}
}

func TestServeShutdownTimeout(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.ShutdownTimeout = 100 * time.Millisecond })
	release := make(chan struct{})
	entered := make(chan struct{})
	f.srv.Handle("GET /v1/stuck", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release // ignores its context
	}))
	defer close(release)
	base, stop := f.serve()
	go func() {
		resp, err := http.Get(base + "/v1/stuck")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	err := stop()
	if err == nil || !strings.Contains(err.Error(), "did not finish within 100ms") ||
		!errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want a shutdown deadline error", err)
	}
}

func TestServeReadHeaderTimeout(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.ReadHeaderTimeout = 100 * time.Millisecond })
	base, _ := f.serve()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n") // never finished
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	io.Copy(io.Discard, conn) // returns when the server hangs up
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a slow client held the connection for %v", d)
	}
}

func TestPanicAfterWriteAborts(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.Handle("GET /v1/half", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		panic("late boom")
	}))
	f.srv.Handle("GET /v1/abort", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	base, _ := f.serve()
	for _, path := range []string{"/v1/half", "/v1/abort"} {
		resp, err := http.Get(base + path)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil {
			t.Errorf("%s: the client saw a complete response", path)
		}
	}
	m := f.metrics()
	if !strings.Contains(m, "presence_api_panics_total 1") {
		t.Errorf("panics (ErrAbortHandler excluded) not counted once:\n%s", grep(m, "panics"))
	}
}

func TestStartErrors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	f := newFixture(t, func(c *Config) { c.Addr = addr })
	err = f.srv.Start(context.Background())
	if err == nil {
		t.Fatal("no error for a taken port")
	}
	for _, want := range []string{addr + " is in use", "stop the other process", "PRESENCE_HTTP_ADDR", "-http-addr"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %v does not wrap EADDRINUSE", err)
	}
	f2 := newFixture(t, func(c *Config) { c.Addr = "192.0.2.1:0" }) // TEST-NET-1, not ours
	if err := f2.srv.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "not an address of this machine") {
		t.Errorf("foreign address: %v", err)
	}
	// Close of a server that never started is a no-op.
	if err := f2.srv.Close(context.Background()); err != nil {
		t.Errorf("Close without Start: %v", err)
	}
}

// Serving that fails (the listener closed under the server) is reported on
// Failed, and by Close.
func TestFailed(t *testing.T) {
	f := newFixture(t, nil)
	f.serve()
	f.srv.run.ln.Close() // what an accept failure looks like
	select {
	case err := <-f.srv.Failed():
		if err == nil || !strings.Contains(err.Error(), "api: serve on") {
			t.Fatalf("Failed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no failure reported")
	}
	if err := f.srv.Close(context.Background()); err == nil {
		t.Error("Close after a serving failure returned nil")
	}
}
