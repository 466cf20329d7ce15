package ingest

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// packetStream encodes n random packets a broker sends a subscriber, with
// paho's own encoder, and returns them and the packet ids of the QoS 1
// PUBLISHes among them, in order.
func packetStream(t testing.TB, rng *rand.Rand, n int) ([]byte, []uint16) {
	t.Helper()
	var buf bytes.Buffer
	var want []uint16
	for range n {
		var cp packets.ControlPacket
		switch k := rng.IntN(10); {
		case k < 7:
			p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
			p.Qos = byte(rng.IntN(3))
			p.Dup, p.Retain = rng.IntN(4) == 0, rng.IntN(4) == 0
			p.TopicName = strings.Repeat("t", rng.IntN(400))
			p.Payload = make([]byte, rng.IntN(3000))
			if p.Qos > 0 {
				p.MessageID = uint16(rng.IntN(65535) + 1)
			}
			if p.Qos == 1 {
				want = append(want, p.MessageID)
			}
			cp = p
		case k == 7:
			s := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			s.MessageID, s.ReturnCodes = 7, []byte{1, 0x80}
			cp = s
		case k == 8:
			cp = packets.NewControlPacket(packets.Pingresp)
		default:
			r := packets.NewControlPacket(packets.Pubrel).(*packets.PubrelPacket)
			r.MessageID = 9
			cp = r
		}
		if err := cp.Write(&buf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes(), want
}

// scanChunks feeds stream to a pubAcker in random chunks and returns the
// packet ids of the PUBACKs it wrote.
func scanChunks(rng *rand.Rand, stream []byte) []uint16 {
	var a pubAcker
	var acks []byte
	for len(stream) > 0 {
		n := min(1+rng.IntN(700), len(stream))
		acks = a.scan(stream[:n], acks)
		stream = stream[n:]
	}
	var ids []uint16
	for i := 0; i+4 <= len(acks); i += 4 {
		if acks[i] != pubackHeader || acks[i+1] != 2 {
			return nil
		}
		ids = append(ids, uint16(acks[i+2])<<8|uint16(acks[i+3]))
	}
	return ids
}

// The acker acknowledges exactly the QoS 1 PUBLISHes, in order, however
// the stream is cut into reads.
func TestPubAcker(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		stream, want := packetStream(t, rng, 200)
		if got := scanChunks(rng, stream); !slices.Equal(got, want) {
			t.Fatalf("seed %d: acked %d ids, want %d (%v... vs %v...)", seed, len(got), len(want), got[:min(5, len(got))], want[:min(5, len(want))])
		}
	}
}

// FuzzPubAcker: any bytes, cut anywhere: no panic, and a valid stream
// prefixed to them is acknowledged exactly.
func FuzzPubAcker(f *testing.F) {
	f.Add(uint64(1), []byte{0x32, 0x06, 0, 1, 't', 0, 5, 'x'})
	f.Add(uint64(2), []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, seed uint64, tail []byte) {
		rng := rand.New(rand.NewPCG(seed, 2))
		stream, want := packetStream(t, rng, 5)
		got := scanChunks(rng, append(stream, tail...))
		if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
			t.Fatalf("acked %v, want %v first", got, want)
		}
	})
}

// The acker finds packet ends where paho does, even in a length paho reads
// leniently: 4 length bytes, the last with its continuation bit set.
func TestPubAckerAgreesWithPaho(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	stream, _ := packetStream(t, rng, 50)
	odd := []byte{0xd0, 0x80, 0x80, 0x80, 0x80} // a PINGRESP, to paho
	stream = append(append(odd, stream...), odd...)
	more, _ := packetStream(t, rng, 50)
	stream = append(stream, more...)
	var want []uint16
	r := bytes.NewReader(stream)
	for r.Len() > 0 {
		cp, err := packets.ReadPacket(r)
		if err != nil {
			t.Fatalf("paho: %v", err)
		}
		if p, ok := cp.(*packets.PublishPacket); ok && p.Qos == 1 {
			want = append(want, p.MessageID)
		}
	}
	if got := scanChunks(rng, stream); !slices.Equal(got, want) {
		t.Fatalf("acked %d ids, paho read %d QoS 1 messages", len(got), len(want))
	}
}
