package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
)

// Listen binds Config.Addr. Binding before the slow parts of start-up
// (hydration) reports a taken port at once; the daemon then passes the
// listener to Serve. A taken or forbidden address gets an error that says
// what to do; it wraps the system error (errors.Is(err,
// syscall.EADDRINUSE)).
func (s *Server) Listen() (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", s.cfg.Addr)
	if err != nil {
		return nil, listenError(s.cfg.Addr, err)
	}
	return ln, nil
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

// ListenAndServe is Listen then Serve.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve serves the API on ln until ctx is done, then shuts down gracefully:
// it stops accepting, cancels the context of every request (so streaming
// handlers end), and gives in-flight requests Config.ShutdownTimeout to
// finish before closing what is left. It closes ln. It returns nil after a
// clean shutdown (no request is in flight any more), the listener's error if
// serving failed, or the shutdown error if the deadline passed (connections
// were closed; a handler that ignores its context may still be running).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
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
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	s.log.Info("api: serving", "addr", ln.Addr().String(), "auth", s.auth)

	select {
	case err := <-served:
		return fmt.Errorf("api: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close() //nolint:errcheck // the listener is already closed by Shutdown
		err = fmt.Errorf("api: graceful shutdown did not finish within %v, connections closed: %w", s.cfg.ShutdownTimeout, err)
	}
	<-served // http.ErrServerClosed
	s.log.Info("api: stopped", "addr", ln.Addr().String())
	return err
}
