package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options are the dependencies of a Runner; zero values are usable.
type Options struct {
	// Dial opens the broker connections; nil means PahoDialer(Logger).
	Dial Dialer
	// Logger receives warnings (rate-limited); nil discards them.
	Logger *slog.Logger
	// Progress receives a progress line every Config.Progress; nil disables it.
	Progress io.Writer
}

// Runner runs one load generation. Build it with New, then call Run once.
type Runner struct {
	cfg   Config
	opts  Options
	sched Schedule
	errs  *limitedLogger

	// topic templates split around {id}
	topicPre, topicPost   string
	statusPre, statusPost string
}

// New validates cfg and builds a Runner.
func New(cfg Config, opts Options) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Dial == nil {
		opts.Dial = PahoDialer(opts.Logger)
	}
	r := &Runner{cfg: cfg, opts: opts, sched: NewSchedule(cfg), errs: newLimitedLogger(opts.Logger, 5*time.Second)}
	r.topicPre, r.topicPost, _ = strings.Cut(cfg.Topic, IDPlaceholder)
	r.statusPre, r.statusPost, _ = strings.Cut(cfg.StatusTopic, IDPlaceholder)
	return r, nil
}

// Schedule is the plan the runner follows.
func (r *Runner) Schedule() *Schedule { return &r.sched }

// Run connects, publishes until the duration or count is reached or ctx is
// cancelled, waits for outstanding publishes (at most ConnectTimeout),
// disconnects and returns the summary. Cancelling ctx is a normal stop, not an
// error; an error means the connections could not be opened.
func (r *Runner) Run(ctx context.Context) (Summary, error) {
	pubs := make([]Publisher, 0, r.cfg.Conns)
	defer func() {
		for _, p := range pubs {
			p.Close()
		}
	}()
	for c := range r.cfg.Conns {
		p, err := r.opts.Dial(ctx, r.cfg, c)
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return Summary{Target: r.cfg.Rate}, nil
			}
			return Summary{}, fmt.Errorf("connection %d: %w", c, err)
		}
		pubs = append(pubs, p)
	}

	runCtx, stop := context.WithCancel(ctx)
	if r.cfg.Duration > 0 {
		// Workers stop on their own at Duration; this is a safety net for a
		// worker stuck behind a full in-flight window on a dead connection.
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(runCtx, r.cfg.Duration+r.cfg.ConnectTimeout)
		defer cancel()
	}
	defer stop()
	// Once the run stops, outstanding publishes get ConnectTimeout to finish.
	drainCtx, abortDrain := context.WithCancel(context.Background())
	defer abortDrain()
	context.AfterFunc(runCtx, func() {
		t := time.AfterFunc(r.cfg.ConnectTimeout, abortDrain)
		context.AfterFunc(drainCtx, func() { t.Stop() })
	})

	stats := make([]connStats, r.cfg.Conns)
	pends := make([]chan pending, r.cfg.Conns)
	var reserved atomic.Uint64 // telemetry slots claimed, for Count
	start := time.Now()
	var workers, ackers, progress sync.WaitGroup
	for c := range r.cfg.Conns {
		pends[c] = make(chan pending, r.cfg.Inflight)
		w := &worker{r: r, pub: pubs[c], cur: r.sched.Cursor(c), stats: &stats[c], pend: pends[c],
			start: start, reserved: &reserved, stop: stop}
		workers.Go(func() { w.run(runCtx) })
		ackers.Go(func() { r.ack(drainCtx, pends[c], &stats[c]) })
	}
	progressDone := make(chan struct{})
	if r.opts.Progress != nil && r.cfg.Progress > 0 {
		progress.Go(func() { r.reportProgress(progressDone, start, stats) })
	}

	workers.Wait()
	end := time.Now()
	stop()
	for _, p := range pends {
		close(p)
	}
	ackers.Wait()
	close(progressDone)
	progress.Wait()
	r.errs.Flush("publish errors suppressed")

	t := sum(stats)
	s := Summary{Sent: t.sent, Status: t.status, Errors: t.errors, Duration: end.Sub(start), Target: r.cfg.Rate}
	if s.Duration > 0 {
		s.Rate = float64(s.Sent) / s.Duration.Seconds()
	}
	return s, nil
}

// pending is a publish handed to the client, awaiting completion.
type pending struct {
	p      Pending
	status bool // a status message, not telemetry
}

// ack waits for the completion of every publish of one connection, in order,
// and counts the outcome. Once drain is done it stops waiting and counts what
// is still outstanding as errors.
func (r *Runner) ack(drain context.Context, in <-chan pending, st *connStats) {
	for it := range in {
		select {
		case <-it.p.Done():
		default:
			select {
			case <-it.p.Done():
			case <-drain.Done():
				st.errors.Add(1)
				r.errs.Log("publish not completed before shutdown deadline")
				continue
			}
		}
		switch err := it.p.Error(); {
		case err != nil:
			st.errors.Add(1)
			r.errs.Log("publish failed", "err", err)
		case it.status:
			st.status.Add(1)
		default:
			st.sent.Add(1)
		}
	}
}

func (r *Runner) reportProgress(done <-chan struct{}, start time.Time, stats []connStats) {
	t := time.NewTicker(r.cfg.Progress)
	defer t.Stop()
	var prevSent uint64
	prev := start
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			tot := sum(stats)
			elapsed := now.Sub(start)
			rate := float64(tot.sent-prevSent) / now.Sub(prev).Seconds()
			prevSent, prev = tot.sent, now
			fmt.Fprintln(r.opts.Progress, progressLine(elapsed, rate, tot, r.sched.SilentAt(elapsed), r.cfg.Devices))
		}
	}
}
