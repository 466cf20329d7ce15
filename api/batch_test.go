package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
)

// idsBody is a batchGet body for ids.
func idsBody(ids ...string) string {
	b, _ := json.Marshal(BatchGetRequest{IDs: ids})
	return string(b)
}

func TestBatchGet(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxBatchIDs = 7 })
	f.touch("1", t0)
	f.touch("2", t0.Add(time.Second))
	f.eng.TouchBatch([]engine.Touch{{ID: "slow-\\\"", At: t0, Timeout: 2 * time.Second}})
	f.advance(3 * time.Second)

	ids := func(ds []Device) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	for _, tc := range []struct {
		name             string
		body             string
		found, miss, bad []string
	}{
		{"mixed", `{"ids":["2","nobody","bad id","1"]}`, []string{"2", "1"}, []string{"nobody"}, []string{"bad id"}},
		{"empty", `{"ids":[]}`, nil, nil, nil},
		{"duplicates", `{"ids":["1","1","x","x","a/b","a/b"]}`, []string{"1"}, []string{"x"}, []string{"a/b"}},
		{"escaped id", idsBody("slow-\\\""), []string{"slow-\\\""}, nil, nil},
		{"unicode escape", `{"ids":["\u0031"]}`, []string{"1"}, nil, nil},
		{"escaped key", `{"\u0069ds":["1"]}`, []string{"1"}, nil, nil},
		{"all escapes", `{"ids":["\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00\ud800x"]}`, nil, nil,
			[]string{"\"\\/\b\f\n\r\té\U0001F600\uFFFDx"}},
		{"max ids", idsBody("1", "2", "3", "4", "5", "6", "7"), []string{"1", "2"}, []string{"3", "4", "5", "6", "7"}, nil},
		{"whitespace", " \n{ \"ids\" : [ \"1\" ] }\n\n", []string{"1"}, nil, nil},
		{"odd invalid ids", idsBody("", "a\x00", "\xff", "é", strings.Repeat("z", 129), "+", "#"),
			nil, nil, []string{"", "a\x00", "\ufffd", "é", strings.Repeat("z", 129), "+", "#"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := f.do("POST", "/v1/devices:batchGet", tc.body)
			if w.Code != 200 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			// The lists are always present, never null.
			for _, key := range []string{`"devices":[`, `"missing":[`, `"invalid":[`} {
				if !strings.Contains(w.Body.String(), key) {
					t.Errorf("body lacks %s: %s", key, w.Body)
				}
			}
			var resp BatchGetResponse
			decodeStrict(t, w.Body.Bytes(), &resp)
			if got := ids(resp.Devices); !slices.Equal(got, tc.found) {
				t.Errorf("devices %q, want %q", got, tc.found)
			}
			if !slices.Equal(resp.Missing, tc.miss) && len(resp.Missing)+len(tc.miss) > 0 {
				t.Errorf("missing %q, want %q", resp.Missing, tc.miss)
			}
			if !slices.Equal(resp.Invalid, tc.bad) && len(resp.Invalid)+len(tc.bad) > 0 {
				t.Errorf("invalid %q, want %q", resp.Invalid, tc.bad)
			}
			for _, d := range resp.Devices {
				if d.Status != "online" && d.Status != "offline" {
					t.Errorf("status %q", d.Status)
				}
				if !contractTime.MatchString(d.LastSeen) || !contractTime.MatchString(d.Since) {
					t.Errorf("times of %+v not in the contract format", d)
				}
			}
		})
	}

	t.Run("same shape as GET", func(t *testing.T) {
		w := f.do("POST", "/v1/devices:batchGet", idsBody("2", "slow-\\\""))
		var resp BatchGetResponse
		decodeStrict(t, w.Body.Bytes(), &resp)
		for _, d := range resp.Devices {
			one := f.do("GET", "/v1/devices/"+strings.ReplaceAll(d.ID, `\`, "%5C"), "")
			var single Device
			decodeStrict(t, one.Body.Bytes(), &single)
			if single != d {
				t.Errorf("batch %+v, GET %+v", d, single)
			}
		}
		if resp.Devices[1].Status != "offline" || resp.Devices[1].TimeoutSeconds != 2 {
			t.Errorf("slow device %+v", resp.Devices[1])
		}
	})

	for _, tc := range []struct {
		name, body string
		code       int
		msg        string
	}{
		{"empty body", "", 400, "empty"},
		{"not JSON", "ids=1", 400, "want a JSON object"},
		{"array", `["1"]`, 400, "want a JSON object"},
		{"string", `"1"`, 400, "want a JSON object"},
		{"null", `null`, 400, "want a JSON object"},
		{"unknown field", `{"ids":["1"],"limit":3}`, 400, `unknown field "limit"`},
		{"unknown field first", `{"x":1,"ids":["1"]}`, 400, `unknown field "x"`},
		{"case-folded field", `{"IDS":["1"]}`, 400, `unknown field "IDS"`},
		{"missing ids", `{}`, 400, `missing field "ids"`},
		{"ids twice", `{"ids":[],"ids":["1"]}`, 400, "given twice"},
		{"ids null", `{"ids":null}`, 400, "array of strings"},
		{"ids string", `{"ids":"1"}`, 400, "array of strings"},
		{"id number", `{"ids":["1",2]}`, 400, "element 1 is not a string"},
		{"id null", `{"ids":[null]}`, 400, "element 0 is not a string"},
		{"id object", `{"ids":[{"id":"1"}]}`, 400, "element 0 is not a string"},
		{"nested array", `{"ids":[["1"]]}`, 400, "element 0 is not a string"},
		{"truncated", `{"ids":["1"`, 400, "invalid body"},
		{"trailing comma", `{"ids":["1",]}`, 400, "element 1 is not a string"},
		{"trailing comma in object", `{"ids":["1"],}`, 400, "malformed JSON at byte 13: want a field name"},
		{"missing colon", `{"ids" ["1"]}`, 400, "want ':'"},
		{"missing comma", `{"ids":["1" "2"]}`, 400, "want ',' or ']'"},
		{"control in string", "{\"ids\":[\"a\tb\"]}", 400, "control character"},
		{"bad unicode escape", `{"ids":["\u12G4"]}`, 400, `bad \u escape`},
		{"unterminated string", `{"ids":["abc`, 400, "truncated JSON"},
		{"unterminated escape", `{"ids":["abc\`, 400, "truncated JSON"},
		{"trailing object", `{"ids":["1"]}{}`, 400, "data after the JSON object"},
		{"trailing garbage", `{"ids":["1"]} x`, 400, "data after the JSON object at byte 14"},
		{"bad escape", `{"ids":["\x"]}`, 400, "malformed JSON"},
		{"too many ids", idsBody("1", "2", "3", "4", "5", "6", "7", "8"), 413, "too many ids: at most 7 per request"},
		{"too many ids, then garbage", `{"ids":["1","2","3","4","5","6","7","8",` + strings.Repeat("!", 100), 413, "too many ids"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkJSONError(t, f.do("POST", "/v1/devices:batchGet", tc.body), tc.code, tc.msg)
		})
	}
	m := f.metrics()
	for _, want := range []string{
		`presence_api_requests_rejected_total{reason="invalid_body"} 28`,
		`presence_api_requests_rejected_total{reason="too_many_ids"} 2`,
		`presence_api_requests_total{route="POST /v1/devices:batchGet",code="400"} 28`,
		`presence_api_requests_total{route="POST /v1/devices:batchGet",code="413"} 2`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grep(m, "batchGet"))
		}
	}
}

func TestBatchGetBodyLimit(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxBodyBytes = 1024 })
	f.touch("1", t0)
	// Just under the limit: fine, whatever the id count.
	ok := `{"ids":["1"` + strings.Repeat(`,"1"`, (1024-20)/4) + `]}`
	if len(ok) > 1024 {
		t.Fatalf("test body of %d bytes", len(ok))
	}
	if w := f.do("POST", "/v1/devices:batchGet", ok); w.Code != 200 {
		t.Fatalf("body of %d bytes: %d %s", len(ok), w.Code, w.Body)
	}
	for _, body := range []string{
		idsBody(strings.Repeat("x", 2000)),            // one huge string
		`{"ids":[` + strings.Repeat(" ", 2000) + `]}`, // whitespace
		idsBody(slices.Repeat([]string{"abc"}, 300)...),
	} {
		checkJSONError(t, f.do("POST", "/v1/devices:batchGet", body), 413, "body too large: at most 1024 bytes")
	}
	if m := f.metrics(); !strings.Contains(m, `presence_api_requests_rejected_total{reason="body_too_large"} 3`) {
		t.Errorf("body_too_large not counted:\n%s", grep(m, "rejected"))
	}
}

// TestBatchGetDefaultLimits: the defaults take 10,000 of the longest ids
// with every byte escaped, and refuse 10,001.
func TestBatchGetDefaultLimits(t *testing.T) {
	f := newFixture(t, nil)
	ids := make([]string, DefaultMaxBatchIDs)
	for i := range ids {
		ids[i] = fmt.Sprintf("%0128d", i)
		if i%2 == 0 {
			f.touch(ids[i], t0)
		}
	}
	// The longest body of 10k valid ids: 128 bytes each, every byte a '"'
	// escaped as \" (the only escapes a valid id needs are \" and \\).
	worst := `{"ids":[` + strings.Repeat(`"`+strings.Repeat(`\"`, 128)+`",`, DefaultMaxBatchIDs-1) + `"x"]}`
	if len(worst) > int(DefaultConfig().MaxBodyBytes) {
		t.Fatalf("the default MaxBodyBytes does not fit 10k escaped ids: %d bytes", len(worst))
	}
	if w := f.do("POST", "/v1/devices:batchGet", worst); w.Code != 200 {
		t.Fatalf("10k escaped ids: %d %s", w.Code, w.Body.String()[:min(200, w.Body.Len())])
	}
	w := f.do("POST", "/v1/devices:batchGet", idsBody(ids...))
	if w.Code != 200 {
		t.Fatalf("10k ids: %d %s", w.Code, w.Body.String()[:min(200, w.Body.Len())])
	}
	var resp BatchGetResponse
	decodeStrict(t, w.Body.Bytes(), &resp)
	if len(resp.Devices) != 5000 || len(resp.Missing) != 5000 || len(resp.Invalid) != 0 {
		t.Errorf("found %d, missing %d, invalid %d", len(resp.Devices), len(resp.Missing), len(resp.Invalid))
	}
	if resp.Devices[0].ID != ids[0] || resp.Missing[0] != ids[1] {
		t.Error("request order not kept")
	}
	checkJSONError(t, f.do("POST", "/v1/devices:batchGet", idsBody(append(ids, "one-more")...)),
		413, "too many ids: at most 10000 per request")
}

// TestBatchGetPoolIsolation: pooled buffers never leak one answer into the
// next.
func TestBatchGetPoolIsolation(t *testing.T) {
	f := newFixture(t, nil)
	f.touch("a", t0)
	f.do("POST", "/v1/devices:batchGet", idsBody("a", "b", "c", "bad id"))
	w := f.do("POST", "/v1/devices:batchGet", idsBody("a"))
	want := `{"devices":[{"id":"a","status":"online","last_seen":"2025-12-14T10:30:45.123456+00:00",` +
		`"since":"2025-12-14T10:30:45.123456+00:00","timeout_seconds":60,"timeout_source":"default"}],"missing":[],"invalid":[]}` + "\n"
	if w.Body.String() != want {
		t.Errorf("got %s\nwant %s", w.Body, want)
	}
}

// BenchmarkBatchGet10k measures POST /v1/devices:batchGet with 10,000
// known ids through the whole handler (hand-written parser and encoder,
// pooled buffers). BenchmarkBatchGet10kBaselineEncodingJSON is its baseline.
func BenchmarkBatchGet10k(b *testing.B) {
	benchmarkBatchGet(b, "/v1/devices:batchGet")
}

// BenchmarkBatchGet10kBaselineEncodingJSON answers the same body the
// straightforward way, behind the same middleware: encoding/json decodes
// the request into BatchGetRequest, the same engine looks the ids up, and
// encoding/json encodes a BatchGetResponse. The difference to
// BenchmarkBatchGet10k is what the hand-written parser and encoder buy.
func BenchmarkBatchGet10kBaselineEncodingJSON(b *testing.B) {
	benchmarkBatchGet(b, baselineBatchGetPath)
}

const baselineBatchGetPath = "/bench/devices:batchGetEncodingJSON"

func benchmarkBatchGet(b *testing.B, path string) {
	ecfg := engine.DefaultConfig()
	eng, _ := engine.New(ecfg)
	ids := make([]string, DefaultMaxBatchIDs)
	for i := range ids {
		ids[i] = fmt.Sprintf("device-%d", i)
		eng.Touch(ids[i], t0)
	}
	cfg := DefaultConfig()
	srv, err := New(cfg, eng)
	if err != nil {
		b.Fatal(err)
	}
	srv.Handle("POST "+baselineBatchGetPath, batchGetEncodingJSON(eng, cfg.MaxBodyBytes))
	h := srv.Handler()
	body := idsBody(ids...)
	post := func(path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("POST", path, strings.NewReader(body)))
		if w.Code != 200 {
			b.Fatal(w.Code, w.Body.String())
		}
		return w
	}
	// Both answer the same.
	var got, want BatchGetResponse
	if err := json.Unmarshal(post(path).Body.Bytes(), &got); err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(post("/v1/devices:batchGet").Body.Bytes(), &want); err != nil {
		b.Fatal(err)
	}
	if len(got.Devices) != len(ids) || !reflect.DeepEqual(got, want) {
		b.Fatalf("%s answers differently from batchGet (%d devices)", path, len(got.Devices))
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		post(path)
	}
}

// batchGetEncodingJSON is batchGet written with encoding/json, the
// baseline of BenchmarkBatchGet10k: same limits, same dedup and validation,
// same answer (times of known devices are never zero, so they need no null).
func batchGetEncodingJSON(store Store, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req BatchGetRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp := BatchGetResponse{Devices: []Device{}, Missing: []string{}, Invalid: []string{}}
		seen := make(map[string]struct{}, len(req.IDs))
		valid := make([]string, 0, len(req.IDs))
		for _, id := range req.IDs {
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
			if !engine.ValidID(id) {
				resp.Invalid = append(resp.Invalid, id)
				continue
			}
			valid = append(valid, id)
		}
		for i, st := range store.Devices(valid, nil) {
			if st.Status == engine.StatusUnknown {
				resp.Missing = append(resp.Missing, valid[i])
				continue
			}
			resp.Devices = append(resp.Devices, Device{
				ID:             st.ID,
				Status:         st.Status.String(),
				LastSeen:       st.LastSeen.UTC().Format(TimeLayout),
				Since:          st.Since.UTC().Format(TimeLayout),
				TimeoutSeconds: st.Timeout.Seconds(),
			})
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(resp); err != nil {
			panic(http.ErrAbortHandler)
		}
	})
}
