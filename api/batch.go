package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// requestError is a refused request: status, reason, message.
type requestError struct {
	code int
	why  reason
	msg  string
}

func (e *requestError) Error() string { return e.msg }

func invalidBody(format string, args ...any) *requestError {
	return &requestError{http.StatusBadRequest, reasonInvalidBody, "invalid body: " + fmt.Sprintf(format, args...)}
}

// readBody appends the whole body to buf; sizeHint (the Content-Length, -1
// if unknown) presizes buf, up to limit. A body over the limit of its
// http.MaxBytesReader is refused with 413.
func readBody(r io.Reader, buf []byte, sizeHint, limit int64) ([]byte, *requestError) {
	if sizeHint > 0 {
		buf = slices.Grow(buf, int(min(sizeHint, limit)+1))
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(512, len(buf)))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				return buf, &requestError{http.StatusRequestEntityTooLarge, reasonBodyTooLarge,
					"body too large: at most " + strconv.FormatInt(tooLarge.Limit, 10) + " bytes; split the batch"}
			}
			return buf, invalidBody("reading: %v", err)
		}
	}
}

// batchBuf holds one batchGet's buffers, pooled: a 10k-id batch needs about
// 2 MB of them.
type batchBuf struct {
	body   []byte
	ids    []string
	valid  []string
	states []engine.DeviceState
	seen   map[string]struct{}
	out    []byte
}

// maxPooledOut bounds the response buffer kept for reuse.
const maxPooledOut = 8 << 20

func (s *Server) getBatchBuf() *batchBuf {
	if b, ok := s.batchPool.Get().(*batchBuf); ok {
		return b
	}
	return &batchBuf{seen: make(map[string]struct{})}
}

func (s *Server) putBatchBuf(b *batchBuf) {
	if cap(b.out) > maxPooledOut || cap(b.body) > maxPooledOut {
		return
	}
	clear(b.ids[:cap(b.ids)]) // drop the strings
	clear(b.valid[:cap(b.valid)])
	clear(b.states[:cap(b.states)])
	clear(b.seen)
	b.body, b.ids, b.valid, b.states, b.out = b.body[:0], b.ids[:0], b.valid[:0], b.states[:0], b.out[:0]
	s.batchPool.Put(b)
}

// batchGet serves POST /v1/devices:batchGet. Invalid ids are reported in
// the answer, not as a failure of the batch: one bad id among 10,000 should
// not cost the client the other answers.
func (s *Server) batchGet(w http.ResponseWriter, r *http.Request) {
	b := s.getBatchBuf()
	defer s.putBatchBuf(b)
	var rerr *requestError
	b.body, rerr = readBody(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes), b.body, r.ContentLength, s.cfg.MaxBodyBytes)
	if rerr == nil {
		// One string for the whole body: ids are substrings of it, with no
		// allocation each, and the pooled byte buffer stays reusable.
		b.ids, rerr = parseBatch(string(b.body), s.cfg.MaxBatchIDs, b.ids)
	}
	if rerr != nil {
		s.reject(w, r, rerr.code, rerr.why, rerr.msg)
		return
	}
	var invalid []string
	for _, id := range b.ids {
		if _, dup := b.seen[id]; dup {
			continue
		}
		b.seen[id] = struct{}{}
		if !engine.ValidID(id) {
			invalid = append(invalid, id)
			continue
		}
		b.valid = append(b.valid, id)
	}
	cluster, ok := s.clusterScope(w, r)
	if !ok {
		return
	}
	var unavailable []int
	var missingNodes []string
	if cluster {
		ctx, cancel := s.clusterContext(r)
		b.states, unavailable, missingNodes = s.cfg.Cluster.Devices(ctx, b.valid, b.states)
		cancel()
	} else {
		b.states = s.store.Devices(b.valid, b.states)
	}
	var n [numIDResults]int
	n[idInvalid] = len(invalid)
	n[idUnavailable] = len(unavailable)
	isUnavailable := func(i int) bool { // unavailable is ascending
		_, found := slices.BinarySearch(unavailable, i)
		return found
	}

	out := append(b.out, `{"devices":[`...)
	for i := range b.valid {
		if i < len(b.states) && b.states[i].Status != engine.StatusUnknown {
			if n[idFound] > 0 {
				out = append(out, ',')
			}
			out = appendDevice(out, &b.states[i])
			n[idFound]++
		}
	}
	out = append(out, `],"missing":[`...)
	for i, id := range b.valid {
		if (i >= len(b.states) || b.states[i].Status == engine.StatusUnknown) && !isUnavailable(i) {
			if n[idMissing] > 0 {
				out = append(out, ',')
			}
			out = wire.AppendJSONString(out, id)
			n[idMissing]++
		}
	}
	out = append(out, `],"invalid":[`...)
	for i, id := range invalid {
		if i > 0 {
			out = append(out, ',')
		}
		out = wire.AppendJSONString(out, id)
	}
	out = append(out, ']')
	if len(unavailable) > 0 {
		out = append(out, `,"unavailable":[`...)
		for k, i := range unavailable {
			if k > 0 {
				out = append(out, ',')
			}
			out = wire.AppendJSONString(out, b.valid[i])
		}
		out = append(out, ']')
	}
	out = appendPartial(out, missingNodes)
	out = append(out, "}\n"...)
	b.out = out
	for i, c := range n {
		s.m.batchIDs[i].Add(c)
	}
	wire.WriteJSON(w, http.StatusOK, out)
}
