package ingest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ProbePrefix starts the device id of a subscription probe. Ids that start
// with it are reserved: a message whose {id} level starts with it is never
// a device's (never stored, never an event). See prober.
const ProbePrefix = "_presence_probe_"

// probeEvery is how often a probe that has not come back is published
// again: the broker may drop a QoS 0 message, and with shared
// subscriptions it may hand the probe to another member of the group (a
// cluster node), so probing goes on until one comes back.
const probeEvery = 250 * time.Millisecond

// errProbePending is the readiness error while the first probe after a
// (re)connect is on its way.
var errProbePending = errors.New("waiting for the subscription probe to come back")

// prober proves that the subscriptions deliver. A broker can accept a
// SUBSCRIBE and never deliver on it: one without shared subscriptions may
// take "$share/GROUP/devices/+/telemetry" as a plain filter that no topic
// matches (the NATS MQTT gateway does), and an ACL may allow the subscription
// but not the messages. So after every connection's SUBACK the Ingester
// publishes, for each subscribed filter, a probe: a QoS 0 message on a topic
// the filter matches, whose {id} level is ProbePrefix + the Ingester's nonce
// + a generation. It is ready when a probe of the current generation came
// back on any of its connections for every filter; a probe that has not
// come back within Config.ProbeTimeout makes readiness fail with an error
// that names the likely cause and the fix. Probing goes on until it
// succeeds. Probes of other Ingesters (other nodes, earlier generations) are
// counted and ignored.
type prober struct {
	in      *Ingester
	timeout time.Duration // 0: disabled
	nonce   string
	pats    []*Pattern // per filter: the pattern probe topics are built from
	filter  []int      // per pattern index: its filter's index

	mu    sync.Mutex
	gen   uint64
	since time.Time // when gen began
	got   []bool    // per filter: a probe of gen came back
	err   error     // nil once every filter delivered
	next  int       // connection to publish on next
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
	p.mu.Unlock()
	signal(p.kick)
}

// readyErr is nil once every filter delivered a probe of the current
// generation.
func (p *prober) readyErr() error {
	if p.timeout == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// id is the probe id of generation gen.
func (p *prober) id(gen uint64) string {
	return ProbePrefix + p.nonce + "_" + strconv.FormatUint(gen, 10)
}

// received handles a message whose id starts with ProbePrefix, heard on the
// filter of pattern index pattern.
func (p *prober) received(id string, pattern int) {
	rest := id[len(ProbePrefix):]
	nonce, genText, ok := strings.Cut(rest, "_")
	if !ok || nonce != p.nonce {
		p.in.m.probesForeign.Inc()
		return
	}
	gen, err := strconv.ParseUint(genText, 10, 64)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil || gen != p.gen {
		p.in.m.probesStale.Inc()
		return
	}
	p.in.m.probesOK.Inc()
	p.got[p.filter[pattern]] = true
	for _, ok := range p.got {
		if !ok {
			return
		}
	}
	if p.err != nil && p.err != errProbePending {
		p.in.log.Info("ingest: subscription probe delivered, ready", "after", p.in.clock().Sub(p.since).Round(time.Millisecond))
	}
	p.err = nil
}

// run publishes the probes that have not come back, every probeEvery, until
// the Ingester closes.
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
	if p.err == nil || p.gen == 0 {
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
	if p.in.clock().Sub(p.since) >= p.timeout && !p.shown {
		p.shown = true
		p.err = p.timeoutError()
		p.in.log.Error("ingest: not ready: " + p.err.Error())
	}
	c := p.in.conns[p.next%len(p.in.conns)]
	p.next++
	p.mu.Unlock()
	if !c.subscribed.Load() {
		return // the next tick tries the next connection
	}
	for _, topic := range pending {
		c.client.Publish(topic, 0, false, "probe")
		p.in.m.probesSent.Inc()
	}
}

// timeoutError explains the probes that did not come back. Called with mu
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
	return fmt.Errorf("the broker accepted the subscriptions %s but no probe published on them came back within %v (ProbeTimeout, -mqtt-probe-timeout): %s",
		strings.Join(filters, ", "), p.timeout, why)
}
