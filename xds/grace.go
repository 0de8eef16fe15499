package xds

import (
	"slices"
	"time"

	"github.com/infergate/infergate/config"
)

// A restarted control plane has forgotten which engines registered, and
// Envoy keeps the configuration it holds until it is sent a new one. So
// when some pool is filled by registration alone, the first configuration
// is held back for xds.registration_grace: connected nodes keep theirs
// while every engine's next heartbeat registers it again. The hold does
// not end at the first engine back, which would send a pool's whole load
// to it until the others return.

// registrationGrace is x's registration_grace; 0 when unset.
func registrationGrace(x config.XDS) time.Duration {
	if x.RegistrationGrace == nil {
		return 0
	}
	return *x.RegistrationGrace
}

// registeredOnly lists the pools whose engines come from registration
// alone: no endpoints listed and no Kubernetes Service. The default pool
// serves engine.listen while no engine has registered into it; that is
// only right where this process runs that engine (engineInProcess), so
// elsewhere it waits for registrations like any other pool.
func registeredOnly(pools []config.XDSPool, engineInProcess bool) []string {
	var names []string
	for _, p := range pools {
		if len(p.Endpoints) == 0 && p.Kubernetes.Service == "" && !(engineInProcess && p.Name == config.DefaultPoolName) {
			names = append(names, p.Name)
		}
	}
	return names
}

// holdForRegistrations holds the publisher back at start when some pool
// waits for registrations; Serve starts the grace period.
func (s *Server) holdForRegistrations() {
	s.waiting = registeredOnly(s.cfg.XDS.Pools, s.engineInProcess)
	if len(s.waiting) > 0 && registrationGrace(s.cfg.XDS) > 0 {
		s.pub.held = true
		s.m.held.Set(1)
	} else {
		s.waiting = nil
	}
}

// startGrace ends the hold once the grace period has passed.
func (s *Server) startGrace() {
	s.mu.Lock()
	waiting := slices.Clone(s.waiting)
	s.mu.Unlock()
	if len(waiting) == 0 {
		return
	}
	grace := registrationGrace(s.cfg.XDS)
	s.log.Info("holding the first configuration while engines register again", "pools", waiting, "for", grace)
	s.graceTimer = time.AfterFunc(grace, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		empty := s.emptyWaitingLocked()
		s.waiting = nil
		s.pub.release()
		s.m.held.Set(0)
		if len(empty) > 0 {
			s.log.Warn("registration grace over: publishing with pools still empty", "pools", empty)
		} else {
			s.log.Info("registration grace over: configuration published")
		}
	})
}

// emptyWaitingLocked lists the awaited pools, still in the model, that
// have no endpoint.
func (s *Server) emptyWaitingLocked() []string {
	addrs := s.endpointAddressesLocked()
	var empty []string
	for _, name := range s.waiting {
		exists := slices.ContainsFunc(s.model.routing.Pools, func(p config.XDSPool) bool { return p.Name == name })
		if exists && len(addrs[name]) == 0 {
			empty = append(empty, name)
		}
	}
	return empty
}
