package queue

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAgainstSlice drives a ring and a plain slice model with the same
// random pushes and pops, across growth, wrap-around and the bound.
func TestAgainstSlice(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		bound := 1 + rng.IntN(40)
		r := newRing[int](rng.IntN(8), bound)
		var model []int
		next := 0
		for step := range 2000 {
			if rng.IntN(3) > 0 {
				old, dropped := r.Push(next)
				wantDrop, wantOld := len(model) == bound, 0
				if wantDrop {
					wantOld, model = model[0], model[1:]
				}
				model = append(model, next)
				next++
				if dropped != wantDrop || old != wantOld {
					t.Fatalf("seed %d step %d: Push dropped=%v (%d), want %v (%d)", seed, step, dropped, old, wantDrop, wantOld)
				}
			} else {
				k := rng.IntN(10)
				got := r.PopTo(nil, k)
				n := min(k, len(model))
				want := model[:n:n]
				model = model[n:]
				if !slices.Equal(got, want) {
					t.Fatalf("seed %d step %d: PopTo(%d) = %v, want %v", seed, step, k, got, want)
				}
			}
			if r.Len() != len(model) || r.Len() > bound || len(r.buf) > bound {
				t.Fatalf("seed %d step %d: Len %d (buf %d), model %d, bound %d", seed, step, r.Len(), len(r.buf), len(model), bound)
			}
		}
	}
}

// TestReleasesReferences: dropped and popped slots are zeroed, so a ring
// of pointers does not keep what it no longer holds alive.
func TestReleasesReferences(t *testing.T) {
	r := newRing[*int](2, 2)
	a, b, c := new(int), new(int), new(int)
	r.Push(a)
	r.Push(b)
	if old, dropped := r.Push(c); !dropped || old != a {
		t.Fatal("third push into a ring of 2 did not drop")
	}
	for i, p := range r.buf {
		if p == a {
			t.Fatalf("slot %d still references the dropped element", i)
		}
	}
	r.PopTo(nil, 2)
	for i, p := range r.buf {
		if p != nil {
			t.Fatalf("slot %d still references a popped element", i)
		}
	}
}

func TestGrowsByDoublingToBound(t *testing.T) {
	r := newRing[int](4, 20)
	for i := range 20 {
		r.Push(i)
	}
	if len(r.buf) != 20 {
		t.Fatalf("buffer %d, want 20 (4, 8, 16, then the bound)", len(r.buf))
	}
	if got := r.PopTo(nil, 100); len(got) != 20 || got[0] != 0 || got[19] != 19 {
		t.Fatalf("PopTo = %v", got)
	}
}
