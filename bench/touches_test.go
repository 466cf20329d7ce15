package bench

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkHTTPTouches is POST /v1/touches beside MQTT ingest, in one
// daemon (Redis and Postgres write-behind, history), on BenchmarkEndToEnd's
// workload: 300,000 messages for 10,000 known devices a round, over two
// connections. transport=mqtt publishes them through Mosquitto (QoS 0
// publishes, the daemon's QoS 1 subscriptions, as BenchmarkEndToEnd's
// presence row); transport=http posts them from two HTTP clients
// (keep-alive), batch ids a request. msgs/s counts the touches the engine
// accepted, from the first publish or request until the last one was
// accepted.
//
//	go test ./bench -run '^$' -bench HTTPTouches -benchtime 3x -count 1 -timeout 30m
func BenchmarkHTTPTouches(b *testing.B) {
	f := newFixture(b, e2eDevices)
	d, url := f.startFullDaemon(b)
	eng := d.Engine()
	touches := func() uint64 { return eng.Stats().Touches }

	b.Run("transport=mqtt", func(b *testing.B) {
		iterate(b, func() e2eResult { return publishAndWait(b, f, touches) })
	})
	for _, batch := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("transport=http/batch=%d", batch), func(b *testing.B) {
			bodies := touchBodies(e2eDevices, batch)
			iterate(b, func() e2eResult { return postAndWait(b, url+"/v1/touches", bodies, touches) })
		})
	}
	if st := eng.Stats(); st.Rejected != 0 {
		b.Errorf("engine rejected %d touches", st.Rejected)
	}
}

// touchBodies are the request bodies of one device round: ids 1..devices,
// batch a body.
func touchBodies(devices, batch int) [][]byte {
	var out [][]byte
	for lo := 1; lo <= devices; lo += batch {
		var buf bytes.Buffer
		buf.WriteString(`{"ids":[`)
		for id := lo; id < lo+batch && id <= devices; id++ {
			if id > lo {
				buf.WriteByte(',')
			}
			buf.WriteString(`"` + strconv.Itoa(id) + `"`)
		}
		buf.WriteString(`]}`)
		out = append(out, buf.Bytes())
	}
	return out
}

// postAndWait posts e2eMessages touches (rounds of bodies) from e2eConns
// clients, then waits until handled has grown by as many.
func postAndWait(b *testing.B, url string, bodies [][]byte, handled func() uint64) e2eResult {
	b.Helper()
	perRound := uint64(e2eDevices)
	rounds := e2eMessages / e2eDevices
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: e2eConns}, Timeout: time.Minute}
	defer client.CloseIdleConnections()
	base := handled()
	start := time.Now()
	var next atomic.Int64 // the next request, over rounds*len(bodies)
	total := int64(rounds * len(bodies))
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for range e2eConns {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= total || failed.Load() != nil {
					return
				}
				resp, err := client.Post(url, "application/json", bytes.NewReader(bodies[i%int64(len(bodies))]))
				if err == nil {
					io.Copy(io.Discard, resp.Body) //nolint:errcheck
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("POST: %s", resp.Status)
					}
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	pubEnd := time.Now()
	want := perRound * uint64(rounds)
	stop := time.Now().Add(time.Minute)
	for handled()-base < want {
		if time.Now().After(stop) {
			b.Fatalf("%d of %d touches accepted after a minute", handled()-base, want)
		}
		time.Sleep(e2ePoll)
	}
	last := time.Now()
	return e2eResult{published: want, handled: want, elapsed: last.Sub(start), pubElapsed: pubEnd.Sub(start), last: last}
}
