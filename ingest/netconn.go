package ingest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"os"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// readBufferSize is the read buffer of a subscriber connection: at the
// broker's pace a burst of PUBLISH packets arrives in one read.
const readBufferSize = 64 << 10

// openConn opens a subscriber connection's network connection as paho's own
// dialer does (openConnection in paho v1.5.1's netconn.go, which paho does
// not export: tcp/mqtt through the environment's proxy, ssl/tls/mqtts
// through all_proxy if set, ws/wss), and buffers its reads. paho reads a packet with three reads or
// more (its type byte, its length one byte at a time, its body), each a
// system call on a bare socket; buffered, a burst of packets costs one.
// It is paho's OpenConnectionFunc.
func openConn(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
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
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}, nil
}

// bufferedConn is a net.Conn whose reads go through a buffer. paho reads
// from one goroutine only.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
