package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofServer serves net/http/pprof on a listener of its own
// (-pprof-addr), behind the API token when one is set. Off by default:
// profiles show the code and the heap to whoever reads them, and a CPU
// profile or trace costs the process while it runs.
type pprofServer struct {
	addr string
	h    http.Handler
	log  *slog.Logger
	srv  *http.Server
	ln   net.Listener
}

func newPprofServer(addr string, protect func(http.Handler) http.Handler, log *slog.Logger) *pprofServer {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return &pprofServer{addr: addr, h: protect(mux), log: log}
}

func (p *pprofServer) Start(context.Context) error {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("pprof: listen on %s (-pprof-addr, PRESENCE_PPROF_ADDR): %w", p.addr, err)
	}
	p.ln = ln
	// No write timeout: a CPU profile or a trace streams for ?seconds=.
	p.srv = &http.Server{Handler: p.h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	go func() {
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("pprof: serve", "err", err)
		}
	}()
	p.log.Info("pprof: serving", "addr", ln.Addr().String())
	return nil
}

// Addr is the address the endpoint is bound to ("" before Start).
func (p *pprofServer) Addr() string {
	if p == nil || p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

func (p *pprofServer) Close(ctx context.Context) error {
	if p.srv == nil {
		return nil
	}
	if err := p.srv.Shutdown(ctx); err != nil {
		return p.srv.Close()
	}
	return nil
}
