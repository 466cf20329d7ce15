package ingest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ProbePrefix starts the topic level that marks a subscription probe. A
// message with a topic level that starts with it is never a device's: it is
// never parsed as one, stored or turned into an event, whichever pattern
// would match it. Device ids that start with it are reserved.
const ProbePrefix = "_presence_probe_"

// probeEvery is how often probes are published while no message has
// proved a filter yet: the broker may drop a QoS 0 message, and with shared
// subscriptions it may hand a probe to another member of the group (a
// cluster node). After ProbeTimeout they go on every probeSlow, so that a
// broker that never delivers is not sent four probes a second for good.
const (
	probeEvery = 250 * time.Millisecond
	probeSlow  = 5 * time.Second
)

// errProbePending is the readiness error while the first proof after a
// (re)connect is on its way.
var errProbePending = errors.New("waiting for the subscription probe to come back")

// prober proves that the subscriptions deliver. A broker can accept a
// SUBSCRIBE and never deliver on it: one without shared subscriptions may
// take "$share/GROUP/devices/+/telemetry" as a plain filter that no topic
// matches (the NATS MQTT gateway does), and an ACL may allow the subscription
// but not the messages. So after every connection's SUBACK a new
// generation of proof begins: the Ingester is not ready until every
// subscribed filter has delivered a message since. Any message proves its
// filter: a device's, another node's probe, or one of the probes the
// Ingester publishes meanwhile, a QoS 0 message per filter on a topic the
// filter matches, with one level ProbePrefix + nonce + "_" + generation
// (the "+" levels are "_"). A filter with no message within
// Config.ProbeTimeout makes readiness fail with an error that names the
// likely cause and the fix; probing goes on, slower, until it succeeds.
type prober struct {
	in      *Ingester
	timeout time.Duration // 0: disabled
	nonce   string
	pats    []*Pattern // per filter: the pattern probe topics are built from
	filter  []int      // per pattern index: its filter's index

	// pending is set while some filter has not delivered in the current
	// generation: only then does a device message take mu (heard).
	pending atomic.Bool

	mu    sync.Mutex
	gen   uint64
	since time.Time // when gen began
	got   []bool    // per filter: a message arrived since gen began
	err   error     // nil once every filter delivered
	next  int       // connection to publish on next
	last  time.Time // last probe round
	kick  chan struct{}
	shown bool // err logged for this generation
}

func newProber(in *Ingester, nonce string) *prober {
	p := &prober{in: in, timeout: in.cfg.ProbeTimeout, nonce: nonce, kick: make(chan struct{}, 1)}
	filters := in.parser.Filters()
	p.got = make([]bool, len(filters))
	p.pats = make([]*Pattern, len(filters))
	p.filter = make([]int, len(in.parser.topics))
	for i, t := range in.parser.topics {
		for f, filter := range filters {
			if filter == t.filter {
				p.filter[i] = f
				if p.pats[f] == nil {
					p.pats[f] = t.Pattern
				}
			}
		}
	}
	p.err = errProbePending
	return p
}

// restart begins a new generation: a connection has just subscribed.
func (p *prober) restart() {
	if p.timeout == 0 {
		return
	}
	p.mu.Lock()
	p.gen++
	p.since = p.in.clock()
	clear(p.got)
	if p.err == nil {
		p.err = errProbePending
	}
	p.shown = false
	p.last = time.Time{}
	p.pending.Store(true)
	p.mu.Unlock()
	signal(p.kick)
}

// readyErr is nil once every filter delivered in the current generation.
func (p *prober) readyErr() error {
	if p.timeout == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// id is the probe level of generation gen.
func (p *prober) id(gen uint64) string {
	return ProbePrefix + p.nonce + "_" + strconv.FormatUint(gen, 10)
}

// heardPattern notes a device message matched by pattern index i.
func (p *prober) heardPattern(i int) {
	if p.pending.Load() {
		p.heard(func(f int) bool { return p.filter[i] == f })
	}
}

// received handles a probe: topic has the level id, which starts with
// ProbePrefix. It proves every filter that matches topic, whoever sent it.
func (p *prober) received(topic, id string) {
	if nonce, _, _ := strings.Cut(id[len(ProbePrefix):], "_"); nonce == p.nonce {
		p.in.m.probesOK.Inc()
	} else {
		p.in.m.probesForeign.Inc()
	}
	if p.pending.Load() {
		p.heard(func(f int) bool { _, ok := p.pats[f].Match(topic); return ok })
	}
}

// heard marks the filters for which match is true as delivered.
func (p *prober) heard(match func(f int) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	all := true
	for f := range p.got {
		if !p.got[f] && match(f) {
			p.got[f] = true
		}
		all = all && p.got[f]
	}
	if !all || p.err == nil {
		return
	}
	if p.err != errProbePending {
		p.in.log.Info("ingest: every subscription delivers, ready", "after", p.in.clock().Sub(p.since).Round(time.Millisecond))
	}
	p.err = nil
	p.pending.Store(false)
}

// run publishes the probes of the filters that have not delivered yet, every
// probeEvery (probeSlow past the timeout), until the Ingester closes.
func (p *prober) run() {
	if p.timeout == 0 {
		return
	}
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-p.in.done:
			return
		case <-p.kick:
		case <-t.C:
		}
		p.publish()
	}
}

func (p *prober) publish() {
	p.mu.Lock()
	now := p.in.clock()
	if p.err == nil || p.gen == 0 {
		p.mu.Unlock()
		return
	}
	late := now.Sub(p.since) >= p.timeout
	if late && !p.shown {
		p.shown = true
		p.err = p.timeoutError()
		p.in.log.Error("ingest: not ready: " + p.err.Error())
	}
	if late && now.Sub(p.last) < probeSlow {
		p.mu.Unlock()
		return
	}
	var pending []string
	id := p.id(p.gen)
	for f, ok := range p.got {
		if !ok {
			pending = append(pending, p.pats[f].Topic(id))
		}
	}
	c := p.in.conns[p.next%len(p.in.conns)]
	p.next++
	p.mu.Unlock()
	if !c.subscribed.Load() {
		return // the next tick tries the next connection
	}
	p.mu.Lock()
	p.last = now
	p.mu.Unlock()
	for _, topic := range pending {
		c.client.Publish(topic, 0, false, "probe")
		p.in.m.probesSent.Inc()
	}
}

// timeoutError explains the filters that did not deliver. Called with mu
// held.
func (p *prober) timeoutError() error {
	var filters, shown []string
	for f, pat := range p.pats {
		if !p.got[f] {
			filters = append(filters, p.in.subscription(pat.Filter()))
			shown = append(shown, pat.Topic(ProbePrefix+"..."))
		}
	}
	why := "check that the broker's ACL lets presenced publish to " + strings.Join(shown, ", ") +
		" and receive what matches the filters"
	if p.in.cfg.ShareGroup != "" {
		why = "the broker may not support shared subscriptions (the NATS MQTT gateway does not): set PRESENCE_SHARE_GROUP=none (-share-group=none) to subscribe plainly; otherwise " + why
	}
	return fmt.Errorf("the broker accepted the subscriptions %s but delivered nothing on them (no device message and no probe) within %v: %s; PRESENCE_MQTT_PROBE_TIMEOUT=0 (-mqtt-probe-timeout=0) disables the probe",
		strings.Join(filters, ", "), p.timeout, why)
}
