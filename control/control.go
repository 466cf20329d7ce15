// Package control applies the API's device controls: a device's own
// timeout (set and cleared) and its decommission, on one node or across a
// cluster (Service); and answers the API's reads for the whole cluster
// (Fleet: lookups, counts, lists, and the other nodes' events for the
// cluster-wide SSE streams).
//
// A control is taken only while the node takes writes (Deps.Gate: ingest
// runs, after recovery and before the handoff at shutdown), as the
// messages and statuses are. An own timeout is stored (Deps.Overrides,
// Redis) before it is applied, and taken back if it could not be, so that
// an override acknowledged outlives a restart or a rebuild and no other
// does; nothing is stored for a device nobody knows: this node's engine,
// or the owner asked over the cluster (Deps.Cluster.Lookup). A control of
// a device whose partition this node is rebuilding is held by the cluster
// and applied after the rebuild (api.ErrHeld: 202).
//
//	svc, err := control.New(control.DefaultConfig(), control.Deps{Gate: gate, Engine: eng, Controls: router, ...})
//	forwarded, err := svc.SetTimeout("123", time.Hour)
package control

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/presence-dev/presence/api"
	"github.com/presence-dev/presence/engine"
	"github.com/presence-dev/presence/internal/wire"
)

// Config configures a Service.
type Config struct {
	// StoreTimeout bounds the write of one own timeout. Default 5 s.
	StoreTimeout time.Duration
	// QueryTimeout bounds asking the cluster whether a device another
	// node owns exists. Default 1 s (the cluster's query timeout).
	QueryTimeout time.Duration
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{StoreTimeout: 5 * time.Second, QueryTimeout: time.Second}
}

// ErrInvalidConfig wraps every configuration error of New.
var ErrInvalidConfig = errors.New("control: invalid config")

// Gate runs fn while the node takes writes, or returns why it does not
// (an api.ErrUnavailable), without running fn.
type Gate func(fn func() error) error

// Controls apply a control: the engine, or on a cluster node the Router,
// which forwards it to the device's owner.
type Controls interface {
	SetTimeout(id string, d time.Duration) error
	ClearTimeout(id string) error
	Decommission(id string, at time.Time) error
}

// Engine is this node's engine, asked whether it knows a device.
type Engine interface {
	Device(id string) (engine.DeviceState, error)
}

// Cluster is the cluster node (cluster.Node).
type Cluster interface {
	// Owns reports whether this node owns device id.
	Owns(id string) bool
	// Holding reports whether this node holds the messages of id's
	// partition for a rebuild.
	Holding(id string) bool
	// Lookup asks the owners for the state of ids; missing names the
	// members that did not answer in time.
	Lookup(ctx context.Context, ids []string, dst []engine.DeviceState) (states []engine.DeviceState, missing []string)
}

// Overrides store the devices' own timeouts (writeback/redis.Sink).
type Overrides interface {
	SetTimeoutOverride(ctx context.Context, id string, d time.Duration) error
}

// Deps are what a Service works with.
type Deps struct {
	Gate     Gate     // required
	Engine   Engine   // required
	Controls Controls // required
	// Cluster: nil on a single node.
	Cluster Cluster
	// Overrides: nil without Redis (an own timeout then lives in the
	// engine only).
	Overrides Overrides
}

// Service is the API's Controller (api.Controller).
type Service struct {
	cfg  Config
	deps Deps
}

// New builds a Service. It does no I/O.
func New(cfg Config, deps Deps) (*Service, error) {
	if cfg.StoreTimeout <= 0 || cfg.QueryTimeout <= 0 {
		return nil, fmt.Errorf("%w: StoreTimeout and QueryTimeout must be positive, got %v and %v", ErrInvalidConfig, cfg.StoreTimeout, cfg.QueryTimeout)
	}
	if deps.Gate == nil || deps.Engine == nil || deps.Controls == nil {
		return nil, fmt.Errorf("%w: a Gate, an Engine and Controls are required", ErrInvalidConfig)
	}
	return &Service{cfg: cfg, deps: deps}, nil
}

// SetTimeout gives device id its own timeout d, or takes it back to its
// pattern's or the default when d is 0. forwarded: another node owns it
// and was sent the control.
func (s *Service) SetTimeout(id string, d time.Duration) (forwarded bool, err error) {
	forwarded = s.remote(id)
	held := s.held(id, forwarded)
	err = s.deps.Gate(func() error {
		// Nothing is stored for a device never seen; one of a partition
		// being rebuilt may not be back yet (the Router holds the
		// override until it is).
		if !held {
			if err := s.known(id, forwarded); err != nil {
				return err
			}
		}
		if d != 0 {
			if err := engine.ValidTimeout(d); err != nil {
				return err
			}
		}
		if err := s.store(id, d); err != nil {
			return fmt.Errorf("%w: the timeout could not be stored: %v", api.ErrUnavailable, err)
		}
		var err error
		if d == 0 {
			err = s.deps.Controls.ClearTimeout(id)
		} else {
			err = s.deps.Controls.SetTimeout(id, d)
		}
		if err != nil && d != 0 {
			// Not applied (decommissioned meanwhile, or the engine's table
			// of timeouts is full): nothing may outlive it in the store.
			_ = s.store(id, 0)
		}
		return err
	})
	if held && err == nil {
		err = api.ErrHeld
	}
	return forwarded && err == nil, err
}

// Decommission forgets device id (on its owner), at at.
func (s *Service) Decommission(id string, at time.Time) (forwarded bool, err error) {
	forwarded = s.remote(id)
	held := s.held(id, forwarded)
	err = s.deps.Gate(func() error {
		if forwarded { // the owner checks again; this answers 404 as a single node would
			if err := s.known(id, true); err != nil {
				return err
			}
		}
		// Its own timeout goes now, not only with the write-behind removal,
		// which a message of the device before the flush supersedes.
		// Best effort: the store down, the removal deletes it when it is
		// back.
		_ = s.store(id, 0)
		return s.deps.Controls.Decommission(id, at)
	})
	if held && err == nil {
		err = api.ErrHeld
	}
	return forwarded && err == nil, err
}

// remote reports whether another node owns device id.
func (s *Service) remote(id string) bool { return s.deps.Cluster != nil && !s.deps.Cluster.Owns(id) }

// held reports whether this node owns device id but holds its
// partition's messages for a rebuild: a control is then held too, and
// applied after it (api.ErrHeld, 202).
func (s *Service) held(id string, forwarded bool) bool {
	return s.deps.Cluster != nil && !forwarded && s.deps.Cluster.Holding(id)
}

// store writes device id's own timeout d (0: none), if there is a store.
func (s *Service) store(id string, d time.Duration) error {
	if s.deps.Overrides == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	defer cancel()
	return s.deps.Overrides.SetTimeoutOverride(ctx, id, d)
}

// known checks that device id exists: in this engine, or, when another
// node owns it, there (or, during a handoff, on the member that still has
// it). engine.ErrNotFound if not; api.ErrUnavailable when a member that
// might know it did not answer in time.
func (s *Service) known(id string, remote bool) error {
	if !remote {
		_, err := s.deps.Engine.Device(id)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.QueryTimeout)
	defer cancel()
	states, missing := s.deps.Cluster.Lookup(ctx, []string{id}, nil)
	switch {
	case len(states) > 0 && states[0].Status != engine.StatusUnknown:
		return nil
	case len(missing) > 0:
		return fmt.Errorf("%w: %s did not answer within %v: whether %s exists is not known",
			api.ErrUnavailable, strings.Join(missing, ", "), s.cfg.QueryTimeout, wire.Quote(id, 64))
	}
	return engine.ErrNotFound
}

// Compile-time check: a Service is the API's Controller.
var _ api.Controller = (*Service)(nil)
