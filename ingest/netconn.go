package ingest

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"os"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// readBufferSize is the read buffer of a subscriber connection: at the
// broker's pace a burst of PUBLISH packets arrives in one read.
const readBufferSize = 64 << 10

// openConn opens a subscriber connection's network connection as paho's own
// dialer does (openConnection in paho v1.5.1's netconn.go, which paho does
// not export: tcp/mqtt through the environment's proxy, ssl/tls/mqtts
// through all_proxy if set, ws/wss), and wraps it in an ingestConn:
// buffered reads and, with ack, QoS 1 acknowledgements at read time.
func openConn(u *url.URL, o mqtt.ClientOptions, ack bool) (net.Conn, error) {
	var (
		c   net.Conn
		err error
	)
	d := &net.Dialer{}
	if o.Dialer != nil {
		dd := *o.Dialer
		d = &dd
	}
	if o.ConnectTimeout > 0 && (d.Timeout == 0 || o.ConnectTimeout < d.Timeout) {
		d.Timeout = o.ConnectTimeout // Config.ConnectTimeout bounds the dial too
	}
	switch u.Scheme {
	case "ws", "wss":
		wsURL := *u // gorilla/websocket refuses a URL with user info
		wsURL.User = nil
		var tlsc *tls.Config
		if u.Scheme == "wss" {
			tlsc = o.TLSConfig
		}
		c, err = mqtt.NewWebsocket(wsURL.String(), tlsc, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	case "mqtt", "tcp":
		c, err = proxy.FromEnvironmentUsing(d).Dial("tcp", u.Host)
	case "ssl", "tls", "mqtts":
		if os.Getenv("all_proxy") == "" {
			c, err = tls.DialWithDialer(d, "tcp", u.Host, o.TLSConfig)
			break
		}
		if c, err = proxy.FromEnvironment().Dial("tcp", u.Host); err != nil {
			break
		}
		tc := tls.Client(c, o.TLSConfig)
		if err = tc.Handshake(); err != nil {
			_ = c.Close()
			break
		}
		c = tc
	default:
		return nil, errors.New("unsupported scheme " + u.Scheme)
	}
	if err != nil {
		return nil, err
	}
	return newIngestConn(c, ack), nil
}

// ingestConn is a subscriber connection's socket as paho sees it.
//
// Its reads go through a buffer: paho reads a packet with three reads or
// more (its type byte, its length a byte at a time, its body), each a
// system call on a bare socket; buffered, a burst of packets costs one.
//
// With ack set (clean sessions only: see openConn's caller) it also
// acknowledges QoS 1 messages itself, as they are read: it scans what the broker sends for QoS 1 PUBLISH packets
// (pubAcker) and writes their PUBACKs, all those of one read in one write,
// from the reading goroutine; the PUBACKs paho writes later are dropped.
// paho acknowledges a message after its callback, through two goroutines,
// one system call per PUBACK, and at QoS 1 the broker's in-flight window
// per connection (Mosquitto: 20 messages) makes that path the pace of the
// whole stream (BENCHMARKS.md, "QoS 1 bursts"). A message is then
// acknowledged once it is in presenced's memory, a moment before ingest
// queues it: the guarantee is the same (a crash loses what ingest has
// queued and not handed to the engine, either way).
//
// paho reads from one goroutine only; writes from paho and the acks are
// serialized, a whole packet at a time (paho writes each packet with one
// Write).
type ingestConn struct {
	net.Conn
	buf   []byte
	r, w  int   // unread bytes: buf[r:w]
	rerr  error // returned once the buffer is empty
	acker *pubAcker
	acks  []byte

	wmu sync.Mutex
}

func newIngestConn(c net.Conn, ack bool) *ingestConn {
	ic := &ingestConn{Conn: c, buf: make([]byte, readBufferSize)}
	if ack {
		ic.acker = new(pubAcker)
	}
	return ic
}

func (c *ingestConn) Read(p []byte) (int, error) {
	if c.r == c.w {
		if c.rerr != nil {
			return 0, c.rerr
		}
		n, err := c.Conn.Read(c.buf)
		c.r, c.w, c.rerr = 0, n, err
		if n == 0 {
			return 0, err
		}
		if c.acker != nil {
			if c.acks = c.acker.scan(c.buf[:n], c.acks[:0]); len(c.acks) > 0 {
				c.wmu.Lock()
				_, _ = c.Conn.Write(c.acks) // a failed write fails paho's next read or write too
				c.wmu.Unlock()
			}
		}
	}
	n := copy(p, c.buf[c.r:c.w])
	c.r += n
	return n, nil
}

func (c *ingestConn) Write(p []byte) (int, error) {
	if c.acker != nil && len(p) == 4 && p[0] == pubackHeader && p[1] == 2 {
		return len(p), nil // a PUBACK of paho's: sent already, at read time
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.Write(p)
}

// MQTT 3.1.1 packet bytes pubAcker needs.
const (
	pubackHeader = 0x40 // PUBACK, remaining length 2: the packet id
	typePublish  = 3
)

// pubAcker follows the packet boundaries of the byte stream a broker sends
// (MQTT 3.1.1 fixed headers: a type byte, a remaining length of 1 to 4
// bytes) and collects a PUBACK for every QoS 1 PUBLISH. It keeps its place
// across reads. It reads the length as paho does (packets.decodeLength: at
// most 4 bytes, the last one's continuation bit ignored), so that both
// always agree on where a packet ends.
type pubAcker struct {
	state    uint8
	header   byte
	remLen   int
	shift    uint
	pos      int // body bytes consumed
	topicLen int
	pid      uint16
}

const (
	scanHeader = iota
	scanLength
	scanBody
)

// scan consumes p and appends to acks the PUBACK of each QoS 1 PUBLISH whose
// last byte is in p, in order.
func (a *pubAcker) scan(p []byte, acks []byte) []byte {
	for i := 0; i < len(p); {
		switch a.state {
		case scanHeader:
			a.header, a.remLen, a.shift, a.pos = p[i], 0, 0, 0
			a.state = scanLength
			i++
		case scanLength:
			b := p[i]
			i++
			a.remLen |= int(b&0x7f) << a.shift
			a.shift += 7
			switch {
			case b&0x80 != 0 && a.shift < 28: // more length bytes
			case a.remLen == 0:
				a.state = scanHeader
			default:
				a.state = scanBody
			}
		case scanBody:
			qos1 := a.header>>4 == typePublish && (a.header>>1)&3 == 1
			if !qos1 {
				skip := min(a.remLen-a.pos, len(p)-i)
				a.pos += skip
				i += skip
			} else {
				switch pidAt := 2 + a.topicLen; {
				case a.pos == 0:
					a.topicLen = int(p[i]) << 8
					a.pos++
					i++
				case a.pos == 1:
					a.topicLen |= int(p[i])
					a.pos++
					i++
				case a.pos < pidAt: // the topic
					skip := min(pidAt-a.pos, a.remLen-a.pos, len(p)-i)
					a.pos += skip
					i += skip
				case a.pos == pidAt:
					a.pid = uint16(p[i]) << 8
					a.pos++
					i++
				case a.pos == pidAt+1:
					a.pid |= uint16(p[i])
					a.pos++
					i++
				default: // the payload
					skip := min(a.remLen-a.pos, len(p)-i)
					a.pos += skip
					i += skip
				}
			}
			if a.pos == a.remLen {
				if qos1 && a.pos >= 4+a.topicLen {
					acks = append(acks, pubackHeader, 2, byte(a.pid>>8), byte(a.pid))
				}
				a.state, a.topicLen = scanHeader, 0
			}
		}
	}
	return acks
}
