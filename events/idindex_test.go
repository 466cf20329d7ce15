package events

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"unsafe"
)

// idIndex against a map, through random adds and removes that grow the
// table, wrap probe runs and compact the arena.
func TestIDIndexAgainstAMap(t *testing.T) {
	x := newIDIndex()
	var refs []idRef
	var used []bool
	var free []uint32
	model := map[string]uint32{}
	ref := func(s uint32) idRef { return refs[s] }
	rng := rand.New(rand.NewPCG(1, 2))
	ids := make([]string, 5000)
	for i := range ids {
		ids[i] = "dev-" + strconv.Itoa(i*7919%100003)
	}
	compactions := 0
	for step := range 200_000 {
		id := ids[rng.IntN(len(ids))]
		slot, ok := x.find(id, ref)
		want, inModel := model[id]
		if ok != inModel || (ok && slot != want) {
			t.Fatalf("step %d: find(%q) = %d %v, model %d %v", step, id, slot, ok, want, inModel)
		}
		if !inModel {
			var s uint32
			if n := len(free); n > 0 {
				s, free = free[n-1], free[:n-1]
			} else {
				s = uint32(len(refs))
				refs, used = append(refs, idRef{}), append(used, false)
			}
			refs[s], used[s] = x.add(id, s, ref), true
			model[id] = s
		} else if rng.IntN(2) == 0 {
			x.remove(slot, refs[slot], ref)
			used[slot] = false
			free = append(free, slot)
			delete(model, id)
			if x.compactable() {
				compactions++
				x.compact(func(move func(uint32, idRef) idRef) {
					for i := range refs {
						if used[i] {
							refs[i] = move(uint32(i), refs[i])
						}
					}
				})
			}
		}
		if x.len() != len(model) {
			t.Fatalf("step %d: %d entries, model %d", step, x.len(), len(model))
		}
	}
	for id, s := range model {
		if got, ok := x.find(id, ref); !ok || got != s || x.str(refs[s]) != id {
			t.Fatalf("%q: %d %v, want %d", id, got, ok, s)
		}
	}
	if compactions == 0 {
		t.Log("no compaction happened") // the arena is small here; compact is checked below
	}
	// Compaction keeps every live id.
	x.dead = 1 << 20
	x.compact(func(move func(uint32, idRef) idRef) {
		for i := range refs {
			if used[i] {
				refs[i] = move(uint32(i), refs[i])
			}
		}
	})
	for id, s := range model {
		if got, ok := x.find(id, ref); !ok || got != s {
			t.Fatalf("after compact %q: %d %v", id, got, ok)
		}
	}
	if len(x.ids) > 12*len(model) {
		t.Fatalf("arena of %d bytes for %d ids after compaction", len(x.ids), len(model))
	}
}

func TestOffRecSize(t *testing.T) {
	if n := unsafe.Sizeof(offRec{}); n != 20 {
		t.Fatalf("offRec is %d bytes, want 20", n)
	}
}
