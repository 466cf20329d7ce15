package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

var (
	key1 = []byte("0123456789abcdef0123456789abcdef")
	key2 = []byte("fedcba9876543210fedcba9876543210")
)

// withKeys sets the cluster keys, the primary first.
func withKeys(keys ...[]byte) func(*Config) {
	return func(c *Config) {
		c.SecretKey, c.SecondaryKeys = keys[0], keys[1:]
		c.HandshakeTimeout = time.Second
	}
}

// ownedBy returns an id that owner owns in n's table.
func ownedBy(t *testing.T, n *Node, owner, prefix string) string {
	t.Helper()
	for i := range 100000 {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if n.Table().OwnerOf(id) == owner {
			return id
		}
	}
	t.Fatalf("no id owned by %s", owner)
	return ""
}

// forwards checks that a touch given to from reaches to's engine.
func forwards(t *testing.T, from, to *Node, toLocal *fakeLocal, prefix string) {
	t.Helper()
	id := ownedBy(t, from, to.Name(), prefix)
	if rej := from.Router().TouchBatch([]engine.Touch{{ID: id, At: time.Now()}}); rej != 0 {
		t.Fatalf("rejected %d", rej)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if !toLocal.has(id) {
			return fmt.Errorf("%s has not reached %s", id, to.Name())
		}
		return nil
	})
}

// With a key, forwarding and handoff run over authenticated TLS.
func TestClusterKeyedForwardingAndHandoff(t *testing.T) {
	a, la := startNode(t, "a", nil, withKeys(key1))
	b, lb := startNode(t, "b", []string{gossipAddr(a)}, withKeys(key1))
	waitTables(t, 10*time.Second, []*Node{a, b}, "a", "b")
	forwards(t, a, b, lb, "ab")
	forwards(t, b, a, la, "ba")
	// Devices on a that c will own are handed off to c.
	ids := deviceIDs("h", 300)
	if rej := a.Router().TouchBatch(touchBatch(ids, time.Now())); rej != 0 {
		t.Fatal(rej)
	}
	c, lc := startNode(t, "c", []string{gossipAddr(a)}, withKeys(key1))
	waitTables(t, 10*time.Second, []*Node{a, b, c}, "a", "b", "c")
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, id := range ids {
			if c.Table().OwnerOf(id) == "c" && !lc.has(id) {
				return fmt.Errorf("%s not handed to c", id)
			}
		}
		return nil
	})
	for _, n := range []*Node{a, b, c} {
		if !n.router.ch.secure() {
			t.Fatalf("%s: plain data channel", n.Name())
		}
		for r, m := range n.m.refused {
			if m.Get() != 0 {
				t.Errorf("%s refused %d connections (%s)", n.Name(), m.Get(), r)
			}
		}
	}
	if a.m.handoffSent.Get() == 0 {
		t.Fatal("a handed nothing off")
	}
}

// A keyed node's data port: whoever cannot prove the key (today's
// plaintext hello and batch, TLS without a proof, another key), or proves
// it under a name that is no member, or to the wrong node, changes nothing
// and is counted. The same dial with the key and a member's name works
// (the control that the attempts are real).
func TestDataPortRefusesStrangers(t *testing.T) {
	a, la := startNode(t, "a", nil, withKeys(key1))
	b, _ := startNode(t, "b", []string{gossipAddr(a)}, withKeys(key1))
	waitTables(t, 10*time.Second, []*Node{a, b}, "a", "b")
	const victim = "424242"
	batch := appendBatch(nil, []msg{{id: victim, at: time.Now().UnixNano()}})
	state := appendState(nil, []engine.DeviceState{{ID: victim, Status: engine.StatusOnline, LastSeen: time.Now()}})
	refused := func(r rejection) uint64 { return a.m.refused[r].Get() }
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", a.DataAddr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	// closed reads until the server closes c; nothing may come back.
	closed := func(c io.Reader) {
		t.Helper()
		got, err := io.ReadAll(io.LimitReader(c, 1<<16))
		if err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("read: %v", err)
		}
		if len(got) >= frameHeaderLen && got[4] == frameWelcome {
			t.Fatalf("the server welcomed a stranger: %q", got)
		}
	}

	// 1. Today's protocol: a version 1 hello with a made-up name, a batch
	// and a handoff, in plaintext.
	c := dial()
	old := []byte{0, 0, 0, 0, frameHello}
	old = append(old, helloMagic...)
	old = append(old, 1, 7)
	old = append(old, "mallory"...)
	binary.BigEndian.PutUint32(old, uint32(len(old)-4))
	_, _ = c.Write(append(append(append(old, batch...), state...), appendEnd(nil, 1)...))
	closed(c)
	testenv.Eventually(t, 5*time.Second, func() error {
		if refused(rejectTLS) != 1 {
			return fmt.Errorf("refused (tls) %d", refused(rejectTLS))
		}
		return nil
	})

	// 2. TLS, then a current hello with no proof.
	tc := tls.Client(dial(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	_, _ = tc.Write(append(appendHello(nil, "b", "a", nil), batch...))
	closed(tc)

	// 3. Another key.
	stranger, err := newChannel([][]byte{key2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.dial(dial(), "b", "a", time.Now().Add(5*time.Second)); err == nil {
		t.Fatal("a stranger's key was welcomed")
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if refused(rejectAuth) != 2 {
			return fmt.Errorf("refused (auth) %d, want 2", refused(rejectAuth))
		}
		return nil
	})

	// 4. The key, but a name that is no member; then a member's name in a
	// hello addressed to another node.
	insider := a.router.ch // any holder of key1
	if _, err := insider.dial(dial(), "mallory", "a", time.Now().Add(5*time.Second)); err == nil {
		t.Fatal("a non-member was welcomed")
	}
	if _, err := insider.dial(dial(), "b", "c", time.Now().Add(5*time.Second)); err == nil {
		t.Fatal("a hello for another node was welcomed")
	}
	if got := refused(rejectMember); got != 2 {
		t.Fatalf("refused (not_member) %d, want 2", got)
	}
	time.Sleep(200 * time.Millisecond)
	if la.has(victim) || la.adopted != 0 || a.m.recvMessages.Get() != 0 {
		t.Fatalf("a stranger changed a: has %v, adopted %d, received %d", la.has(victim), la.adopted, a.m.recvMessages.Get())
	}

	// The control: b's name and the key, a device a owns.
	id := ownedBy(t, a, "a", "ctl")
	good, err := insider.dial(dial(), "b", "a", time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := good.Write(appendBatch(nil, []msg{{id: id, at: time.Now().UnixNano()}})); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if !la.has(id) {
			return errors.New("the member's batch was not applied")
		}
		return nil
	})
}

// Nodes without the key, or with another, stay out of the cluster.
func TestClusterKeylessAndWrongKeyStayOut(t *testing.T) {
	a, _ := startNode(t, "a", nil, withKeys(key1))
	b, _ := startNode(t, "b", []string{gossipAddr(a)}, withKeys(key1))
	waitTables(t, 10*time.Second, []*Node{a, b}, "a", "b")
	x, _ := startNode(t, "x", []string{gossipAddr(a)}, nil)
	y, _ := startNode(t, "y", []string{gossipAddr(a)}, withKeys(key2))
	time.Sleep(time.Second)
	for _, n := range []*Node{a, b} {
		if n.Table().Has("x") || n.Table().Has("y") {
			t.Fatalf("%s let in %v", n.Name(), n.Table().Members())
		}
	}
	for _, n := range []*Node{x, y} {
		if n.Table().Has("a") {
			t.Fatalf("%s joined: %v", n.Name(), n.Table().Members())
		}
	}
}

// Key rotation is three rolling restarts (SECURITY.md): add the new key as
// secondary, make it primary, drop the old. At any moment the cluster holds
// nodes of two adjacent stages; each such pair must gossip, forward both
// ways and hand off. Skipping a stage splits the cluster.
func TestKeyRotationStages(t *testing.T) {
	stages := [][][]byte{
		{key1},
		{key1, key2},
		{key2, key1},
		{key2},
	}
	for i := range len(stages) - 1 {
		t.Run(fmt.Sprintf("stage%d-stage%d", i, i+1), func(t *testing.T) {
			a, la := startNode(t, "a", nil, withKeys(stages[i]...))
			b, lb := startNode(t, "b", []string{gossipAddr(a)}, withKeys(stages[i+1]...))
			waitTables(t, 10*time.Second, []*Node{a, b}, "a", "b")
			forwards(t, a, b, lb, "ab")
			forwards(t, b, a, la, "ba")
		})
	}
	t.Run("skipped-stage", func(t *testing.T) {
		a, _ := startNode(t, "a", nil, withKeys(stages[0]...))
		b, _ := startNode(t, "b", []string{gossipAddr(a)}, withKeys(stages[2]...))
		time.Sleep(time.Second)
		if a.Table().Has("b") && b.Table().Has("a") {
			t.Fatal("a node that cannot read the other's gossip joined it")
		}
	})
}

// rawConn dials a static node's data port and completes the handshake.
func rawConn(t *testing.T, to *staticNode, from string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", to.addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err = to.r.ch.dial(c, from, to.name, time.Now().Add(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitClosed waits until the server closed c.
func waitClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	var b [1]byte
	if _, err := c.Read(b[:]); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("connection still open after %v: %v", within, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// limitsCluster is two static nodes with small limits, plain or keyed.
func limitsCluster(t *testing.T, keyed bool, maxConns int) []*staticNode {
	nodes := staticCluster(t, 2, func(c *Config) {
		c.MaxConns = maxConns
		c.MaxBatch = 4
		c.HandoffChunk = 4
		c.IdleTimeout = 1500 * time.Millisecond
		c.HandoffTimeout = time.Second
		c.WriteTimeout = 100 * time.Millisecond
		c.HandshakeTimeout = 500 * time.Millisecond
		if keyed {
			c.SecretKey = key1
		}
	})
	return nodes
}

// The data server bounds what one connection costs, on plain and on
// authenticated (TLS) connections alike.
func TestDataServerLimits(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(fmt.Sprintf("keyed=%v", keyed), func(t *testing.T) {
			t.Parallel()
			testDataServerLimits(t, keyed)
		})
	}
}

func testDataServerLimits(t *testing.T, keyed bool) {
	nodes := limitsCluster(t, keyed, 256)
	s := nodes[0]
	t.Run("frame counts", func(t *testing.T) {
		big := make([]msg, 5)
		for i := range big {
			big[i] = msg{id: fmt.Sprintf("d%d", i), flags: msgZeroTime}
		}
		c := rawConn(t, s, "node-1")
		_, _ = c.Write(appendBatch(nil, big))
		waitClosed(t, c, 2*time.Second)
		recs := make([]engine.DeviceState, 5)
		for i := range recs {
			recs[i] = engine.DeviceState{ID: fmt.Sprintf("d%d", i)}
		}
		c = rawConn(t, s, "node-1")
		_, _ = c.Write(appendState(nil, recs))
		waitClosed(t, c, 2*time.Second)
		if s.local.adopted != 0 || len(s.local.ids()) != 0 {
			t.Fatalf("oversize frames applied: %d adopted, %v", s.local.adopted, s.local.ids())
		}
		testenv.Eventually(t, time.Second, func() error {
			if s.m.badFrames.Get() < 2 {
				return fmt.Errorf("bad frames %d", s.m.badFrames.Get())
			}
			return nil
		})
	})
	t.Run("idle and slow frames", func(t *testing.T) {
		start := time.Now()
		c := rawConn(t, s, "node-1")
		waitClosed(t, c, 5*time.Second)
		if el := time.Since(start); el < 1400*time.Millisecond {
			t.Fatalf("idle connection closed after %v, before IdleTimeout (1.5s)", el)
		}
		// A header, then a body that never comes: closed after
		// 2*WriteTimeout (200 ms), long before IdleTimeout.
		c = rawConn(t, s, "node-1")
		_, _ = c.Write([]byte{0, 0, 1, 0, frameBatch})
		start = time.Now()
		waitClosed(t, c, 5*time.Second)
		if el := time.Since(start); el > 1200*time.Millisecond { // under IdleTimeout (1.5 s)
			t.Fatalf("slow frame closed after %v, want ~2*WriteTimeout", el)
		}
		// A silent client never finishes the handshake.
		raw, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		start = time.Now()
		waitClosed(t, raw, 5*time.Second)
		if el := time.Since(start); el > 1400*time.Millisecond {
			t.Fatalf("silent client closed after %v, want ~HandshakeTimeout", el)
		}
	})
	t.Run("keepalive", func(t *testing.T) {
		// A real peer with nothing to send keeps its connection.
		p := nodes[1]
		id := ""
		for i := range 1000 {
			if cand := fmt.Sprintf("k%d", i); p.r.route.Load().peerOf(cand) != nil {
				id = cand
				break
			}
		}
		p.r.TouchBatch(touchBatch([]string{id}, time.Now()))
		testenv.Eventually(t, 2*time.Second, func() error {
			if !s.local.has(id) {
				return errors.New("not forwarded")
			}
			return nil
		})
		before := p.m.connects.Get()
		time.Sleep(3 * time.Second) // two idle timeouts
		p.r.TouchBatch(touchBatch([]string{id}, time.Now()))
		testenv.Eventually(t, 2*time.Second, func() error {
			if s.local.touchCount(id) != 2 {
				return errors.New("second touch not forwarded")
			}
			return nil
		})
		if got := p.m.connects.Get(); got != before || p.m.connLost.Get() != 0 {
			t.Fatalf("idle peer reconnected: connects %d -> %d, lost %d", before, got, p.m.connLost.Get())
		}
	})
	if keyed {
		return
	}
	t.Run("hello limits", func(t *testing.T) {
		before := s.m.refused[rejectHello].Get()
		for _, h := range [][]byte{
			appendHello(nil, strings.Repeat("n", maxNodeName+1), s.name, nil),
			appendBatch(nil, nil), // not a hello
			{0, 0, 0x10, 0, frameHello},
		} {
			c, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write(h)
			waitClosed(t, c, 2*time.Second)
			_ = c.Close()
		}
		testenv.Eventually(t, time.Second, func() error {
			if got := s.m.refused[rejectHello].Get() - before; got != 3 {
				return fmt.Errorf("refused (hello) %d", got)
			}
			return nil
		})
	})
}

// MaxConns bounds authenticated connections; handshakes have caps of
// their own, so silent strangers cannot take the peers' slots for good.
func TestDataServerConnectionCaps(t *testing.T) {
	s := limitsCluster(t, true, 2)[0]
	limit := func() uint64 { return s.m.refused[rejectLimit].Get() }
	_ = rawConn(t, s, "node-1")
	_ = rawConn(t, s, "node-1")
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.r.ch.dial(c, "node-1", s.name, time.Now().Add(2*time.Second)); err == nil {
		t.Fatal("a third authenticated connection was served with MaxConns 2")
	}
	testenv.Eventually(t, time.Second, func() error {
		if limit() != 1 {
			return fmt.Errorf("refused (limit) %d, want 1", limit())
		}
		return nil
	})
	// maxHandshakesPerSource silent connections from one address: the
	// next one from there is refused at once, until they time out.
	s2 := limitsCluster(t, true, 256)[0]
	var silent []net.Conn
	for range maxHandshakesPerSource {
		c, err := net.Dial("tcp", s2.addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	testenv.Eventually(t, time.Second, func() error {
		s2.srv.mu.Lock()
		defer s2.srv.mu.Unlock()
		if s2.srv.pending != maxHandshakesPerSource {
			return fmt.Errorf("%d handshakes pending", s2.srv.pending)
		}
		return nil
	})
	c, err = net.Dial("tcp", s2.addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.r.ch.dial(c, "node-1", s2.name, time.Now().Add(2*time.Second)); err == nil {
		t.Fatal("a handshake over the per-source cap was served")
	}
	for _, c := range silent {
		waitClosed(t, c, 5*time.Second) // HandshakeTimeout
	}
	testenv.Eventually(t, 2*time.Second, func() error {
		c, err := net.Dial("tcp", s2.addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = s2.r.ch.dial(c, "node-1", s2.name, time.Now().Add(2*time.Second))
		return err
	})
}

// The client sends nothing past its hello to a server that does not prove
// the key: no proof, a wrong one, its own proof sent back.
func TestClientRefusesUnprovenServer(t *testing.T) {
	ch, err := newChannel([][]byte{key1})
	if err != nil {
		t.Fatal(err)
	}
	for name, answer := range map[string]func(hello) []byte{
		"no proof":     func(hello) []byte { return nil },
		"random proof": func(hello) []byte { return bytes.Repeat([]byte{7}, 32) },
		"echo":         func(h hello) []byte { return h.proof },
	} {
		t.Run(name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			extra := make(chan []byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				tc := tls.Server(c, ch.server)
				_, body, _, err := readFrame(tc, nil, 1024)
				if err != nil {
					return
				}
				h, err := decodeHello(body, maxNodeName)
				if err != nil {
					return
				}
				_, _ = tc.Write(appendWelcome(nil, answer(h)))
				_ = tc.SetReadDeadline(time.Now().Add(time.Second))
				b, _ := io.ReadAll(tc)
				extra <- b
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ch.dial(c, "a", "b", time.Now().Add(2*time.Second)); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("dial: %v, want ErrUnauthenticated", err)
			}
			if b := <-extra; len(b) != 0 {
				t.Fatalf("the client sent %d bytes after its hello", len(b))
			}
		})
	}
}

// Ids re-forwarded or held are copied out of the frame they came in: a
// reference would pin the whole frame (up to MaxFrameSize) while queued.
func TestReceivedIDsAreCloned(t *testing.T) {
	nodes := staticCluster(t, 3, nil)
	r := nodes[0].r
	// node-2 is unreachable from here on: its queue keeps what is routed.
	nodes[2].srv.close()
	tb := r.Table()
	var in []msg
	for i := 0; len(in) < 20; i++ {
		id := fmt.Sprintf("clone-%d", i)
		if tb.OwnerOf(id) == "node-2" {
			in = append(in, msg{id: id, at: time.Now().UnixNano()})
		}
	}
	body := appendBatch(nil, in)[frameHeaderLen:]
	got, err := decodeBatch(body, nil, len(in))
	if err != nil {
		t.Fatal(err)
	}
	frame := unsafe.StringData(got[0].id) // every id is a substring of one copy of the frame
	inFrame := func(s string) bool {
		p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
		return p >= uintptr(unsafe.Pointer(frame)) && p < uintptr(unsafe.Pointer(frame))+uintptr(len(body))
	}
	r.dispatch(got, time.Time{}, "node-1")
	p := r.route.Load().peerOf(in[0].id)
	p.mu.Lock()
	queued := append([]msg(nil), p.queue...)
	p.mu.Unlock()
	if len(queued) == 0 {
		t.Skip("the peer's queue was sent before it could be looked at")
	}
	for _, m := range queued {
		if inFrame(m.id) {
			t.Fatalf("queued id %q points into the received frame", m.id)
		}
	}
	// Held messages too.
	part := PartitionOf(in[0].id, r.cfg.Partitions)
	nodes[0].cfg.RebuildHold = time.Minute
	gen := r.startHold([]int{part}, time.Now().Add(time.Minute))
	defer r.releaseHold(gen)
	mine := msg{id: in[0].id, at: time.Now().UnixNano()}
	body = appendBatch(nil, []msg{mine})[frameHeaderLen:]
	got, _ = decodeBatch(body, nil, 1)
	frame = unsafe.StringData(got[0].id)
	if !r.holdBack(got[0], true) {
		t.Fatal("not held")
	}
	r.hold.mu.Lock()
	held := r.hold.queue[len(r.hold.queue)-1].id
	r.hold.mu.Unlock()
	if unsafe.StringData(held) == frame {
		t.Fatal("held id points into the received frame")
	}
}
