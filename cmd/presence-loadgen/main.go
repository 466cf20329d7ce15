// Command presence-loadgen simulates a fleet of MQTT devices publishing
// telemetry, for load tests and for watching offline detection at scale.
// Run it with -h for every flag; the logic lives in internal/app/loadgen.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/presence-dev/presence/internal/app/loadgen"
)

const name = "presence-loadgen"

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit status (0 done,
// 1 run failed, 2 bad configuration).
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := loadgen.ParseFlags(name, args, getenv, stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\nRun '%s -h' for usage.\n", name, err, name)
		return 2
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	r, err := loadgen.New(cfg, loadgen.Options{Logger: log, Progress: stderr})
	if err != nil { // ParseFlags validated already; kept for safety
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second signal kills at once

	fmt.Fprintf(stderr, "%s: %d devices, %.6g msg/s (each every %s), %d conns, qos %d -> %s\n",
		name, cfg.Devices, cfg.Rate, cfg.Period(), cfg.Conns, cfg.QoS, redact(cfg.Broker))
	sum, err := r.Run(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	fmt.Fprintln(stdout, "summary:", sum)
	return 0
}

// redact hides a password given in the broker URL.
func redact(broker string) string {
	u, err := url.Parse(broker)
	if err != nil {
		return broker
	}
	return u.Redacted()
}
