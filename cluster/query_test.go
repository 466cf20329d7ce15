package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/testsupport/testenv"
)

// threeKeyed starts a keyed three-node cluster with a query handler
// "whoami" on each node.
func threeKeyed(t *testing.T) ([]*Node, []*fakeLocal) {
	t.Helper()
	var nodes []*Node
	var locals []*fakeLocal
	for i, name := range []string{"a", "b", "c"} {
		var seeds []string
		if i > 0 {
			seeds = []string{gossipAddr(nodes[0])}
		}
		n, l := startNodeWith(t, name, seeds, withKeys(key1), func(n *Node) {
			n.HandleQuery("whoami", func(_ context.Context, body []byte) ([]byte, error) {
				if string(body) == "fail" {
					return nil, errors.New("asked to fail")
				}
				return append([]byte(n.Name()+":"), body...), nil
			})
		})
		nodes, locals = append(nodes, n), append(locals, l)
	}
	waitTables(t, 10*time.Second, nodes, "a", "b", "c")
	return nodes, locals
}

// Every node answers every device, in the caller's order, from its owner.
func TestLookupAcrossNodes(t *testing.T) {
	nodes, locals := threeKeyed(t)
	ids := deviceIDs("lk", 300)
	at := time.Now()
	if rej := nodes[0].Router().TouchBatch(touchBatch(ids, at)); rej != 0 {
		t.Fatal(rej)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		n := 0
		for _, l := range locals {
			n += len(l.ids())
		}
		if n != len(ids) {
			return fmt.Errorf("%d of %d devices applied", n, len(ids))
		}
		return nil
	})
	ask := append(slices.Clone(ids), "never-seen")
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		got, missing := n.Lookup(ctx, ask, nil)
		cancel()
		if len(missing) != 0 || len(got) != len(ask) {
			t.Fatalf("%s: %d answers, missing %v", n.Name(), len(got), missing)
		}
		for i, st := range got[:len(ids)] {
			if st.ID != ids[i] || st.Status != engine.StatusOnline || !st.LastSeen.Equal(at) {
				t.Fatalf("%s: answer %d = %+v, want %s online", n.Name(), i, st, ids[i])
			}
		}
		if last := got[len(ids)]; last.ID != "never-seen" || last.Status != engine.StatusUnknown {
			t.Fatalf("%s: unknown id answered %+v", n.Name(), last)
		}
	}
	// Ask: every member, in the table's order, errors passed through.
	ans := nodes[1].Ask(context.Background(), "whoami", []byte("hi"))
	if len(ans) != 3 {
		t.Fatalf("%d answers", len(ans))
	}
	for i, a := range ans {
		if want := []string{"a", "b", "c"}[i]; a.Node != want || string(a.Body) != want+":hi" || a.Err != nil {
			t.Fatalf("answer %d: %+v", i, a)
		}
	}
	for _, a := range nodes[0].Ask(context.Background(), "whoami", []byte("fail")) {
		if a.Err == nil || errors.Is(a.Err, ErrNoAnswer) {
			t.Fatalf("%s: %v, want the handler's error", a.Node, a.Err)
		}
	}
	for _, a := range nodes[0].Ask(context.Background(), "no-such-kind", nil) {
		if a.Err == nil {
			t.Fatalf("%s answered an unknown kind", a.Node)
		}
	}
}

// A device its owner does not know (yet), held by another member (a
// handoff in flight, a stray) is answered from there, once.
func TestLookupFindsStrays(t *testing.T) {
	nodes, locals := threeKeyed(t)
	id := ownedBy(t, nodes[0], "c", "stray")
	seen := time.Now().Add(-time.Minute)
	if err := locals[1].Adopt([]engine.DeviceState{{ID: id, Status: engine.StatusOffline, LastSeen: seen, Since: seen}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, missing := nodes[0].Lookup(context.Background(), []string{id}, nil)
	if len(missing) != 0 || got[0].Status != engine.StatusOffline || !got[0].LastSeen.Equal(seen) {
		t.Fatalf("stray: %+v, missing %v", got, missing)
	}
}

// A member that does not answer costs at most the budget, and is named.
func TestLookupMissingMember(t *testing.T) {
	nodes, _ := threeKeyed(t)
	ids := deviceIDs("gone", 200)
	nodes[0].Router().TouchBatch(touchBatch(ids, time.Now()))
	testenv.Eventually(t, 5*time.Second, func() error {
		got, missing := nodes[0].Lookup(context.Background(), ids, nil)
		for _, st := range got {
			if st.Status != engine.StatusOnline {
				return fmt.Errorf("%s not yet online (missing %v)", st.ID, missing)
			}
		}
		return nil
	})
	// c stops answering: a network cut, not a leave (its table entry
	// stays until memberlist declares it dead).
	c := nodes[2]
	c.srv.close()
	c.q.close()
	const budget = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	got, missing := nodes[0].Lookup(ctx, ids, nil)
	took := time.Since(start)
	if !slices.Contains(missing, "c") {
		t.Fatalf("missing %v, want c", missing)
	}
	if took > budget+time.Second {
		t.Fatalf("lookup took %v with a budget of %v", took, budget)
	}
	for i, st := range got {
		owner := nodes[0].Table().OwnerOf(ids[i])
		if (owner == "c") != (st.Status == engine.StatusUnknown) {
			t.Fatalf("%s (owner %s): %v", ids[i], owner, st.Status)
		}
	}
}

// A member that accepts queries and does not answer (stopped, stalled)
// costs the budget and is the only one named: the others, asked within
// the budget's rest, are not missing, and an id they do not know is
// unknown, not unavailable.
func TestLookupHungMember(t *testing.T) {
	nodes, locals := threeKeyed(t)
	hang := make(chan struct{})
	defer close(hang)
	locals[2].mu.Lock()
	locals[2].hang = hang
	locals[2].mu.Unlock()
	var ofB, ofC string
	for i := 0; ofB == "" || ofC == ""; i++ {
		id := fmt.Sprintf("hung-%d", i)
		switch nodes[0].Table().OwnerOf(id) {
		case "b":
			ofB = id
		case "c":
			ofC = id
		}
	}
	const budget = 400 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	got, missing := nodes[0].Lookup(ctx, []string{ofB, ofC}, nil)
	if took := time.Since(start); took > budget+time.Second {
		t.Fatalf("lookup took %v with a budget of %v", took, budget)
	}
	if !slices.Equal(missing, []string{"c"}) || got[0].Status != engine.StatusUnknown || got[1].Status != engine.StatusUnknown {
		t.Fatalf("missing %v, answers %+v: want only c missing", missing, got)
	}
}
