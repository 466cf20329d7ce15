// Command presenced tells which MQTT devices are online and keeps Redis and
// PostgreSQL in step. Run it with -h for every flag; see README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/presence-dev/presence/internal/app/daemon"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	cfg, err := daemon.ParseFlags(args, os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return invalid(err)
	}
	log, err := daemon.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return invalid(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := daemon.New(cfg, log)
	if errors.Is(err, daemon.ErrInvalidConfig) {
		return invalid(err)
	}
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	go func() { // a second signal does not wait for the flush
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
		<-again
		log.Error("second signal: exiting without waiting for the flush")
		os.Exit(1)
	}()
	if err := d.Run(ctx); err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	return 0
}

// invalid reports a configuration error: exit status 2.
func invalid(err error) int {
	fmt.Fprintf(os.Stderr, "presenced: %v\nRun presenced -h for the flags and their environment variables.\n", err)
	return 2
}
