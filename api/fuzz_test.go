package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/presence-dev/presence/engine"
)

// fuzzKnown are the devices the fuzz fixtures know.
var fuzzKnown = []string{"1", "123", "sensor-a", `q"\`, "."}

func newFuzzFixture(t testing.TB) *fixture {
	f := newFixture(t, func(c *Config) {
		c.MaxBatchIDs = 16
		c.MaxBodyBytes = 2048
		c.Token = ""
	})
	for _, id := range fuzzKnown {
		f.touch(id, t0)
	}
	return f
}

// stdBatch is encoding/json's reading of a batchGet body, as strict as it
// gets: one object, no unknown fields, nothing after it.
func stdBatch(body []byte) (ids []string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req struct {
		IDs *[]string `json:"ids"`
	}
	if dec.Decode(&req) != nil || req.IDs == nil {
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false
	}
	return *req.IDs, true
}

func FuzzBatchGet(f *testing.F) {
	for _, s := range []string{
		`{"ids":["1","2","bad id"]}`, `{"ids":[]}`, `{}`, `[]`, `null`, ``, `{"ids":null}`,
		`{"ids":["1"],"x":1}`, `{"IDS":["1"]}`, `{"ids":[],"ids":[]}`, `{"ids":["\u0031","\ud800"]}`,
		`{"ids":["1",2]}`, `{"ids":[["1"]]}`, `{"ids":["1"]}{}`, `{"ids":["1"`, "{\"ids\":[\"\xff\"]}",
		`{"ids":["a","a","b","b","c","c","d","d","e","e","f","f","g","g","h","h","i"]}`,
		`{"ids":["` + strings.Repeat("x", 3000) + `"]}`,
		`{"ids":["\ud83d\ude00","\ud800\u0041","\udc00\ud800","\u00e9x","é","\"\\\/\b\f\n\r\t"]}`,
		"{\"ids\":[\"a\xc3\",\"\xed\xa0\x80\",\"\xf0\x9f\x98\x80\"]}", `{"\u0069ds":["1"]}`, ` {"ids" : [ "1" , "2" ] } `,
	} {
		f.Add([]byte(s))
	}
	fx := newFuzzFixture(f)
	known := map[string]bool{}
	for _, id := range fuzzKnown {
		known[id] = true
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/v1/devices:batchGet", bytes.NewReader(body))
		w := httptest.NewRecorder()
		fx.srv.Handler().ServeHTTP(w, req)
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("status %d, invalid JSON body %q", w.Code, w.Body)
		}
		std, stdOK := stdBatch(body)
		switch w.Code {
		case 200:
			if !stdOK {
				t.Fatalf("accepted %q, which encoding/json refuses", body)
			}
			var resp BatchGetResponse
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
				t.Fatal(err)
			}
			if resp.Devices == nil || resp.Missing == nil || resp.Invalid == nil {
				t.Fatalf("a null list: %s", w.Body)
			}
			// Each distinct id in exactly one list, in request order.
			var wantFound, wantMissing, wantInvalid []string
			seen := map[string]bool{}
			for _, id := range std {
				if seen[id] {
					continue
				}
				seen[id] = true
				switch {
				case !engine.ValidID(id):
					wantInvalid = append(wantInvalid, id)
				case known[id]:
					wantFound = append(wantFound, id)
				default:
					wantMissing = append(wantMissing, id)
				}
			}
			var found []string
			for _, d := range resp.Devices {
				found = append(found, d.ID)
				if !contractTime.MatchString(d.LastSeen) {
					t.Fatalf("last_seen %q", d.LastSeen)
				}
			}
			if !equalStrings(found, wantFound) || !equalStrings(resp.Missing, wantMissing) ||
				!equalStrings(resp.Invalid, wantInvalid) {
				t.Fatalf("body %q: got found %q missing %q invalid %q, want %q %q %q",
					body, found, resp.Missing, resp.Invalid, wantFound, wantMissing, wantInvalid)
			}
		case 400:
			checkFuzzError(t, w)
			// Refusing what encoding/json accepts is allowed only for
			// what the API documents as stricter: a key other than exactly
			// "ids" (encoding/json folds case), or "ids" twice.
			if stdOK && len(std) <= fx.srv.cfg.MaxBatchIDs && slices.Equal(topKeys(body), []string{"ids"}) {
				t.Fatalf("refused %q (%s), which encoding/json reads as %q", body, w.Body, std)
			}
		case 413:
			checkFuzzError(t, w)
			if stdOK && len(std) <= fx.srv.cfg.MaxBatchIDs && int64(len(body)) <= fx.srv.cfg.MaxBodyBytes {
				t.Fatalf("413 for %d ids in %d bytes", len(std), len(body))
			}
		default:
			t.Fatalf("status %d for %q", w.Code, body)
		}
	})
}

// topKeys lists the keys of the top-level object of a valid body, in order,
// repeats included.
func topKeys(body []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return nil
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		k, _ := tok.(string)
		keys = append(keys, k)
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return nil
		}
	}
	return keys
}

func checkFuzzError(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	var e Error
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
		t.Fatalf("status %d, error body %q (%v)", w.Code, w.Body, err)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzDeviceID: any id, properly escaped in the path, gets 200 (known), 404
// (unknown) or 400 (invalid), consistently with engine.ValidID: a valid id
// never gets 400, an invalid one never 200.
func FuzzDeviceID(f *testing.F) {
	for _, s := range []string{"1", "123", "nobody", "", " ", "a/b", "a+b", "#", "?x", "%", "é", "\x00",
		`q"\`, ".", "..", strings.Repeat("x", 128), strings.Repeat("x", 129)} {
		f.Add(s)
	}
	fx := newFuzzFixture(f)
	f.Fuzz(func(t *testing.T, id string) {
		req := httptest.NewRequest("GET", "/v1/devices/"+url.PathEscape(id), nil)
		w := httptest.NewRecorder()
		fx.srv.Handler().ServeHTTP(w, req)
		switch {
		case id == "":
			if w.Code != 404 {
				t.Fatalf("empty id: %d", w.Code)
			}
		case id == "." || id == "..":
			// The mux cleans such paths and redirects: these two valid ids
			// are reachable through batchGet only (see docs/API.md).
			if w.Code < 300 || w.Code > 308 {
				t.Fatalf("id %q: %d", id, w.Code)
			}
			return
		case !engine.ValidID(id):
			// 400 from the handler; the mux itself answers 404 for a few
			// escaped slashes ("%2F" alone), never 200.
			if w.Code != 400 && (w.Code != 404 || !strings.Contains(id, "/")) {
				t.Fatalf("invalid id %q: %d %s", id, w.Code, w.Body)
			}
		default:
			if w.Code != 200 && w.Code != 404 {
				t.Fatalf("valid id %q: %d %s", id, w.Code, w.Body)
			}
			if w.Code == 200 {
				var d Device
				if err := json.Unmarshal(w.Body.Bytes(), &d); err != nil || d.ID != id {
					t.Fatalf("id %q: body %s (%v)", id, w.Body, err)
				}
			}
		}
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("id %q: invalid JSON %q", id, w.Body)
		}
	})
}

// FuzzRequestTarget: any request line the HTTP parser accepts is answered
// with a known status and, for errors, a JSON body; never a panic.
func FuzzRequestTarget(f *testing.F) {
	for _, s := range []string{"/v1/devices/1", "/v1/devices/%2F", "/v1/devices:batchGet", "/v1/devices%3AbatchGet",
		"//v1/stats", "/v1/../metrics", "/v1/devices/a/../1", "*", "/healthz?x=1", "/v1/devices/%zz"} {
		f.Add("GET", s)
	}
	f.Add("POST", "/v1/devices:batchGet")
	f.Add("OPTIONS", "*")
	fx := newFuzzFixture(f)
	f.Fuzz(func(t *testing.T, method, target string) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return
		}
		w := httptest.NewRecorder()
		fx.srv.Handler().ServeHTTP(w, req)
		switch w.Code {
		case 200, 400, 404, 405, 413:
			if w.Code != 200 && !json.Valid(w.Body.Bytes()) {
				t.Fatalf("%s %s: %d with non-JSON body %q", method, target, w.Code, w.Body)
			}
		case 301, 307, 308: // the mux's path cleaning
		default:
			t.Fatalf("%s %s: status %d", method, target, w.Code)
		}
	})
}

// bearerGrammar is RFC 6750 §2.1's credentials, "Bearer" 1*SP token, with
// the scheme in any case and optional whitespace around (RFC 9110): the
// independent reading bearerToken must agree with. The token is group 1.
var bearerGrammar = regexp.MustCompile(`^[ \t]*(?i:bearer)(?: +(?s:(.*?)))?[ \t]*$`)

// FuzzBearerToken: bearerToken reads exactly the grammar, and gives back
// any token written after "Bearer ".
func FuzzBearerToken(f *testing.F) {
	for _, s := range authSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		tok, bearer := bearerToken(h)
		m := bearerGrammar.FindStringSubmatch(h)
		if bearer != (m != nil) || (m != nil && tok != m[1]) {
			t.Fatalf("bearerToken(%q) = %q, %v; the grammar reads %q", h, tok, bearer, m)
		}
		if !bearer && tok != "" {
			t.Fatalf("bearerToken(%q): token %q without the scheme", h, tok)
		}
		if h == strings.TrimLeft(strings.TrimRight(h, " \t"), " ") {
			if tok, ok := bearerToken("Bearer " + h); !ok || tok != h {
				t.Fatalf(`bearerToken("Bearer " + %q) = %q, %v`, h, tok, ok)
			}
		}
	})
}

// fuzzToken is the API token of FuzzAuthorization.
const fuzzToken = "s3cret-token-0123456789abcdef"

var authSeeds = []string{
	"", "Bearer " + fuzzToken, "bearer " + fuzzToken, "BEARER " + fuzzToken, "Bearer   " + fuzzToken,
	" \tBearer " + fuzzToken + " \t", "Bearer\t" + fuzzToken, "Bearer " + fuzzToken + "x", "Bearer " + fuzzToken[1:],
	"Bearer " + fuzzToken + " x", "Bearer " + fuzzToken + "\x00", "Bearer " + fuzzToken + "\r\n", "Bearer \t" + fuzzToken,
	"Bearer", "Bearer ", "Bearerx " + fuzzToken, "Basic dXNlcjpwYXNz", fuzzToken, "Bearer\u00a0" + fuzzToken,
	"B\u0435arer " + fuzzToken, "Bearer " + strings.ToUpper(fuzzToken), "Bearer Bearer " + fuzzToken, "\xff\xfe",
}

// FuzzAuthorization: through the middleware, a protected route answers 200
// to exactly one header "Bearer <token>" (bearerGrammar) and 401 with the
// JSON error and its challenge to anything else; /readyz shows the details
// of its error to that header only, and never answers 401.
func FuzzAuthorization(f *testing.F) {
	for _, s := range authSeeds {
		f.Add(s, false)
	}
	f.Add("Bearer "+fuzzToken, true)
	fx := newFixture(f, func(c *Config) {
		c.Token = fuzzToken
		c.Ready = func() error { return secretReadyErr }
	})
	f.Fuzz(func(t *testing.T, h string, twice bool) {
		do := func(path string) *httptest.ResponseRecorder {
			req := httptest.NewRequest("GET", path, nil)
			req.Header.Add("Authorization", h)
			if twice {
				req.Header.Add("Authorization", h)
			}
			w := httptest.NewRecorder()
			fx.srv.Handler().ServeHTTP(w, req)
			return w
		}
		m := bearerGrammar.FindStringSubmatch(h)
		bearer := m != nil && !twice
		valid := bearer && m[1] == fuzzToken

		w := do("/v1/stats")
		switch {
		case valid && w.Code != 200:
			t.Fatalf("%q: %d %s, want 200", h, w.Code, w.Body)
		case valid:
		case w.Code != 401:
			t.Fatalf("%q (twice %v): %d %s, want 401", h, twice, w.Code, w.Body)
		default:
			var e Error
			decodeStrict(t, w.Body.Bytes(), &e)
			want := `Bearer realm="presence"`
			if bearer {
				want += `, error="invalid_token"`
			}
			if e.Error == "" || w.Header().Get("WWW-Authenticate") != want {
				t.Fatalf("%q (twice %v): 401 %s, WWW-Authenticate %q, want %q", h, twice, w.Body,
					w.Header().Get("WWW-Authenticate"), want)
			}
		}

		w = do("/readyz")
		if w.Code != 503 || !json.Valid(w.Body.Bytes()) {
			t.Fatalf("/readyz with %q: %d %s", h, w.Code, w.Body)
		}
		if shown := strings.Contains(w.Body.String(), "hunter2"); shown != valid {
			t.Fatalf("/readyz with %q (twice %v, valid %v): %s", h, twice, valid, w.Body)
		}
	})
}
