package control

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/engine"
)

// fakes records what the Service did, in order.
type fakes struct {
	log       []string
	known     map[string]bool // this node's engine
	remote    map[string]bool // devices another node owns: whether they exist
	holding   map[string]bool
	missing   []string // members that do not answer lookups
	storeErr  error
	applyErr  error
	gateErr   error
	clustered bool
}

func (f *fakes) gate(fn func() error) error {
	if f.gateErr != nil {
		return f.gateErr
	}
	return fn()
}

func (f *fakes) Device(id string) (engine.DeviceState, error) {
	if f.known[id] {
		return engine.DeviceState{ID: id, Status: engine.StatusOnline}, nil
	}
	return engine.DeviceState{}, engine.ErrNotFound
}

func (f *fakes) SetTimeout(id string, d time.Duration) error {
	f.log = append(f.log, "apply "+id+" "+d.String())
	return f.applyErr
}

func (f *fakes) ClearTimeout(id string) error {
	f.log = append(f.log, "clear "+id)
	return f.applyErr
}

func (f *fakes) Decommission(id string, _ time.Time) error {
	f.log = append(f.log, "decommission "+id)
	return f.applyErr
}

func (f *fakes) Owns(id string) bool { _, remote := f.remote[id]; return !remote }

func (f *fakes) Holding(id string) bool { return f.holding[id] }

func (f *fakes) Lookup(_ context.Context, ids []string, _ []engine.DeviceState) ([]engine.DeviceState, []string) {
	out := make([]engine.DeviceState, len(ids))
	for i, id := range ids {
		if f.remote[id] {
			out[i] = engine.DeviceState{ID: id, Status: engine.StatusOnline}
		}
	}
	return out, f.missing
}

func (f *fakes) SetTimeoutOverride(_ context.Context, id string, d time.Duration) error {
	f.log = append(f.log, "store "+id+" "+d.String())
	return f.storeErr
}

func (f *fakes) service(t *testing.T) *Service {
	t.Helper()
	deps := Deps{Gate: f.gate, Engine: f, Controls: f, Overrides: f}
	if f.clustered {
		deps.Cluster = f
	}
	s, err := New(DefaultConfig(), deps)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fakes) did(t *testing.T, want ...string) {
	t.Helper()
	if strings.Join(f.log, "; ") != strings.Join(want, "; ") {
		t.Fatalf("did %q, want %q", f.log, want)
	}
	f.log = nil
}

// An own timeout is stored before it is applied, taken back when it could
// not be applied, and nothing is stored for a device nobody knows or a
// timeout out of range.
func TestSetTimeout(t *testing.T) {
	f := &fakes{known: map[string]bool{"a": true}}
	s := f.service(t)
	if fw, err := s.SetTimeout("a", time.Hour); err != nil || fw {
		t.Fatalf("SetTimeout: %v %v", fw, err)
	}
	f.did(t, "store a 1h0m0s", "apply a 1h0m0s")
	if _, err := s.SetTimeout("a", 0); err != nil {
		t.Fatal(err)
	}
	f.did(t, "store a 0s", "clear a")
	if _, err := s.SetTimeout("nobody", time.Hour); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("unknown device: %v", err)
	}
	f.did(t)
	if _, err := s.SetTimeout("a", time.Millisecond); err == nil {
		t.Fatal("a timeout out of range was taken")
	}
	f.did(t)

	f.applyErr = engine.ErrFull
	if _, err := s.SetTimeout("a", time.Hour); !errors.Is(err, engine.ErrFull) {
		t.Fatalf("apply failing: %v", err)
	}
	f.did(t, "store a 1h0m0s", "apply a 1h0m0s", "store a 0s")
	f.applyErr = nil

	f.storeErr = errors.New("redis down")
	if _, err := s.SetTimeout("a", time.Hour); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("store failing: %v", err)
	}
	f.did(t, "store a 1h0m0s")
	f.storeErr = nil

	f.gateErr = api.ErrUnavailable
	if _, err := s.SetTimeout("a", time.Hour); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("gate closed: %v", err)
	}
	f.did(t)
}

// On a cluster node: a device another node owns is asked about and
// forwarded; an unknown one is 404, and one whose owner does not answer
// 503; a device of a partition being rebuilt is held (202) without being
// looked up.
func TestControlsInACluster(t *testing.T) {
	f := &fakes{clustered: true, known: map[string]bool{"mine": true},
		remote: map[string]bool{"theirs": true, "gone": false}, holding: map[string]bool{"rebuilding": true}}
	s := f.service(t)
	if fw, err := s.SetTimeout("theirs", time.Hour); err != nil || !fw {
		t.Fatalf("remote: %v %v", fw, err)
	}
	f.did(t, "store theirs 1h0m0s", "apply theirs 1h0m0s")
	if _, err := s.SetTimeout("gone", time.Hour); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("remote unknown: %v", err)
	}
	if _, err := s.Decommission("gone", time.Now()); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("decommission of a remote unknown: %v", err)
	}
	f.did(t)
	f.missing = []string{"node-b"}
	if _, err := s.SetTimeout("gone", time.Hour); !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "node-b") {
		t.Fatalf("owner not answering: %v", err)
	}
	f.missing = nil
	f.did(t)
	if fw, err := s.SetTimeout("rebuilding", time.Hour); !errors.Is(err, api.ErrHeld) || fw {
		t.Fatalf("held: %v %v", fw, err)
	}
	f.did(t, "store rebuilding 1h0m0s", "apply rebuilding 1h0m0s")
	if fw, err := s.Decommission("mine", time.Now()); err != nil || fw {
		t.Fatalf("decommission: %v %v", fw, err)
	}
	f.did(t, "store mine 0s", "decommission mine")
}

func TestNewValidates(t *testing.T) {
	if _, err := New(DefaultConfig(), Deps{}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("no deps: %v", err)
	}
	f := &fakes{}
	if _, err := New(Config{}, Deps{Gate: f.gate, Engine: f, Controls: f}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("zero timeouts: %v", err)
	}
}
