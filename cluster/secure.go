package cluster

import (
	"bufio"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// The data channel's security (PROTOCOL.md, "Authentication").
//
// With cluster keys (Config.SecretKey, the gossip key), every data
// connection is TLS 1.3, and each end proves that it holds a cluster key
// with an HMAC-SHA256 over the session's exported keying material (RFC 8446
// section 7.5), the two node names and its role, keyed with a key derived
// from the cluster key (HKDF-SHA256). The client sends its MAC in the hello,
// the server answers with its own in the welcome frame; nothing else is
// read or written before both are checked. The MAC binds the proof to this
// one TLS session, so a man in the middle, who has to run two sessions with
// two different exporters, can neither forward nor replay it. The TLS
// certificate is generated at start and not verified: the key is the
// credential, the certificate only carries the key exchange.
//
// Why not plain TLS with a cluster CA: it is one more secret to distribute
// and rotate per node, while every node must hold the gossip key anyway;
// Go's TLS has no external pre-shared keys (RFC 8446 PSK), hence the
// exporter-bound MAC over an ephemeral certificate.
//
// Without keys (a loopback cluster, or PRESENCE_CLUSTER_INSECURE), the
// connection is plain TCP and the MACs are empty.

// ErrUnauthenticated is wrapped by the errors of a data connection whose
// other end did not prove that it holds a cluster key.
var ErrUnauthenticated = errors.New("cluster: peer not authenticated")

const (
	exporterLabel = "EXPORTER-presence-data-v2"
	exporterLen   = 32
	dataKeyInfo   = "presence data channel v2"
	macClient     = "presence data v2 client"
	macServer     = "presence data v2 server"
)

// channel opens and accepts data connections with the node's credentials.
type channel struct {
	keys   [][]byte // derived from the cluster keys, the primary first; nil: insecure
	server *tls.Config
	client *tls.Config
}

// newChannel derives the data keys from the cluster keys (the primary
// first) and makes the TLS certificate. No keys: plain connections.
func newChannel(clusterKeys [][]byte) (*channel, error) {
	ch := &channel{}
	if len(clusterKeys) == 0 {
		return ch, nil
	}
	for _, k := range clusterKeys {
		dk, err := hkdf.Key(sha256.New, k, nil, dataKeyInfo, sha256.Size)
		if err != nil {
			return nil, fmt.Errorf("cluster: data key: %w", err)
		}
		ch.keys = append(ch.keys, dk)
	}
	cert, err := ephemeralCert()
	if err != nil {
		return nil, err
	}
	ch.server = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		SessionTicketsDisabled: true} // clients never resume: every connection proves the key afresh
	ch.client = &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: "presence",
		// The certificate is not what authenticates the server: its MAC in
		// the welcome frame is (see above).
		InsecureSkipVerify: true, //nolint:gosec // authenticated by the exporter-bound MAC
	}
	return ch, nil
}

func (ch *channel) secure() bool { return ch.keys != nil }

// ephemeralCert makes a self-signed Ed25519 certificate for this process.
func ephemeralCert() (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cluster: certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cluster: certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "presence data channel"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("cluster: certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// mac is the proof of role for the connection with keying material ekm,
// from node a to node b.
func mac(key []byte, role string, ekm []byte, a, b string) []byte {
	h := hmac.New(sha256.New, key)
	var buf []byte
	for _, f := range [][]byte{[]byte(role), ekm, []byte(a), []byte(b)} {
		buf = binary.AppendUvarint(buf[:0], uint64(len(f)))
		h.Write(buf)
		h.Write(f)
	}
	return h.Sum(nil)
}

// match returns the index of the key that made got, or -1.
func (ch *channel) match(got []byte, role string, ekm []byte, a, b string) int {
	for i, k := range ch.keys {
		if hmac.Equal(got, mac(k, role, ekm, a, b)) {
			return i
		}
	}
	return -1
}

func exporter(c *tls.Conn) ([]byte, error) {
	st := c.ConnectionState()
	return st.ExportKeyingMaterial(exporterLabel, nil, exporterLen)
}

// dial runs the client side of a new connection to peer: TLS, the hello
// with this node's proof, and the server's welcome with its proof, all
// before deadline. It returns the connection to use (conn itself without
// keys); on error conn is closed.
func (ch *channel) dial(conn net.Conn, self, peer string, deadline time.Time) (c net.Conn, err error) {
	defer func() {
		if err != nil {
			_ = conn.Close()
		}
	}()
	_ = conn.SetDeadline(deadline)
	c = conn
	var ekm, proof []byte
	if ch.secure() {
		tc := tls.Client(conn, ch.client)
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		if ekm, err = exporter(tc); err != nil {
			return nil, err
		}
		c = tc
		proof = mac(ch.keys[0], macClient, ekm, self, peer)
	}
	if _, err := c.Write(appendHello(nil, self, peer, proof)); err != nil {
		return nil, err
	}
	typ, body, _, err := readFrame(c, nil, 1024)
	if err != nil {
		return nil, fmt.Errorf("waiting for welcome: %w", err)
	}
	if typ != frameWelcome {
		return nil, fmt.Errorf("%w: frame type %d, want welcome", ErrBadFrame, typ)
	}
	got, err := decodeWelcome(body)
	if err != nil {
		return nil, err
	}
	if ch.secure() {
		if ch.match(got, macServer, ekm, peer, self) < 0 {
			return nil, fmt.Errorf("%w: %s did not prove a cluster key", ErrUnauthenticated, peer)
		}
	} else if len(got) != 0 {
		return nil, fmt.Errorf("%w: %s sent a proof, this node has no cluster key", ErrUnauthenticated, peer)
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

// rejection is why the server closed a connection before its first frame
// past the handshake (presence_cluster_refused_connections_total).
type rejection string

const (
	rejectLimit  rejection = "limit"      // too many connections
	rejectTLS    rejection = "tls"        // no TLS, or a failed handshake
	rejectHello  rejection = "hello"      // no hello, or a malformed one
	rejectAuth   rejection = "auth"       // the proof did not check
	rejectMember rejection = "not_member" // the name is no member, or not addressed to us
)

var rejections = []rejection{rejectLimit, rejectTLS, rejectHello, rejectAuth, rejectMember}

// handshakeError is a rejected connection's error and its reason.
type handshakeError struct {
	reason rejection
	err    error
}

func (e *handshakeError) Error() string { return e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

// accept runs the server side of a new connection, before deadline: TLS,
// the hello (its proof, its addressee, the sender's membership, which
// known decides, waiting no later than deadline) and the welcome. It
// returns the connection to read frames from (through br), and the peer's
// name.
//
// reserve is called last, before the welcome: false (no room) refuses the
// connection with rejectLimit; after true the caller owns a slot.
func (ch *channel) accept(conn net.Conn, self string, maxName int, known func(string, time.Time) bool,
	reserve func() bool, deadline time.Time) (c net.Conn, br *bufio.Reader, from string, err error) {
	reject := func(r rejection, err error) (net.Conn, *bufio.Reader, string, error) {
		return nil, nil, "", &handshakeError{reason: r, err: err}
	}
	_ = conn.SetDeadline(deadline)
	c = conn
	var ekm []byte
	if ch.secure() {
		tc := tls.Server(conn, ch.server)
		if err := tc.Handshake(); err != nil {
			return reject(rejectTLS, fmt.Errorf("%w: tls handshake: %v", ErrUnauthenticated, err))
		}
		if ekm, err = exporter(tc); err != nil {
			return reject(rejectTLS, err)
		}
		c = tc
	}
	br = bufio.NewReaderSize(c, 64<<10)
	// A hello is small: a peer announcing more is not one of ours.
	typ, body, _, err := readFrame(br, nil, helloMaxLen(maxName))
	if err != nil {
		return reject(rejectHello, err)
	}
	if typ != frameHello {
		return reject(rejectHello, fmt.Errorf("%w: first frame type %d, want hello", ErrBadFrame, typ))
	}
	h, err := decodeHello(body, maxName)
	if err != nil {
		return reject(rejectHello, err)
	}
	key := -1
	if ch.secure() {
		if key = ch.match(h.proof, macClient, ekm, h.from, h.to); key < 0 {
			return reject(rejectAuth, fmt.Errorf("%w: %q did not prove a cluster key", ErrUnauthenticated, h.from))
		}
	} else if len(h.proof) != 0 {
		return reject(rejectAuth, fmt.Errorf("%w: %q sent a proof, this node has no cluster key", ErrUnauthenticated, h.from))
	}
	if h.to != self {
		return reject(rejectMember, fmt.Errorf("%w: hello for %q, this is %q", ErrUnauthenticated, h.to, self))
	}
	if !known(h.from, deadline) {
		return reject(rejectMember, fmt.Errorf("%w: %q is not a member", ErrUnauthenticated, h.from))
	}
	if !reserve() {
		return reject(rejectLimit, fmt.Errorf("all data connections in use (MaxConns)"))
	}
	var proof []byte
	if key >= 0 {
		proof = mac(ch.keys[key], macServer, ekm, self, h.from)
	}
	if _, err := c.Write(appendWelcome(nil, proof)); err != nil {
		return nil, nil, "", err
	}
	_ = conn.SetDeadline(time.Time{})
	return c, br, h.from, nil
}
