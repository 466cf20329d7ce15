package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
)

// server is what Start runs: the http.Server on its listener.
type server struct {
	mu     sync.Mutex
	srv    *http.Server
	ln     net.Listener
	served chan error    // the result of http.Server.Serve
	failed chan error    // 1-buffered: serving failed before Close
	base   func()        // cancels every request's context
	closed bool          // Close was called
	once   sync.Once     // Close's work
	err    error         // Close's result
	done   chan struct{} // closed when Close is done
}

// Start binds Config.Addr and serves on it in the background. Binding
// happens before Start returns, so a taken or forbidden address fails at
// once, with an error that says what to do (it wraps the system error:
// errors.Is(err, syscall.EADDRINUSE)). ctx's values reach every request;
// its cancellation does not (Close ends the serving). It fails after Close
// or when called twice.
func (s *Server) Start(ctx context.Context) error {
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	switch {
	case s.run.closed:
		return errors.New("api: closed")
	case s.run.srv != nil:
		return errors.New("api: already started")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return listenError(s.cfg.Addr, err)
	}
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(cancelBase)
	r := &s.run
	r.srv, r.ln, r.base = srv, ln, cancelBase
	r.served, r.failed, r.done = make(chan error, 1), make(chan error, 1), make(chan struct{})
	go func() {
		err := srv.Serve(ln)
		r.served <- err
		if !errors.Is(err, http.ErrServerClosed) {
			r.failed <- fmt.Errorf("api: serve on %s: %w", ln.Addr(), err)
		}
	}()
	s.log.Info("api: serving", "addr", ln.Addr().String(), "auth", s.auth)
	return nil
}

func listenError(addr string, err error) error {
	const set = "set PRESENCE_HTTP_ADDR or -http-addr"
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("api: %s is in use: stop the other process or %s to a free address (e.g. 127.0.0.1:8081): %w", addr, set, err)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("api: no permission to listen on %s (ports below 1024 need privileges): %s to another port: %w", addr, set, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("api: %s is not an address of this machine: %s to a local address or :PORT: %w", addr, set, err)
	}
	return fmt.Errorf("api: listen on %s: %w", addr, err)
}

// Addr is the address Start bound ("" before Start): with port 0 in
// Config.Addr, the port the system chose.
func (s *Server) Addr() string {
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	if s.run.ln == nil {
		return ""
	}
	return s.run.ln.Addr().String()
}

// Failed receives the error that ended serving before Close (the listener
// failed). The daemon shuts down on it. Nil before Start.
func (s *Server) Failed() <-chan error {
	s.run.mu.Lock()
	defer s.run.mu.Unlock()
	return s.run.failed
}

// Close shuts down gracefully: it stops accepting, cancels the context of
// every request (so streaming handlers end), and gives the requests in
// flight Config.ShutdownTimeout (or until ctx ends, if sooner) to finish
// before closing what is left. It returns nil after a clean shutdown (no
// request in flight any more), the serving error if serving had failed, or
// the shutdown error if the deadline passed (connections were closed; a
// handler that ignores its context may still be running). Idempotent.
func (s *Server) Close(ctx context.Context) error {
	r := &s.run
	r.mu.Lock()
	r.closed = true
	started := r.srv != nil
	r.mu.Unlock()
	if !started {
		return nil
	}
	r.once.Do(func() {
		defer close(r.done)
		sctx, cancel := context.WithTimeout(ctx, s.cfg.ShutdownTimeout)
		defer cancel()
		err := r.srv.Shutdown(sctx)
		if err != nil {
			r.srv.Close() //nolint:errcheck // the listener is already closed by Shutdown
			err = fmt.Errorf("api: graceful shutdown did not finish within %v, connections closed: %w", s.cfg.ShutdownTimeout, err)
		}
		r.base()
		if served := <-r.served; !errors.Is(served, http.ErrServerClosed) {
			err = errors.Join(fmt.Errorf("api: serve on %s: %w", r.ln.Addr(), served), err)
		}
		r.err = err
		s.log.Info("api: stopped", "addr", r.ln.Addr().String())
	})
	<-r.done
	return r.err
}
