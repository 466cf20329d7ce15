package api_test

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/engine"
)

func Example() {
	now := time.Date(2025, 12, 14, 10, 30, 45, 123456000, time.UTC)
	ecfg := engine.DefaultConfig()
	ecfg.Now = func() time.Time { return now }
	eng, err := engine.New(ecfg)
	if err != nil {
		panic(err)
	}
	eng.Touch("123", now)
	eng.TouchBatch([]engine.Touch{{ID: "456", At: now, Timeout: 5 * time.Second}})
	now = now.Add(10 * time.Second)
	eng.Advance(now) // 456 goes offline at its deadline

	cfg := api.DefaultConfig()
	cfg.Token = "s3cret"
	srv, err := api.New(cfg, eng)
	if err != nil {
		panic(err)
	}
	// The daemon runs srv.Start(ctx) and srv.Close(ctx); here the handler serves in
	// memory.
	do := func(method, path, body string) {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer s3cret")
		w := httptest.NewRecorder()
		srv.Handler().ServeHTTP(w, req)
		fmt.Print(w.Code, " ", w.Body.String())
	}
	do("GET", "/v1/devices/123", "")
	do("GET", "/v1/devices/789", "")
	do("POST", "/v1/devices:batchGet", `{"ids": ["456", "789", "bad id"]}`)
	do("GET", "/v1/stats", "")
	// Output:
	// 200 {"id":"123","status":"online","last_seen":"2025-12-14T10:30:45.123456+00:00","since":"2025-12-14T10:30:45.123456+00:00","timeout_seconds":60,"timeout_source":"default"}
	// 404 {"error":"device \"789\" not found"}
	// 200 {"devices":[{"id":"456","status":"offline","last_seen":"2025-12-14T10:30:45.123456+00:00","since":"2025-12-14T10:30:50.123456+00:00","timeout_seconds":5,"timeout_source":"pattern"}],"missing":["789"],"invalid":["bad id"]}
	// 200 {"total":2,"online":1,"offline":1,"engine":{"touches":2,"rejected":0,"stale":0,"online_transitions":2,"offline_transitions":1,"delivered":0,"queued":3,"coalesced":0,"collapsed":0,"resyncing":0,"wheel_entries":1}}
}
